"""Values and gradients of the combined / Lovasz losses and of dice / iou, pinned on fixed tensors.

The numbers were computed with the implementations before BCEDiceLoss/BCEIoULoss became one
combined loss, the Lovasz subclasses one body and dice/iou one core: sharing code must not move them.
"""

import pytest
import torch

from segzoo.losses import (
    BCEDiceLoss,
    BCEIoULoss,
    LovaszLoss,
    LovaszLossBinary,
    LovaszLossMultiClass,
    LovaszLossMultiLabel,
)
from segzoo.metrics import dice, iou


def _fixed(c):
    """Logits (2, c, 6, 6), binary targets of that shape and (2, 6, 6) class indices, from no RNG."""
    n = 2 * c * 6 * 6
    x = torch.sin(torch.arange(n, dtype=torch.float32) * 0.37).reshape(2, c, 6, 6) * 3
    binary = (torch.cos(torch.arange(n, dtype=torch.float32) * 0.91) > 0.2).float().reshape(2, c, 6, 6)
    indices = (torch.arange(2 * 36) * 7 % c).reshape(2, 6, 6)
    return x, binary, indices


# name: (loss, classes, targets, loss value, sum of gradient * (index % 5))
PINNED = {
    "BCEDiceLoss": (lambda: BCEDiceLoss(bce_weight=0.3, dice_weight=0.7), 1, "binary",
                    0.6858172416687012, -0.005651797167956829),
    "BCEIoULoss": (lambda: BCEIoULoss(bce_weight=0.6, iou_weight=0.4, smooth=0.5), 2, "binary",
                   0.961667001247406, 0.0883500874042511),
    "BCEDiceLoss-ignore": (lambda: BCEDiceLoss(ignore_index=255), 1, "ignored",
                           0.8277910351753235, -0.08659843355417252),
    "LovaszLossBinary": (lambda: LovaszLossBinary(per_image=True), 1, "binary",
                         2.1505789756774902, -0.22535812854766846),
    "LovaszLossMultiClass": (lambda: LovaszLossMultiClass(), 3, "indices", 0.7501675486564636, 0.010240195319056511),
    "LovaszLossMultiLabel": (lambda: LovaszLossMultiLabel(), 3, "binary", 2.2460806369781494, -0.18157626688480377),
}


@pytest.mark.parametrize("name", list(PINNED))
def test_loss_value_and_gradient_pinned(name):
    make, c, kind, value, grad = PINNED[name]
    x, binary, indices = _fixed(c)
    x.requires_grad_(True)
    targets = indices if kind == "indices" else binary.clone()
    if kind == "ignored":
        targets[:, :, :2] = 255
    loss = make()
    out = loss(x, targets)
    out.backward()
    weights = torch.arange(x.numel(), dtype=torch.float32).reshape(x.shape) % 5
    assert out.item() == pytest.approx(value, rel=1e-5, abs=1e-7)
    assert (x.grad * weights).sum().item() == pytest.approx(grad, rel=1e-4, abs=1e-6)
    assert type(loss).__name__ == name.split("-")[0]


def test_lovasz_names_keep_their_class_and_arguments():
    for cls, mode in ((LovaszLossBinary, "binary"), (LovaszLossMultiClass, "multiclass"),
                      (LovaszLossMultiLabel, "multilabel")):
        loss = cls(per_image=True, ignore=7)
        assert isinstance(loss, LovaszLoss) and (loss.mode, loss.per_image, loss.ignore_index) == (mode, True, 7)


def test_dice_and_iou_pinned():
    x, binary, indices = _fixed(1)
    assert dice(x, binary, threshold=0.5).item() == pytest.approx(0.5352112668518152, rel=1e-9)
    assert iou(x, binary, per_class=True).tolist() == pytest.approx([0.3273094093536032], rel=1e-9)
    x, binary, indices = _fixed(3)
    assert dice(x, binary, threshold=0.5).item() == pytest.approx(0.4737759885955249, rel=1e-9)
    assert iou(x, binary, per_class=True).tolist() == pytest.approx(
        [0.30967135304029586, 0.3222126157618779, 0.28652184355651056], rel=1e-9)
    assert dice(x, indices, activation="Softmax2d", per_class=True).tolist() == pytest.approx(
        [0.4074074066529492, 0.1874999994140625, 0.4137931027348395], rel=1e-9)
    assert iou(x, indices, activation="Softmax2d", ignore_index=0).item() == pytest.approx(0.15132275085904648,
                                                                                            rel=1e-9)
    named = iou(x, binary, classes=["a", "b", "c"])
    assert list(named) == ["a", "b", "c"] and named["b"].item() == pytest.approx(0.3222126157618779, rel=1e-9)
