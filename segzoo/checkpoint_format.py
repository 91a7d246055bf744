"""The checkpoint format: what a light and a full checkpoint hold, its version, and the migrations of older ones.

Every checkpoint the trainer writes is built here (:func:`model_checkpoint`, :func:`full_checkpoint`)
and every reader (``load_model`` and with it export, trace, predict and serve; resume; the resumed
config check of ``segzoo train``) goes through :func:`read_checkpoint`, which verifies the file
(:func:`segzoo.checkpoint.load_checkpoint`: checksums, ``weights_only=True``), refuses a format
newer than this code, and brings an older one to the current format with :func:`migrate`.

Keys of a light checkpoint (``best.pth``, ``last.pth``, ``{stage}.{epoch}.pth``):

- ``format_version`` (:data:`FORMAT_KEY`): :data:`FORMAT_VERSION`; a file without it is version 0
- ``model_state_dict``: plain parameter names (no ``module.`` / ``_orig_mod.`` prefixes)
- ``model_spec``: ``{"name": registry name, "kwargs": {...}}`` or ``None`` for models outside the
  registry (custom encoders); see :mod:`segzoo.models.registry`
- ``stage``, ``stage_index``, ``epoch``, ``global_epoch``, ``valid_metrics``, ``epoch_metrics``,
  ``main_metric``, ``minimize_metric``, ``best_valid_metric``, ``best_name``, ``stage_stopped``,
  and the run's ``checkpoint_data`` (``normalization``, ``optimizer_hparams``...)

A full checkpoint (``*_full.pth``) adds ``optimizer_state_dict``, ``scheduler_state_dict``,
``criterion_state_dict``, ``scaler_state_dict``, ``callbacks_state`` (each callback's state),
``rng_state`` (:func:`rng_state`) and ``run_settings`` (:data:`RUN_SETTINGS_KEY`: what the run was
given, see :mod:`segzoo.training.run_settings`).

Changing the format: raise :data:`FORMAT_VERSION` and append a :class:`Migration` to
:data:`MIGRATIONS` that turns a checkpoint of the version before into the new one. Readers see
only the current format; ``migrations_applied`` (:data:`MIGRATED_KEY`) records which migrations ran.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from segzoo.architectures import ARCHITECTURES, architecture_of, former_defaults_of, with_former_defaults
from segzoo.checkpoint import clean_state_dict, load_checkpoint
from segzoo.errors import CheckpointError, short_repr
from segzoo.models.registry import get_model_spec


class TrainingState(Protocol):
    """What the checkpoint writers read of a training run's state (:class:`segzoo.training.RunnerState` has it;
    this layer does not import the training layer above it)."""

    model: torch.nn.Module
    stage: str
    stage_index: int
    epoch: int
    global_epoch: int
    valid_metrics: dict[str, float]
    epoch_metrics: dict[str, dict[str, float]]
    main_metric: str
    minimize_metric: bool
    best_valid_metric: float | None
    best_name: str | None
    stop_training: bool
    checkpoint_data: dict[str, Any]
    optimizer: Any
    scheduler: Any
    criterion: Any
    scaler: Any
    run_settings: Any

FORMAT_KEY = "format_version"
FORMAT_VERSION = 3
MIGRATED_KEY = "migrations_applied"  # versions of the migrations that ran when the checkpoint was read
RUN_SETTINGS_KEY = "run_settings"  # the full checkpoint's key for what the run was given


@dataclass(frozen=True)
class Migration:
    """One step of the format: turns a checkpoint of format ``version - 1`` into format ``version``.

    Attributes:
        version: the format version the step produces.
        summary: what changed, one line.
        apply: ``apply(ckpt, weight_names)`` -> the migrated dict (``ckpt`` is not modified); ``weight_names``
            are the checkpoint's parameter names without ``module.`` / ``_orig_mod.`` prefixes.
        former_defaults: architecture (a row of :data:`segzoo.architectures.ARCHITECTURES`) -> model keyword
            (dotted, e.g. ``decoder_params.fuse``) -> the value runs of the older format used without naming it:
            naming it on resume is not a change.
        mismatch: ``mismatch(saved weight names, model's weight names)`` -> the former defaults (dotted keyword ->
            value) the checkpoint's weights have where the model has the current ones (how a resume into the new
            default fails); empty when there are none.
        former_run: how such a run is called in the hint (``"an UPerNet run from before ..."``).
    """

    version: int
    summary: str
    apply: Callable[[dict[str, Any], Collection[str]], dict[str, Any]]
    former_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    mismatch: Callable[[Collection[str], Collection[str]], Mapping[str, Any]] | None = None
    former_run: str = ""


# ---- migration 1: UPerNet's fusion default became "levels" (2026-11-30); earlier runs used "concat" ------

_UPERNET = "upernet"
_UPERNET_CONCAT = {"decoder_params.fuse": "concat"}


def _upernet_fusion(names: Collection[str]) -> str | None:
    """The fusion of the UPerNet decoder whose weights are ``names``: ``"levels"``, ``"concat"`` or ``None``."""
    if "decoder.fuse_parts.0.weight" in names:
        return "levels"
    return "concat" if "decoder.fuse.0.weight" in names else None


def _upernet_concat_spec(ckpt: dict[str, Any], names: Collection[str]) -> dict[str, Any]:
    """An UPerNet spec without ``fuse`` whose weights have the concat fusion gets ``fuse="concat"``."""
    spec = ckpt.get("model_spec")
    if not isinstance(spec, Mapping) or _upernet_fusion(names) != "concat" \
            or architecture_of(str(spec.get("name", ""))) != _UPERNET:
        return ckpt
    kwargs = spec.get("kwargs")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        return ckpt
    decoder = (kwargs or {}).get("decoder_params")
    if not (decoder is None or isinstance(decoder, Mapping)) or (decoder is not None and "fuse" in decoder):
        return ckpt
    new_spec = {**spec, "kwargs": {**(kwargs or {}), "decoder_params": {**(decoder or {}), "fuse": "concat"}}}
    return {**ckpt, "model_spec": new_spec}


def _upernet_mismatch(saved: Collection[str], model: Collection[str]) -> Mapping[str, Any]:
    return _UPERNET_CONCAT if _upernet_fusion(saved) == "concat" and _upernet_fusion(model) == "levels" else {}


# ---- migrations 2 and 3: defaults of the architecture table's rows changed (their FormerDefault entries, each
# with the format version that brings it): UnetPlusPlus's decoder complexity became 1 and MAnet's head got two
# upsample steps (format 2), Segformer's decoder fuse became "concat" and MAnet's head steps transposed convs
# (format 3), all on 2026-12-07 --------------------------------------------------------------------------------------

def _former_defaults_spec(ckpt: dict[str, Any], names: Collection[str]) -> dict[str, Any]:
    """A spec of a row with former defaults that does not name the changed keyword, whose weights have the former
    default's form, gets that keyword with its former value (:func:`segzoo.architectures.with_former_defaults`;
    applying every row's is safe at any version: the weights tell which form they have)."""
    spec = ckpt.get("model_spec")
    if not isinstance(spec, Mapping):
        return ckpt
    kwargs = with_former_defaults(str(spec.get("name", "")), spec.get("kwargs"), names)
    return ckpt if kwargs is None else {**ckpt, "model_spec": {**spec, "kwargs": kwargs}}


