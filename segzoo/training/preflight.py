"""Checks ``segzoo train`` runs before the first batch, so that a config mistake costs seconds, not an epoch.

- :func:`check_param_types`: config values against the type hints of the class they are passed to
  (``scheduler.params.step_size: abc`` is refused, naming the key, the value and the type).
- :func:`check_loss_fits`: the loss against the data's class count (``CrossEntropyLoss`` with
  ``num_classes: 1`` is constant 0 and learns nothing).
- :func:`check_scheduler_steps`: the scheduler stepped as often as the run will, on a throwaway optimizer.
- :func:`check_metrics`: ``runner.main_metric`` and the metrics callbacks watch are computed.
- :func:`check_one_batch`: one valid sample through the model, the loss and its gradient.
- :func:`estimate_parameters`: the model's parameter count, built on the ``meta`` device (no memory).
"""

from __future__ import annotations

import inspect
import math
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from segzoo.errors import ConfigError, short_repr

MAX_PARAMETERS = 2_000_000_000
# losses that need (B, H, W) class indices and >= 2 output channels, and those for one binary channel
MULTICLASS_ONLY = {"CrossEntropyLoss", "NLLLoss"}
BINARY_ONLY = {"BCEWithLogitsLoss", "BCELoss"}


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``str(exc)`` (or its type name), at most ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits the type ``hint``; ``None`` when the hint is not checked."""
    if hint is Any or hint is inspect.Parameter.empty:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, h) for h in typing.get_args(hint)]
        return True if any(r is True for r in results) else (None if None in results else False)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if origin is tuple and args and Ellipsis not in typing.get_args(hint) and len(args) != len(value):
            return False
        item_hints = args if origin is tuple and len(args) == len(value) else args[:1] * len(value)
        results = [_matches(v, h) for v, h in zip(value, item_hints)]
        return False if False in results else (None if None in results else True)
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, dict)
    return None  # a class (Tensor, Optimizer, Callable...): not something a config can give


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_param_types(cls: Any, params: Mapping[str, Any], where: str) -> None:
    """Check ``params`` against the type hints of ``cls.__init__`` (only the hints a config value can meet).

    Raises:
        ConfigError: ``{where}.{key} must be {type}, got {value}``.
    """
    try:
        hints = typing.get_type_hints(cls.__init__ if inspect.isclass(cls) else cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check against
        return
    for key, value in params.items():
        if key in hints and _matches(value, hints[key]) is False:
            raise ConfigError(f"{where}.{key} must be {_hint_name(hints[key])}, got {type(value).__name__} "
                              f"{short_repr(value)}")


def check_loss_fits(loss_name: str, loss_params: Mapping[str, Any], num_classes: int) -> None:
    """Refuse a loss that cannot learn from the data's masks (checked by name, before building).

    Raises:
        ConfigError: naming the loss, ``num_classes`` and the fix.
    """
    mode = loss_params.get("mode")
    if num_classes == 1 and (loss_name in MULTICLASS_ONLY or mode == "multiclass"):
        raise ConfigError(f"loss {loss_name}{' mode=multiclass' if mode else ''} needs num_classes >= 2 (class-index "
                          f"masks, background included), but the data has num_classes=1 (binary masks): use "
                          f"BCEDiceLoss, BCEWithLogitsLoss, DiceLoss or FocalLoss, or set data.params.num_classes "
                          f"and model.params.num_classes to K >= 2")
    if num_classes > 1 and (loss_name in BINARY_ONLY or (loss_name == "LovaszLoss" and mode != "multiclass")):
        raise ConfigError(f"loss {loss_name}{' mode=' + str(mode) if mode else ''} takes one binary channel, but the "
                          f"data has num_classes={num_classes} (class-index masks): use CrossEntropyLoss, "
                          f"DiceLoss/FocalLoss/LovaszLoss with mode: multiclass, or BCEDiceLoss")


def check_scheduler_steps(opt_cls: type, opt_params: Mapping[str, Any], sched_cls: type,
                          sched_params: Mapping[str, Any], steps: int, where: str) -> None:
    """Build the scheduler on a throwaway optimizer and step it ``steps`` times (at most 100000).

    A wrong value that only fails when the scheduler steps (after the first epoch) fails here.

    Raises:
        ConfigError: naming the scheduler and the error.
    """
    dummy = nn.Parameter(torch.zeros(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            opt = opt_cls([dummy], **opt_params)
            sched = sched_cls(opt, **sched_params)
            for _ in range(min(steps, 100_000)):
                opt.step()
                if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    sched.step(1.0)
                else:
                    sched.step()
        except (TypeError, ValueError, ZeroDivisionError, ArithmeticError, KeyError, IndexError) as exc:
            raise ConfigError(f"{where} {sched_cls.__name__}: {first_line(exc)}") from None


def produced_metrics(callbacks: Sequence[Any]) -> set[str] | None:
    """Valid-metric names the callbacks compute (``loss`` always); ``None`` when a callback's are unknown."""
    from segzoo.training.callbacks import CriterionAggregatorCallback, CriterionCallback, MetricCallback
    from segzoo.training.callbacks.metrics import _OverlapCallback

    names = {"loss"}
    for cb in callbacks:
        if isinstance(cb, CriterionCallback | CriterionAggregatorCallback | MetricCallback | _OverlapCallback):
            names.add(cb.prefix)
    return names


