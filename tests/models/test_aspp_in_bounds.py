"""ASPP's dilated depthwise branches without the work of taps that read only padding (issue 21 point 3).

segzoo's DeepLabV3 in channels_last was the one model slower than smp's twin: at stride 8 of a 256 x 256
input its rates 12/24/36 meet a 32 x 32 feature, and oneDNN runs those depthwise convs over the whole
padded input on its grouped-GEMM path. :func:`segzoo.decoders.atrous.conv_in_bounds` gives the same
output (and gradients) from the in-bounds taps only. Here: what the ASPP runs (recorded at the aten level),
that results match the plain convs, and that captured graphs keep the plain conv (they fit every size).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import segzoo
from segzoo.decoders.atrous import TAPS_MAX_SHARE, _tap_share, conv_in_bounds
from segzoo.decoders.deeplab import ASPP

CL = torch.channels_last


class _Convs(TorchDispatchMode):
    """Records (input H, W, weight shape, dilation, groups, transposed) of every aten convolution, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.convolution.default:
            x, w = args[0], args[1]
            self.calls.append((tuple(x.shape[-2:]), tuple(w.shape), tuple(args[5]), args[8]))
        elif func is torch.ops.aten.convolution_backward.default:
            x, w = args[1], args[2]
            self.calls.append((tuple(x.shape[-2:]), tuple(w.shape), tuple(args[6]), args[9]))
        return func(*args, **kwargs)


def _reference(aspp: ASPP, x: torch.Tensor) -> torch.Tensor:
    """The ASPP as it ran before: every branch module called on ``x``."""
    pooled = aspp.project_pool(aspp.pool(x.mean(dim=(2, 3), keepdim=True)))
    y = aspp.project(torch.cat([branch(x) for branch in aspp.branches], dim=1)) + pooled
    return aspp.dropout(aspp.act(aspp.norm(y)))


def _aspp() -> ASPP:
    return ASPP(16, 8, rates=(12, 24, 36), dropout=0.0).double()


@pytest.mark.parametrize("channels_last", [False, True])
def test_no_aspp_convolution_reads_only_padding(channels_last):
    """The rate-36 tap reach exceeds a 32 x 32 feature: on integ's code its depthwise conv ran over the padding."""
    aspp = _aspp().train()
    x = torch.randn(2, 16, 32, 32, dtype=torch.double, requires_grad=True)
    if channels_last:
        aspp, x = aspp.to(memory_format=CL), x.contiguous(memory_format=CL)
    with _Convs() as rec:
        aspp(x).square().mean().backward()
    assert rec.calls
    for (h, w), shape, dilation, _groups in rec.calls:
        assert (shape[2] // 2) * dilation[0] < h and (shape[3] // 2) * dilation[1] < w, (shape, dilation, h, w)


def test_channels_last_depthwise_runs_its_in_bounds_taps_only():
    """In channels_last on CPU, a depthwise conv whose in-bounds tap reads are at most TAPS_MAX_SHARE of all
    (rate 24 on 32 x 32: a quarter) runs no convolution, forward or backward; rate 12 (0.56) keeps oneDNN's."""
    assert _tap_share(3, 3, 24, 24, 32, 32) <= TAPS_MAX_SHARE < _tap_share(3, 3, 12, 12, 32, 32)
    aspp = _aspp().train().to(memory_format=CL)
    x = torch.randn(2, 16, 32, 32, dtype=torch.double).contiguous(memory_format=CL).requires_grad_()
    with _Convs() as rec:
        aspp(x).square().mean().backward()
    depthwise = {dilation for _, shape, dilation, groups in rec.calls if groups == 16 and shape[1] == 1}
    assert depthwise == {(12, 12)}


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("hw", [(32, 32), (8, 8), (30, 50), (1, 7), (64, 40)])
def test_aspp_output_and_gradients_match_the_plain_branches(channels_last, hw):
    aspp = _aspp().train()
    x = torch.randn(2, 16, *hw, dtype=torch.double, requires_grad=True)
    xx = x.contiguous(memory_format=CL) if channels_last else x
    if channels_last:
        aspp = aspp.to(memory_format=CL)
    params = list(aspp.parameters())
    state = {k: v.clone() for k, v in aspp.state_dict().items()}
    a = aspp(xx)
    ga = torch.autograd.grad(a.square().sum(), [x, *params])
    aspp.load_state_dict(state)  # the same BatchNorm statistics for the reference
    b = _reference(aspp, xx)
    gb = torch.autograd.grad(b.square().sum(), [x, *params])
    torch.testing.assert_close(a, b)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)
    assert a.is_contiguous(memory_format=CL if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("groups, bias, kernel", [(6, False, 3), (6, True, 3), (1, True, 3), (6, False, 5), (2, False, 3)])
@pytest.mark.parametrize("dilation", [1, 4, 9])
def test_conv_in_bounds_is_the_conv(groups, bias, kernel, dilation):
    conv = nn.Conv2d(6, 6, kernel, padding=dilation * (kernel // 2), dilation=dilation, groups=groups,
                     bias=bias).double()
    for hw in [(1, 1), (3, 10), (9, 9), (12, 5), (20, 20)]:
        for fmt in (torch.contiguous_format, CL):
            x = torch.randn(2, 6, *hw, dtype=torch.double).contiguous(memory_format=fmt).requires_grad_()
            a, b = conv(x), conv_in_bounds(conv, x)
            torch.testing.assert_close(b, a)
            grads = [torch.autograd.grad(y.sum() + y.square().sum(), [x, *conv.parameters()]) for y in (a, b)]
            for u, v in zip(*grads):
                torch.testing.assert_close(v, u)


def test_other_convs_are_called_unchanged():
    """Strided or not-"same" convs (where dropping taps would change the result) run as they are."""
    for conv, hw in ((nn.Conv2d(4, 4, 3, stride=2, padding=9, dilation=9, groups=4, bias=False), 8),
                     (nn.Conv2d(4, 4, 3, padding=0, dilation=9, groups=4, bias=False), 20)):
        x = torch.randn(1, 4, hw, hw).contiguous(memory_format=CL)
        with _Convs() as rec:
            y = conv_in_bounds(conv, x)
        torch.testing.assert_close(y, conv(x))
        assert len(rec.calls) == 1 and rec.calls[0][1] == tuple(conv.weight.shape)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_a_scripted_deeplabv3_fits_every_size():
    """``torch.jit.script`` traces on a small input (every rate beyond the 2 x 2 feature): the cropped kernels
    must not be baked into the graph."""
    model = segzoo.ResnetDeepLabV3(num_classes=2, arch="resnet18", pretrained=False).eval()
    scripted = torch.jit.script(model)
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-4)


def test_deeplabv3_checkpoints_are_unchanged():
    """The structure is the same (only the forward changed): integ's state-dict keys and shapes still load."""
    model = segzoo.ResnetDeepLabV3(num_classes=2, arch="resnet18", pretrained=False)
    aspp = model.decoder.aspp
    assert [tuple(aspp.state_dict()[f"branches.{i}.0.weight"].shape) for i in (1, 2, 3)] == [(512, 1, 3, 3)] * 3
    twin = segzoo.ResnetDeepLabV3(num_classes=2, arch="resnet18", pretrained=False)
    twin.load_state_dict(model.state_dict())
