"""DeepLabV3 and Segformer (issue 21 point 2): both families, registry names, smp's layout, cost against smp.

The table-driven tests (tests/models/test_models.py, tests/export/) cover them as every row; here what is
particular to the two: the dilated encoder and rates of DeepLabV3, Segformer's levels/concat fusions being one
function, the FLOPs beside smp's twins (the speed claim, reasoned with operation counts).
"""

from __future__ import annotations

import pytest
import torch

import segzoo
from segzoo.architectures import RESNET_ENCODERS
from segzoo.decoders import SegformerDecoder
from segzoo.encoders import MixTransformerEncoder, TimmEncoder

ROWS = {"deeplabv3": ("DeepLabV3", "ResnetDeepLabV3"), "segformer": ("Segformer", "ResnetSegformer")}


@pytest.mark.parametrize("name", ROWS)
def test_registry_names_and_classes(name):
    generic, resnet = ROWS[name]
    names = segzoo.list_models()
    assert name in names and all(f"{enc}_{name}" in names for enc in RESNET_ENCODERS)
    assert isinstance(segzoo.create_model(name, num_channels=8, num_blocks=3), getattr(segzoo, generic))
    model = segzoo.create_model(f"resnet34_{name}", pretrained=False)
    assert isinstance(model, getattr(segzoo, resnet)) and model.encoder.arch == "resnet34"
    assert segzoo.get_model_spec(model)["name"] == f"resnet34_{name}"


@pytest.mark.parametrize("name", ROWS)
@pytest.mark.parametrize("hw", [(64, 64), (70, 45)])
def test_both_families_give_logits_of_the_input_size(name, hw):
    generic, resnet = ROWS[name]
    for model in (getattr(segzoo, generic)(num_classes=3, num_channels=8, num_blocks=3),
                  getattr(segzoo, resnet)(num_classes=3, arch="resnet18", pretrained=False),
                  getattr(segzoo, generic)(num_classes=3, encoder=TimmEncoder("test_resnet"))):
        model.train()
        y = model(torch.rand(2, 3, *hw))
        assert y.shape == (2, 3, *hw)
        y.mean().backward()


def test_resnet_deeplabv3_is_dilated_to_stride_8_with_smps_rates():
    model = segzoo.ResnetDeepLabV3(num_classes=2, arch="resnet18", pretrained=False)
    assert model.encoder.output_stride == 8 and model.encoder.out_strides == [8] and model.size_multiple == 8
    assert model.decoder.aspp.rates == [12, 24, 36]  # the paper's (6, 12, 18) at stride 16, doubled at 8
    plain = segzoo.ResnetDeepLabV3(arch="resnet18", pretrained=False, decoder_params={"separable": False})
    assert plain.decoder.aspp.branches[1][0].groups == 1 and model.decoder.aspp.branches[1][0].groups > 1


def test_resnet_segformer_fuses_strides_4_to_32():
    model = segzoo.ResnetSegformer(num_classes=2, arch="resnet18", pretrained=False)
    assert model.decoder.in_strides == [4, 8, 16, 32] and model.decoder.out_strides == [4]
    assert model.bridge is None and model.size_multiple == 32
    mit = segzoo.Segformer(encoder=MixTransformerEncoder("mit_b0"))
    assert mit.bridge is None and mit.decoder.in_strides == [4, 8, 16, 32] and mit.size_multiple == 32


def test_segformer_levels_fusion_is_the_concat_fusion_folded():
    """The default fusion computes the paper's function: fold a concat decoder's weights into it, same output."""
    torch.manual_seed(0)
    channels, strides = [16, 24, 40, 64], [4, 8, 16, 32]
    concat = SegformerDecoder(channels, strides, channels=32, fuse="concat").eval()
    levels = SegformerDecoder(channels, strides, channels=32, fuse="levels").eval()
    bn = concat.fuse[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 1.5)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    fuse = concat.fuse[0].weight[:, :, 0, 0]  # (32, 4 * 32)
    shift = torch.zeros(32)
    with torch.no_grad():
        for k, (mlp, part) in enumerate(zip(concat.linears, levels.linears)):
            block = fuse[:, 32 * k:32 * (k + 1)]
            part.weight.copy_((block @ mlp.weight[:, :, 0, 0])[:, :, None, None])
            shift += block @ mlp.bias
        levels.norm.load_state_dict(bn.state_dict())
        levels.norm.running_mean.sub_(shift)
        feats = [torch.randn(2, c, 64 // s, 96 // s) for c, s in zip(channels, strides)]
        a, b = concat(feats)[0], levels(feats)[0]
    assert a.shape == b.shape == (2, 32, 16, 24)
    assert torch.allclose(a, b, atol=1e-4)


def _gflops(model, x):
    from segzoo.benchmark.measure import count_gflops

    return count_gflops(model, x)


@pytest.mark.parametrize("name", ROWS)
def test_fewer_flops_than_smp_with_the_same_encoder(name):
    """The speed claim, as operation counts: the same ResNet, no more FLOPs than smp's same-named model."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    x = torch.rand(1, 3, 64, 64)
    ours = segzoo.create_model(f"resnet18_{name}", num_classes=1, pretrained=False)
    twin = getattr(smp, segzoo.architectures.smp_twins()[name])("resnet18", encoder_weights=None, classes=1)
    assert _gflops(ours, x) < _gflops(twin, x)
    assert sum(p.numel() for p in ours.parameters()) <= sum(p.numel() for p in twin.parameters())
