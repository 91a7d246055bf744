"""Every named model x several encoders: forward/backward, sizes, registry, specs, weights."""

import pytest
import torch
import torch.nn as nn
from _models import TINY_VIT

import segzoo
from segzoo import (
    Linknet,
    ResnetDeepLabV3Plus,
    ResnetLinknet,
    ResnetPSPnet,
    ResnetUnet,
    Unet,
    UnetMetaSpec,
    create_model,
    list_models,
    model_from_spec,
)
from segzoo.architectures import CATALYST_MODELS, resnet_architectures
from segzoo.encoders import EncoderSpec, TimmEncoder
from segzoo.models import ARCHITECTURES

# every architecture of the table, in both families: a new row is tested here without editing this file
GENERIC = list(ARCHITECTURES)
RESNET = [f"resnet18_{arch}" for arch in resnet_architectures()]
# the rows whose encoder is a feature pyramid (DPT's is a plain ViT: tests/models/test_dpt.py)
PYRAMID = [arch for arch in ARCHITECTURES if ARCHITECTURES[arch].encoder_kind == "pyramid"]
OTHER = [n for n in CATALYST_MODELS.values() if n]  # registered outside the two families (Catalyst 19.x's MobileUnet)


class TinyEncoder(EncoderSpec):
    """A custom encoder as a user would write it."""

    def __init__(self):
        super().__init__()
        self.in_channels = 3
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU())

    @property
    def out_channels(self):
        return [8, 16, 24]

    @property
    def out_strides(self):
        return [2, 4, 8]

    def forward(self, x):
        a = self.a(x)
        b = self.b(a)
        return [a, b, self.c(b)]


def _tiny(name):
    if name.startswith("mobilenetv2"):
        return dict(width_mult=0.5)
    if name in ARCHITECTURES and ARCHITECTURES[name].encoder_kind == "tokens":
        return dict(encoder_params=TINY_VIT)
    return dict(pretrained=False) if name.startswith("resnet") else dict(num_channels=8, num_blocks=3)


def _forward_backward(model, shape=(2, 3, 64, 64), classes=2):
    model.train()
    x = torch.rand(*shape)
    y = model(x)
    assert y.shape == (shape[0], classes, shape[2], shape[3])
    y.float().mean().backward()
    enc_grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert enc_grads and all(g is not None for g in enc_grads)
    assert any(g.abs().sum() > 0 for g in enc_grads)


@pytest.mark.parametrize("name", GENERIC)
def test_generic_default_encoder(name):
    _forward_backward(create_model(name, num_classes=2, **_tiny(name)))


@pytest.mark.parametrize("name", PYRAMID)
def test_generic_custom_encoder(name):
    model = create_model(name, num_classes=2, encoder=TinyEncoder())
    _forward_backward(model)
    assert model.segzoo_spec is None  # not rebuildable from plain data: trace needs a factory


@pytest.mark.parametrize("name", PYRAMID)
def test_generic_timm_encoder(name):
    _forward_backward(create_model(name, num_classes=2, encoder=TimmEncoder("test_resnet")))


@pytest.mark.parametrize("name", RESNET)
def test_resnet_models(name):
    _forward_backward(create_model(name, num_classes=2, pretrained=False))


@pytest.mark.parametrize("name", GENERIC + RESNET + OTHER)
@pytest.mark.parametrize("hw", [(67, 71), (33, 97), (1, 1), (100, 100)])
def test_any_size_exact_output(name, hw):
    model = create_model(name, num_classes=3, **_tiny(name)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, *hw)).shape == (1, 3, *hw)


def test_strict_size_names_nearest_valid():
    model = ResnetUnet(arch="resnet18", pretrained=False, size_mode="strict").eval()
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError) as err:
        model(torch.rand(1, 3, 100, 64))
    msg = str(err.value)
    assert "H=100" in msg and "W=64" in msg and "32" in msg and "96" in msg and "128" in msg


def test_psp_runs_only_the_stride8_stages():
    model = ResnetPSPnet(arch="resnet34", pretrained=False)
    assert len(model.encoder.stages) == 3 and model.size_multiple == 8
    assert not any("layer3" in n or "layer4" in n for n, _ in model.named_modules())


