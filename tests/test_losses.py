import itertools

import pytest
import torch

from segzoo.losses import (
    LOSSES,
    BCEDiceLoss,
    BCEIoULoss,
    DiceLoss,
    FocalLoss,
    IoULoss,
    LovaszLoss,
    LovaszLossMultiClass,
    TverskyLoss,
    create_loss,
    get_loss,
    list_losses,
    register_loss,
)

BIG = 30.0


def _binary(b=2, h=16, w=16):
    t = (torch.rand(b, 1, h, w) > 0.5).float()
    return (t * 2 - 1) * BIG, t


@pytest.mark.parametrize("loss", [DiceLoss(), IoULoss(), BCEDiceLoss(), BCEIoULoss(), LovaszLoss(), FocalLoss()],
                         ids=lambda x: type(x).__name__)
def test_perfect_is_zero_and_gradients_flow(loss):
    logits, t = _binary()
    assert loss(logits, t).item() == pytest.approx(0.0, abs=1e-3)
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    loss(x, t).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", [DiceLoss(smooth=0.0), IoULoss(smooth=0.0)], ids=["dice", "iou"])
def test_total_miss_is_one(loss):
    logits, t = _binary()
    assert loss(-logits, t).item() == pytest.approx(1.0, abs=1e-3)


def test_multiclass_dice_and_focal():
    target = torch.randint(0, 4, (2, 8, 8))
    logits = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * BIG
    assert DiceLoss(mode="multiclass")(logits, target).item() == pytest.approx(0.0, abs=1e-3)
    assert FocalLoss(mode="multiclass")(logits, target).item() == pytest.approx(0.0, abs=1e-4)
    assert LovaszLoss(mode="multiclass")(logits, target).item() == pytest.approx(0.0, abs=1e-3)
    assert DiceLoss(mode="multiclass")(-logits, target).item() > 0.5


@pytest.mark.parametrize("make", [lambda: DiceLoss(mode="multiclass", ignore_index=255),
                                  lambda: FocalLoss(mode="multiclass", ignore_index=255),
                                  lambda: LovaszLoss(mode="multiclass", ignore_index=255)])
def test_ignore_index_pixels_do_not_count(make):
    loss = make()
    target = torch.randint(0, 3, (2, 8, 8))
    logits = torch.randn(2, 3, 8, 8)
    ignored = target.clone()
    ignored[:, :3] = 255
    other_logits = logits.clone()
    other_logits[:, :, :3] = torch.randn(2, 3, 3, 8) * 10  # changes only ignored pixels
    assert loss(logits, ignored).item() == pytest.approx(loss(other_logits, ignored).item(), abs=1e-5)


def test_binary_ignore_index():
    logits, t = _binary()
    t_ign = t.clone()
    t_ign[:, :, :4] = 255
    flipped = logits.clone()
    flipped[:, :, :4] *= -1
    for loss in (BCEDiceLoss(ignore_index=255), DiceLoss(ignore_index=255)):
        assert loss(flipped, t_ign).item() == pytest.approx(loss(logits, t_ign).item(), abs=1e-5)


def test_lovasz_binary_equals_brute_force_on_tiny_case():
    # the Lovasz extension on hard (+-inf-like) predictions equals 1 - IoU of the hard masks
    for bits in itertools.product([0, 1], repeat=4):
        t = torch.tensor(bits, dtype=torch.float32).reshape(1, 1, 2, 2)
        pred = torch.tensor([1, 0, 1, 0], dtype=torch.float32).reshape(1, 1, 2, 2)
        logits = (pred * 2 - 1)  # margins exactly 1: hinge errors 0 or 2
        inter = (pred * t).sum()
        union = ((pred + t) > 0).float().sum()
        expected = 2 * (1 - inter / union) if union > 0 else torch.tensor(0.0)
        assert LovaszLoss()(logits, t).item() == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("name", ["DiceLoss", "BCEDiceLoss", "FocalLoss", "LovaszLoss", "IoULoss"])
