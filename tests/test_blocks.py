import pytest
import torch
import torch.nn as nn

from segzoo.blocks import ConvBnAct, get_block, make_upsample


@pytest.mark.parametrize("complexity", [0, 1, 3])
def test_get_block_depth_and_distinct_weights(complexity):
    block = get_block(4, 8, complexity=complexity)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == complexity + 1
    # every conv is its own module with its own storage (Catalyst shared them)
    assert len({id(c) for c in convs}) == len(convs)
    assert len({c.weight.data_ptr() for c in convs}) == len(convs)
    assert block(torch.rand(2, 4, 16, 16)).shape == (2, 8, 16, 16)


def test_get_block_stride_and_options():
    block = get_block(3, 6, complexity=1, stride=2, activation="gelu", norm="gn")
    assert block(torch.rand(1, 3, 17, 17)).shape == (1, 6, 9, 9)
    assert any(isinstance(m, nn.GroupNorm) for m in block.modules())
    plain = ConvBnAct(3, 6, norm=None, activation=None)
    assert plain[0].bias is not None  # no norm -> the conv keeps its bias


@pytest.mark.parametrize("bad", [dict(complexity=-1), dict(activation="swishy"), dict(norm="batch")])
def test_get_block_bad_options(bad):
    with pytest.raises((ValueError, KeyError)) as err:
        get_block(3, 4, **bad)
    assert str(list(bad.values())[0]) in str(err.value)


def test_get_block_bad_channels():
    with pytest.raises(ValueError, match="out_channels"):
        get_block(3, 0)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "interpolate", "transpose", "conv", "pixelshuffle"])
@pytest.mark.parametrize("scale", [2, 4])
def test_upsample_modes(mode, scale):
    up = make_upsample(mode, 8, scale)
    y = up(torch.rand(2, 8, 5, 7))
    assert y.shape == (2, 8, 5 * scale, 7 * scale)


def test_learned_upsample_changes_channels():
    assert make_upsample("transpose", 8, 2, out_channels=4)(torch.rand(1, 8, 3, 3)).shape == (1, 4, 6, 6)
    assert make_upsample("pixelshuffle", 8, 2, out_channels=4)(torch.rand(1, 8, 3, 3)).shape == (1, 4, 6, 6)
    with pytest.raises(ValueError, match="keeps channels"):
        make_upsample("bilinear", 8, 2, out_channels=4)


def test_unknown_upsample_mode_lists_choices():
    with pytest.raises(KeyError, match="bilinear"):
        make_upsample("bicubicish", 8, 2)


def test_interpolate_hands_a_channels_last_gradient_to_its_backward():
    """Concat backward gives a channel slice of a channels_last gradient; it is made channels_last first."""
    up = make_upsample("bilinear", 6, 2)
    x = torch.rand(2, 6, 5, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    skip = torch.rand(2, 3, 10, 14, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y = up(x)
    seen = []
    y.register_hook(lambda g: seen.append(g.is_contiguous(memory_format=torch.channels_last)))
    weight = torch.rand(2, 9, 10, 14, dtype=torch.float64)
    (torch.cat([y, skip], dim=1) * weight).sum().backward()
    assert seen == [True]
    ref = x.detach().contiguous().requires_grad_()
    (torch.nn.functional.interpolate(ref, scale_factor=2.0, mode="bilinear") * weight[:, :6]).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)

