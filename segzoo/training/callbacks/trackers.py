"""Experiment trackers: :class:`MLflowLogger` and :class:`WandbLogger`.

Each tracker logs, from rank 0 only:

- once, when a fresh run starts: the run's config flattened to dotted keys as params
  (``optimizer.params.lr``...; the ``config.yml`` ``segzoo train`` wrote, else the settings
  ``train()`` was given);
- at each epoch end: every loader's epoch metrics as ``{loader}/{metric}`` and the learning rate
  the epoch trained with (``lr``; ``lr/{group}`` for several parameter groups, ``lr/{name}`` for a
  dict of optimizers), at step ``global_epoch``; each new ``predictions/*.png`` picture;
- at the end of the run (and when it fails or is interrupted): ``checkpoints/best.pth`` (the light
  checkpoint), ``metrics.csv`` and the pictures as artifacts; the tracker run ends FINISHED,
  KILLED (Ctrl-C) or FAILED.

The tracker run's id is part of the callback's state, stored in the run's full checkpoint
(``logdir/checkpoints/last_full.pth``), so a resumed run (``runner.resume=LOGDIR``) continues the
same MLflow run / W&B run id instead of starting another.

The engines are the optional extras ``mlflow`` and ``wandb`` of setup.cfg, imported
when a run starts, never at import time.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

from segzoo.errors import install_hint
from segzoo.training.callback import LoggerCallback, register_callback
from segzoo.training.callbacks.pruning import TrialPrunedStop
from segzoo.training.run_files import CONFIG_NAME, is_segzoo_config
from segzoo.training.run_settings import flatten
from segzoo.training.state import RunnerState

#: the files of the log directory a tracker keeps as artifacts at the end of the run
END_ARTIFACTS = ("checkpoints/best.pth", "metrics.csv")
MAX_PARAM_VALUE = 500  # characters of a param's value (MLflow's limit is 6000; longer values are cut)


def run_params(state: RunnerState) -> dict[str, str]:
    """The run's config as flat ``{"dotted.key": "value"}`` params.

    Read from the ``config.yml`` that ``segzoo train`` wrote into the log directory (the keys as the
    user spells them, overrides applied), else from ``state.run_settings`` (a run started from Python).
    """
    import yaml

    path = Path(state.logdir) / CONFIG_NAME if state.logdir is not None else None
    source: Any = None
    if path is not None and is_segzoo_config(path):
        with contextlib.suppress(OSError, yaml.YAMLError):
            source = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(source, dict):
        settings = state.run_settings or {}
        source = settings.get("config") or settings.get("train") or {}
    out = {}
    for key, value in flatten(source).items():
        text = "null" if value is None else str(value)
        out[key] = text if len(text) <= MAX_PARAM_VALUE else text[:MAX_PARAM_VALUE - 3] + "..."
    return out


def learning_rates(optimizer: Any) -> dict[str, float]:
    """``{"lr": value}`` of an optimizer's first group (``lr/{i}`` for each of several groups, ``lr/{name}``
    for a dict of optimizers); empty without one."""
    if optimizer is None:
        return {}
    if isinstance(optimizer, dict):
        out = {}
        for name, opt in optimizer.items():
            for key, value in learning_rates(opt).items():
                out[f"{key}/{name}"] = value
        return out
    groups = getattr(optimizer, "param_groups", None) or []
    values = [float(g["lr"]) for g in groups if isinstance(g.get("lr"), int | float)]
    if len(values) == 1:
        return {"lr": values[0]}
    return {f"lr/{i}": v for i, v in enumerate(values)}


def _stage_count(state: RunnerState) -> int:
    """Number of stages of the run (0 when unknown: the tracker run is then ended at every stage end)."""
    stages = ((state.run_settings or {}).get("train") or {}).get("stages")
    return len(stages) if isinstance(stages, list) else 0


class TrackerLogger(LoggerCallback):
    """Shared logic of the experiment trackers: what is logged when (see the module docstring).

    Subclasses implement :meth:`_open`, :meth:`_log_params`, :meth:`_log_metrics`,
    :meth:`_log_file` and :meth:`_close` for their engine.

    Args:
        log_artifacts: keep the best light checkpoint, ``metrics.csv`` and the prediction pictures
            as artifacts of the tracker run.
    """

    def __init__(self, log_artifacts: bool = True) -> None:
        super().__init__()
        if not isinstance(log_artifacts, bool):
            raise ValueError(f"{type(self).__name__}: log_artifacts must be true or false, got {log_artifacts!r}")
        self.log_artifacts = log_artifacts
        self.run_id: str | None = None  # the tracker's run id; restored from the checkpoint on resume
        self._active = False
        self._sent: set[str] = set()
        self._lrs: dict[str, float] = {}

    # ---- engine-specific ------------------------------------------------------------------

    def _open(self, state: RunnerState, resumed: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _log_params(self, params: dict[str, str]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _log_file(self, path: Path, folder: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close(self, status: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{"run_id": ...}``: the tracker run a resumed run continues."""
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the tracker run id of :meth:`state_dict`."""
        run_id = state_dict.get("run_id")
        self.run_id = str(run_id) if run_id else None

    # ---- events -----------------------------------------------------------------------------

    def on_stage_start(self, state: RunnerState) -> None:
        """Start the tracker run (or continue the resumed one); a fresh run logs its params."""
        if not state.is_main_process or state.logdir is None or self._active:
            return
        resumed = self.run_id is not None
        self._open(state, resumed)
        self._active = True
        if not resumed:
            self._log_params(run_params(state))

    def on_epoch_start(self, state: RunnerState) -> None:
        """Note the learning rate the epoch trains with (the scheduler steps before the epoch's end is logged)."""
        if state.is_main_process:
            self._lrs = learning_rates(state.optimizer)

    def on_epoch_end(self, state: RunnerState) -> None:
        """Every loader's epoch metrics and the learning rate at step ``global_epoch``; new pictures."""
        if not (state.is_main_process and self._active):
            return
        metrics = {f"{loader}/{name}": float(value) for loader, values in state.epoch_metrics.items()
                   for name, value in values.items() if isinstance(value, int | float) and math.isfinite(value)}
        metrics.update(self._lrs)
        self._log_metrics(metrics, state.global_epoch)
        if self.log_artifacts:
            self._send_pictures(state)

    def on_stage_end(self, state: RunnerState) -> None:
        """Keep the artifacts; end the tracker run after the last stage."""
        if not (state.is_main_process and self._active):
            return
        self._send_end_artifacts(state)
        if _stage_count(state) in (0, state.stage_index + 1):
            self._finish("FINISHED")
        else:
            self._close("RUNNING")  # flushed; the next stage continues the same tracker run

    def on_exception(self, state: RunnerState) -> None:
        """Keep what the run wrote and end the tracker run KILLED (Ctrl-C) or FAILED; a tracker error
        here is a warning, never in the way of the run's own error."""
        if not (state.is_main_process and self._active):
            return
        status = "KILLED" if isinstance(state.exception, KeyboardInterrupt | TrialPrunedStop) else "FAILED"
        try:
            self._send_end_artifacts(state)
            self._finish(status)
        except Exception as exc:  # noqa: BLE001 - the run's error is the one to show
            self._active = False
            warnings.warn(f"{type(self).__name__}: could not end the tracker run {self.run_id} as {status}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", stacklevel=2)

    # ---- helpers ----------------------------------------------------------------------------

    def _finish(self, status: str) -> None:
        self._active = False
        self._close(status)

    def _send_pictures(self, state: RunnerState) -> None:
        folder = Path(state.logdir) / "predictions"
        for path in sorted(folder.glob("*.png")) if folder.is_dir() else []:
            if str(path) not in self._sent:
                self._log_file(path, "predictions")
                self._sent.add(str(path))

    def _send_end_artifacts(self, state: RunnerState) -> None:
        if not self.log_artifacts:
            return
        for name in END_ARTIFACTS:
            path = Path(state.logdir) / name
            if path.is_file():
                self._log_file(path, str(Path(name).parent).replace(".", ""))
        self._send_pictures(state)


def _local_sqlite_folder(uri: str) -> Path | None:
    """The folder of a ``sqlite:///path`` tracking URI's database file (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?")[0]
    return Path(path).parent if path and path != ":memory:" else None


_MLFLOW_NAME = re.compile(r"[^\w\-. /]")


@register_callback("MLflowLogger")
class MLflowLogger(TrackerLogger):
    """Log a run to MLflow (the ``mlflow`` extra): params, epoch metrics, learning rate, artifacts.

    The store is ``tracking_uri``, else the ``MLFLOW_TRACKING_URI`` environment variable, else a
    SQLite file in the log directory, ``sqlite:///LOGDIR/mlflow.db`` (artifacts in
    ``LOGDIR/mlartifacts``); see it with ``mlflow ui --backend-store-uri sqlite:///LOGDIR/mlflow.db``.
    An experiment this logger creates in a local SQLite store keeps its artifacts in ``mlartifacts/``
    beside the database file (not in the current folder). Metrics are ``{loader}/{metric}`` and
    ``lr`` at step ``global_epoch``; see the module docstring for the rest.

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///path.db``, ``http://host:5000``, ...).
        experiment: experiment name (created when missing).
        run_name: the MLflow run's name (default: the log directory's folder name).
        tags: extra tags of the run.
        log_artifacts: keep the best light checkpoint, ``metrics.csv`` and the pictures as artifacts.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = "segzoo", run_name: str | None = None,
                 tags: dict[str, str] | None = None, log_artifacts: bool = True) -> None:
        super().__init__(log_artifacts)
        try:
            import mlflow  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"MLflowLogger needs mlflow: {install_hint('mlflow')}") from exc
        if not isinstance(experiment, str) or not experiment.strip():
            raise ValueError(f"MLflowLogger: experiment must be a non-empty name, got {experiment!r}")
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.client: Any = None

    def _uri(self, state: RunnerState) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(state.logdir).resolve() / 'mlflow.db'}"

    def _experiment_id(self, uri: str) -> str:
        from mlflow.exceptions import MlflowException

        for _ in range(3):  # another process may create it between the look-up and the creation
            found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                return found.experiment_id
            folder = _local_sqlite_folder(uri)
            location = (folder.resolve() / "mlartifacts").as_uri() if folder is not None else None
            try:
                return self.client.create_experiment(self.experiment, artifact_location=location)
            except MlflowException:
                time.sleep(0.2)
        raise RuntimeError(f"MLflowLogger: cannot create or find experiment {self.experiment!r} in {uri}")

    def _open(self, state: RunnerState, resumed: bool) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        for name in ("mlflow.store.db.utils", "alembic"):  # "creating tables" INFO lines of a new store
            logging.getLogger(name).setLevel(logging.WARNING)
        uri = self._uri(state)
        self.client = MlflowClient(tracking_uri=uri)
        if resumed:
            try:
                self.client.update_run(self.run_id, status="RUNNING")
                return
            except MlflowException:
                warnings.warn(f"MLflowLogger: the resumed run's MLflow run {self.run_id} is not in {uri}; "
                              f"starting a new MLflow run", stacklevel=2)
        tags = {"segzoo.logdir": str(Path(state.logdir).resolve()), **self.tags}
        run = self.client.create_run(self._experiment_id(uri), run_name=self.run_name or Path(state.logdir).name,
                                     tags=tags)
        self.run_id = run.info.run_id
        if resumed:
            self._log_params(run_params(state))

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(_MLFLOW_NAME.sub("_", k)[:250], v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_MLFLOW_NAME.sub("_", k)[:250], v, now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def _log_file(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), folder or None)

    def _close(self, status: str) -> None:
        if status != "RUNNING":
            self.client.set_terminated(self.run_id, status)