def test_unet_parameter_count_matches_catalyst():
    # Catalyst's Unet(num_classes=2) had 7,849,634 parameters; the classic layout is kept
    assert sum(p.numel() for p in Unet(num_classes=2).parameters()) == 7_849_634


@pytest.mark.parametrize("upsample", ["interpolate", "nearest", "conv", "pixelshuffle"])
def test_upsampling_modes_in_decoder_and_head(upsample):
    model = ResnetUnet(num_classes=2, arch="resnet18", pretrained=False,
                       decoder_params=dict(upsample=upsample), head_params=dict(upsample=upsample))
    _forward_backward(model, shape=(1, 3, 40, 56))
    if upsample in ("conv", "pixelshuffle"):
        assert any(isinstance(m, (nn.ConvTranspose2d, nn.PixelShuffle)) for m in model.head.modules())


def test_complexity_changes_depth():
    def count(model):
        return sum(isinstance(m, nn.Conv2d) for m in model.decoder.modules())

    shallow = ResnetUnet(arch="resnet18", pretrained=False, decoder_params=dict(complexity=0))
    deep = ResnetUnet(arch="resnet18", pretrained=False, decoder_params=dict(complexity=2))
    assert count(deep) == count(shallow) + 2 * len(deep.decoder.blocks)


def test_bad_inputs_are_clear():
    model = ResnetUnet(arch="resnet18", pretrained=False).eval()
    with pytest.raises(ValueError, match="4-D"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(TypeError, match="Tensor"):
        model([1, 2, 3])
    model.train()
    with pytest.raises(ValueError, match="BatchNorm"):
        model(torch.rand(1, 3, 20, 30))
    assert model(torch.rand(2, 3, 20, 30)).shape == (2, 1, 20, 30)


def test_bad_part_combinations():
    with pytest.raises(ValueError, match="channels"):
        UnetMetaSpec(TinyEncoder(), segzoo.decoders.UNetDecoder([8, 16], [2, 4]))
    with pytest.raises(TypeError, match="EncoderSpec"):
        Unet(encoder=nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="not both"):
        Unet(encoder=TinyEncoder(), encoder_params=dict(num_blocks=2))
    with pytest.raises(TypeError, match="decoder_params"):
        ResnetUnet(pretrained=False, decoder_params=[1, 2])
    with pytest.raises(TypeError):  # options after the documented ones are keyword-only
        Linknet(1, 3, 32, 4, None, None, None, None, None, None)


def test_registry_lists_and_rejects():
    # golden names on purpose: the registry must keep these (the table's rows are checked in test_architectures.py)
    names = list_models()
    assert {"unet", "linknet", "fpn_unet", "pspnet", "deeplabv3plus", "upernet", "resnet34_unet", "resnet152_pspnet",
            "resnet34_deeplabv3plus", "resnet50_upernet"} <= set(names)
    resnet18 = list_models("resnet18_*")
    assert resnet18 == sorted(resnet18) and all(name.startswith("resnet18_") for name in resnet18)
    assert {"resnet18_deeplabv3plus", "resnet18_fpn_unet", "resnet18_linknet", "resnet18_pspnet", "resnet18_unet",
            "resnet18_upernet", "resnet18_deeplabv3", "resnet18_segformer"} <= set(resnet18)
    with pytest.raises(KeyError, match="resnet34_unet"):
        create_model("resnet34_unett")
    with pytest.raises(TypeError, match="unknown argument"):
        create_model("unet", num_clases=2)
    with pytest.raises(TypeError, match="fixes"):
        create_model("resnet34_unet", arch="resnet50")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models()])
def test_every_registered_model_builds_and_runs(name):
    kw = {"pretrained": False} if name.startswith("resnet") else {}
    model = create_model(name, num_classes=2, **kw).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 37, 45)).shape == (1, 2, 37, 45)


def test_spec_rebuilds_identical_model():
    model = create_model("resnet18_fpn_unet", num_classes=3, pretrained=False,
                         decoder_params=dict(pyramid_channels=32)).eval()
    spec = segzoo.get_model_spec(model)
    assert spec == {"name": "resnet18_fpn_unet",
                    "kwargs": {"num_classes": 3, "pretrained": False, "decoder_params": {"pyramid_channels": 32}}}
    clone = model_from_spec(spec).eval()
    clone.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x))


