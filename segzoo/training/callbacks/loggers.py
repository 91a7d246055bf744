"""Loggers: console + log.txt, TensorBoard, metrics.csv, and a tqdm progress bar."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from segzoo.errors import install_hint
from segzoo.fileio import write_error
from segzoo.training.callback import LoggerCallback, register_callback
from segzoo.training.callbacks.predictions import DEFAULT_NUM_IMAGES, PredictionSaverCallback, SampleGrid
from segzoo.training.state import RunnerState


def format_metrics(metrics: dict[str, float]) -> str:
    """``name=value`` pairs, 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


@register_callback("ConsoleLogger")
class ConsoleLogger(LoggerCallback):
    """One line per loader per epoch on stdout and in ``logdir/log.txt`` (rank 0)."""

    def on_epoch_end(self, state: RunnerState) -> None:
        if not state.is_main_process:
            return
        lines = []
        for loader, metrics in state.epoch_metrics.items():
            best = " *best*" if loader == state.valid_loader and state.is_best_valid else ""
            lines.append(f"[{state.stage} {state.epoch}/{state.num_epochs}] {loader}: {format_metrics(metrics)}{best}")
        text = "\n".join(lines)
        print(text, flush=True)
        if state.logdir is not None:
            path = Path(state.logdir) / "log.txt"
            try:  # an append-only log: a failed write (disk full) is one line naming the file
                with open(path, "a") as f:
                    f.write(text + "\n")
            except OSError as exc:
                raise write_error(path, exc) from None


@register_callback("TensorboardLogger")
class TensorboardLogger(LoggerCallback):
    """Scalars to TensorBoard, one writer per loader at ``logdir/{loader}_log``.

    Tags ``{metric}/batch`` (every batch) and ``{metric}/epoch``; each epoch also an image
    grid of input / target / prediction for the first valid samples (``num_images``).

    Args:
        metric_names: log only these metrics (default all).
        log_on_batch_end: log batch scalars.
        log_on_epoch_end: log epoch scalars and images.
        num_images: samples in the image grid (0 to disable). Default ``None``: the
            ``num_images`` of the run's :class:`PredictionSaverCallback`, or 4 without one.
        image_keys: batch key of the images, batch key of the targets, model output key.
    """

    def __init__(self, metric_names: list[str] | None = None, log_on_batch_end: bool = True,
                 log_on_epoch_end: bool = True, num_images: int | None = None,
                 image_keys: tuple[str, str, str] = ("features", "targets", "logits")) -> None:
        super().__init__()
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(f"TensorboardLogger needs tensorboard: {install_hint('train')}") from exc
        self.metric_names = metric_names
        self.log_on_batch_end, self.log_on_epoch_end = log_on_batch_end, log_on_epoch_end
        self.num_images, self.image_keys = num_images, tuple(image_keys)
        self.writers: dict[str, Any] = {}
        self.steps: dict[str, int] = {}
        self.samples = SampleGrid(DEFAULT_NUM_IMAGES if num_images is None else num_images, *self.image_keys)

    def _writer(self, state: RunnerState):
        from torch.utils.tensorboard import SummaryWriter

        name = state.loader_name
        if name not in self.writers:
            self.writers[name] = SummaryWriter(str(Path(state.logdir) / f"{name}_log"))
        return self.writers[name]

    def _wanted(self, metrics: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in metrics.items() if self.metric_names is None or k in self.metric_names}

    @property
    def loggers(self) -> dict[str, Any]:
        """The SummaryWriter of each loader by loader name (Catalyst 19.x's ``TensorboardLogger.loggers``)."""
        return self.writers

    def on_stage_start(self, state: RunnerState) -> None:
        """With ``num_images=None`` show as many rows as the run's PredictionSaverCallback (one owner)."""
        if self.num_images is None:
            savers = [cb for cb in state.callbacks or [] if isinstance(cb, PredictionSaverCallback)]
            self.samples.n = savers[0].num_images if savers else DEFAULT_NUM_IMAGES

    def on_epoch_start(self, state: RunnerState) -> None:
        self.samples.reset()

    def on_loader_start(self, state: RunnerState) -> None:
        """Open the loader's writer first, so callbacks can write to ``loggers[state.loader_name]``."""
        if state.is_main_process and state.logdir is not None:
            self._writer(state)

    def on_batch_end(self, state: RunnerState) -> None:
        if not state.is_main_process:
            return
        if self.num_images != 0:
            self.samples.capture(state)
        if not self.log_on_batch_end:
            return
        step = self.steps.get(state.loader_name, 0)
        writer = self._writer(state)
        for k, v in self._wanted(state.batch_metrics).items():
            writer.add_scalar(f"{k}/batch", v, step)
        self.steps[state.loader_name] = step + 1

    def on_loader_end(self, state: RunnerState) -> None:
        if not (state.is_main_process and self.log_on_epoch_end):
            return
        writer = self._writer(state)
        for k, v in self._wanted(state.loader_metrics).items():
            writer.add_scalar(f"{k}/epoch", v, state.global_epoch)
        if self.num_images != 0 and state.loader_name == state.valid_loader:
            grid = self.samples.grid(state)
            if grid is not None:
                writer.add_image("predictions", grid, state.global_epoch, dataformats="HWC")
        writer.flush()

    def on_stage_end(self, state: RunnerState) -> None:
        self.close()

    def on_exception(self, state: RunnerState) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close every writer."""
        for w in self.writers.values():
            w.close()
        self.writers = {}


@register_callback("ProgressBarLogger")
class ProgressBarLogger(LoggerCallback):
    """A tqdm bar per loader with the live batch metrics (rank 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.bar = None

    def on_loader_start(self, state: RunnerState) -> None:
        if state.is_main_process:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.loader_len, desc=f"{state.stage} {state.epoch}/{state.num_epochs} "
                            f"{state.loader_name}", leave=False, file=sys.stdout, dynamic_ncols=True)

    def on_batch_end(self, state: RunnerState) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in state.batch_metrics.items()}, refresh=False)
            self.bar.update(1)

    def on_loader_end(self, state: RunnerState) -> None:
        self._close()

    def on_exception(self, state: RunnerState) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None



