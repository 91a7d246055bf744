"""``segzoo tune``'s study: Optuna trials, each an ordinary ``segzoo train`` run in its own folder.

The config's ``logdir`` is the study's folder: trial ``N`` trains in ``LOGDIR/trial-NNNN`` (the
logdir policy of every run applies: a trial never writes into a folder holding another run), and
the study's summary (``trials.csv``, ``trials.md``, ``history.png``, ``importances.png``, see
:mod:`segzoo.tuning.report`) and its default storage ``LOGDIR/study.db`` live beside them.

Each trial reports its valid ``runner.main_metric`` at every epoch (step = global epoch) through
:class:`~segzoo.training.callbacks.OptunaPruningCallback`, which stops it when the pruner says so
(state PRUNED); its objective is the run's best value of that metric, in the direction of
``runner.minimize_metric``. A trial whose run fails is FAIL with its one-line reason (user
attribute ``reason``) and the study goes on. The study lives in Optuna's storage: running the
command again continues it up to ``trials`` finished trials, and several processes (or machines,
with a PostgreSQL / MySQL URL) given the same ``storage`` and ``study`` share it; a trial left
RUNNING by a killed process is marked FAIL by Optuna's heartbeat after ``GRACE_PERIOD`` seconds.
"""

from __future__ import annotations

import copy
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segzoo.errors import ConfigError, short_repr
from segzoo.tuning.space import PRUNERS, SAMPLERS, SearchSpace, check_space_keys, override

HEARTBEAT_INTERVAL = 20  # seconds between a running trial's heartbeats in the storage
GRACE_PERIOD = 120  # a RUNNING trial without a heartbeat for this long is marked FAIL (its process died)
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
STORAGE_ATTEMPTS = 5  # opening a storage that another process is creating


def trial_dir(logdir: str | os.PathLike, number: int) -> Path:
    """The log directory of trial ``number`` of a study in ``logdir``."""
    return Path(logdir) / f"trial-{number:04d}"


def default_storage(logdir: str | os.PathLike) -> str:
    """``sqlite:///LOGDIR/study.db`` (absolute): the study's storage when ``--storage`` is not given."""
    return f"sqlite:///{Path(logdir).resolve() / 'study.db'}"


def make_storage(url: str) -> Any:
    """An Optuna RDB storage for ``url`` with heartbeats (SQLite waits up to 60 s for another writer).

    Raises:
        ConfigError: a URL Optuna's storage cannot open (one line naming it).
    """
    import optuna

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None
    attempt = 0
    while True:
        attempt += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_INTERVAL,
                                                  grace_period=GRACE_PERIOD)
        except Exception as exc:  # noqa: BLE001 - sqlalchemy / driver errors of a bad URL
            # two processes creating a new storage's tables at once: the loser finds them on the next attempt
            if attempt < STORAGE_ATTEMPTS and type(exc).__name__ in ("IntegrityError", "OperationalError"):
                time.sleep(0.5 * attempt)
                continue
            raise ConfigError(f"--storage {short_repr(hide_password(url))}: cannot open it ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def hide_password(url: str) -> str:
    """``url`` with the password of ``scheme://user:password@host`` replaced by ``***`` (for messages)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _named(settings: dict[str, Any] | None, names: dict[str, str], module: Any, what: str) -> Any:
    if settings is None:
        return None
    args = {k: v for k, v in settings.items() if k != "name"}
    try:
        return getattr(module, names[settings["name"]])(**args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} {settings['name']}: {str(exc).splitlines()[0]}") from None


def pruner_and_sampler(space: SearchSpace, pruner: str | None) -> tuple[Any, Any]:
    """The Optuna pruner (``pruner`` from the command line wins over the space file's) and sampler.

    Raises:
        ConfigError: arguments the pruner or sampler refuses.
    """
    import optuna

    settings = {"name": pruner} if pruner is not None else space.pruner
    return (_named(settings, PRUNERS, optuna.pruners, "pruner"),
            _named(space.sampler, SAMPLERS, optuna.samplers, "sampler"))


def _with_trial_callbacks(cfg: dict[str, Any], study_name: str, name: str, logdir: Path) -> dict[str, Any]:
    """``cfg`` with the pruning callback added, and trackers given the study's store, group and run name."""
    cfg = copy.deepcopy(cfg)
    callbacks = cfg.setdefault("callbacks", [])
    for cb in callbacks:
        params = cb.setdefault("params", {})
        if cb.get("name") == "MLflowLogger":
            if not params.get("tracking_uri") and not os.environ.get("MLFLOW_TRACKING_URI"):
                params["tracking_uri"] = f"sqlite:///{logdir.resolve() / 'mlflow.db'}"  # one store for the study
            params.setdefault("experiment", study_name)
            params.setdefault("run_name", name)
        elif cb.get("name") == "WandbLogger":
            params.setdefault("group", study_name)
            params.setdefault("name", name)
    callbacks.append({"name": "OptunaPruningCallback", "params": {}})
    return cfg


def _fail_reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    line = message.splitlines()[0] if message.strip() else ""
    return f"{type(exc).__name__}: {line}"[:500]


def make_objective(config: str | os.PathLike, space: SearchSpace, overrides: list[str], study_name: str,
                   logdir: Path, say: Callable[[str], None]) -> Callable[[Any], float]:
    """The objective of the study: one ``segzoo train`` run per trial; returns its best main metric.

    Raises (inside the objective, for Optuna to record): ``optuna.TrialPruned`` when the pruner
    stopped the run; the run's own error otherwise (its one-line reason is the trial's ``reason``).
    """
    import optuna

    from segzoo.training.callbacks.pruning import OptunaPruningCallback, TrialPrunedStop, reporting_to
    from segzoo.training.config import load_config, train_from_config, validate

    def objective(trial: Any) -> float:
        folder = trial_dir(logdir, trial.number)
        trial.set_user_attr("logdir", str(folder))
        try:
            picked = [override(p.key, p.suggest(trial)) for p in space.params]
            cfg = load_config(config, [*overrides, *picked, override("logdir", str(folder))])
            cfg = _with_trial_callbacks(cfg, study_name, folder.name, logdir)
            validate(cfg)
            say(f"trial {trial.number}: {' '.join(picked)} -> {folder}")
            pruned = False
            with reporting_to(trial):
                try:
                    state = train_from_config(cfg, config_path=config)
                except TrialPrunedStop:
                    pruned = True
                    state = None
            if state is not None:
                pruner_cb = next((c for c in state.callbacks if isinstance(c, OptunaPruningCallback)), None)
                pruned = pruner_cb is not None and pruner_cb.pruned_at is not None
                if state.best_valid_metric is not None:
                    trial.set_user_attr("best", float(state.best_valid_metric))
                elif not pruned:
                    raise ValueError(f"the run recorded no finite valid {state.main_metric}")
        except BaseException as exc:
            reason = _fail_reason(exc)
            trial.set_user_attr("reason", reason)
            say(f"trial {trial.number}: FAIL: {reason}")
            raise
        if pruned:
            say(f"trial {trial.number}: PRUNED")
            raise optuna.TrialPruned()
        say(f"trial {trial.number}: COMPLETE {state.main_metric}={state.best_valid_metric:.4g}")
        return float(state.best_valid_metric)

    return objective


def open_study(name: str, storage: str, direction: str, main_metric: str, pruner: Any, sampler: Any) -> Any:
    """Create the study or load it from ``storage``; a loaded study must optimise the same metric the same way.

    Raises:
        ConfigError: the stored study optimises another metric or direction.
    """
    import optuna

    study = optuna.create_study(study_name=name, storage=make_storage(storage), direction=direction,
                                load_if_exists=True, pruner=pruner, sampler=sampler)
    stored = study.user_attrs.get("main_metric")
    if stored is None:
        study.set_user_attr("main_metric", main_metric)
    elif stored != main_metric or study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} in {hide_password(storage)} optimises {stored} "
                          f"({study.direction.name.lower()}), not {main_metric} ({direction}); "
                          f"choose another --study or runner.main_metric / runner.minimize_metric")
    return study