def test_half_precision_large_inputs_finite(name):
    loss = get_loss(name)
    t = (torch.rand(2, 1, 512, 512) > 0.5).float()
    x = torch.randn(2, 1, 512, 512)
    assert torch.isfinite(loss(x.half(), t.half()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(loss(x.bfloat16(), t))


def test_registry_and_errors():
    assert isinstance(get_loss("BCEDiceLoss", bce_weight=0.2), BCEDiceLoss)
    assert "CrossEntropyLoss" in LOSSES
    with pytest.raises(KeyError, match="DiceLoss"):
        get_loss("DiceLos")
    assert isinstance(create_loss("DiceLoss", mode="binary"), DiceLoss) and "LovaszLoss" in list_losses("Lovasz*")
    assert dict(LOSSES)["BCEDiceLoss"] is LOSSES["BCEDiceLoss"] is BCEDiceLoss
    with pytest.raises(ValueError, match="already registered"):
        register_loss("DiceLoss", DiceLoss)
    with pytest.raises(TypeError):
        LOSSES["MyLoss"] = DiceLoss  # read-only: register_loss is the one way in
    with pytest.raises(ValueError, match="mode"):
        DiceLoss(mode="binaryy")
    with pytest.raises(ValueError, match="do not fit"):
        DiceLoss()(torch.randn(2, 1, 8, 8), torch.rand(2, 2, 8, 8))


def test_lovasz_softmax_on_hard_predictions_is_one_minus_iou():
    from segzoo.metrics import iou

    torch.manual_seed(3)
    target = torch.randint(0, 3, (2, 6, 6))
    pred = torch.randint(0, 3, (2, 6, 6))
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float() * BIG
    per_class = iou(logits, target, activation="Softmax2d", per_class=True)
    present = torch.stack([(target == c).any() for c in range(3)])
    expected = (1 - per_class[present]).mean().item()
    assert LovaszLoss(mode="multiclass")(logits, target).item() == pytest.approx(expected, abs=1e-4)
    per_image = LovaszLoss(mode="multiclass", per_image=True)
    manual = (per_image(logits[:1], target[:1]) + per_image(logits[1:], target[1:])) / 2
    assert per_image(logits, target).item() == pytest.approx(manual.item(), abs=1e-6)


def test_class_weights_select_classes():
    target = torch.randint(0, 2, (2, 8, 8))
    logits = torch.randn(2, 2, 8, 8)
    full = DiceLoss(mode="multiclass")
    only0 = DiceLoss(mode="multiclass", class_weights=[1.0, 0.0])
    only1 = DiceLoss(mode="multiclass", class_weights=[0.0, 1.0])
    a, b = only0(logits, target).item(), only1(logits, target).item()
    assert (a + b) / 2 == pytest.approx(full(logits, target).item(), abs=1e-6)
    assert a != pytest.approx(b)
    with pytest.raises(ValueError, match="3 class_weights"):
        DiceLoss(mode="multiclass", class_weights=[1.0, 1.0, 1.0])(logits, target)
    with pytest.raises(ValueError, match="class_weights"):
        DiceLoss(class_weights=[-1.0])


def test_multiclass_input_errors():
    target = torch.randint(0, 3, (2, 8, 8))
    onehot = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2)
    logits = torch.randn(2, 3, 8, 8)
    for loss in (DiceLoss(mode="multiclass"), FocalLoss(mode="multiclass"), LovaszLoss(mode="multiclass")):
        with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
            loss(logits, onehot)  # one-hot targets where class indices are expected
        with pytest.raises(ValueError, match="C >= 2"):
            loss(torch.randn(2, 1, 8, 8), target)
        with pytest.raises(ValueError, match=r"\[0, 2\]"):
            loss(logits, torch.full((2, 8, 8), 5))
    with pytest.raises(ValueError, match="one output channel"):
        LovaszLoss()(logits, target)


# ---- TverskyLoss ---------------------------------------------------------------------------------

def test_tversky_hand_computation_binary():
    """Hard 0/1 'probabilities' make I, FP, FN countable by hand."""
    from segzoo.losses import TverskyLoss

    t = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.float32).reshape(1, 1, 2, 4)
    p = torch.tensor([[1, 0, 1, 1], [1, 0, 0, 0]], dtype=torch.float32).reshape(1, 1, 2, 4)
    logits = (p * 2 - 1) * BIG  # sigmoid -> p
    # I = 2 (two hits), FP = 2 (predicted, not target), FN = 1 (target missed)
    for alpha, beta in ((0.5, 0.5), (0.3, 0.7), (0.9, 0.1)):
        expected = 1 - 2 / (2 + alpha * 2 + beta * 1)
        got = TverskyLoss(alpha=alpha, beta=beta, smooth=0.0)(logits, t).item()
        assert got == pytest.approx(expected, abs=1e-5)
    smooth = TverskyLoss(alpha=0.3, beta=0.7, smooth=1.0)(logits, t).item()
    assert smooth == pytest.approx(1 - 3 / (3 + 0.3 * 2 + 0.7 * 1), abs=1e-5)
    focal = TverskyLoss(alpha=0.3, beta=0.7, gamma=0.75, smooth=0.0)(logits, t).item()
    assert focal == pytest.approx((1 - 2 / (2 + 0.6 + 0.7)) ** 0.75, abs=1e-5)


