"""What a training run was given, kept in its full checkpoints, and the resume check against it.

:meth:`~segzoo.training.Runner.train` describes its arguments once, when it starts
(:func:`describe_run`): the model spec, seed, metric, loaders (their dataset's type, length and
settings of segzoo's datasets) and, per stage, the optimizer (class, defaults and each param
group's settings, the learning rate as given), the scheduler (class and constructor settings such
as ``T_max``) and the criterion (class, settings, buffers such as ``pos_weight``), described from
the fresh objects;
``segzoo train`` adds its normalised effective config. Full checkpoints carry this as
``"run_settings"`` (:data:`RUN_SETTINGS_KEY`), so resuming checks it wherever the checkpoint was
copied or linked to, with or without the run's ``config.yml`` beside it.

A changed setting is refused (:func:`check_run_settings`), never applied: the saved optimizer,
scheduler and criterion state would override it (the learning rate, ``T_max``... of the old run
would win), and a changed model, loss, data or seed would mix two runs in one checkpoint history.
What does not change what is trained may differ: epochs, stages appended at the end, device,
verbosity, data-loading workers, ``compile``, ``channels_last``, ``nonfinite``, the precision (``amp`` /
``precision``: the autocast dtype; weights and optimizer state are float32 in all). Checkpoints
written before ``run_settings`` existed resume as before (optimizer settings and ``config.yml``
checked where present).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from segzoo.checkpoint_format import RUN_SETTINGS_KEY, former_defaults_for
from segzoo.errors import CheckpointError, short_repr
from segzoo.models.registry import _WEIGHT_SOURCES, get_model_spec
from segzoo.training.optimizer_kernel import switched_by_segzoo

FORMAT = 1

# scheduler state that is progress, not a setting (a scheduler reused after training holds its progress);
# every other entry of its state_dict is compared, private ones too (OneCycleLR's _anneal_func_type...)
SCHEDULER_PROGRESS = ("last_epoch", "best", "num_bad_epochs", "cooldown_counter", "T_cur", "T_i", "_step_count",
                      "_last_lr", "_is_initial", "_get_lr_called_within_step", "_initial_step")
MAX_ITEMS = 64        # longer containers are described by their length and a digest
MAX_TENSOR = 1024     # larger tensors / arrays by their shape and dtype
MAX_DEPTH = 6
_SKIP = object()
# described, not compared: how fast the run computes, not what it trains (precision="auto" may pick another
# precision on another machine; weights, optimizer state and losses are float32 in every precision)
MAY_CHANGE = ("amp", "precision")


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain data for a checkpoint (loads with ``weights_only=True``) and for comparison.

    Numbers, strings, ``None``; paths as strings; tensors / arrays of at most :data:`MAX_TENSOR`
    elements as (nested) lists, larger ones as ``{"shape", "dtype"}``; lists, tuples and dicts
    recursively, those longer than :data:`MAX_ITEMS` as ``{"length", "sha256"}``. Other objects
    give ``_SKIP`` (at the top) or ``"<TypeName>"`` (inside a container).
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor | np.ndarray):
        if value.size == 1 if isinstance(value, np.ndarray) else value.numel() == 1:
            return value.item()
        small = (value.size if isinstance(value, np.ndarray) else value.numel()) <= MAX_TENSOR
        if small:
            return value.tolist() if isinstance(value, np.ndarray) else value.detach().cpu().tolist()
        return {"shape": list(value.shape), "dtype": str(value.dtype)}
    if depth >= MAX_DEPTH or not isinstance(value, list | tuple | Mapping):
        return _SKIP
    pairs = value.items() if isinstance(value, Mapping) else enumerate(value)
    items = []
    for key, item in pairs:
        described = plain(item, depth + 1)
        items.append((str(key), f"<{type(item).__name__}>" if described is _SKIP else described))
    if isinstance(value, Mapping):
        return dict(items) if len(items) <= MAX_ITEMS else {"length": len(items), "sha256": _digest(sorted(items))}
    values = [v for _, v in items]
    return values if len(values) <= MAX_ITEMS else {"length": len(values), "sha256": _digest(values)}


def plain_config(value: Any) -> Any:
    """A YAML config as plain data: mappings and lists recursively, other scalars (dates...) as their repr."""
    if isinstance(value, Mapping):
        return {str(k): plain_config(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_config(v) for v in value]
    return value if value is None or isinstance(value, bool | int | float | str) else repr(value)


def _settings(obj: Any, depth: int = 0) -> dict[str, Any]:
    """``{"class", public plain attribute: value, buffer: value, child module: {...}}`` of ``obj``."""
    out: dict[str, Any] = {"class": _qualname(obj)}
    for name, value in sorted(getattr(obj, "__dict__", {}).items()):
        if name.startswith("_") or name == "training" or callable(value):
            continue
        value = plain(value)
        if value is not _SKIP:
            out[name] = value
    if isinstance(obj, torch.nn.Module):
        for name, buf in obj._buffers.items():  # None buffers too: pos_weight=None -> a tensor is a change
            out[name] = plain(buf)
        if depth < MAX_DEPTH:
            for name, child in obj.named_children():
                out[name] = _settings(child, depth + 1)
    return out


def _plain_hparam(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    if isinstance(value, list | tuple):
        return [_plain_hparam(v) for v in value]
    return value if isinstance(value, bool | int | float | str | type(None)) else None


def optimizer_hparams(optimizer: Any) -> Any:
    """The settings of ``optimizer`` (a dict of them too) as plain data, for comparison on resume.

    Returns:
        ``{"name": class name, "groups": [{setting: value}, ...], "defaults": {setting: value}}`` (each
        param group's settings, and the constructor's), the learning rate as the one given at
        construction (a scheduler's ``initial_lr`` when it set one); ``None`` for no optimizer.
    """
    if optimizer is None:
        return None
    if isinstance(optimizer, dict):
        return {k: optimizer_hparams(v) for k, v in optimizer.items()}
    if not hasattr(optimizer, "param_groups"):
        return None
    groups, switched = [], switched_by_segzoo(optimizer)
    for group in optimizer.param_groups:
        hp = {k: _plain_hparam(v) for k, v in group.items() if k not in ("params", "initial_lr", "param_names")}
        if switched:  # the user's setting, not the fused step segzoo chose (segzoo.training.optimizer_kernel)
            hp["fused"] = None
        if "initial_lr" in group:
            hp["lr"] = _plain_hparam(group["initial_lr"])
        groups.append(hp)
    defaults = {k: _plain_hparam(v) for k, v in getattr(optimizer, "defaults", {}).items()}
    return {"name": type(optimizer).__name__, "groups": groups, "defaults": defaults}


def _scheduler_state(state: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        if key == "_schedulers" and isinstance(value, list):  # SequentialLR / ChainedScheduler
            out[key] = [_scheduler_state(s) if isinstance(s, Mapping) else None for s in value]
        elif key not in SCHEDULER_PROGRESS:
            value = plain(value)
            out[key] = None if value is _SKIP else value
    return out


def scheduler_settings(scheduler: Any) -> Any:
    """The class and constructor settings of ``scheduler`` (a dict of them too), progress left out; ``None``: none."""
    if scheduler is None:
        return None
    if isinstance(scheduler, Mapping):
        return {str(k): scheduler_settings(v) for k, v in scheduler.items()}
    state = scheduler.state_dict() if callable(getattr(scheduler, "state_dict", None)) else {}
    return {"class": _qualname(scheduler), **_scheduler_state(state if isinstance(state, Mapping) else {})}


def criterion_settings(criterion: Any) -> Any:
    """Class, plain attributes, buffers and child modules of ``criterion`` (a dict of them too)."""
    if criterion is None:
        return None
    if isinstance(criterion, Mapping):
        return {str(k): criterion_settings(v) for k, v in criterion.items()}
    return _settings(criterion)


def model_settings(model: Any) -> dict[str, Any]:
    """The model's spec without its weight sources (``pretrained``...: resuming loads the weights), or its class."""
    spec = get_model_spec(model) if isinstance(model, torch.nn.Module) else None
    if spec is None:
        return {"class": _qualname(model)}
    kwargs = {k: v for k, v in spec.get("kwargs", {}).items() if k not in _WEIGHT_SOURCES}
    if isinstance(kwargs.get("encoder_params"), dict):
        kwargs["encoder_params"] = {k: v for k, v in kwargs["encoder_params"].items() if k not in _WEIGHT_SOURCES}
    return {"name": spec["name"], "kwargs": plain(kwargs)}


def loader_settings(loader: Any) -> dict[str, Any]:
    """The loader's class, batch size, ``drop_last``, sampler class and its dataset's type and length (and the
    settings of segzoo's datasets: size, classes, seed, files...)."""
    out: dict[str, Any] = {"class": _qualname(loader)}
    dataset = getattr(loader, "dataset", None)
    if isinstance(loader, torch.utils.data.DataLoader):
        out.update(batch_size=loader.batch_size, drop_last=loader.drop_last, sampler=_qualname(loader.sampler))
    elif dataset is None and hasattr(loader, "__len__"):
        out["length"] = len(loader)
    if dataset is not None:
        # segzoo's datasets are known to hold only their settings; a user's may hold anything (a temporary
        # folder, a timestamp) that differs between two processes of one run, so only its type and length
        ours = type(dataset).__module__.split(".")[0] == "segzoo"
        out["dataset"] = _settings(dataset) if ours else {"class": _qualname(dataset)}
        try:
            out["dataset"]["length"] = len(dataset)
        except TypeError:  # an IterableDataset
            pass
    return out


def describe_run(model: Any, criterion: Any, optimizer: Any, scheduler: Any, stages: list[Any],
                 loaders: Mapping[str, Any], *, seed: int | None, amp: Any, main_metric: str,
                 minimize_metric: bool, valid_loader: str, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What :meth:`~segzoo.training.Runner.train` was given, as plain data (stored under :data:`RUN_SETTINGS_KEY`).

    Call it before training, on the objects as given: a scheduler's settings and an optimizer's
    learning rates are those of construction. A stage's unset optimizer / scheduler / criterion
    is the run's, as in ``train()``.

    Args:
        model: the model given to ``train()`` (its spec, or its class without one).
        criterion: the run's criterion (or dict); a stage may bring its own.
        optimizer: the run's optimizer (or dict); a stage may bring its own.
        scheduler: the run's scheduler (or dict); a stage may bring its own.
        stages: the run's :class:`~segzoo.training.Stage` list.
        loaders: ``name -> DataLoader`` (or other iterable).
        seed: as given to ``train()``.
        amp: as given to ``train()`` (``fp16`` turned into ``amp``).
        main_metric: as given to ``train()``.
        minimize_metric: as given to ``train()``.
        valid_loader: as given to ``train()``.
        config: ``segzoo train``'s normalised effective config
            (:func:`~segzoo.training.launch.normalized_config`), ``None`` for a run started from Python.

    Returns:
        ``{"format": 1, "config": config or None, "train": {"model", "seed", "amp", "main_metric",
        "minimize_metric", "valid_loader", "loaders", "stages": [{"name", "optimizer", "scheduler",
        "criterion"}, ...]}}``.
    """
    def own(value: Any, default: Any) -> Any:
        return value if value is not None else default

    train = {
        "model": model_settings(model), "seed": plain(seed), "amp": plain(amp), "main_metric": str(main_metric),
        "minimize_metric": bool(minimize_metric), "valid_loader": str(valid_loader),
        "loaders": {str(name): loader_settings(loader) for name, loader in loaders.items()},
        "stages": [{"name": s.name, "optimizer": optimizer_hparams(own(s.optimizer, optimizer)),
                    "scheduler": scheduler_settings(own(s.scheduler, scheduler)),
                    "criterion": criterion_settings(own(s.criterion, criterion))} for s in stages],
    }
    return {"format": FORMAT, "config": None if config is None else plain_config(config), "train": train}


def flatten(node: Any, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"a.b.0.c": leaf}`` of nested dicts / lists (an empty one is a leaf)."""
    out = {} if out is None else out
    if isinstance(node, Mapping) and node:
        for k, v in node.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(node, list) and node:
        for i, v in enumerate(node):
            flatten(v, f"{prefix}.{i}", out)
    else:
        out[prefix] = node
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


ABSENT = "<absent>"


def differences(saved: Any, given: Any, where: str, strict: bool = False,
                former: Mapping[str, tuple[Any, ...]] | None = None) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, given value)`` of each setting that differs, keys spelled ``a.b[0].c``.

    A key on one side only is skipped (a setting torch added or dropped between versions says
    nothing) unless ``strict``; then it differs (its value :data:`ABSENT` on the other side),
    except a key given with one of the values ``former`` names for it (a default the saved run used).
    Lists of different lengths differ as a whole; floats are compared to a relative 1e-9.
    """
    if isinstance(saved, Mapping) and isinstance(given, Mapping):
        out = []
        for key in [*saved, *(k for k in given if k not in saved)]:  # the describer's order: main settings first
            path = f"{where}.{key}" if where else str(key)
            if key in saved and key in given:
                out += differences(saved[key], given[key], path, strict, former)
            elif strict and not (key in given and all(v in (former or {}).get(k, ())
                                                        for k, v in flatten(given[key], path).items())):
                out.append((path, saved.get(key, ABSENT), given.get(key, ABSENT)))
        return out
    if isinstance(saved, list) and isinstance(given, list) and len(saved) == len(given):
        return [d for i, (a, b) in enumerate(zip(saved, given))
                for d in differences(a, b, f"{where}[{i}]", strict, former)]
    return [] if _same(saved, given) else [(where, saved, given)]


def show_value(value: Any) -> str:
    """``value`` for a one-line message: :data:`ABSENT` as is, anything else short."""
    return ABSENT if value is ABSENT else short_repr(value)


def format_differences(diffs: list[tuple[str, Any, Any]], shown: int = 3) -> str:
    """``key=new (the run used old); ...`` for the first ``shown`` differences, and how many more."""
    text = "; ".join(f"{k}={show_value(new)} (the run used {show_value(old)})" for k, old, new in diffs[:shown])
    return text + (f" and {len(diffs) - shown} more" if len(diffs) > shown else "")


def _stage_differences(saved: list[Any], given: list[Any], path: str | os.PathLike) -> list[tuple[str, Any, Any]]:
    diffs: list[tuple[str, Any, Any]] = []
    names = [s.get("name") if isinstance(s, Mapping) else None for s in saved]
    if len(given) < len(saved):
        diffs.append(("stages", names, [s["name"] for s in given]))
    single = len(saved) == len(given) == 1
    for i, (old, new) in enumerate(zip(saved, given)):
        if not isinstance(old, Mapping):
            raise CheckpointError(f"checkpoint {path}: {RUN_SETTINGS_KEY} stage {i} is not what segzoo writes")
        if old.get("name") != new["name"]:
            diffs.append((f"stages[{i}].name", old.get("name"), new["name"]))
        for part in ("optimizer", "scheduler", "criterion"):
            if part in old:
                diffs += differences(old[part], new[part], part if single else f"stages[{i}].{part}")
    return diffs


def check_run_settings(saved: Any, current: Mapping[str, Any] | None, path: str | os.PathLike = "the checkpoint") -> None:
    """Refuse to resume when what ``train()`` was given differs from what the checkpoint's run was given.

    Compared: model spec (without weight sources; a setting named on one side only differs, but
    for :func:`~segzoo.checkpoint_format.former_defaults_for`), seed (not ``amp`` / ``precision``: :data:`MAY_CHANGE`), ``main_metric``, ``minimize_metric``,
    ``valid_loader``, the loaders (names, batch size, dataset type, length and settings), and each
    stage the saved run had (name, optimizer, scheduler, criterion); epochs are not compared and
    stages appended at the end are new. ``saved`` ``None`` (a checkpoint written before run
    settings were stored) or ``current`` ``None`` (not training) checks nothing.

    Raises:
        CheckpointError: ``saved`` is not what :func:`describe_run` writes.
        ValueError: naming the first changed settings with the new and the saved value, in one line.
    """
    if saved is None or current is None:
        return
    old = saved.get("train") if isinstance(saved, Mapping) else None
    if not isinstance(old, Mapping) or not isinstance(old.get("stages"), list) \
            or not isinstance(old.get("loaders", {}), Mapping):
        raise CheckpointError(f"checkpoint {path}: its {RUN_SETTINGS_KEY!r} is not what segzoo writes "
                              f"(a dict with the run's 'train' settings); it cannot be checked for resuming")
    new = current["train"]
    saved_model = old.get("model")
    name = saved_model.get("name") if isinstance(saved_model, Mapping) else None
    former = {k.replace("model.params.", "model.kwargs.", 1): v for k, v in former_defaults_for(name).items()}
    diffs: list[tuple[str, Any, Any]] = []
    for key in sorted(set(old) & set(new) - {"stages", *MAY_CHANGE}):
        if key == "loaders" and set(old[key]) != set(new[key]):
            diffs.append(("loaders", sorted(old[key], key=str), sorted(new[key], key=str)))
        diffs += differences(old[key], new[key], key, strict=key == "model", former=former)
    diffs += _stage_differences(old["stages"], new["stages"], path)
    if diffs:
        section = diffs[0][0].split(".", 1)[1] if diffs[0][0].startswith("stages[") else diffs[0][0]
        section = section.split(".")[0].split("[")[0]
        raise ValueError(f"cannot resume from {path} with a changed {section}: {format_differences(diffs)}; "
                         f"only epochs, stages appended at the end, device, verbosity, workers, compile, "
                         f"channels_last, precision and nonfinite may change on resume (the saved state would override a "
                         f"new optimizer, scheduler or criterion setting, other changes would mix two runs). "
                         f"Resume with the run's settings, or start a new run in a new logdir")


def stored_config(ck: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Any] | None:
    """The normalised config ``segzoo train`` stored in the full checkpoint ``ck`` (read from ``path``).

    Returns:
        ``None`` for a run started from Python, a light checkpoint or one written before run settings were stored.

    Raises:
        CheckpointError: the stored settings are not what segzoo writes.
    """
    settings = ck.get(RUN_SETTINGS_KEY)
    if settings is None:
        return None
    config = settings.get("config") if isinstance(settings, Mapping) else settings
    if config is not None and not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {path}: its {RUN_SETTINGS_KEY!r} is not what segzoo writes "
                              f"(a dict whose 'config' is a dict or None; found {short_repr(config)})")
    return config