def _table_migration(version: int, former_run: str) -> Migration:
    """The migration that brings the table's former defaults of checkpoint format ``version``."""
    rows = {name: [f for f in row.former_defaults if f.checkpoint_format == version]
            for name, row in ARCHITECTURES.items()}
    former = {name: {f"{f.part}.{f.key}": f.value for f in found} for name, found in rows.items() if found}
    changed = "; ".join(f"{name} {', '.join(f'{k}={v!r}' for k, v in values.items())}"
                        for name, values in former.items())

    def mismatch(saved: Collection[str], model: Collection[str]) -> Mapping[str, Any]:
        gone = set(former_defaults_of(saved)) - set(former_defaults_of(model))
        return {f"{f.part}.{f.key}": f.value for f in gone if f.checkpoint_format == version}

    return Migration(version, f"checkpoints of an architecture whose default changed since (the table's former "
                              f"defaults: {changed}) get the former value in their spec when it does not name it and "
                              f"their weights have the former form", _former_defaults_spec, former_defaults=former,
                     mismatch=mismatch, former_run=former_run)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "UPerNet checkpoints whose spec has no decoder_params.fuse and whose weights have the concat "
                 "fusion get fuse='concat', the default they were trained with",
              _upernet_concat_spec, former_defaults={_UPERNET: _UPERNET_CONCAT}, mismatch=_upernet_mismatch,
              former_run="an UPerNet run from before the per-level fusion default"),
    _table_migration(2, "a run from before a default of its architecture changed"),
    _table_migration(3, "a run from before a default of its architecture changed"),
)


