import pytest
import torch

from segzoo.encoders import UnetEncoder


def test_unet_encoder_declares_truth():
    enc = UnetEncoder(in_channels=2, num_channels=8, num_blocks=3)
    feats = enc(torch.rand(1, 2, 32, 32))
    assert [f.shape[1] for f in feats] == enc.out_channels == [8, 16, 32]
    assert [32 // f.shape[-1] for f in feats] == enc.out_strides == [1, 2, 4]


def test_unet_encoder_bad_blocks():
    with pytest.raises(ValueError, match="num_blocks"):
        UnetEncoder(num_blocks=0)
