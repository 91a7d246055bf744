"""ClassificationHead: an image-level label from the deepest feature map (``aux_params``, as smp 0.6).

A model built with ``aux_params=dict(classes=K, pooling="avg", dropout=0.0, activation=None)`` returns
``(mask logits (B, num_classes, H, W), labels (B, K))``; without ``aux_params`` it returns the mask only.
The head is global pooling -> flatten -> dropout -> linear -> activation; its layers are numbered as smp's
(``classification_head.3.weight`` is the linear layer), so smp weights map key for key.

The head is registered in :data:`AUX_HEADS` (``"classification"``), not in :data:`segzoo.heads.HEADS`:
it is not a segmentation head (it returns (B, K), not full-resolution logits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from segzoo.registry import Registry

__all__ = ["ClassificationHead", "AUX_HEADS", "AUX_KEYS", "AUX_POOLINGS", "AUX_ACTIVATIONS", "check_aux_params",
           "create_aux_head"]

#: the keys ``aux_params`` takes (``classes`` is required)
AUX_KEYS = ("classes", "pooling", "dropout", "activation")
AUX_POOLINGS = ("avg", "max")
#: activation name -> module factory (``None`` and ``"identity"``: raw logits)
AUX_ACTIVATIONS: dict[str, Any] = {
    "identity": nn.Identity, "sigmoid": nn.Sigmoid, "softmax": lambda: nn.Softmax(dim=1),
    "softmax2d": lambda: nn.Softmax(dim=1), "logsoftmax": lambda: nn.LogSoftmax(dim=1), "tanh": nn.Tanh}

AUX_HEADS = Registry("aux head")


def check_aux_params(aux_params: Any) -> dict[str, Any] | None:
    """``aux_params`` with its defaults filled in (``None`` stays ``None``), or one line naming the bad key.

    Returns:
        ``{"classes": int, "pooling": "avg"|"max", "dropout": float, "activation": str|None}`` or ``None``.

    Raises:
        TypeError: not a dict.
        ValueError: a missing ``classes``, an unknown key, pooling or activation, or an out-of-range value.
    """
    if aux_params is None:
        return None
    if not isinstance(aux_params, Mapping):
        raise TypeError(f"aux_params must be a dict like dict(classes=4) or None, got {type(aux_params).__name__}")
    unknown = sorted(str(k) for k in aux_params if k not in AUX_KEYS)
    if unknown:
        raise ValueError(f"aux_params: unknown key(s) {unknown}; it takes {list(AUX_KEYS)}")
    if "classes" not in aux_params:
        raise ValueError("aux_params: missing key 'classes' (the number of image-level labels, e.g. "
                         "aux_params=dict(classes=4))")
    params = {"pooling": "avg", "dropout": 0.0, "activation": None, **aux_params}
    params["dropout"] = 0.0 if params["dropout"] is None else params["dropout"]  # smp: None (falsy) = none
    classes = params["classes"]
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"aux_params: 'classes' must be an int >= 1, got {classes!r}")
    if params["pooling"] not in AUX_POOLINGS:
        raise ValueError(f"aux_params: 'pooling' must be one of {AUX_POOLINGS}, got {params['pooling']!r}")
    dropout = params["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"aux_params: 'dropout' must be a number in [0, 1), got {dropout!r}")
    params["dropout"] = float(dropout)
    if params["activation"] is not None and params["activation"] not in AUX_ACTIVATIONS:
        raise ValueError(f"aux_params: 'activation' must be None or one of {list(AUX_ACTIVATIONS)}, "
                         f"got {params['activation']!r}")
    return params


@AUX_HEADS.register("classification")
class ClassificationHead(nn.Sequential):
    """Global pooling -> flatten -> dropout -> linear -> activation on one feature map.

    Args:
        in_channels: channels of the feature map (the model's deepest).
        classes: number of image-level labels K.
        pooling: ``"avg"`` or ``"max"`` global pooling.
        dropout: dropout rate before the linear layer (0: none).
        activation: ``None`` (logits), ``"sigmoid"``, ``"softmax"``, ``"logsoftmax"``, ``"tanh"``, ``"identity"``.

    Shapes: (B, in_channels, h, w) -> (B, classes).
    """

    def __init__(self, in_channels: int, classes: int, pooling: str = "avg", dropout: float = 0.0,
                 activation: str | None = None) -> None:
        params = check_aux_params(dict(classes=classes, pooling=pooling, dropout=dropout, activation=activation))
        assert params is not None
        pool = nn.AdaptiveAvgPool2d(1) if params["pooling"] == "avg" else nn.AdaptiveMaxPool2d(1)
        act = AUX_ACTIVATIONS[params["activation"]]() if params["activation"] is not None else nn.Identity()
        super().__init__(pool, nn.Flatten(), nn.Dropout(params["dropout"]) if params["dropout"] else nn.Identity(),
                         nn.Linear(int(in_channels), params["classes"]), act)
        self.in_channels = int(in_channels)
        self.classes = params["classes"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Labels (B, classes) from a feature map (B, in_channels, h, w)."""
        return super().forward(x)


def create_aux_head(aux_params: Any, in_channels: int) -> ClassificationHead | None:
    """The head ``aux_params`` describes on a feature map of ``in_channels``, or ``None`` without it.

    Raises:
        TypeError, ValueError: bad ``aux_params`` (see :func:`check_aux_params`).
    """
    params = check_aux_params(aux_params)
    if params is None:
        return None
    return AUX_HEADS.create("classification", in_channels, **params)
