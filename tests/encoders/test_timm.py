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


# ---- issue 19, point 11: SEGZOO_OFFLINE is honoured by TimmEncoder(pretrained=True) -------------------------

@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Empty Hugging Face and torch hub caches, SEGZOO_OFFLINE=1, and a record of every connection attempt."""
    import socket

    from huggingface_hub import constants

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return attempts


def test_offline_timm_weights_fail_at_once_naming_the_cache_and_a_local_file(no_network, tmp_path):
    from segzoo.errors import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError) as err:
        TimmEncoder("test_resnet", pretrained=True)
    msg = str(err.value)
    assert no_network == [], "the network was tried although SEGZOO_OFFLINE is set"
    assert str(tmp_path / "hf") in msg and "timm/test_resnet" in msg and "SEGZOO_OFFLINE" in msg
    assert "pretrained_cfg_overlay=dict(file=" in msg and "pretrained=False" in msg
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in __import__("os").environ  # restored


def _hf_cached(tmp_path, model):
    """Put ``model``'s weights where the Hugging Face cache keeps timm/test_resnet.r160_in1k."""
    from safetensors.torch import save_file

    repo = tmp_path / "hf" / "models--timm--test_resnet.r160_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(model.state_dict(), str(repo / "snapshots" / commit / "model.safetensors"))


def test_offline_timm_weights_load_from_the_cache_or_a_local_file_without_network(no_network, tmp_path):
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("test_resnet", pretrained=False)
    _hf_cached(tmp_path, reference)
    enc = TimmEncoder("test_resnet", pretrained=True)
    assert torch.equal(enc.model.state_dict()["conv1.0.weight"], reference.state_dict()["conv1.0.weight"])
    # the local-file form the error names
    save_file(reference.state_dict(), str(tmp_path / "w.safetensors"))
    enc = TimmEncoder("test_resnet", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")))
    assert torch.equal(enc.model.state_dict()["conv1.0.weight"], reference.state_dict()["conv1.0.weight"])
    with pytest.raises(FileNotFoundError, match="no such weights file: .*missing.safetensors"):
        TimmEncoder("test_resnet", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "missing.safetensors")))
    assert no_network == []