def test_direct_construction_records_spec_and_rebuild_skips_downloads(hub_cache):
    # the spec is the registry name and the arguments that differ from the defaults, however the model was built
    model = ResnetUnet(arch="resnet34", pretrained=False, num_classes=2, channels_last="auto")
    assert model.segzoo_spec == {"name": "resnet34_unet", "kwargs": {"num_classes": 2, "pretrained": False}}
    assert create_model("resnet34_unet", pretrained=False, num_classes=2).segzoo_spec == model.segzoo_spec
    # the hub cache is empty and SEGZOO_OFFLINE is set: a spec asking for pretrained weights (or for an
    # encoder weights file) is rebuilt without reading them, since the checkpoint carries the weights
    spec = {"name": "resnet34_unet", "kwargs": {"pretrained": True, "num_classes": 2,
                                                 "encoder_params": {"state_dict": "/nonexistent.pth"}}}
    rebuilt = model_from_spec(spec)
    assert isinstance(rebuilt, ResnetUnet)
    assert rebuilt.segzoo_spec == {"name": "resnet34_unet", "kwargs": {"pretrained": False, "num_classes": 2,
                                                                         "encoder_params": {}}}


def test_unet_and_generic_models_keep_their_parameter_counts():
    # the architecture table must build exactly what the per-name code built before it (golden counts on purpose)
    counts = {"unet": 7_849_634, "linknet": 5_042_594, "fpn_unet": 5_133_154, "pspnet": 1_371_106,
              "resnet34_unet": 24_429_314, "resnet34_linknet": 21_613_698, "resnet34_fpn_unet": 21_703_618,
              "resnet34_pspnet": 1_430_978}
    for name, count in counts.items():
        kw = {"pretrained": False} if name.startswith("resnet") else {}
        assert sum(p.numel() for p in create_model(name, num_classes=2, **kw).parameters()) == count, name


def test_bridge_policy_is_uniform():
    """bridge_params given: a bridge, for every architecture and family; not given: the family's default."""
    for name in PYRAMID + RESNET:
        given = create_model(name, **_tiny(name), bridge_params={"out_channels": 16})
        assert given.bridge is not None and given.bridge.out_channels[-1] == 16, name
        default = create_model(name, **_tiny(name))
        assert (default.bridge is not None) == (not name.startswith("resnet") and ARCHITECTURES[name].bridge), name


def test_deeplab_output_stride_and_weights_load_into_dilated_encoder(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    for stride in (16, 8):
        model = ResnetDeepLabV3Plus(num_classes=2, arch="resnet18", pretrained=False,
                                    encoder_params=dict(output_stride=stride, state_dict=str(path)))
        assert model.encoder.out_strides[-1] == stride and model.size_multiple == stride
        assert model.decoder.aspp.rates == [12 * 16 // stride, 24 * 16 // stride, 36 * 16 // stride]
        assert model.decoder.out_strides == [4]
        _forward_backward(model, shape=(2, 3, 50, 70))
    with pytest.raises(ValueError, match="output_stride"):
        ResnetDeepLabV3Plus(pretrained=False, encoder_params=dict(output_stride=4))


def test_whole_model_state_dict(tmp_path):
    model = Linknet(num_classes=2, num_channels=8, num_blocks=3)
    path = tmp_path / "m.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    again = Linknet(num_classes=2, num_channels=8, num_blocks=3, state_dict=str(path))
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(FileNotFoundError):
        Linknet(num_classes=2, num_channels=8, num_blocks=3, state_dict=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="missing keys|shape"):
        Linknet(num_classes=3, num_channels=8, num_blocks=3, state_dict=str(path))


def test_freeze_encoder_keeps_bn_eval_and_no_grads():
    model = ResnetLinknet(arch="resnet18", pretrained=False)
    model.freeze_encoder()
    model.train()
    assert not any(m.training for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d))
    assert any(m.training for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d))
    model(torch.rand(2, 3, 32, 32)).mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    model.unfreeze_encoder()
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_channels_last_off_gives_same_result():
    a = ResnetUnet(arch="resnet18", pretrained=False, channels_last=True).eval()
    b = ResnetUnet(arch="resnet18", pretrained=False, channels_last=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.is_contiguous()  # the caller's NCHW layout is kept
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-5)
