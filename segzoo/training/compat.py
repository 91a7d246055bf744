"""Catalyst 19.x keywords and callback conventions of ``train`` / ``infer``, mapped onto segzoo's runner.

Everything here either maps a 19.x argument onto segzoo's own option, or raises with the
segzoo spelling: nothing given to the runner is silently ignored.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from segzoo.errors import short_repr
from segzoo.training.callback import Callback, LoggerCallback, sort_callbacks
from segzoo.training.callbacks.checkpoint import CheckpointCallback
from segzoo.training.callbacks.criterion import CriterionAggregatorCallback, CriterionCallback
from segzoo.training.callbacks.early_stopping import EarlyStoppingCallback
from segzoo.training.callbacks.loggers import ConsoleLogger, ProgressBarLogger, TensorboardLogger
from segzoo.training.callbacks.optimizer import OptimizerCallback
from segzoo.training.callbacks.predictions import PredictionSaverCallback
from segzoo.training.callbacks.scheduler import SchedulerCallback
from segzoo.training.callbacks.timer import TimerCallback
from segzoo.training.state import RunnerState

# check=True, as Catalyst 19.x: batches 0..3 of each loader, and at most 3 epochs per stage
CHECK_BATCHES = 4
CHECK_EPOCHS = 3

# names of the callbacks the runner adds, as Catalyst 19.x's SupervisedExperiment named them
DEFAULT_NAMES: dict[type, str] = {
    CriterionCallback: "_criterion", OptimizerCallback: "_optimizer", SchedulerCallback: "_scheduler",
    CheckpointCallback: "_saver", ConsoleLogger: "console", TensorboardLogger: "tensorboard",
    ProgressBarLogger: "verbose", TimerCallback: "_timer",
}

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


def fp16_to_amp(fp16: Any, amp: bool | str) -> bool | str:
    """The ``amp`` option for Catalyst's ``fp16=`` (apex) argument; warns once that native AMP is used.

    ``None`` / ``False``: ``amp`` unchanged. ``True`` is ``{"opt_level": "O1"}``. ``opt_level``
    ``"O1"`` / ``"O2"`` become ``amp=True`` (torch.autocast: float16 with a GradScaler on CUDA,
    bfloat16 on CPU); ``"O0"`` is float32 (``amp`` unchanged).

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
        return amp
    warnings.warn(f"fp16={dict(fp16)!r} runs with native torch.autocast, as amp=True (float16 with a "
                  f"GradScaler on CUDA, bfloat16 on CPU); apex is not used", UserWarning, stacklevel=3)
    return True


def check_monitoring_params(monitoring_params: Any) -> None:
    """``None`` is accepted; anything else raises (Alchemy / W&B monitoring is not part of segzoo)."""
    if monitoring_params is not None:
        raise ValueError("monitoring_params (Alchemy / Weights & Biases) is not supported: "
                         "drop it and use TensorboardLogger or your own Callback")


def callback_items(callbacks: Any) -> list[tuple[Any, Callback]]:
    """``(name, callback)`` pairs as Catalyst 19.x keyed them.

    A list is sorted by ``order`` and keyed by position (``0, 1, ...``); a dict keeps its keys.

    Raises:
        TypeError: not a list/tuple/dict, or an item that is not a :class:`Callback`.
    """
    if callbacks is None:
        return []
    if isinstance(callbacks, Mapping):
        items = list(callbacks.items())
    elif isinstance(callbacks, (list, tuple)):
        items = list(enumerate(callbacks))
    else:
        raise TypeError(f"callbacks must be a list or a dict name -> Callback, got {type(callbacks).__name__}")
    for key, cb in items:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks[{key!r}] is a {type(cb).__name__}, not a segzoo Callback")
    if not isinstance(callbacks, Mapping):
        items = list(enumerate(sort_callbacks([cb for _, cb in items])))
    return items


def name_run_callbacks(run: list[Callback], items: list[tuple[Any, Callback]]
                       ) -> tuple[OrderedDict[Any, Callback], OrderedDict[Any, Callback]]:
    """``(runner.callbacks, runner.loggers)``: the run's callbacks in run order, keyed by name.

    Callbacks the user gave keep their key; those the runner added get Catalyst's default
    names (``_criterion``, ``_optimizer``, ``_scheduler``, ``_saver``, ``console``, ...), others
    their class name (with ``:2``, ``:3`` ... when repeated).
    """
    given = {id(cb): key for key, cb in items}
    callbacks: OrderedDict[Any, Callback] = OrderedDict()
    loggers: OrderedDict[Any, Callback] = OrderedDict()
    for cb in run:
        target = loggers if isinstance(cb, LoggerCallback) else callbacks
        key = given.get(id(cb))
        if key is None:
            base = DEFAULT_NAMES.get(type(cb), type(cb).__name__)
            key, n = base, 1
            while key in callbacks or key in loggers:
                n += 1
                key = f"{base}:{n}"
        target[key] = cb
    return callbacks, loggers


def with_default_callbacks(callbacks: list[Callback], state: RunnerState, criterion_callback: Callable[[], Callback],
                           verbose: bool) -> list[Callback]:
    """``callbacks`` plus the defaults missing among them, sorted by ``order`` (Catalyst 19.x's SupervisedExperiment).

    Added when no callback of the kind is given: ``criterion_callback()`` (with a criterion),
    OptimizerCallback (with an optimizer), SchedulerCallback (with a scheduler),
    CheckpointCallback, ConsoleLogger, and a ProgressBarLogger when ``verbose``.
    """
    cbs = list(callbacks)

    def has(kind: type) -> bool:
        return any(isinstance(c, kind) for c in cbs)

    if state.criterion is not None and not has(CriterionCallback):
        cbs.append(criterion_callback())
    if state.optimizer is not None and not has(OptimizerCallback):
        cbs.append(OptimizerCallback())
    if state.scheduler is not None and not has(SchedulerCallback):
        cbs.append(SchedulerCallback())
    if not has(CheckpointCallback):
        cbs.append(CheckpointCallback())
    if not has(ConsoleLogger):
        cbs.append(ConsoleLogger())
    if verbose and not has(ProgressBarLogger):
        cbs.append(ProgressBarLogger())
    return sort_callbacks(cbs)


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
