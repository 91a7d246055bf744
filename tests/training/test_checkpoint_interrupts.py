"""Ctrl-C at an epoch's end (another callback's on_epoch_end, or any step of the CheckpointCallback's writes):
the files left agree with each other, and resuming gives the uninterrupted run (weights, lr sequence, metrics),
so predict / trace (load_model) read the same weights."""

import json
from pathlib import Path

import pytest
import torch
from _helpers import TinyNet, make_loaders, scripted_metric

import segzoo.training.callbacks.checkpoint as ckpt_module
from segzoo.checkpoint import load_checkpoint
from segzoo.loading import load_model
from segzoo.training import Callback, CallbackOrder, SupervisedRunner
from segzoo.training.callbacks import CheckpointCallback
from segzoo.training.resume import completed_epochs

EPOCHS = 4
VALUES = [3.0, 2.0, 2.5, 1.0]  # the main metric (minimized): epochs 2 and 4 are new bests, 3 is kept as 2nd best


def _run(logdir, extra=(), resume=None):
    """SGD with momentum and an epoch StepLR: a shifted schedule or a repeated epoch changes the weights."""
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    SupervisedRunner().train(model, torch.nn.BCEWithLogitsLoss(), opt, make_loaders(), logdir, scheduler=sched,
                             num_epochs=EPOCHS, main_metric="m", resume=resume, seed=0,
                             callbacks=[scripted_metric(VALUES), CheckpointCallback(save_n_best=2), *extra])
    return model


def _summary(logdir):
    """What the run left: each file's epoch, the metrics history with the lr of each epoch, the best weights."""
    folder = Path(logdir) / "checkpoints"
    files = {p.name: load_checkpoint(p)["epoch"] for p in folder.glob("*.pth")}
    epochs = json.loads((folder / "_metrics.json").read_text())["epochs"]
    history = [(e["name"], e["metrics"]["train"]["lr"], e["metrics"]["valid"]["m"], e["metrics"]["valid"]["loss"])
               for e in epochs]
    best = load_model(logdir, "best", model_factory=TinyNet).state_dict()
    return files, history, best


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("straight")
    model = _run(logdir)
    return model.state_dict(), _summary(logdir)


class _Fault:
    """Raises KeyboardInterrupt at the k-th checkpoint step (a write, the folder sync, a removal) once armed."""

    def __init__(self, k):
        self.k, self.calls, self.armed, self.steps = k, 0, False, []

    def wrap(self, fn, what):
        def step(*args, **kwargs):
            if self.armed and (what != "rm" or Path(args[0]).suffix == ".pth"):  # not fileio's temporary files
                self.calls += 1
                self.steps.append(f"{what} {Path(args[0] if what != 'json' else args[1]).name}")
                if self.calls == self.k:
                    raise KeyboardInterrupt
            return fn(*args, **kwargs)
        return step


class _Arm(Callback):
    """Arms the fault in epoch ``epoch``'s on_epoch_end (before the CheckpointCallback's, which runs last)."""

    def __init__(self, fault, epoch):
        super().__init__(CallbackOrder.External)
        self.fault, self.epoch = fault, epoch

    def on_epoch_end(self, state):
        if state.epoch == self.epoch:
            self.fault.armed = True


class _InterruptAfterScheduler(Callback):
    """Ctrl-C in epoch ``epoch``'s on_epoch_end after the scheduler stepped, before the checkpoints."""

    def __init__(self, epoch):
        super().__init__(CallbackOrder.Scheduler + 1)
        self.epoch = epoch

    def on_epoch_end(self, state):
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


def _check_resumed_like_reference(logdir, reference):
    """Resume when last_full says epochs are left; the result must be the uninterrupted run's."""
    done = completed_epochs(load_checkpoint(Path(logdir) / "checkpoints" / "last_full.pth"))[1]
    model = _run(logdir, resume=logdir) if done < EPOCHS else None
    weights, (files, history, best) = reference
    got_files, got_history, got_best = _summary(logdir)
    assert got_history == history  # the same epochs, learning rates and metrics, each once
    assert got_files == files
    for key in best:
        torch.testing.assert_close(got_best[key], best[key], rtol=0, atol=0)
    if model is not None:
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, weights[key], rtol=0, atol=0)


