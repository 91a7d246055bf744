"""Catalyst 19.x keywords and callback conventions of ``train`` / ``infer``, mapped onto segzoo's runner.

(Was ``segzoo.training.compat``; the default callbacks a run adds are in :mod:`segzoo.training.defaults`.)

Everything here either maps a 19.x argument onto segzoo's own option, or raises with the
segzoo spelling: nothing given to the runner is silently ignored.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from segzoo.errors import short_repr
from segzoo.training.callback import Callback
from segzoo.training.callbacks.checkpoint import CheckpointCallback
from segzoo.training.callbacks.criterion import CriterionAggregatorCallback, CriterionCallback
from segzoo.training.callbacks.early_stopping import EarlyStoppingCallback
from segzoo.training.callbacks.loggers import TensorboardLogger
from segzoo.training.callbacks.optimizer import OptimizerCallback
from segzoo.training.callbacks.predictions import PredictionSaverCallback
from segzoo.training.callbacks.scheduler import SchedulerCallback

_FP16_KEYS = ("opt_level", "loss_scale")

# callbacks that only make sense while training: infer() refuses them, saying why
_TRAIN_ONLY: dict[type, str] = {
    OptimizerCallback: "it steps an optimizer, and infer() runs no backward pass; use train()",
    SchedulerCallback: "it steps an LR scheduler, and infer() trains nothing; use train()",
    EarlyStoppingCallback: "it stops training, and infer() makes one pass; use train()",
    CriterionCallback: "infer() takes no criterion; for a loss value use "
                       "MetricCallback(prefix='loss', metric_fn=criterion)",
    CriterionAggregatorCallback: "infer() computes no losses; for a loss value use "
                                 "MetricCallback(prefix='loss', metric_fn=criterion)",
    PredictionSaverCallback: "it draws the valid loader during train(); in infer() collect outputs "
                             "with InferCallback()",
    TensorboardLogger: "infer() has no logdir to write to; collect outputs with InferCallback() "
                       "or metrics from the returned state.epoch_metrics",
}


def fp16_to_amp(fp16: Any, amp: bool | str | None, stacklevel: int = 3) -> bool | str | None:
    """The ``amp`` option for Catalyst's ``fp16=`` (apex) argument; warns once that native AMP is used.

    ``None`` / ``False``: ``amp`` unchanged. ``True`` is ``{"opt_level": "O1"}``. ``opt_level``
    ``"O1"`` / ``"O2"`` become ``amp=True`` (torch.autocast: float16 with a GradScaler on CUDA,
    bfloat16 on CPU); ``"O0"`` is float32 (``amp=False`` when ``amp`` is unset, else ``amp`` unchanged).
    ``stacklevel``: the user's call, for the warning.

    Raises:
        ValueError: ``"O3"`` (pure float16 weights), unknown keys or levels, or ``amp`` set too.
        TypeError: ``fp16`` is neither None, a bool nor a dict.
    """
    if fp16 is None or fp16 is False:
        return amp
    if fp16 is True:
        fp16 = {"opt_level": "O1"}
    if not isinstance(fp16, Mapping):
        raise TypeError(f"fp16 must be None, True/False or a dict like dict(opt_level='O1'), got {short_repr(fp16)}")
    unknown = sorted(set(fp16) - set(_FP16_KEYS))
    if unknown:
        raise ValueError(f"fp16 keys {unknown} are apex options segzoo cannot honour; accepted: {list(_FP16_KEYS)}")
    if fp16.get("loss_scale", "dynamic") not in ("dynamic", None):
        raise ValueError(f"fp16 loss_scale={short_repr(fp16['loss_scale'])} is not supported: native AMP scales "
                         f"the loss dynamically; drop loss_scale")
    level = fp16.get("opt_level", "O1")
    if level == "O3":
        raise ValueError("fp16 opt_level 'O3' (pure float16 weights) is not supported; use "
                         "fp16=dict(opt_level='O1') or amp='fp16' (mixed precision)")
    if level not in ("O0", "O1", "O2"):
        raise ValueError(f"fp16 opt_level must be 'O0', 'O1' or 'O2', got {short_repr(level)}")
    if amp:
        raise ValueError(f"give either amp={amp!r} or fp16={dict(fp16)!r}, not both")
    if level == "O0":
        return False if amp is None else amp
    warnings.warn(f"fp16={dict(fp16)!r} runs with native torch.autocast, as amp=True (float16 with a "
                  f"GradScaler on CUDA, bfloat16 on CPU); apex is not used", UserWarning, stacklevel=stacklevel)
    return True


def check_monitoring_params(monitoring_params: Any) -> None:
    """``None`` is accepted; anything else raises (Alchemy / W&B monitoring is not part of segzoo)."""
    if monitoring_params is not None:
        raise ValueError("monitoring_params (Alchemy / Weights & Biases) is not supported: "
                         "drop it and use TensorboardLogger or your own Callback")


def resume_of_callbacks(callbacks: list[Callback], resume: Any) -> Any:
    """The checkpoint to resume from: ``resume`` or the one ``CheckpointCallback(resume=...)`` names.

    Raises:
        ValueError: more than one CheckpointCallback, or ``resume`` and the callback's differ.
    """
    savers = [c for c in callbacks if isinstance(c, CheckpointCallback)]
    if len(savers) > 1:
        raise ValueError(f"{len(savers)} CheckpointCallbacks given: they would load or write the same "
                         f"checkpoints; keep one")
    named = savers[0].resume if savers else None
    if resume is not None and named and str(named) != str(resume):
        raise ValueError(f"resume={short_repr(str(resume))} and CheckpointCallback(resume={short_repr(named)}) "
                         f"disagree; give one of them")
    return resume if resume is not None else (named or None)


def check_infer_callbacks(callbacks: list[Callback], resume: Any) -> None:
    """Refuse callbacks ``infer`` cannot honour (training-only ones, a CheckpointCallback without ``resume``).

    Raises:
        ValueError: naming the callback, why, and what to write instead.
    """
    for cb in callbacks:
        reason = next((why for kind, why in _TRAIN_ONLY.items() if isinstance(cb, kind)), None)
        if reason is not None:
            raise ValueError(f"infer() cannot honour {type(cb).__name__}: {reason}")
        if isinstance(cb, CheckpointCallback) and not cb.resume and resume is None:
            raise ValueError("CheckpointCallback() in infer() has nothing to do: infer() writes no checkpoints; "
                             "pass CheckpointCallback(resume='logs/.../checkpoints/best.pth') or drop it")
