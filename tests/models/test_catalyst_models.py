"""Catalyst 19.x's legacy models: MobileUnet (MobileNetV2 Unet), ResNetUnet and ResNetLinknet (issue 19, point 18)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import segzoo
from segzoo import MobileUnet, ResnetLinknet, ResnetUnet, create_model, model_from_spec
from segzoo.encoders import MobileNetV2Encoder
from segzoo.encoders.weights import hub_cache_file, torchvision_weights
from segzoo.errors import CheckpointError, WeightsUnavailableError

# catalyst.contrib.models.segmentation.__all__ at v19.12, minus its two base classes (ImportErrors naming the replacement)
CATALYST_ALL = ["UnetMetaSpec", "Unet", "Linknet", "FPNUnet", "PSPnet", "ResnetUnet", "ResnetLinknet", "ResnetFPNUnet",
                "ResnetPSPnet", "MobileUnet", "ResNetUnet", "ResNetLinknet"]


@pytest.mark.parametrize("module", ["segzoo", "segzoo.compat", "segzoo.models"])
def test_catalyst_segmentation_import_list_works(module):
    namespace: dict = {}
    exec(f"from {module} import {', '.join(CATALYST_ALL)}", namespace)
    assert namespace["ResNetLinknet"] is ResnetLinknet
    assert issubclass(namespace["ResNetUnet"], ResnetUnet) and namespace["MobileUnet"] is MobileUnet
    assert set(CATALYST_ALL) <= set(dir(segzoo))
    if module != "segzoo.models":  # where Catalyst's import list is mapped, its base classes name the replacement
        for base in ("UnetSpec", "ResnetUnetSpec"):
            with pytest.raises(ImportError, match="UnetMetaSpec"):
                exec(f"from {module} import {base}", {})


def test_mobileunet_takes_catalysts_constructor_and_any_size():
    # Catalyst 19.x: MobileUnet(num_classes=1, input_size=224, width_mult=1., pretrained=None), positional too
    model = MobileUnet(3, 320, 0.5, None).eval()
    reference = torchvision.models.mobilenet_v2(width_mult=0.5).features
    assert model.encoder.out_channels == [reference[i].out_channels for i in (1, 3, 6, 13, 18)] == [8, 16, 16, 48, 1280]
    assert model.encoder.out_strides == [2, 4, 8, 16, 32] and model.size_multiple == 32
    assert model.decoder.out_channels == [8, 16, 16, 48]  # Catalyst's decoder widths: the skips' own
    with torch.no_grad():
        for hw in ((64, 64), (67, 45), (1, 1)):
            assert model(torch.rand(2, 3, *hw)).shape == (2, 3, *hw)
    assert MobileUnet(num_classes=2, input_size=224, width_mult=1.0, pretrained=None).segzoo_spec == {
        "name": "mobilenetv2_unet", "kwargs": {"num_classes": 2}}
    model.train()
    model(torch.rand(2, 3, 64, 64)).mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_mobileunet_refuses_what_it_cannot_honour_in_one_line():
    cases = [(dict(input_size=100), ValueError, "multiple of 32"),
             (dict(input_size=0), ValueError, "input_size"),
             (dict(pretrained="imagenet"), TypeError, "pretrained=True"),
             (dict(width_mult=0), ValueError, "width_mult"),
             (dict(width_mult=0.5, pretrained=True), ValueError, "state_dict="),
             (dict(encoder_params=dict(pretrained=True)), ValueError, "not inside encoder_params"),
             (dict(encoder_params=dict(width_mult=2.0)), ValueError, "not inside encoder_params"),
             (dict(decoder_params=dict(channels=[8])), ValueError, "one width per skip")]
    for kwargs, error, text in cases:
        with pytest.raises(error) as info:
            MobileUnet(**kwargs)
        assert text in str(info.value) and "\n" not in str(info.value), kwargs


def test_mobileunet_pretrained_reads_torchvisions_file_from_the_hub_cache(hub_cache):
    with pytest.raises(WeightsUnavailableError) as info:  # empty cache, offline: the cache path and the alternative
        MobileUnet(pretrained=True)
    assert str(hub_cache) in str(info.value) and "state_dict" in str(info.value)
    sd = torchvision.models.mobilenet_v2().state_dict()
    path = hub_cache_file(torchvision_weights("mobilenet_v2").url)
    assert path.parent == hub_cache
    torch.save(sd, path)
    model = MobileUnet(num_classes=2, pretrained=True)
    encoder = model.encoder.state_dict()
    assert torch.equal(encoder["stages.0.0.0.weight"], sd["features.0.0.weight"])
    assert torch.equal(encoder["stages.4.4.1.running_var"], sd["features.18.1.running_var"])
    assert all(p.requires_grad for p in model.encoder.parameters())  # pretrained does not freeze
    # the spec asks for weights, but a rebuild for a checkpoint reads none (the file is gone now)
    path.unlink()
    assert model.segzoo_spec == {"name": "mobilenetv2_unet", "kwargs": {"num_classes": 2, "pretrained": True}}
    assert isinstance(model_from_spec(model.segzoo_spec), MobileUnet)


def test_mobilenetv2_encoder_state_dict_file_and_other_input_channels(tmp_path):
    sd = {k: v for k, v in torchvision.models.mobilenet_v2().state_dict().items() if not k.startswith("classifier.")}
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(sd, path)
    grey = MobileUnet(pretrained=False, encoder_params=dict(state_dict=str(path), in_channels=1))
    assert torch.equal(grey.encoder.stages[0][0][0].weight, sd["features.0.0.weight"].sum(1, keepdim=True))
    assert torch.equal(grey.encoder.stages[3][-1].conv[0][0].weight, sd["features.13.conv.0.0.weight"])
    assert grey.eval()(torch.rand(1, 1, 40, 50)).shape == (1, 1, 40, 50)
    with pytest.raises(ValueError, match="expected 1 input channels"):
        grey(torch.rand(1, 3, 40, 50))
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError, match="mobilenet_v2"):
        MobileNetV2Encoder(state_dict=str(tmp_path / "resnet18.pth"))
    with pytest.raises(FileNotFoundError):
        MobileNetV2Encoder(state_dict=str(tmp_path / "missing.pth"))


def test_mobileunet_registry_spec_and_whole_model_weights(tmp_path):
    model = create_model("mobilenetv2_unet", num_classes=2, width_mult=0.5, decoder_params=dict(upsample="nearest"))
    assert isinstance(model, MobileUnet) and "mobilenetv2_unet" in segzoo.list_models("mobilenetv2_*")
    clone = model_from_spec(segzoo.get_model_spec(model))
    clone.load_state_dict(model.state_dict())
    path = tmp_path / "m.pth"
    torch.save({"model_state_dict": model.state_dict()}, path)
    again = MobileUnet(2, width_mult=0.5, decoder_params=dict(upsample="nearest"), state_dict=str(path)).eval()
    x = torch.rand(2, 3, 48, 80)
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(x), model.eval()(x))
        torch.testing.assert_close(again(x), model(x))
    with_bridge = MobileUnet(width_mult=0.5, bridge_params={})  # every encoder level becomes a skip
    assert with_bridge.decoder.out_channels == [8, 16, 16, 48, 1280] and with_bridge.size_multiple == 64


def test_resnetunet_takes_catalysts_constructor():
    # Catalyst 19.x: ResNetUnet(num_classes=1, num_channels=32, arch="resnet18", pretrained=True)
    from segzoo.compat import ResNetLinknet, ResNetUnet

    model = ResNetUnet(2, 16, "resnet34", False)
    assert isinstance(model, ResnetUnet) and model.encoder.arch == "resnet34"
    assert model.decoder.out_channels == [16, 32, 64, 128]
    assert model.segzoo_spec == {"name": "resnet34_unet", "kwargs": {
        "num_classes": 2, "pretrained": False, "decoder_params": {"channels": [16, 32, 64, 128]}}}
    rebuilt = model_from_spec(model.segzoo_spec)
    rebuilt.load_state_dict(model.state_dict())  # checkpoints of the alias load into segzoo's ResnetUnet
    default = ResNetUnet(num_classes=2, arch="resnet18", pretrained=False)
    assert default.segzoo_spec == ResnetUnet(num_classes=2, pretrained=False).segzoo_spec
    assert ResNetUnet(num_classes=2, num_channels=32, pretrained=False).decoder.out_channels == \
        default.decoder.out_channels
    linknet = ResNetLinknet(num_classes=3, arch="resnet18", pretrained=False).eval()
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 50, 70)).shape == (1, 2, 50, 70)
        assert linknet(torch.rand(1, 3, 50, 70)).shape == (1, 3, 50, 70)
    for kwargs, error, text in [(dict(num_channels="resnet34"), ValueError, "Catalyst's order"),
                                (dict(num_channels=0), ValueError, "num_channels"),
                                (dict(num_channels=8, decoder_params=dict(channels=[1, 2, 3, 4])), ValueError, "not both"),
                                (dict(pretrained="imagenet"), TypeError, "pretrained=True")]:
        with pytest.raises(error) as info:
            ResNetUnet(**kwargs)
        assert text in str(info.value) and "\n" not in str(info.value), kwargs
