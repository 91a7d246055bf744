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


# ---- issue 21, points 2-5: real size constraints, dilation, short name errors, offline hub names -------------

TINY_SWIN = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))  # Swin-T's layout, few weights


def test_encoder_size_multiple_defaults_to_the_deepest_stride():
    assert TimmEncoder("test_resnet").size_multiple == 32
    assert TimmEncoder("test_resnet", out_indices=[0, 1, 2]).size_multiple == 8


@pytest.mark.parametrize("hw", [(224, 224), (101, 77), (64, 64)])
def test_swin_encoder_gives_logits_of_the_input_size(hw):
    from segzoo import Unet, UPerNet

    for cls in (Unet, UPerNet):
        model = cls(encoder=TimmEncoder("swin_tiny_patch4_window7_224", **TINY_SWIN), num_classes=2).eval()
        with torch.no_grad():  # before: 224 was padded to 256 (a multiple of 64), which timm refused
            assert model(torch.rand(1, 3, *hw)).shape == (1, 2, *hw)
        assert model.size_multiple == 32
    enc = model.encoder
    assert enc.out_strides == [4, 8, 16, 32] and enc.fixed_input_size is None  # timm's dynamic_img_size


def test_fixed_size_timm_model_pads_to_its_size_and_names_it_otherwise():
    from segzoo import Unet

    model = Unet(encoder=TimmEncoder("test_coatnet"), num_classes=2).eval()  # no dynamic size: 160x160 only
    assert model.encoder.fixed_input_size == (160, 160) and model.size_multiple == 160
    with torch.no_grad():
        assert model(torch.rand(1, 3, 100, 77)).shape == (1, 2, 100, 77)
        assert model(torch.rand(1, 3, 160, 160)).shape == (1, 2, 160, 160)
        with pytest.raises(ValueError, match="takes only 160x160 inputs .*img_size=") as err:
            model(torch.rand(1, 3, 200, 100))
    assert "\n" not in str(err.value)
    # the caller's own size arguments are kept: a strict Swin takes its img_size only
    strict = TimmEncoder("swin_tiny_patch4_window7_224", strict_img_size=True, **TINY_SWIN)
    assert strict.fixed_input_size == (224, 224) and strict.size_multiple == 224


def test_custom_encoder_size_multiple_drives_padding():
    import torch.nn as nn

    from segzoo import FPNUnet
    from segzoo.encoders import EncoderSpec

    class Windowed(EncoderSpec):
        """Strides 2 and 4, but (as a windowed encoder would) needs multiples of 12."""

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.sizes = []

        out_channels = property(lambda self: [8, 16])
        out_strides = property(lambda self: [2, 4])
        size_multiple = property(lambda self: 12)

        def forward(self, x):
            self.sizes.append(tuple(x.shape[-2:]))
            a = self.a(x)
            return [a, self.b(a)]

    model = FPNUnet(encoder=Windowed(), num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 25, 13)).shape == (1, 2, 25, 13)
    assert model.size_multiple == 12 and model.encoder.sizes == [(36, 24)]


@pytest.mark.parametrize("stride", [16, 8])
def test_deeplab_dilates_a_timm_cnn_keeping_its_weights(stride):
    from segzoo import DeepLabV3Plus

    torch.manual_seed(0)
    enc = TimmEncoder("test_resnet")
    model = DeepLabV3Plus(encoder=enc, num_classes=2, encoder_output_stride=stride).eval()
    assert max(model.encoder.out_strides) == stride and model.size_multiple == stride
    assert model.decoder.aspp.rates == [12 * 16 // stride, 24 * 16 // stride, 36 * 16 // stride]
    ours, theirs = model.encoder.model.state_dict(), enc.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 70, 45)).shape == (1, 2, 70, 45)
    built = DeepLabV3Plus(encoder=TimmEncoder("test_resnet", output_stride=stride), num_classes=2)
    assert max(built.encoder.out_strides) == stride


def test_encoders_that_cannot_dilate_say_so_in_one_line():
    from segzoo import DeepLabV3Plus

    for make in (lambda: TimmEncoder("test_vit", output_stride=16),
                 lambda: DeepLabV3Plus(encoder=TimmEncoder("swin_tiny_patch4_window7_224", **TINY_SWIN),
                                       encoder_output_stride=16),
                 lambda: DeepLabV3Plus(num_classes=2, encoder_output_stride=16),
                 lambda: TimmEncoder("test_resnet", output_stride=12),
                 lambda: DeepLabV3Plus(encoder=TimmEncoder("test_resnet"), encoder_output_stride=4)):
        with pytest.raises(ValueError) as err:
            make()
        msg = str(err.value)
        assert "\n" not in msg and len(msg) < 300 and ("dilate" in msg or "output_stride" in msg), msg


def test_unknown_timm_names_get_a_short_line_with_close_matches():
    for wrong, right in (("resnet_18", "'resnet18'"), ("swin", "'swin_"), ("resnet18.a1_in1kx", "'resnet18.a1_in1k'")):
        with pytest.raises(KeyError) as err:
            TimmEncoder(wrong)
        msg = str(err.value)
        assert right in msg and len(msg) < 300 and "\n" not in msg, msg
    with pytest.raises(TypeError, match="timm model name"):
        TimmEncoder(None)
    with pytest.raises(ValueError, match="does not take these arguments: .*foo"):
        TimmEncoder("test_resnet", foo=1)


def test_offline_hub_names_never_touch_the_network(no_network):
    from segzoo.errors import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError) as err:  # timm reads an hf-hub: model's config from the hub
        TimmEncoder("hf-hub:timm/test_resnet.r160_in1k")
    assert no_network == [] and "\n" not in str(err.value)


def test_pretrained_from_a_local_torch_file(no_network, tmp_path):
    import timm

    reference = timm.create_model("test_resnet", pretrained=False)
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    enc = TimmEncoder("test_resnet", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "w.pth")))
    ours = enc.model.state_dict()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in ours.items()) and no_network == []


def test_a_local_file_without_the_models_weights_is_refused(no_network, tmp_path):
    import timm

    from segzoo.errors import CheckpointError

    weights = timm.create_model("test_resnet", pretrained=False).state_dict()
    weights.pop("conv1.0.weight")  # timm would leave this one at random init and only log it
    torch.save(weights, tmp_path / "partial.pth")
    torch.save({"foo": torch.zeros(3)}, tmp_path / "foreign.pth")
    for name in ("partial.pth", "foreign.pth"):
        with pytest.raises(CheckpointError, match=f"{name} does not fit timm model 'test_resnet'.*conv1.0.weight"):
            TimmEncoder("test_resnet", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / name)))