def test_tversky_half_half_is_dice():
    from segzoo.losses import TverskyLoss

    torch.manual_seed(1)
    x, t = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert TverskyLoss(smooth=1.0)(x, t).item() == pytest.approx(DiceLoss(smooth=2.0)(x, t).item(), abs=1e-6)
    xm, tm = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    assert TverskyLoss(mode="multiclass", smooth=0.0)(xm, tm).item() == pytest.approx(
        DiceLoss(mode="multiclass", smooth=0.0)(xm, tm).item(), abs=1e-6)


@pytest.mark.parametrize("mode", ["binary", "multilabel", "multiclass"])
@pytest.mark.parametrize("alpha,beta", [(0.3, 0.7), (0.7, 0.3)])
def test_tversky_equals_smp(mode, alpha, beta):
    """Same value as smp 0.6's TverskyLoss with smooth=0 when every class has target pixels
    (smp zeroes the loss of classes without any; segzoo counts their false positives)."""
    smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")
    from segzoo.losses import TverskyLoss

    torch.manual_seed(2)
    c = 1 if mode == "binary" else 3
    x = torch.randn(2, c, 16, 16, requires_grad=True)
    if mode == "multiclass":
        t = torch.randint(0, c, (2, 16, 16))
    else:
        t = (torch.rand(2, c, 16, 16) > 0.6).float()
    ours = TverskyLoss(alpha=alpha, beta=beta, mode=mode, smooth=0.0)(x, t)
    theirs = smp_losses.TverskyLoss(mode=mode, alpha=alpha, beta=beta, smooth=0.0)(x, t)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    g_ours, = torch.autograd.grad(ours, x)
    g_theirs, = torch.autograd.grad(theirs, x)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-6, rtol=1e-4)