_fast = {(2, 5), (4, 2)}  # the rest run with the slow tests
# epoch 2 (a new best): rm train.2_full, write train.2, rm best_full, write best, json, last, sync, last_full (8)
# epoch 3 (kept, not best): rm train.3_full, write train.3, json, last, sync, last_full, rm train.1 x2 (8)
# epoch 4, the last (a new best, drops epoch 3): as epoch 2 plus rm train.3 x2 (10)
_CASES = [(e, k) for e, n in ((2, 8), (3, 8), (4, 10)) for k in range(1, n + 1)]


@pytest.mark.parametrize("epoch,k", [pytest.param(e, k, marks=() if (e, k) in _fast else pytest.mark.slow)
                                     for e, k in _CASES])
def test_ctrl_c_at_each_end_of_epoch_step_resumes_like_the_uninterrupted_run(tmp_path, monkeypatch, reference,
                                                                              epoch, k, capsys):
    fault = _Fault(k)
    for name in ("write_bytes_atomic", "write_json_atomic", "fsync_dir"):
        monkeypatch.setattr(ckpt_module, name, fault.wrap(getattr(ckpt_module, name), name.split("_")[1]))
    monkeypatch.setattr(Path, "unlink", fault.wrap(Path.unlink, "rm"))
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, extra=[_Arm(fault, epoch)])
    monkeypatch.undo()
    assert fault.calls >= k, fault.steps  # the interrupt happened in the epoch's writes
    err, last = capsys.readouterr().err, load_checkpoint(tmp_path / "checkpoints" / "last_full.pth")
    _check_resumed_like_reference(tmp_path, reference)
    assert last["epoch"] == epoch and "interrupted" not in last  # the epoch's writes were finished
    assert "finished them (resuming goes on with the next epoch)" in err


@pytest.mark.parametrize("epoch", [2, pytest.param(EPOCHS, marks=pytest.mark.slow)])
def test_ctrl_c_after_the_scheduler_step_resumes_like_the_uninterrupted_run(tmp_path, reference, epoch, capsys):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, extra=[_InterruptAfterScheduler(epoch)])
    err, last = capsys.readouterr().err, load_checkpoint(tmp_path / "checkpoints" / "last_full.pth")
    _check_resumed_like_reference(tmp_path, reference)
    assert last["epoch"] == epoch - 1 and "interrupted" not in last  # resuming re-runs the epoch from its start
    assert "at its end, before its checkpoints were written; kept" in err


def test_files_left_by_a_crash_in_the_writes_are_those_of_complete_epochs(tmp_path, monkeypatch, reference):
    """A kill in epoch 4's writes (no on_exception: simulated by an error that saves nothing) leaves
    last_full at epoch 3; the files already written are epoch 4's, and resuming rewrites them identically."""
    real = ckpt_module.write_bytes_atomic

    def crash(path, data, **kw):
        if Path(path).name == "last_full.pth" and load_checkpoint(Path(path).with_name("last.pth"))["epoch"] == 4:
            raise SystemExit(9)
        return real(path, data, **kw)

    monkeypatch.setattr(ckpt_module, "write_bytes_atomic", crash)
    with pytest.raises(SystemExit):
        _run(tmp_path)
    monkeypatch.undo()
    folder = tmp_path / "checkpoints"
    last_full = load_checkpoint(folder / "last_full.pth")
    assert (last_full["epoch"], last_full["best_name"]) == (3, "train.2")
    assert load_checkpoint(folder / f"{last_full['best_name']}.pth")["epoch"] == 2  # what last_full names exists
    _check_resumed_like_reference(tmp_path, reference)
