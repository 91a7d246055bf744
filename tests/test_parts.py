"""Every part declares the truth: declared channels/strides equal the real tensors."""

import pytest
import torch

from segzoo.bridges import UnetBridge
from segzoo.decoders import FPNDecoder, PSPDecoder, UNetDecoder, adaptive_avg_pool, pyramid_avg_pool
from segzoo.encoders import ResnetEncoder, TimmEncoder, UnetEncoder
from segzoo.heads import FPNHead, UnetHead

SIZE = 64


def _check(part, features, size=SIZE):
    assert [f.shape[1] for f in features] == list(part.out_channels)
    assert [size // f.shape[-1] for f in features] == list(part.out_strides)
    assert [size // f.shape[-2] for f in features] == list(part.out_strides)


ENCODERS = {
    "unet": lambda: UnetEncoder(3, 8, 4),
    "resnet18": lambda: ResnetEncoder("resnet18", pretrained=False),
    "resnet50_l123": lambda: ResnetEncoder("resnet50", pretrained=False, layers_indices=[1, 2, 3]),
    "timm": lambda: TimmEncoder("test_resnet"),
}


@pytest.fixture(params=list(ENCODERS), scope="module")
def encoded(request):
    torch.manual_seed(0)
    enc = ENCODERS[request.param]().eval()
    with torch.no_grad():
        feats = enc(torch.rand(2, 3, SIZE, SIZE))
    return enc, feats


def test_encoder_declares_truth(encoded):
    enc, feats = encoded
    _check(enc, feats)


def test_bridge_declares_truth(encoded):
    enc, feats = encoded
    bridge = UnetBridge(enc.out_channels, enc.out_strides).eval()
    _check(bridge, bridge(feats))


@pytest.mark.parametrize("make", [
    lambda c, s: UNetDecoder(c, s),
    lambda c, s: UNetDecoder(c, s, block="sum"),
    lambda c, s: UNetDecoder(c, s, upsample="transpose", complexity=0),
    lambda c, s: UNetDecoder(c, s, upsample="pixelshuffle", min_stride=4),
    lambda c, s: FPNDecoder(c, s),
    lambda c, s: FPNDecoder(c, s, num_levels=2, upsample="bilinear"),
    lambda c, s: PSPDecoder(c, s),
], ids=["concat", "sum", "transpose", "pixelshuffle", "fpn", "fpn2", "psp"])
def test_decoders_and_heads_declare_truth(encoded, make):
    enc, feats = encoded
    dec = make(enc.out_channels, enc.out_strides).eval()
    out = dec(feats)
    _check(dec, out)
    for head in (UnetHead(dec.out_channels, 3, dec.out_strides), FPNHead(dec.out_channels, 3, dec.out_strides)):
        assert head.eval()(out).shape == (2, 3, SIZE, SIZE)


def test_unet_head_upsample_blocks_are_distinct_and_convolutional():
    head = UnetHead([32], 2, [4], num_upsample_blocks=2, upsample="conv")
    assert head([torch.rand(1, 32, 8, 8)]).shape == (1, 2, 32, 32)
    convs = [m for m in head.blocks.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == 2 and convs[0] is not convs[1]
    with pytest.raises(ValueError, match="num_upsample_blocks"):
        UnetHead([32], 2, [4], num_upsample_blocks=3)


def test_decoder_rejects_too_few_features():
    with pytest.raises(ValueError, match="at least 2"):
        UNetDecoder([64], [4])
    with pytest.raises(ValueError, match="differ in length"):
        FPNDecoder([64, 128], [4])
    with pytest.raises(ValueError, match="shallow to deep"):
        UNetDecoder([64, 128], [8, 4])


@pytest.mark.parametrize("hw", [(8, 8), (7, 13), (1, 5), (32, 20)])
@pytest.mark.parametrize("size", [1, 2, 3, 6])
def test_adaptive_avg_pool_matches_torch(hw, size):
    x = torch.rand(2, 4, *hw)
    torch.testing.assert_close(adaptive_avg_pool(x, size), torch.nn.functional.adaptive_avg_pool2d(x, size))


@pytest.mark.parametrize("hw", [(8, 8), (7, 13), (32, 20)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_pyramid_avg_pool_matches_torch_values_and_gradients(hw, layout):
    sizes = [1, 2, 3, 6]
    x = torch.rand(2, 5, *hw, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    ref = x.detach().clone().requires_grad_()
    got = pyramid_avg_pool(x, sizes)
    want = [torch.nn.functional.adaptive_avg_pool2d(ref, s) for s in sizes]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    weights = [torch.rand_like(w) for w in want]
    sum((g * k).sum() for g, k in zip(got, weights)).backward()
    sum((w * k).sum() for w, k in zip(want, weights)).backward()
    torch.testing.assert_close(x.grad, ref.grad)