def finished_count(study: Any) -> int:
    """Trials of the study that ended (COMPLETE, PRUNED or FAIL)."""
    import optuna

    states = tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)
    return len(study.get_trials(deepcopy=False, states=states))


def run_study(config: str | os.PathLike, space: SearchSpace, trials: int, storage: str | None = None,
              study_name: str | None = None, pruner: str | None = None, overrides: list[str] = (),
              say: Callable[[str], None] | None = None, on_open: Callable[[Any], None] | None = None) -> Any:
    """Run (or continue) the study until it has ``trials`` finished trials; returns the ``optuna.Study``.

    Everything a user can get wrong (config, space keys, pruner, storage, a study of another metric,
    a summary file that is not the study's) is checked before the first trial.

    Args:
        config: the base config file (``logdir`` is the study's folder).
        space: the search space (:func:`~segzoo.tuning.space.read_space`).
        trials: finished trials to reach, counting those of earlier runs and other processes.
        storage: an Optuna storage URL (default :func:`default_storage`).
        study_name: the study's name (default: the logdir's folder name).
        pruner: a :data:`~segzoo.tuning.space.PRUNERS` name overriding the space file's.
        overrides: ``key.sub=value`` overrides applied to every trial's config.
        say: where progress lines go (default: stdout).
        on_open: called with the ``optuna.Study`` once it is opened (before the first trial).

    Raises:
        ConfigError: as above, one line. ``KeyboardInterrupt`` propagates after Optuna marked the
            running trial FAIL (reason "interrupted (Ctrl-C)").
    """
    import optuna

    from segzoo.training.config import load_config
    from segzoo.tuning.report import check_outputs

    say = say or (lambda line: print(line, flush=True))
    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {short_repr(trials)}")
    overrides = list(overrides)
    base = load_config(config, overrides)
    check_space_keys(space, config, overrides)
    runner = base.get("runner") or {}
    main_metric = runner.get("main_metric", "loss")
    direction = "minimize" if runner.get("minimize_metric", True) else "maximize"
    logdir = Path(base["logdir"])
    study_name = study_name or logdir.resolve().name
    if not study_name.strip() or not study_name.isprintable():
        raise ConfigError(f"--study must be a printable name, got {short_repr(study_name)}")
    check_outputs(logdir, study_name)
    pruner_obj, sampler = pruner_and_sampler(space, pruner)
    if storage is None:  # the default storage is a file in the study's folder
        logdir.mkdir(parents=True, exist_ok=True)
    study = open_study(study_name, storage or default_storage(logdir), direction, main_metric, pruner_obj, sampler)
    if on_open is not None:
        on_open(study)
    remaining = trials - finished_count(study)
    if remaining <= 0:
        say(f"study {study_name!r} already has {finished_count(study)} finished trials (--trials {trials})")
        return study
    objective = make_objective(config, space, overrides, study_name, logdir, say)
    stop = optuna.study.MaxTrialsCallback(trials, states=tuple(getattr(optuna.trial.TrialState, s)
                                                                for s in FINISHED))
    sys.stdout.flush()
    study.optimize(objective, n_trials=remaining, callbacks=[stop], catch=(Exception,))
    return study
