import pytest
import torch
import torchvision

from segzoo.encoders import ResnetEncoder
from segzoo.encoders.weights import adapt_stem_weight, hub_cache_file, torchvision_weights
from segzoo.errors import CheckpointError, WeightsUnavailableError


def _write_cached_weights(arch: str) -> dict:
    """Write a random torchvision state dict where torch's hub cache looks for ``arch``."""
    sd = getattr(torchvision.models, arch)().state_dict()
    path = hub_cache_file(torchvision_weights(arch).url)
    torch.save(sd, path)
    return sd


def test_pretrained_loads_exact_tensors_from_hub_cache(hub_cache):
    sd = _write_cached_weights("resnet18")
    enc = ResnetEncoder("resnet18", pretrained=True)
    assert torch.equal(enc.stages[0][0].weight, sd["conv1.weight"])
    assert torch.equal(enc.stages[4][1].conv2.weight, sd["layer4.1.conv2.weight"])
    # pretrained does not freeze (Catalyst 19.08 did, silently)
    assert all(p.requires_grad for p in enc.parameters())


def test_pretrained_without_cache_offline_names_cache_and_alternative(hub_cache):
    with pytest.raises(WeightsUnavailableError) as err:
        ResnetEncoder("resnet34", pretrained=True)
    msg = str(err.value)
    assert str(hub_cache) in msg and "state_dict" in msg
    # the form that works for a model (issue 19, point 11: 'pass state_dict=...' made ResnetUnet miss 266 keys)
    assert "encoder_params=dict(state_dict='path/to/resnet34.pth')" in msg and "pass state_dict=" not in msg


def test_the_offline_hint_works_as_written_and_a_model_state_dict_explains_it(hub_cache, tmp_path):
    from segzoo import ResnetUnet

    with pytest.raises(WeightsUnavailableError) as err:
        ResnetUnet(arch="resnet18")
    assert "encoder_params=dict(state_dict='path/to/resnet18.pth')" in str(err.value)
    sd = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    # what the old message suggested: a whole-model state_dict= given an encoder file -> the call that works
    with pytest.raises(CheckpointError, match=r"torchvision ResNet weights .* not a whole ResnetUnet's: pass "
                                              r"encoder_params=dict\(state_dict='.*resnet18\.pth'\)"):
        ResnetUnet(arch="resnet18", pretrained=False, state_dict=str(path))
    with pytest.raises(CheckpointError, match=r"encoder_params=dict\(state_dict=your_dict\)"):
        ResnetUnet(arch="resnet18", pretrained=False, state_dict=sd)
    model = ResnetUnet(arch="resnet18", encoder_params=dict(state_dict=str(path)))  # pretrained=True, offline
    assert torch.equal(model.encoder.stages[0][0].weight, sd["conv1.weight"])
    # a whole model's weights need no ImageNet download (they replace the encoder's anyway)
    torch.save(model.state_dict(), tmp_path / "whole.pth")
    again = ResnetUnet(arch="resnet18", state_dict=str(tmp_path / "whole.pth"))
    assert torch.equal(again.encoder.stages[0][0].weight, sd["conv1.weight"])
    frozen = ResnetUnet(arch="resnet18", state_dict=str(tmp_path / "whole.pth"),
                        encoder_params=dict(requires_grad=None))
    assert not any(p.requires_grad for p in frozen.encoder.parameters())  # None still means "frozen if pretrained"


def test_state_dict_path_without_fc_keys(tmp_path):
    sd = torchvision.models.resnet18().state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    path = tmp_path / "r18.pth"
    torch.save(sd, path)
    enc = ResnetEncoder("resnet18", pretrained=False, state_dict=str(path))
    assert torch.equal(enc.stages[2][0].conv1.weight, sd["layer2.0.conv1.weight"])


def test_state_dict_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ResnetEncoder("resnet18", pretrained=False, state_dict=str(tmp_path / "nope.pth"))


