"""Property tests: random sizes and options for every architecture give the input's size or a clear error."""

import inspect

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segzoo import Linknet, create_model
from segzoo.decoders import DECODERS
from segzoo.models import ARCHITECTURES

MODES = ["nearest", "bilinear", "interpolate", "transpose", "conv", "pixelshuffle"]


def _decoder_options(arch: str, upsample: str, complexity: int) -> dict:
    """The random options the architecture's decoder takes (read from its signature, not from its name)."""
    accepted = inspect.signature(DECODERS[ARCHITECTURES[arch].decoder]).parameters
    return {k: v for k, v in {"upsample": upsample, "complexity": complexity}.items() if k in accepted}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # the UnetEncoder / ResNet rows (DPT's ViT: tests/models/test_dpt.py)
    arch=st.sampled_from([a for a in ARCHITECTURES if ARCHITECTURES[a].encoder_kind == "pyramid"]),
    resnet=st.booleans(),
    h=st.integers(1, 80),
    w=st.integers(1, 80),
    batch=st.integers(1, 3),
    in_channels=st.integers(1, 5),
    num_classes=st.integers(1, 4),
    complexity=st.integers(0, 2),
    upsample=st.sampled_from(MODES),
    strict=st.booleans(),
)
def test_random_configurations(arch, resnet, h, w, batch, in_channels, num_classes, complexity, upsample, strict):
    head = {"upsample": upsample}
    decoder = _decoder_options(arch, upsample, complexity)
    size_mode = "strict" if strict else "pad"
    if resnet:
        model = create_model(f"resnet18_{arch}", num_classes=num_classes, pretrained=False, decoder_params=decoder,
                             head_params=head, encoder_params={"in_channels": in_channels}, size_mode=size_mode)
    else:
        model = create_model(arch, num_classes=num_classes, in_channels=in_channels, num_channels=4, num_blocks=3,
                             encoder_params={"complexity": complexity}, decoder_params=decoder, head_params=head,
                             size_mode=size_mode)
    model.eval()
    x = torch.rand(batch, in_channels, h, w)
    m = model.size_multiple
    with torch.no_grad():
        if strict and (h % m or w % m):
            with pytest.raises(ValueError, match=f"H={h}, W={w}"):
                model(x)
            return
        y = model(x)
    assert y.shape == (batch, num_classes, h, w)
    assert torch.isfinite(y).all()


@settings(max_examples=15, deadline=None)
@given(channels=st.integers(1, 6), rank=st.integers(2, 5), dtype=st.sampled_from([torch.uint8, torch.int64,
                                                                                     torch.bool, torch.float32]))
def test_random_bad_inputs_raise_clear_errors(channels, rank, dtype):
    model = Linknet(num_channels=4, num_blocks=2).eval()
    shape = (1, channels, 8, 8, 8)[:rank] if rank != 4 else (1, channels, 8, 8)
    x = torch.zeros(shape, dtype=dtype)
    ok = rank == 4 and channels == 3 and dtype == torch.float32
    with torch.no_grad():
        if ok:
            assert model(x).shape == (1, 1, 8, 8)
        else:
            with pytest.raises((ValueError, TypeError)):
                model(x)
