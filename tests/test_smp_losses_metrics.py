"""segzoo.smp.losses / segzoo.smp.metrics give smp 0.6's values and gradients (issue 22, point 1)."""

from __future__ import annotations

import pytest
import torch

from segzoo.smp import losses as ours_losses
from segzoo.smp import metrics as ours_metrics

ref = pytest.importorskip("segmentation_models_pytorch")

N, C, H, W = 2, 3, 16, 16


def _tensors():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, C, H, W, generator=g) * 3
    classes = torch.randint(0, C, (N, H, W), generator=g)
    labels = torch.randint(0, 2, (N, C, H, W), generator=g).float()
    binary = torch.randn(N, 1, H, W, generator=g)
    binary_t = torch.randint(0, 2, (N, 1, H, W), generator=g).float()
    ignored = classes.clone()
    ignored[:, :3] = 255
    ignored[0, :, :] = torch.where(ignored[0] == 2, 0, ignored[0])  # class 2 absent from image 0
    return {"binary": (binary, binary_t), "multiclass": (logits, classes), "multilabel": (logits, labels),
            "ignored": (logits, ignored)}


T = _tensors()
OVERLAP = [(mode, kw) for mode in ("binary", "multiclass", "multilabel")
           for kw in ({}, {"smooth": 1.0, "log_loss": True}, {"from_logits": False})]
CASES = [
    *[(name, mode, kw) for name in ("DiceLoss", "JaccardLoss", "TverskyLoss") for mode, kw in OVERLAP],
    *[(name, "ignored", {"mode": "multiclass", "ignore_index": 255}) for name in
      ("DiceLoss", "JaccardLoss", "TverskyLoss", "FocalLoss", "LovaszLoss")],
    ("DiceLoss", "multiclass", {"classes": [0, 2], "class_weights": [1.0, 2.0, 3.0]}),
    ("TverskyLoss", "multiclass", {"alpha": 0.3, "beta": 0.7, "gamma": 1.5}),
    *[("FocalLoss", mode, kw) for mode in ("binary", "multiclass", "multilabel")
      for kw in ({}, {"alpha": 0.25, "normalized": True}, {"reduced_threshold": 0.5, "reduction": "sum"})],
    *[("LovaszLoss", mode, kw) for mode in ("binary", "multiclass", "multilabel") for kw in ({}, {"per_image": True})],
    ("SoftBCEWithLogitsLoss", "binary", {"smooth_factor": 0.1}),
    ("SoftCrossEntropyLoss", "multiclass", {"smooth_factor": 0.1}),
    ("SoftCrossEntropyLoss", "ignored", {"smooth_factor": 0.1, "ignore_index": 255}),
    ("MCCLoss", "binary", {}),
]


@pytest.mark.parametrize(("name", "data", "kwargs"), CASES, ids=[f"{n}-{d}-{k}" for n, d, k in CASES])
def test_loss_value_and_gradient_match_smp(name, data, kwargs):
    y_pred, y_true = T[data]
    if name == "MCCLoss" or kwargs.get("from_logits") is False:
        y_pred = y_pred.sigmoid() if data != "multiclass" else y_pred.softmax(1)
    if "mode" not in kwargs and name not in ("SoftBCEWithLogitsLoss", "SoftCrossEntropyLoss", "MCCLoss"):
        kwargs = {"mode": data, **kwargs}
    a, b = y_pred.clone().requires_grad_(), y_pred.clone().requires_grad_()
    theirs = getattr(ref.losses, name)(**kwargs)(a, y_true)
    ours = getattr(ours_losses, name)(**kwargs)(b, y_true)
    theirs.sum().backward()
    ours.sum().backward()
    assert torch.allclose(ours, theirs, atol=1e-5), (float(ours), float(theirs))
    assert torch.allclose(b.grad, a.grad, atol=1e-5)


def test_mode_constants_are_smps():
    for name in ("BINARY_MODE", "MULTICLASS_MODE", "MULTILABEL_MODE"):
        assert getattr(ours_losses, name) == getattr(ref.losses, name)