def check_metrics(callbacks: Sequence[Any], main_metric: str, scheduler_names: Sequence[str] = ()) -> None:
    """Refuse a ``main_metric`` (or a metric EarlyStopping / ReduceLROnPlateau watch) no callback computes.

    Per-class values ``{prefix}/{name}`` count when their callback's ``prefix`` is computed.

    Raises:
        ConfigError: naming the metric and the computed ones.
    """
    from segzoo.training.callbacks import EarlyStoppingCallback, SchedulerCallback

    names = produced_metrics(callbacks)
    if names is None:
        return

    def known(metric: str) -> bool:
        return metric in names or metric.partition("/")[0] in names

    watched = [("runner.main_metric", main_metric)]
    watched += [("EarlyStoppingCallback metric", cb.metric) for cb in callbacks
                if isinstance(cb, EarlyStoppingCallback)]
    if "ReduceLROnPlateau" in scheduler_names:
        sched_cbs = [cb for cb in callbacks if isinstance(cb, SchedulerCallback)]
        watched += [("SchedulerCallback reduce_metric", cb.reduce_metric) for cb in sched_cbs] or [
            ("ReduceLROnPlateau metric", "loss")]
    for what, metric in watched:
        if not known(metric):
            raise ConfigError(f"{what} {short_repr(metric)} is computed by no callback (computed: "
                              f"{', '.join(sorted(names))}); add its callback (DiceCallback -> dice, "
                              f"IouCallback -> iou) or choose one of those")


def check_one_batch(model: nn.Module, criterion: Any, sample: Any, loss_name: str) -> None:
    """One valid sample through ``model`` (eval mode, CPU) and ``criterion``; refuse a loss that cannot learn.

    Args:
        model: the model, (1, C, H, W) -> (1, K, H, W).
        criterion: the loss.
        sample: ``dataset[0]``: a dict with ``features`` (C, H, W) and ``targets``.
        loss_name: for messages.

    Raises:
        ConfigError: the model or the loss fails on the sample, or the loss has no gradient at all.
    """
    if not isinstance(sample, Mapping) or "features" not in sample or "targets" not in sample:
        return
    x, t = sample["features"], sample["targets"]
    if not (isinstance(x, torch.Tensor) and isinstance(t, torch.Tensor)):
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x[None].float())
        if isinstance(logits, tuple) and len(logits) == 2:  # aux_params: (mask logits, labels); the loss takes the mask
            logits = logits[0]
        if isinstance(logits, Mapping) or not isinstance(logits, torch.Tensor):
            return
        logits = logits.detach().requires_grad_(True)
        try:
            loss = criterion(logits, t[None])
        except (ValueError, RuntimeError, TypeError, IndexError) as exc:
            raise ConfigError(f"loss {loss_name} does not fit the model's output {tuple(logits.shape)} and the data's "
                              f"targets {tuple(t[None].shape)} {t.dtype}: {first_line(exc)}") from None
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ConfigError(f"loss {loss_name} must return a scalar, got "
                              f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ConfigError(f"loss {loss_name} is {value} on the first valid sample before any training; check "
                              f"loss.params and the data")
        (grad,) = torch.autograd.grad(loss, logits, allow_unused=True)
        if (grad is None or not bool(grad.abs().sum() > 0)) and value == 0.0:
            raise ConfigError(f"loss {loss_name} is constant 0 on the model's output {tuple(logits.shape)}: nothing "
                              f"would be learned; check loss.name against num_classes")
    finally:
        model.train(was_training)


def estimate_parameters(build: Any) -> int | None:
    """Parameter count of the model ``build()`` makes, built on the ``meta`` device; ``None`` if that fails."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build()
        return sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - the real build reports real errors
        return None