def _former_defaults_by_architecture() -> dict[str, dict[str, tuple[Any, ...]]]:
    out: dict[str, dict[str, tuple[Any, ...]]] = {}
    for m in MIGRATIONS:
        for arch, values in m.former_defaults.items():
            for key, value in values.items():
                seen = out.setdefault(arch, {}).setdefault(f"model.params.{key}", ())
                out[arch][f"model.params.{key}"] = seen if value in seen else (*seen, value)
    return out


#: architecture -> config key (``model.params.…``) -> the values a run of an older format used without naming
#: the key: a resumed ``segzoo train`` config of that architecture may name it with one of them (from the
#: migrations' ``former_defaults``)
FORMER_DEFAULTS: dict[str, dict[str, tuple[Any, ...]]] = _former_defaults_by_architecture()


def former_defaults_for(model_name: Any) -> dict[str, tuple[Any, ...]]:
    """The :data:`FORMER_DEFAULTS` of the built-in registry model ``model_name`` (``"resnet18_upernet"``): config
    key -> former values; empty for another model (a user's registered name, a class)."""
    arch = architecture_of(model_name) if isinstance(model_name, str) else None
    return FORMER_DEFAULTS.get(arch or "", {})


def former_default_hint(saved_names: Collection[str], model_names: Collection[str]) -> str:
    """A hint for weights that do not fit because the model uses a default the checkpoint's run did not.

    Args:
        saved_names: the checkpoint's parameter names (prefixes stripped).
        model_names: the parameter names of the model they are loaded into.

    Returns:
        ``" (an UPerNet run from ...: resume with model.params.decoder_params.fuse=concat)"`` (the former
        defaults the weights have, only those) or ``""``.
    """
    found = [(m.former_run, m.mismatch(saved_names, model_names)) for m in MIGRATIONS if m.mismatch is not None]
    found = [(run, values) for run, values in found if values]
    named = ", ".join(f"model.params.{k}={v}" for _, values in found for k, v in sorted(values.items()))
    return f" ({found[0][0]}: resume with {named})" if found else ""


