"""``train_from_config``: a validated config checked, built and trained, in an order that fails early.

Also :func:`check_resume_config`, which refuses to resume a run with settings it was not trained with.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from segzoo.checkpoint_format import former_defaults_for, read_checkpoint
from segzoo.errors import ConfigError, short_repr
from segzoo.fileio import write_bytes_atomic
from segzoo.training import preflight
from segzoo.training.build import (
    DEFAULT_LOSS,
    FOLDER_KEYS,
    aux_callbacks,
    build_loaders,
    build_named,
    build_stages,
    check_callback_params,
    check_names,
    model_from_config,
    num_classes,
    registries,
    stage_configs,
)
from segzoo.training.data_path import float_item
from segzoo.training.logdir import CONFIG_HEADER, LogdirClaim, check_logdir_free, resumes_in, run_dir_of
from segzoo.training.resume import find_resume_file
from segzoo.training.run_settings import ABSENT, flatten, plain_config, show_value, stored_config
from segzoo.training.supervised import SupervisedRunner
from segzoo.training.yaml_io import read_yaml_file

# config keys that may differ from the run's config (stored in its checkpoint, else config.yml) on resume: more
# epochs, and settings that do not change what is trained (where it runs, how it is shown, data loading speed)
RESUME_MAY_CHANGE = ("logdir", "num_epochs", "stages.N.num_epochs", "stages appended at the end", "runner.resume",
                     "runner.verbose", "runner.device", "runner.compile", "runner.channels_last", "runner.nonfinite",
                     "runner.precision", "runner.amp", "data.num_workers", "data.prefetch_factor",
                     "data.params.normalize")
DEFAULT_SEED = 42


def normalized_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The run ``cfg`` describes, spelled one way: what resume compares, and what full checkpoints store.

    ``num_epochs`` / top-level ``optimizer`` / ``scheduler`` become ``stages`` as they are built
    (:func:`~segzoo.training.build.stage_configs`: a one-stage config is the stage ``"train"``), so
    the one-stage and the ``stages=[...]`` spellings of one run are equal and a scheduler, optimizer
    or loss change in any stage shows; ``seed``, ``loss`` and a ``params: {}`` of each named section
    are filled with the defaults the run used. The result is itself a valid config of the same run,
    and normalising it again changes nothing (its top-level ``optimizer`` is only the first stage's
    name, with no params, and is not compared).

    Raises:
        ConfigError: ``cfg`` is not a mapping.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"a config must be a mapping of keys, got {type(cfg).__name__} {short_repr(cfg)}")
    out = {k: copy.deepcopy(v) for k, v in cfg.items() if k not in ("num_epochs", "optimizer", "scheduler")}
    out["stages"] = stage_configs(cfg)
    # the stages carry every optimizer setting: an empty top-level one adds none when the result is built
    out["optimizer"] = {"name": out["stages"][0]["optimizer"].get("name"), "params": {}}
    out.setdefault("seed", DEFAULT_SEED)
    out["loss"] = copy.deepcopy(cfg.get("loss") or DEFAULT_LOSS)
    out["callbacks"] = copy.deepcopy(cfg.get("callbacks") or [])
    for section in [out.get("model"), out["loss"], *out["callbacks"]]:
        if isinstance(section, dict):
            section.setdefault("params", {})
    return plain_config(out)


def _may_change(key: str, saved_stages: int) -> bool:
    if key in RESUME_MAY_CHANGE:
        return True
    parts = key.split(".")
    if parts[0] == "stages" and len(parts) > 1 and parts[1].isdigit():
        return int(parts[1]) >= saved_stages or parts[2:] == ["num_epochs"]
    return False


def check_resume_config(saved: dict[str, Any], cfg: dict[str, Any], saved_path: Path) -> None:
    """Refuse a resumed config that differs from the run's (its ``config.yml`` or the one its checkpoint
    stored) beyond :data:`RESUME_MAY_CHANGE`.

    Both are compared as :func:`normalized_config`, so a stage's scheduler, optimizer or loss
    cannot change by spelling a one-stage config as ``stages=[...]`` (or back). A key the saved
    config does not name may be given with a value runs of that architecture in an older checkpoint format
    used without naming it (:func:`segzoo.checkpoint_format.former_defaults_for`, from its migrations). A changed
    learning rate, model, loss or data would be silently overridden by the saved state or mix two
    different runs in one.

    Raises:
        ConfigError: naming the first changed key and both values (one line).
    """
    one_stage = "stages" not in cfg  # shown as the user spells it: scheduler.name, not stages.0.scheduler.name
    try:
        saved = normalized_config(saved)
    except (ConfigError, KeyError, TypeError, AttributeError) as exc:  # a hand-edited or crafted file
        raise ConfigError(f"{saved_path}: the run's config cannot be compared ({type(exc).__name__}: "
                          f"{short_repr(str(exc), 120)})") from None
    cfg = normalized_config(cfg)
    old, new = flatten(saved), flatten(cfg)
    saved_stages = len(saved["stages"])
    former = former_defaults_for(old.get("model.name"))
    for key in sorted(set(old) | set(new)):
        if key.startswith("optimizer.") or (key not in old and new.get(key) in former.get(key, ())):
            continue
        if old.get(key, ABSENT) != new.get(key, ABSENT) and not _may_change(key, saved_stages):
            shown = key.removeprefix("stages.0.") if one_stage else key
            raise ConfigError(f"resuming with {shown}={show_value(new.get(key, ABSENT))}, but the run was trained with "
                              f"{shown}={show_value(old.get(key, ABSENT))} ({saved_path}); only "
                              f"{', '.join(RESUME_MAY_CHANGE)} may change on resume. Start a new run (new logdir) "
                              f"for other settings")


def _saved_config(resume: str | os.PathLike) -> tuple[dict[str, Any] | None, Path]:
    """The config the resumed run was trained with: stored in its full checkpoint, else its ``config.yml``."""
    path = find_resume_file(resume)
    stored = stored_config(read_checkpoint(path), path)
    if stored is not None:
        return stored, path
    saved_path = run_dir_of(resume) / "config.yml"
    return (read_yaml_file(saved_path) if saved_path.is_file() else None), saved_path


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


def _check_outputs(cfg: dict[str, Any], logdir: Path, resume: str | None, force: bool, inputs: list[Any]) -> None:
    """The resumed config matches the run's, the logdir is outside the data and free (or resumed / forced)."""
    if resume is not None:
        saved, saved_path = _saved_config(resume)
        if saved is not None:
            check_resume_config(saved, cfg, saved_path)
    for key in FOLDER_KEYS:  # the run's outputs never go into its inputs
        if key in cfg["data"] and resumes_in(logdir, cfg["data"][key]):
            raise ConfigError(f"logdir {logdir} is inside data.{key} {cfg['data'][key]}; choose a logdir outside the data")
    if _is_main_rank():
        check_logdir_free(logdir, resume=resume, overwrite=force, inputs=inputs, caller="cli")