def test_tversky_ignore_index_registry_and_errors():
    from segzoo.losses import TverskyLoss

    assert isinstance(get_loss("TverskyLoss", alpha=0.3, beta=0.7), TverskyLoss)
    loss = TverskyLoss(alpha=0.2, beta=0.8, mode="multiclass", ignore_index=255)
    target, logits = torch.randint(0, 3, (2, 8, 8)), torch.randn(2, 3, 8, 8)
    ignored = target.clone()
    ignored[:, :3] = 255
    other = logits.clone()
    other[:, :, :3] = torch.randn(2, 3, 3, 8) * 10
    assert loss(logits, ignored).item() == pytest.approx(loss(other, ignored).item(), abs=1e-6)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    TverskyLoss(gamma=0.75)((torch.ones(2, 1, 8, 8) * BIG).requires_grad_(), torch.ones(2, 1, 8, 8)).backward()
    TverskyLoss(alpha=0.3, beta=0.7, gamma=0.75)(x, (torch.rand(2, 1, 8, 8) > 0.5).float()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for kwargs, match in (({"alpha": -0.1}, "alpha"), ({"alpha": 0, "beta": 0}, "alpha \\+ beta"),
                          ({"gamma": 0}, "gamma"), ({"mode": "binaryy"}, "mode")):
        with pytest.raises(ValueError, match=match):
            TverskyLoss(**kwargs)


# ---- Catalyst 19.x names and arguments ------------------------------------------------------------


def test_catalyst_lovasz_variants():
    from segzoo.losses import LovaszLossBinary, LovaszLossMultiClass, LovaszLossMultiLabel

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    binary_t = (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert LovaszLossBinary()(logits[:, :1], binary_t).item() == pytest.approx(LovaszLoss()(logits[:, :1], binary_t).item())
    # multilabel: the binary loss of each channel, averaged
    ml_t = (torch.rand(2, 3, 8, 8) > 0.5).float()
    per_channel = [LovaszLoss()(logits[:, c:c + 1], ml_t[:, c:c + 1]).item() for c in range(3)]
    assert LovaszLossMultiLabel()(logits, ml_t).item() == pytest.approx(sum(per_channel) / 3, rel=1e-6)
    assert LovaszLossMultiLabel()(ml_t * 40 - 20, ml_t).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="logits' shape"):
        LovaszLossMultiLabel()(logits, ml_t[:, :2])
    # multiclass: one-hot float targets (as 19.x scripts give them) equal class indices
    idx = torch.randint(0, 3, (2, 8, 8))
    onehot = torch.nn.functional.one_hot(idx, 3).permute(0, 3, 1, 2).float()
    expected = LovaszLoss(mode="multiclass")(logits, idx).item()
    assert LovaszLossMultiClass()(logits, onehot).item() == pytest.approx(expected, rel=1e-6)
    assert LovaszLossMultiClass(per_image=True)(logits, onehot).item() == pytest.approx(
        LovaszLoss(mode="multiclass", per_image=True)(logits, idx).item(), rel=1e-6)
    with pytest.raises(ValueError, match="one-hot"):
        LovaszLossMultiClass()(logits, ml_t)
    # an all-zero pixel is an ignored pixel when ignore is set, an error otherwise
    holes = onehot.clone()
    holes[:, :, :2] = 0
    ignored = idx.clone()
    ignored[:, :2] = 255
    assert LovaszLossMultiClass(ignore=255)(logits, holes).item() == pytest.approx(
        LovaszLoss(mode="multiclass", ignore_index=255)(logits, ignored).item(), rel=1e-6)
    with pytest.raises(ValueError, match="no class"):
        LovaszLossMultiClass()(logits, holes)


def test_catalyst_loss_arguments():
    import torch.nn.functional as F

    from segzoo.losses import FocalLossBinary

    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    t = (torch.rand(2, 1, 8, 8) > 0.5).float()
    # eps keeps its role (a zero-division guard); activation that matches mode is accepted
    assert DiceLoss(eps=1e-7)(logits, t).item() == pytest.approx(DiceLoss()(logits, t).item())
    assert IoULoss(eps=1e-6, activation="Sigmoid")(logits, t).item() == pytest.approx(IoULoss()(logits, t).item())
    DiceLoss(mode="multiclass", activation="Softmax2d")
    combo = BCEDiceLoss(eps=1e-7, bce_weight=0.3, dice_weight=0.7)(logits, t).item()
    expected = 0.3 * F.binary_cross_entropy_with_logits(logits, t).item() + 0.7 * DiceLoss(eps=1e-7)(logits, t).item()
    assert combo == pytest.approx(expected, rel=1e-6)
    assert BCEDiceLoss(bce_weight=1.0, dice_weight=0.0)(logits, t).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, t).item(), rel=1e-6)
    # what cannot mean the same is refused, naming what to write
    with pytest.raises(ValueError, match="non-differentiable"):
        DiceLoss(threshold=0.5)
    with pytest.raises(ValueError, match="mode='multiclass'"):
        DiceLoss(activation="Softmax2d")
    with pytest.raises(ValueError, match="logits"):
        BCEDiceLoss(activation="none")
    with pytest.raises(ValueError, match="both be 0"):
        BCEDiceLoss(bce_weight=0, dice_weight=0)
    # FocalLossBinary is FocalLoss(mode="binary") with Catalyst's ignore=
    target = t.clone()
    target[0, 0, 0, :4] = 255
    assert FocalLossBinary(ignore=255, gamma=2.0)(logits, target).item() == pytest.approx(
        FocalLoss(ignore_index=255)(logits, target).item(), rel=1e-6)
    with pytest.raises(ValueError, match="reduced"):
        FocalLossBinary(reduced=True)
    with pytest.raises(ImportError, match="FocalLoss\\(mode='multiclass'"):
        from segzoo.losses import FocalLossMultiClass  # noqa: F401
    for name in ("LovaszLossBinary", "LovaszLossMultiClass", "LovaszLossMultiLabel", "FocalLossBinary"):
        assert type(get_loss(name)).__name__ == name