VerboseLogger = register_callback("VerboseLogger", ProgressBarLogger)  # Catalyst 19.x name of the tqdm bar


@register_callback("CSVLogger")
class CSVLogger(LoggerCallback):
    """Epoch metrics to ``logdir/metrics.csv``: one row per loader and epoch (rank 0).

    Columns: ``stage``, ``epoch`` (within the stage), ``global_epoch``, ``loader``, then each metric
    in the order first seen (a metric a loader lacks, e.g. ``lr`` for ``valid``, is an empty cell).
    Rows are appended and flushed to disk at each epoch end, so the file is complete up to the
    last finished epoch even if the run is killed. A metric that appears later in the run widens
    the header (the file is rewritten atomically).

    The file follows the log-directory policy (:mod:`segzoo.training.logdir`): a fresh run creates
    it (before training starts, ``segzoo train`` refuses a logdir holding an earlier run and
    ``Runner.train`` moves that run aside whole; ``segzoo train --force`` / ``overwrite_logdir=True``
    removes the old ``metrics.csv`` with the rest of that run); a run resumed in its logdir appends to it (resumed from an earlier checkpoint than the
    last, the repeated epochs get rows again: the later row is the resumed run's). The file is
    never replaced behind the policy's back: one still present at a fresh start is refused
    unless ``overwrite``.

    Read it with ``pandas.read_csv(path)`` or ``csv.DictReader``.

    Args:
        filename: file name inside the log directory.
        overwrite: let a fresh run replace an existing file (only reachable when the logdir
            policy let the run start with the file present, e.g. a custom runner).
    """

    FIXED_COLUMNS = ("stage", "epoch", "global_epoch", "loader")

    def __init__(self, filename: str = "metrics.csv", overwrite: bool = False) -> None:
        super().__init__()
        from segzoo.errors import check_file_name

        self.filename = check_file_name(filename, "CSVLogger filename")
        self.overwrite = overwrite
        self.columns: list[str] | None = None  # None: the file is not created yet in this run

    def _path(self, state: RunnerState) -> Path:
        return Path(state.logdir) / self.filename

    def on_stage_start(self, state: RunnerState) -> None:
        if not state.is_main_process or state.logdir is None or self.columns is not None:
            return
        path = self._path(state)
        if state.global_epoch > 0 and path.is_file():  # resumed: continue the file of the run
            import csv

            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            if not header or tuple(header[:len(self.FIXED_COLUMNS)]) != self.FIXED_COLUMNS:
                raise ValueError(f"cannot append to {path}: its header {header!r} is not a segzoo metrics file "
                                 f"(expected {','.join(self.FIXED_COLUMNS)},...); move it away")
            self.columns = header
        elif os.path.lexists(path) and not self.overwrite:
            raise FileExistsError(f"{path} exists from an earlier run; resume that run (runner.resume={state.logdir}), "
                                  f"choose another logdir, or replace the run (segzoo train --force)")

    def on_epoch_end(self, state: RunnerState) -> None:
        if not state.is_main_process or state.logdir is None:
            return
        rows = [{"stage": state.stage, "epoch": state.epoch, "global_epoch": state.global_epoch, "loader": loader,
                 **metrics} for loader, metrics in state.epoch_metrics.items()]
        if not rows:
            return
        names = list(dict.fromkeys(k for row in rows for k in row))
        if self.columns is None:
            self.columns = names
            self._rewrite(state, [], overwrite=self.overwrite)
        elif not set(names) <= set(self.columns):
            self.columns = [*self.columns, *(n for n in names if n not in self.columns)]
            self._rewrite(state, self._read(state), overwrite=True)
        self._append(state, rows)

    def _text(self, rows: list[dict[str, Any]], header: bool) -> str:
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def _read(self, state: RunnerState) -> list[dict[str, Any]]:
        import csv

        with open(self._path(state), newline="") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, state: RunnerState, rows: list[dict[str, Any]], overwrite: bool) -> None:
        from segzoo.fileio import write_bytes_atomic

        write_bytes_atomic(self._path(state), self._text(rows, header=True).encode(), overwrite=overwrite,
                           force_hint="CSVLogger(overwrite=True)")

    def _append(self, state: RunnerState, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` in one write and fsync; on failure the file is cut back to its old size."""
        path = self._path(state)
        data = self._text(rows, header=False).encode()
        with open(path, "ab") as f:
            size = f.tell()
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:
                with contextlib.suppress(OSError):
                    f.truncate(size)
                raise write_error(path, exc) from None