def train_from_config(cfg: dict[str, Any], force: bool = False, config_path: str | os.PathLike | None = None):
    """Build everything a validated config names and train.

    Order: names, types and combinations checked, the log directory checked against the policy of
    :mod:`segzoo.training.logdir`, a resumed config compared with the run's saved one, the model's
    size estimated, model / loss / callbacks / optimizers built, schedulers stepped on a throwaway
    optimizer, data loaded, one valid sample run through model and loss; then the log directory
    is claimed, ``config.yml`` written (fresh runs only) and training starts - so config mistakes
    fail before any directory is created or any epoch is spent.

    Args:
        cfg: a config that passed :func:`~segzoo.training.config.validate`.
        force: replace a previous run in ``logdir`` (``segzoo train --force``).
        config_path: the config file (an input: ``force`` never removes it).

    Returns:
        The final ``RunnerState`` of :meth:`segzoo.training.SupervisedRunner.train`.
    """
    check_names(cfg)
    regs = registries()
    loss_cfg = cfg.get("loss") or DEFAULT_LOSS
    preflight.check_loss_fits(loss_cfg["name"], loss_cfg.get("params") or {}, num_classes(cfg))
    check_callback_params(cfg, regs)
    logdir = Path(cfg["logdir"])
    runner_cfg = dict(cfg.get("runner", {}))
    resume = runner_cfg.get("resume")
    inputs = [p for p in (config_path, *(cfg["data"].get(k) for k in FOLDER_KEYS)) if p]
    _check_outputs(cfg, logdir, resume, force, inputs)

    seed = cfg.get("seed", DEFAULT_SEED)
    model = model_from_config(cfg["model"], seed)
    criterion = build_named(loss_cfg, regs["loss"], "loss")
    callbacks = [build_named(c, regs["callback"], "callback") for c in cfg.get("callbacks") or []]
    loaders, normalization = build_loaders(cfg["data"], seed)
    sample = float_item(loaders["valid"].dataset)  # features as the model sees them (uint8 ones normalized)
    loaders["train"].dataset[0]  # read as the run will: a colour mask or an unreadable file fails before the logdir
    callbacks += aux_callbacks(cfg, model, callbacks, regs, sample)
    stages, sched_names = build_stages(cfg, model, len(loaders["train"]), regs)
    preflight.check_metrics(callbacks, runner_cfg.get("main_metric", "loss"), sched_names)
    preflight.check_one_batch(model, criterion, sample, loss_cfg["name"])
    runner = SupervisedRunner(device=runner_cfg.pop("device", "auto"))
    if not _is_main_rank():
        return runner.train(model, criterion, None, loaders, logdir, callbacks=callbacks, stages=stages, seed=seed,
                            normalization=normalization, run_config=normalized_config(cfg), **runner_cfg)
    claim = LogdirClaim(logdir, resume=resume, overwrite=force, inputs=inputs, caller="cli")
    with claim:  # the run's one claim: the runner, given it as its logdir, claims nothing more
        if not resumes_in(resume, logdir):
            write_bytes_atomic(logdir / "config.yml", (CONFIG_HEADER + yaml.safe_dump(cfg, sort_keys=False)).encode())
        return runner.train(model, criterion, None, loaders, claim, callbacks=callbacks, stages=stages, seed=seed,
                            normalization=normalization, run_config=normalized_config(cfg), **runner_cfg)
