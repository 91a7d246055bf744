"""Loggers: console + log.txt, TensorBoard, and a tqdm progress bar."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from segzoo.fileio import write_error
from segzoo.training.callback import LoggerCallback, register_callback
from segzoo.training.callbacks.predictions import SampleGrid
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
        num_images: samples in the image grid (0 to disable).
        image_keys: batch key of the images, batch key of the targets, model output key.
    """

    def __init__(self, metric_names: list[str] | None = None, log_on_batch_end: bool = True,
                 log_on_epoch_end: bool = True, num_images: int = 4,
                 image_keys: tuple[str, str, str] = ("features", "targets", "logits")) -> None:
        super().__init__()
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("TensorboardLogger needs tensorboard: pip install 'segzoo[train]'") from exc
        self.metric_names = metric_names
        self.log_on_batch_end, self.log_on_epoch_end = log_on_batch_end, log_on_epoch_end
        self.num_images, self.image_keys = num_images, tuple(image_keys)
        self.writers: dict[str, Any] = {}
        self.steps: dict[str, int] = {}
        self.samples = SampleGrid(num_images, *self.image_keys)

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

    def on_epoch_start(self, state: RunnerState) -> None:
        self.samples.reset()

    def on_loader_start(self, state: RunnerState) -> None:
        """Open the loader's writer first, so callbacks can write to ``loggers[state.loader_name]``."""
        if state.is_main_process and state.logdir is not None:
            self._writer(state)

    def on_batch_end(self, state: RunnerState) -> None:
        if not state.is_main_process:
            return
        if self.num_images:
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
        if self.num_images and state.loader_name == state.valid_loader:
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
