"""Property tests: random sizes and options for every architecture give the input's size or a clear error."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segzoo import FPNUnet, Linknet, PSPnet, ResnetFPNUnet, ResnetLinknet, ResnetPSPnet, ResnetUnet, Unet

GENERIC = [Unet, Linknet, FPNUnet, PSPnet]
RESNET = [ResnetUnet, ResnetLinknet, ResnetFPNUnet, ResnetPSPnet]
MODES = ["nearest", "bilinear", "interpolate", "transpose", "conv", "pixelshuffle"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cls=st.sampled_from(GENERIC + RESNET),
    h=st.integers(1, 80),
    w=st.integers(1, 80),
    batch=st.integers(1, 3),
    in_channels=st.integers(1, 5),
    num_classes=st.integers(1, 4),
    complexity=st.integers(0, 2),
    upsample=st.sampled_from(MODES),
    strict=st.booleans(),
)
def test_random_configurations(cls, h, w, batch, in_channels, num_classes, complexity, upsample, strict):
    head = {"upsample": upsample}
    decoder = {} if cls in (PSPnet, ResnetPSPnet) else {"upsample": upsample}
    if cls in (Unet, Linknet, ResnetUnet, ResnetLinknet):
        decoder["complexity"] = complexity
    size_mode = "strict" if strict else "pad"
    if cls in RESNET:
        model = cls(num_classes=num_classes, arch="resnet18", pretrained=False, decoder_params=decoder,
                    head_params=head, encoder_params={"in_channels": in_channels}, size_mode=size_mode)
    else:
        model = cls(num_classes=num_classes, in_channels=in_channels, num_channels=4, num_blocks=3,
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