def checkpoint_version(ckpt: Mapping[str, Any], source: str | os.PathLike = "the checkpoint") -> int:
    """The format version of ``ckpt`` (0 when it has none).

    Raises:
        CheckpointError: the version is not a whole number >= 0, or newer than :data:`FORMAT_VERSION`.
    """
    version = ckpt.get(FORMAT_KEY, 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise CheckpointError(f"checkpoint {source}: {FORMAT_KEY} is {short_repr(version)}, expected a whole "
                              f"number >= 0; it was not written by segzoo")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {source} was written by a newer segzoo (checkpoint format {version}, "
                              f"this segzoo reads up to {FORMAT_VERSION}); upgrade segzoo to read it")
    return version


def migrate(ckpt: Mapping[str, Any], source: str | os.PathLike = "the checkpoint") -> dict[str, Any]:
    """``ckpt`` in the current format: the migrations after its version applied in order, each once.

    The result has ``format_version`` :data:`FORMAT_VERSION` and, when migrations ran, their versions
    added to ``migrations_applied``; migrating it again changes nothing. ``ckpt`` is not modified.

    Raises:
        CheckpointError: see :func:`checkpoint_version`.
    """
    version = checkpoint_version(ckpt, source)
    out = dict(ckpt)
    pending = [m for m in MIGRATIONS if m.version > version]
    if not pending:
        return out
    weights = out.get("model_state_dict")
    names = clean_state_dict(weights).keys() if isinstance(weights, Mapping) else ()
    for m in pending:
        out = m.apply(out, names)
        applied = out.get(MIGRATED_KEY)
        out[MIGRATED_KEY] = [*(applied if isinstance(applied, list) else []), m.version]
        out[FORMAT_KEY] = m.version
    return out


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read, verify and migrate a checkpoint: what every segzoo reader of checkpoints calls.

    Args:
        path: the ``.pth`` file.
        map_location: where tensors are loaded (default CPU).

    Returns:
        The checkpoint dict in the current format (see the module doc for its keys).

    Raises:
        FileNotFoundError / CheckpointError: as :func:`segzoo.checkpoint.load_checkpoint`; also a checkpoint
            written by a newer segzoo (one line: upgrade) or with a malformed ``format_version``.
    """
    return migrate(load_checkpoint(path, map_location=map_location), path)


# ---- writing --------------------------------------------------------------------------------------------

def model_checkpoint(state: TrainingState) -> dict[str, Any]:
    """The light checkpoint: weights, model spec, metrics, position, extra data (plain data only)."""
    return {
        "model_state_dict": clean_state_dict(state.model.state_dict()),
        "model_spec": get_model_spec(state.model),
        "stage": state.stage,
        "stage_index": state.stage_index,
        "epoch": state.epoch,
        "global_epoch": state.global_epoch,
        "valid_metrics": dict(state.valid_metrics),
        "epoch_metrics": {k: dict(v) for k, v in state.epoch_metrics.items()},
        "main_metric": state.main_metric,
        "minimize_metric": state.minimize_metric,
        "best_valid_metric": state.best_valid_metric,
        "best_name": state.best_name,
        # a callback (early stopping) ended the stage at this epoch: resuming goes on with the next stage
        "stage_stopped": bool(state.stop_training),
        **state.checkpoint_data,
        FORMAT_KEY: FORMAT_VERSION,  # after checkpoint_data: extra data never passes for another format
    }


def _state_dict_of(obj: Any) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return {k: _state_dict_of(v) for k, v in obj.items()}
    return obj.state_dict() if hasattr(obj, "state_dict") else None


def full_checkpoint(state: TrainingState, cb_states: dict[str, Any]) -> dict[str, Any]:
    """The light checkpoint plus optimizer, scheduler, criterion, scaler, callback and RNG state, and the
    run's settings (``state.run_settings``, checked when resuming).

    ``cb_states``: the callbacks' state to file, by state key
    (:func:`segzoo.training.callbacks.checkpoint.callbacks_state`).
    """
    return {
        **model_checkpoint(state),
        "optimizer_state_dict": _state_dict_of(state.optimizer),
        "scheduler_state_dict": _state_dict_of(state.scheduler),
        "criterion_state_dict": _state_dict_of(state.criterion),
        "scaler_state_dict": _state_dict_of(state.scaler),
        "callbacks_state": cb_states,
        "rng_state": rng_state(),
        RUN_SETTINGS_KEY: state.run_settings,  # what the run was given; resuming compares it
    }


def rng_state() -> dict[str, Any]:
    """RNG states of torch, CUDA, numpy and python as plain data (loads with ``weights_only=True``)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = rng["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    p = rng["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