def test_segzoos_own_focal_and_lovasz_keep_their_definitions():
    """The front door gives smp's values; segzoo.losses keeps its softmax focal / per-channel Lovasz."""
    from segzoo.losses import FocalLoss, LovaszLoss

    logits, classes = T["multiclass"]
    front = ours_losses.FocalLoss("multiclass")(logits, classes)
    own = FocalLoss("multiclass", alpha=None)(logits, classes)
    assert not torch.allclose(front, own, atol=1e-3)
    logits, labels = T["multilabel"]
    labels = labels.clone()
    labels[:, 0], labels[:, 1] = 1.0, 0.0  # channels of very different densities
    assert not torch.allclose(ours_losses.LovaszLoss("multilabel")(logits, labels),
                              LovaszLoss("multilabel")(logits, labels), atol=1e-3)


def test_bad_mode_is_one_line():
    with pytest.raises(ValueError, match="mode must be one of") as info:
        ours_losses.DiceLoss("multi-class")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="class_weights"):
        ours_losses.FocalLoss("binary", class_weights=[1.0])


STATS = [
    ("multiclass", lambda: (T["multiclass"][0].argmax(1), T["multiclass"][1]), {"num_classes": C}),
    ("multiclass", lambda: (T["multiclass"][0].argmax(1), T["ignored"][1]), {"num_classes": C, "ignore_index": 255}),
    ("multilabel", lambda: (T["multilabel"][0].sigmoid(), T["multilabel"][1].long()), {"threshold": 0.5}),
    ("binary", lambda: (T["binary"][0].sigmoid(), T["binary"][1].long()), {"threshold": 0.5}),
]
SCORES = ["iou_score", "f1_score", "accuracy", "precision", "recall", "sensitivity", "specificity",
          "balanced_accuracy", "positive_predictive_value", "negative_predictive_value", "false_negative_rate",
          "false_positive_rate", "false_discovery_rate", "false_omission_rate", "positive_likelihood_ratio",
          "negative_likelihood_ratio"]


@pytest.mark.parametrize(("mode", "make", "kwargs"), STATS, ids=["multiclass", "ignore", "multilabel", "binary"])
def test_get_stats_and_every_score_and_reduction_match_smp(mode, make, kwargs):
    output, target = make()
    theirs = ref.metrics.get_stats(output, target, mode=mode, **kwargs)
    ours = ours_metrics.get_stats(output, target, mode=mode, **kwargs)
    for t, o in zip(theirs, ours):
        assert o.dtype == t.dtype and torch.equal(o, t)
    weights = [0.2, 0.3, 0.5][:ours[0].shape[1]]
    for name in SCORES:
        for reduction in ("micro", "macro", "micro-imagewise", "macro-imagewise", "none", None):
            t = getattr(ref.metrics, name)(*theirs, reduction=reduction)
            o = getattr(ours_metrics, name)(*ours, reduction=reduction)
            assert torch.allclose(o, t, atol=1e-6, equal_nan=True), (name, reduction)
        for reduction in ("weighted", "weighted-imagewise", "macro"):
            t = ref.metrics.fbeta_score(*theirs, beta=2.0, reduction=reduction, class_weights=weights)
            o = ours_metrics.fbeta_score(*ours, beta=2.0, reduction=reduction, class_weights=weights)
            assert torch.allclose(o, t, atol=1e-6), reduction


def test_zero_division_values_match_smp():
    stats = [torch.tensor([[0, 3]]), torch.tensor([[0, 1]]), torch.tensor([[0, 2]]), torch.tensor([[10, 4]])]
    for zero in (1.0, 0.0):
        t = ref.metrics.iou_score(*stats, reduction="macro", zero_division=zero)
        assert torch.allclose(ours_metrics.iou_score(*stats, reduction="macro", zero_division=zero), t)
    with pytest.warns(UserWarning, match="Zero division"):
        assert float(ours_metrics.iou_score(*stats, reduction="none", zero_division="warn")[0, 0]) == 0.0


def test_metric_misuse_is_one_line():
    with pytest.raises(ValueError, match="needs num_classes"):
        ours_metrics.get_stats(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long),
                               mode="multiclass")
    with pytest.raises(ValueError, match="needs class_weights"):
        ours_metrics.iou_score(*(torch.ones(1, 2, dtype=torch.long),) * 4, reduction="weighted")
    with pytest.raises(ValueError, match="reduction must be one of"):
        ours_metrics.iou_score(*(torch.ones(1, 2, dtype=torch.long),) * 4, reduction="mikro")