_MULTICLASS = {
    "LovaszLossMultiClass": lambda ignore: LovaszLossMultiClass(ignore=ignore),
    "LovaszLoss": lambda ignore: LovaszLoss(mode="multiclass", ignore_index=ignore),
    "LovaszLoss-per-image": lambda ignore: LovaszLoss(mode="multiclass", ignore_index=ignore, per_image=True),
    "FocalLoss": lambda ignore: FocalLoss(mode="multiclass", ignore_index=ignore),
    "DiceLoss": lambda ignore: DiceLoss(mode="multiclass", ignore_index=ignore),
    "IoULoss": lambda ignore: IoULoss(mode="multiclass", ignore_index=ignore),
    "TverskyLoss": lambda ignore: TverskyLoss(0.3, 0.7, mode="multiclass", ignore_index=ignore),
}


@pytest.mark.parametrize("name", list(_MULTICLASS))
def test_multiclass_losses_take_float_class_maps(name):
    """Catalyst 19.x scripts passed class maps as float (B, H, W) tensors of 0., 1., ...: the same loss as int64."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    idx = torch.randint(0, 3, (2, 8, 8))
    loss = _MULTICLASS[name](None)
    expected = loss(logits, idx)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        got = loss(logits, idx.to(dtype))
        assert got.item() == pytest.approx(expected.item(), rel=1e-6), dtype
    got.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # an ignored label given as a float (255.) is ignored as the int one is
    ignored = idx.clone()
    ignored[:, :3] = 255
    with_ignore = _MULTICLASS[name](255)
    assert with_ignore(logits, ignored.float()).item() == pytest.approx(with_ignore(logits, ignored).item(), rel=1e-6)


@pytest.mark.parametrize("name", list(_MULTICLASS))
@pytest.mark.parametrize("bad", [0.5, 2.25, -0.5, float("nan"), float("inf"), 1e20])
def test_multiclass_losses_refuse_float_targets_that_are_not_class_numbers(name, bad):
    logits = torch.randn(2, 3, 8, 8)
    targets = torch.randint(0, 3, (2, 8, 8)).float()
    targets[1, 4, 5] = bad
    with pytest.raises(ValueError) as info:
        _MULTICLASS[name](None)(logits, targets)
    msg = str(info.value)
    assert "\n" not in msg and "whole class number" in msg and "(2, 8, 8)" in msg and "float32" in msg, msg
    # a whole number outside the classes is refused by the same range check as an int64 one
    targets[1, 4, 5] = 7.0
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        _MULTICLASS[name](None)(logits, targets)
