import pytest
import torch

from segzoo.encoders import TimmEncoder


def test_timm_features_match_declaration():
    enc = TimmEncoder("test_resnet", in_channels=3)
    feats = enc(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == enc.out_channels
    assert [64 // f.shape[-1] for f in feats] == enc.out_strides


def test_timm_in_channels_and_out_indices():
    enc = TimmEncoder("test_resnet", in_channels=4, out_indices=[1, 2])
    assert len(enc.out_channels) == 2
    feats = enc(torch.rand(1, 4, 32, 32))
    assert [f.shape[1] for f in feats] == enc.out_channels


def test_unknown_timm_name_suggests():
    with pytest.raises(KeyError, match="test_resnet"):
        TimmEncoder("test_resnett")
