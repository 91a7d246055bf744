"""Checkpoints: best / last / top-N per epoch, full training state for resuming, metrics JSON.

What each file holds is the checkpoint format's (:mod:`segzoo.checkpoint_format`); this callback
decides when and where they are written.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segzoo.checkpoint import checkpoint_bytes
from segzoo.checkpoint_format import full_checkpoint, model_checkpoint
from segzoo.checkpoint_format import rng_state as rng_state  # noqa: F401  (their former home: scripts import them here)
from segzoo.checkpoint_format import set_rng_state as set_rng_state  # noqa: F401
from segzoo.errors import check_file_name
from segzoo.fileio import fsync_dir, make_folder, write_bytes_atomic, write_json_atomic
from segzoo.training.callback import Callback, CallbackOrder, register_callback, state_keys
from segzoo.training.resume import load_resume
from segzoo.training.state import RunnerState


def callbacks_state(state: RunnerState) -> dict[str, Any]:
    """The ``state_dict()`` of each callback of ``state.callbacks`` that has one, under its ``state_key``
    (:func:`~segzoo.training.callback.state_keys`)."""
    cb_states = {}
    for key, cb in zip(state_keys(state.callbacks), state.callbacks):
        sd = cb.state_dict()
        if sd:
            cb_states[key] = sd
    return cb_states


@register_callback("CheckpointCallback")
class CheckpointCallback(Callback):
    """Write checkpoints to ``logdir/checkpoints`` after every epoch (rank 0 only).

    Files: ``last.pth`` / ``last_full.pth`` every epoch; ``best.pth`` when the main valid metric
    improves; ``{stage}.{epoch}.pth`` for the ``save_n_best`` best epochs (others are removed);
    ``_metrics.json`` with best, last and every epoch's metrics. ``last_full.pth`` also holds
    optimizer, scheduler, criterion, scaler, RNG state and the ``state_dict()`` of every callback
    of the stage (``state.callbacks``): it is what resuming needs. With ``keep_full=True``,
    ``best_full.pth`` and ``{stage}.{epoch}_full.pth`` are kept as well, to resume from the best
    or a kept epoch later (each is as large as ``last_full.pth``: the optimizer state of Adam is
    twice the weights). Every file loads with ``torch.load(weights_only=True)``. Which epoch is
    best is the state's (``state.best``): this callback keeps only the top-N list and the metrics
    history.

    It writes them after every other callback's ``on_epoch_end`` (loggers included, whatever the
    ``order``: :attr:`~segzoo.training.Callback.saves_run_state`), so full checkpoints hold each
    callback's state at the end of the epoch; which epoch is best was settled before any callback
    ran, from the epoch's valid metrics.

    An epoch's files become valid as a whole: ``{stage}.{epoch}``, ``best``, ``_metrics.json`` and
    ``last.pth`` are written first, and ``last_full.pth``, the file that says the epoch is complete
    (what resuming reads), last; only then are the top-N files that fell out of the top removed.
    Stopped anywhere in between (a kill, a power loss), ``last_full.pth`` still holds the epoch
    before, and resuming re-runs the epoch exactly (same weights, learning rate and callback state
    to start from), rewriting its files. Every file is its own file (no hard links), written
    atomically through :mod:`segzoo.fileio`. When a write fails (disk full...) the run stops with
    one :class:`~segzoo.errors.WriteError` line naming the file, and ``last_full.pth`` stays the
    previous epoch's, loadable.

    On Ctrl-C: during the epoch's batches, ``last.pth`` / ``last_full.pth`` get the current weights
    with ``"interrupted": True`` and the ``epoch`` / ``global_epoch`` of the unfinished epoch
    (resume re-runs it); during this callback's end-of-epoch writes, the remaining ones are
    finished (the epoch is complete; resume goes on with the next); from the end of the epoch's
    validation until then (other callbacks' ``on_epoch_end``: a scheduler step...), nothing is
    written and resume re-runs the epoch from the previous one's ``last_full.pth``. One line on
    stderr says which. On other errors (a NaN loss, a full disk) nothing is written.

    Args:
        save_n_best: how many per-epoch checkpoints to keep (>= 1).
        resume: a checkpoint to resume from (same as ``train(resume=...)``).
        resume_dir: folder ``resume`` is relative to.
        metric_filename: name of the metrics JSON file.
        keep_full: also keep ``best_full.pth`` and ``{stage}.{epoch}_full.pth`` (default: only
            ``last_full.pth`` holds the optimizer state).
    """

    saves_run_state = True

    def __init__(self, save_n_best: int = 1, resume: str | None = None, resume_dir: str | None = None,
                 metric_filename: str = "_metrics.json", keep_full: bool = False) -> None:
        super().__init__(CallbackOrder.External + 10)
        if not isinstance(save_n_best, int) or save_n_best < 1:
            raise ValueError(f"save_n_best must be an int >= 1, got {save_n_best!r}")
        if not isinstance(keep_full, bool):
            raise ValueError(f"keep_full must be true or false, got {keep_full!r}")
        self.save_n_best = save_n_best
        self.keep_full = keep_full
        self.resume = str(Path(resume_dir) / resume) if resume and resume_dir else resume
        self.metric_filename = check_file_name(metric_filename, "metric_filename")
        self.top: list[tuple[float, str]] = []
        self.history: list[dict[str, Any]] = []
        self._saved: tuple[str, int] | None = None  # (stage, global epoch) of the last complete last_full
        self._running: tuple[str, int] | None = None  # (stage, global epoch) of the epoch that last started
        self._validated: tuple[str, int] | None = None  # (stage, global epoch) whose valid loader ended
        # the end-of-epoch writes not done yet, last_full (the epoch's commit) last: what on_exception
        # finishes when a Ctrl-C lands in them
        self._pending: list[Callable[[], Any]] = []
        # every callback's state as the running epoch found it: what an interrupted checkpoint files, so
        # that re-running the epoch does not count it twice (a Ctrl-C can land after some callbacks'
        # on_epoch_end updated their state)
        self._epoch_start_states: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        """``CheckpointCallback{}``: a run has one, and ``resume`` differs between the run and its resumption."""
        return self._generate_state_key()

    def state_dict(self) -> dict[str, Any]:
        return {"top": [[v, n] for v, n in self.top], "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.top = [(float(v), str(n)) for v, n in state_dict["top"]]
        self.history = list(state_dict["history"])

    def _folder(self, state: RunnerState) -> Path:
        return make_folder(Path(state.logdir) / "checkpoints")

    def on_stage_start(self, state: RunnerState) -> None:
        self._epoch_start_states = copy.deepcopy(callbacks_state(state))
        self._pending = []

    def on_epoch_start(self, state: RunnerState) -> None:
        self._running = (state.stage, state.global_epoch)

    def on_loader_end(self, state: RunnerState) -> None:
        if state.loader_name == state.valid_loader:
            self._validated = (state.stage, state.global_epoch)

    def _epoch_writes(self, state: RunnerState, folder: Path, name: str, keep: bool,
                      dropped: str | None) -> list[Callable[[], Any]]:
        """The end-of-epoch writes in order: light files and metrics, a folder sync, ``last_full``, removals."""
        cb_states = callbacks_state(state)
        full = checkpoint_bytes(full_checkpoint(state, cb_states))  # serialized once, written to each file
        self._epoch_start_states = copy.deepcopy(cb_states)  # the next epoch starts from these
        light = checkpoint_bytes(model_checkpoint(state))
        epoch_key = (state.stage, state.global_epoch)
        best = next((h for h in self.history if h["name"] == state.best_name), None)
        metrics = {"main_metric": state.main_metric, "minimize_metric": state.minimize_metric,
                   "best": best, "last": self.history[-1], "epochs": self.history}

        def put(file: str, data: bytes) -> Callable[[], Any]:
            return lambda: write_bytes_atomic(folder / file, data, overwrite=True, sync_dir=False)

        def drop(file: str) -> Callable[[], Any]:
            return lambda: (folder / file).unlink(missing_ok=True)

        writes = []
        for stem in ([name] if keep else []) + (["best"] if state.is_best_valid else []):
            # a _full file of another epoch (an older run, keep_full turned off) must not pass for this one's
            writes += [put(f"{stem}_full.pth", full)] if self.keep_full else [drop(f"{stem}_full.pth")]
            writes.append(put(f"{stem}.pth", light))
        writes += [lambda: write_json_atomic(metrics, folder / self.metric_filename, overwrite=True, sync_dir=False),
                   put("last.pth", light),
                   lambda: fsync_dir(folder),  # every file above is durable before the epoch is said complete
                   lambda: write_bytes_atomic(folder / "last_full.pth", full, overwrite=True),
                   lambda: setattr(self, "_saved", epoch_key)]
        if dropped is not None and dropped != name:  # only once the epoch is complete
            writes += [drop(f"{dropped}.pth"), drop(f"{dropped}_full.pth")]
        return writes

    def _finish_writes(self) -> None:
        """Do the pending end-of-epoch writes in order; each is removed once done (a Ctrl-C leaves the rest)."""
        while self._pending:
            self._pending[0]()
            self._pending.pop(0)

    def on_epoch_end(self, state: RunnerState) -> None:
        if not state.is_main_process:
            return
        folder = self._folder(state)
        name = f"{state.stage}.{state.epoch}"
        value = float(state.valid_metrics[state.main_metric])
        entry = {"stage": state.stage, "epoch": state.epoch, "name": name, "metrics": state.epoch_metrics}
        self.history.append(json.loads(json.dumps(entry, default=float)))
        worst_first = sorted(self.top, key=lambda t: t[0], reverse=state.minimize_metric)
        keep = len(self.top) < self.save_n_best or state.is_better(value, worst_first[0][0])
        dropped = None
        if keep:
            self.top.append((value, name))
            if len(self.top) > self.save_n_best:
                dropped = sorted(self.top, key=lambda t: t[0], reverse=state.minimize_metric)[0]
                self.top.remove(dropped)
        self._pending = self._epoch_writes(state, folder, name, keep, dropped and dropped[1])
        self._finish_writes()

    def on_exception(self, state: RunnerState) -> None:
        """On Ctrl-C leave a state resume continues exactly from (see the class doc); on any other error
        write nothing, so the last good checkpoints stay as they were.

        Ctrl-C during the epoch's batches saves ``last`` / ``last_full`` marked ``interrupted`` (resuming
        re-runs the unfinished epoch); during this callback's end-of-epoch writes it finishes them;
        between the end of validation and those writes it writes nothing (``last_full`` is the previous
        epoch, which resume continues from). Nothing is written either when the epoch's ``last_full``
        was already written, or when no epoch was running (Ctrl-C at a stage's start or end). A failed
        write here (disk full) is reported as one line on stderr and the interruption goes on; the
        previous ``last_full`` stays as it was.
        """
        if not isinstance(state.exception, KeyboardInterrupt):
            return
        if not state.is_main_process or state.model is None or state.logdir is None:
            return
        epoch_key = (state.stage, state.global_epoch)
        if self._running != epoch_key or self._saved == epoch_key and not self._pending:
            return
        where = f"interrupted in stage {state.stage!r}, epoch {state.epoch}"
        try:
            if self._pending:  # the end-of-epoch state is complete: finish writing it
                self._finish_writes()
                print(f"segzoo: {where} while its checkpoints were written; finished them (resuming goes on "
                      f"with the next epoch)", file=sys.stderr)
                return
            folder = self._folder(state)
            if self._validated == epoch_key:  # other callbacks' on_epoch_end ran in part: nothing consistent to save
                kept = (f"kept {folder / 'last_full.pth'} of the epoch before (resuming re-runs epoch {state.epoch})"
                        if (folder / "last_full.pth").is_file() else "no checkpoint to resume from was written yet")
                print(f"segzoo: {where} at its end, before its checkpoints were written; {kept}", file=sys.stderr)
                return
            saved_states = self._epoch_start_states
            full = full_checkpoint(state, callbacks_state(state) if saved_states is None else saved_states)
            light = model_checkpoint(state)
            for ck in (full, light):  # epoch / global_epoch: the unfinished epoch, which resuming re-runs
                ck.update(interrupted=True, epoch_complete=False, stage_stopped=False)
            write_bytes_atomic(folder / "last.pth", checkpoint_bytes(light), overwrite=True, sync_dir=False)
            fsync_dir(folder)
            write_bytes_atomic(folder / "last_full.pth", checkpoint_bytes(full), overwrite=True)
        except OSError as exc:
            print(f"segzoo: the interrupted state was not saved: {exc}", file=sys.stderr)
            return
        print(f"segzoo: {where}; saved {folder / 'last_full.pth'} "
              f"(resuming from it re-runs epoch {state.epoch})", file=sys.stderr)

    def load_for_infer(self, state: RunnerState) -> dict[str, Any]:
        """Load the ``resume`` checkpoint's weights into ``state.model`` for inference (called by ``infer``).

        In ``infer`` this is the callback's whole job (Catalyst 19.x loaded ``resume`` at stage
        start); it writes nothing there.

        Returns:
            The loaded checkpoint.

        Raises:
            ValueError: no ``resume`` was given.
            FileNotFoundError / CheckpointError / KeyError: the checkpoint cannot be read or does not fit.
        """
        if not self.resume:
            raise ValueError("CheckpointCallback() in infer() has nothing to do: infer() writes no checkpoints; "
                             "pass CheckpointCallback(resume='logs/.../checkpoints/best.pth') or drop it")
        return load_resume(self.resume, state, None)