def test_state_dict_foreign_keys_named(tmp_path):
    sd = torchvision.models.resnet34().state_dict()  # deeper net: layer1.2 etc. are unexpected for resnet18
    with pytest.raises(CheckpointError, match="unexpected keys"):
        ResnetEncoder("resnet18", pretrained=False, state_dict=sd)


def test_unknown_arch_lists_valid():
    with pytest.raises(KeyError, match="resnet34"):
        ResnetEncoder("resnet35", pretrained=False)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_adapted_stem_values(in_channels):
    sd = torchvision.models.resnet18().state_dict()
    enc = ResnetEncoder("resnet18", pretrained=False, state_dict=sd, in_channels=in_channels)
    w = enc.stages[0][0].weight
    rgb = sd["conv1.weight"]
    assert w.shape == (64, in_channels, 7, 7)
    if in_channels == 1:
        torch.testing.assert_close(w[:, 0], rgb.sum(1))
    else:
        torch.testing.assert_close(w[:, 3], rgb[:, 0] * 3 / 4)
        torch.testing.assert_close(w[:, :3], rgb * 3 / 4)
    if in_channels != 1:
        return
    # a grey image gives the RGB model's response to the same grey image
    x = torch.rand(1, 1, 32, 32)
    rgb_out = torch.nn.functional.conv2d(x.expand(1, 3, 32, 32), rgb, stride=2, padding=3)
    out = torch.nn.functional.conv2d(x.expand(1, in_channels, 32, 32), w, stride=2, padding=3)
    torch.testing.assert_close(out, rgb_out, rtol=1e-4, atol=1e-4)


def test_adapt_stem_weight_identity_for_rgb():
    w = torch.rand(8, 3, 3, 3)
    assert adapt_stem_weight(w, 3) is w


def test_layers_indices_build_only_needed_stages():
    enc = ResnetEncoder("resnet18", pretrained=False, layers_indices=[2])
    assert len(enc.stages) == 3
    feats = enc(torch.rand(1, 3, 64, 64))
    assert [f.shape for f in feats] == [torch.Size([1, 128, 8, 8])]
    assert enc.out_channels == [128] and enc.out_strides == [8]


@pytest.mark.parametrize("bad", [[5], [2, 1], []])
def test_bad_layers_indices(bad):
    with pytest.raises(ValueError, match="layers_indices"):
        ResnetEncoder("resnet18", pretrained=False, layers_indices=bad)


def test_requires_grad_false_freezes_and_keeps_bn_eval():
    enc = ResnetEncoder("resnet18", pretrained=False, requires_grad=False)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    bns = [m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    before = bns[0].running_mean.clone()
    enc(torch.rand(2, 3, 32, 32))
    assert torch.equal(before, bns[0].running_mean)
    enc.unfreeze()
    assert all(p.requires_grad for p in enc.parameters()) and bns[0].training


@pytest.mark.parametrize("output_stride, replace", [(16, [False, False, True]), (8, [False, True, True])])
def test_output_stride_matches_torchvision_dilation(output_stride, replace):
    """Dilated stages equal torchvision's replace_stride_with_dilation, with the same (unchanged) weights."""
    ref = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=replace).eval()
    enc = ResnetEncoder("resnet50", pretrained=False, state_dict=ref.state_dict(), output_stride=output_stride).eval()
    assert enc.out_strides == [2, 4, 8, min(16, output_stride), output_stride]
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        want = torch.nn.Sequential(*list(ref.children())[:-2])(x)
        got = enc(x)[-1]
    assert got.shape == want.shape == (1, 2048, 48 // output_stride, 64 // output_stride)
    torch.testing.assert_close(got, want)


def test_unexpected_keys_are_quoted_once_and_kept_short():
    sd = torchvision.models.resnet18().state_dict()
    sd["layer9.0.conv1.weight"] = torch.zeros(1)
    sd["x" * 500 + "\nsecond line"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        ResnetEncoder("resnet18", pretrained=False, state_dict=sd)
    msg = str(info.value)
    assert "unexpected keys ['layer9.0.conv1.weight', 'xxx" in msg, msg
    assert "\n" not in msg and "second line" not in msg and len(msg) < 600