@register_callback("WandbLogger")
class WandbLogger(TrackerLogger):
    """Log a run to Weights & Biases (the ``wandb`` extra): config, epoch metrics, learning rate, files.

    ``WANDB_MODE=offline`` (or ``mode="offline"``) writes the run under ``dir/wandb/`` without a
    network or a login (``wandb sync`` uploads it later). Metrics are ``{loader}/{metric}`` and ``lr``
    plotted against ``epoch`` (the global epoch); the best light checkpoint, ``metrics.csv`` and the
    pictures are saved as the run's files. Console capture, code and git saving are off.

    Args:
        project: W&B project.
        entity: W&B team or user (default: the account's).
        name: the run's display name (default: the log directory's folder name).
        group: group of runs (``segzoo tune`` sets the study's name).
        tags: tags of the run.
        mode: ``"online"``, ``"offline"`` or ``"disabled"`` (default: ``WANDB_MODE``, else online).
        dir: folder for W&B's files (default: the log directory).
        log_artifacts: save the best light checkpoint, ``metrics.csv`` and the pictures with the run.
    """

    def __init__(self, project: str = "segzoo", entity: str | None = None, name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, mode: str | None = None,
                 dir: str | None = None, log_artifacts: bool = True) -> None:
        super().__init__(log_artifacts)
        try:
            import wandb  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"WandbLogger needs wandb: {install_hint('wandb')}") from exc
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"WandbLogger: mode must be 'online', 'offline' or 'disabled', got {mode!r}")
        self.project, self.entity, self.name, self.group = project, entity, name, group
        self.tags, self.mode, self.dir = list(tags or []), mode, dir
        self.run: Any = None
        self.logdir: Path | None = None

    def _open(self, state: RunnerState, resumed: bool) -> None:
        import wandb

        self.logdir = Path(state.logdir)
        folder = Path(self.dir) if self.dir else self.logdir
        folder.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(console="off", save_code=False, disable_git=True, x_disable_stats=True,
                                  silent=True, disable_job_creation=True)
        self.run = wandb.init(project=self.project, entity=self.entity, name=self.name or self.logdir.name,
                              group=self.group, tags=self.tags or None, mode=self.mode, dir=str(folder),
                              id=self.run_id, resume="allow" if resumed else None, reinit="create_new",
                              settings=settings)
        self.run_id = self.run.id
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def _log_params(self, params: dict[str, str]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({**metrics, "epoch": step})

    def _log_file(self, path: Path, folder: str) -> None:
        # wandb.save takes a glob: a name with [ or * is escaped to stay one file
        self.run.save(glob.escape(str(path)), base_path=str(self.logdir), policy="now")

    def _close(self, status: str) -> None:
        if status != "RUNNING":
            self.run.finish(exit_code={"FINISHED": 0, "KILLED": 255}.get(status, 1))
            self.run = None
