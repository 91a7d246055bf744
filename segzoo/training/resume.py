"""Resuming a run: find the full checkpoint, load the weights, restore optimizer/callback/RNG state."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from segzoo.checkpoint import clean_state_dict, resolve_checkpoint
from segzoo.checkpoint_format import RUN_SETTINGS_KEY, former_default_hint, read_checkpoint, set_rng_state
from segzoo.encoders.weights import load_into
from segzoo.training.callback import Callback, state_keys
from segzoo.training.run_settings import check_run_settings, differences, format_differences
from segzoo.training.state import RunnerState
from segzoo.unwrap import unwrap_model


def find_resume_file(resume: str | os.PathLike) -> Path:
    """The checkpoint to resume from: a log directory gives ``checkpoints/last_full.pth``; a light
    ``last.pth`` / ``best.pth`` / ``{stage}.{epoch}.pth`` is replaced by its ``_full`` sibling when present.

    Raises:
        FileNotFoundError: nothing to resume from (the message lists what exists).
    """
    path = Path(resume)
    if path.is_dir():
        return resolve_checkpoint(path, "last_full")
    if not path.is_file():
        light = path.with_name(path.name.replace("_full.pth", ".pth"))
        if path.name.endswith("_full.pth") and path.name != "last_full.pth" and light.is_file():
            raise FileNotFoundError(f"resume checkpoint not found: {path}; only last_full.pth keeps the optimizer "
                                    f"state unless CheckpointCallback(keep_full=True): resume from the log directory, "
                                    f"or from {light.name} (its weights, with fresh optimizer state)")
        raise FileNotFoundError(f"resume checkpoint not found: {path}")
    full = path if path.stem.endswith("_full") else path.with_name(path.stem + "_full.pth")
    return full if full.is_file() else path


def load_resume(resume: str | os.PathLike, state: RunnerState, stage_names: list[str] | None) -> dict[str, Any]:
    """Read the checkpoint, check its stage, load its weights into ``state.model``.

    Args:
        resume: log directory or checkpoint file (see :func:`find_resume_file`).
        state: the run's state (``model`` and ``device`` set).
        stage_names: the run's stages; ``None`` accepts a checkpoint of any stage (inference).

    Returns:
        The checkpoint with an extra ``stage_index`` (position of its stage in ``stage_names``).

    Raises:
        ValueError: training (``stage_names`` given) with settings other than those the checkpoint's
            run was given (``state.run_settings`` against the checkpoint's, see
            :func:`~segzoo.training.run_settings.check_run_settings`); checked before the weights are loaded.
    """
    path = find_resume_file(resume)
    ck = read_checkpoint(path, map_location=state.device)  # verified, in the current format
    if stage_names is not None:
        if ck.get("stage") not in stage_names:
            raise ValueError(f"checkpoint {path} is from stage {ck.get('stage')!r}, not one of {stage_names}")
        ck["stage_index"] = stage_names.index(ck["stage"])
        check_run_settings(ck.get(RUN_SETTINGS_KEY), state.run_settings, path)  # before the model is touched
    weights = clean_state_dict(ck["model_state_dict"])
    model = unwrap_model(state.model)
    hint = former_default_hint(weights.keys(), model.state_dict().keys())  # a default changed since the run
    load_into(model, weights, f"the model (resuming from {path})", hint=hint)
    ck["_path"] = str(path)
    if stage_names is not None and "optimizer_state_dict" not in ck:
        warnings.warn(f"{path} has no optimizer state (not a _full checkpoint): resuming with fresh "
                      f"optimizer/scheduler state", stacklevel=3)
    return ck


def completed_epochs(ck: dict[str, Any]) -> tuple[int, int]:
    """``(epoch within its stage, global epoch)`` of the last epoch ``ck`` holds complete.

    A Ctrl-C checkpoint (``"epoch_complete": False``) records the epoch it interrupted, which is
    not complete: resuming re-runs it. (Interrupted checkpoints written before ``epoch_complete``
    already recorded the epoch before.)
    """
    back = 1 if ck.get("epoch_complete") is False else 0
    return int(ck.get("epoch", 0)) - back, int(ck.get("global_epoch", 0)) - back


def start_point(resume: str | os.PathLike | None, state: RunnerState,
                stages: list[Any]) -> tuple[int, int, dict[str, Any] | None]:
    """``(stage index, epoch, checkpoint)`` a run of ``stages`` starts from: ``(0, 1, None)`` for a fresh run.

    The epoch after the checkpoint's last complete one, or the next stage's first when that ends
    the stage (its last epoch, or a callback such as early stopping stopped the stage there).

    Raises:
        ValueError: the checkpoint ends the last stage (nothing left to train), or see :func:`load_resume`.
    """
    if resume is None:
        return 0, 1, None
    resumed = load_resume(resume, state, [s.name for s in stages])
    done, _ = completed_epochs(resumed)
    start_stage, start_epoch = resumed["stage_index"], done + 1
    if start_epoch > stages[start_stage].num_epochs or (resumed.get("stage_stopped") and done > 0):
        start_stage, start_epoch = start_stage + 1, 1
    if start_stage == len(stages):
        raise ValueError(f"checkpoint {resume} is at the end of the last stage ({resumed['stage']!r}, "
                         f"epoch {done}): nothing left to train; raise num_epochs or add a stage")
    return start_stage, start_epoch, resumed


def _load_into_obj(obj: Any, saved: Any) -> None:
    if saved is None or obj is None:
        return
    if isinstance(obj, dict):
        for name, sub in obj.items():
            if name in saved and hasattr(sub, "load_state_dict"):
                sub.load_state_dict(saved[name])
    elif hasattr(obj, "load_state_dict"):
        obj.load_state_dict(saved)


def check_optimizer_unchanged(ck: dict[str, Any], current: Any, path: str | os.PathLike = "the checkpoint") -> None:
    """Refuse to resume when the optimizer given differs from the one the checkpoint was trained with.

    Loading the saved optimizer state would silently replace the given learning rate, momentum...
    with the saved ones, so a change would be ignored. Checkpoints written before the settings were
    recorded (no ``optimizer_hparams``) are not checked.

    Raises:
        ValueError: naming each differing setting with both values.
    """
    saved = ck.get("optimizer_hparams")
    if saved is None or current is None or ck.get("optimizer_state_dict") is None:
        return
    diffs = differences(saved, current, "optimizer")
    if diffs:
        raise ValueError(f"cannot resume from {path} with a changed optimizer: {format_differences(diffs)}; the "
                         f"saved optimizer state would override it. Resume with the run's settings, or start a new "
                         f"run in a new logdir")


def legacy_state_keys(callbacks: list[Callback]) -> list[str]:
    """Keys of checkpoints written before ``Callback.state_key``: class name and occurrence (``EarlyStoppingCallback:1``).

    Used only to read such checkpoints; they restore correctly when the callbacks come in the same order.
    """
    counts: dict[str, int] = {}
    keys = []
    for cb in callbacks:
        name = type(cb).__name__
        counts[name] = counts.get(name, 0) + 1
        keys.append(f"{name}:{counts[name]}")
    return keys


def restore_after_resume(ck: dict[str, Any], state: RunnerState, callbacks: list[Callback],
                         run_callbacks: list[Callback] | None = None) -> None:
    """Restore optimizer, scheduler, criterion, scaler, callback and RNG state for the first resumed stage.

    When the checkpoint ends the previous stage, the new stage starts as in an uninterrupted run:
    with its own fresh optimizer and scheduler, and only the callbacks of ``run_callbacks`` (those
    of the whole run, which an uninterrupted run carries from stage to stage) get their saved
    state; the stage's own callbacks start new. (Stage-scoped state inside run callbacks, such as
    early stopping's, is reset by their ``on_stage_start``.) ``None``: every callback is restored.

    Raises:
        ValueError: the optimizer settings differ from the checkpoint's (:func:`check_optimizer_unchanged`).
    """
    same_stage = ck.get("stage") == state.stage
    if same_stage:
        check_optimizer_unchanged(ck, state.checkpoint_data.get("optimizer_hparams"), ck.get("_path", "the checkpoint"))
    for key, obj in (("optimizer_state_dict", state.optimizer), ("scheduler_state_dict", state.scheduler),
                     ("criterion_state_dict", state.criterion), ("scaler_state_dict", state.scaler)):
        if same_stage or key in ("criterion_state_dict", "scaler_state_dict"):
            _load_into_obj(obj, ck.get(key))
    saved_cbs = ck.get("callbacks_state", {})
    carried = {id(cb) for cb in (callbacks if same_stage or run_callbacks is None else run_callbacks)}
    for key, old_key, cb in zip(state_keys(callbacks), legacy_state_keys(callbacks), callbacks):
        if id(cb) not in carried:
            continue
        saved = saved_cbs.get(key, saved_cbs.get(old_key))
        if saved is not None:
            cb.load_state_dict(saved)
    state.global_epoch = completed_epochs(ck)[1]
    state.best_valid_metric = ck.get("best_valid_metric")
    state.best_name = ck.get("best_name")
    if state.best_name is None and state.best_valid_metric is not None:  # written before best_name was stored
        top = next((v["top"] for v in saved_cbs.values() if isinstance(v, dict) and "top" in v), [])
        state.best_name = next((str(n) for v, n in top if v == state.best_valid_metric), None)
    if ck.get("rng_state") is not None:
        set_rng_state(ck["rng_state"])
