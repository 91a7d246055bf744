"""The training core (issue 20 point 4): one loop object, grouped settings, one logdir claim, declared state
fields, the default callbacks apart from the Catalyst shims, one unwrap helper."""

import ast
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from _helpers import TinyNet, make_loaders, train
from torch.utils.data import DataLoader

import segzoo.training.loop as loop_module
from segzoo.training import (
    Callback,
    CallbackOrder,
    LoggerCallback,
    RunnerState,
    SupervisedRunner,
)
from segzoo.training.logdir import claim_logdir

# ---- 1. the loop: every hook, in main's order, with main's state --------------------------------------------

EVENTS = ("on_stage_start", "on_stage_end", "on_epoch_start", "on_epoch_end", "on_loader_start", "on_loader_end",
          "on_batch_start", "on_batch_end", "on_exception")


def _snapshot(who, event, s):
    return (who, event, s.stage, s.epoch, s.global_epoch, s.loader_name, s.batch_index, s.need_backward,
            s.loader_len, s.batch_size, sorted(s.input), sorted(s.output), sorted(s.loss), sorted(s.batch_metrics),
            sorted(s.loader_metrics), sorted(s.epoch_metrics), sorted(s.valid_metrics), s.is_best_valid,
            s.stop_training, s.model.training if s.model is not None else None)


def recorders(log):
    class Rec(Callback):
        def __init__(self):
            super().__init__(CallbackOrder.Metric)

    class Log(LoggerCallback):
        pass

    for cls, who in ((Rec, "cb"), (Log, "log")):
        for ev in EVENTS:
            setattr(cls, ev, _hook(log, who, ev))
    return [Rec(), Log()]


def _hook(log, who, event):
    return lambda self, state: log.append(_snapshot(who, event, state))


def record(logdir):
    """The hook calls of a 2-epoch train (loaders train, valid), an infer run and a train failing in valid."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 8, 8, generator=g)
    y = (x.mean(1, keepdim=True) > 0.5).float()
    data = [{"features": a, "targets": b} for a, b in zip(x, y)]
    loaders = {"train": DataLoader(data[:8], batch_size=4), "valid": DataLoader(data[8:], batch_size=4)}
    model = torch.nn.Conv2d(3, 1, 1)
    log = []
    runner = SupervisedRunner()
    runner.train(model, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.1), loaders, logdir,
                 callbacks=recorders(log), num_epochs=2)
    runner.infer(model, {"infer": loaders["valid"]}, callbacks=recorders(log))

    class Boom(Callback):
        def on_batch_end(self, state):
            if state.loader_name == "valid":
                raise RuntimeError("boom")

    try:
        runner.train(model, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.1), loaders,
                     f"{logdir}_failed", callbacks=[*recorders(log), Boom()], num_epochs=2)
    except RuntimeError:
        pass
    return log


# taken from main's code (before the loop became one object) with record() above
GOLDEN = [('log', 'on_stage_start', 'train', 0, 0, '', 0, False, 0, 0, [], [], [], [], [], [], [], False, False, True),
 ('cb', 'on_stage_start', 'train', 0, 0, '', 0, False, 0, 0, [], [], [], [], [], [], [], False, False, True),
 ('log', 'on_epoch_start', 'train', 1, 1, '', 0, False, 0, 0, [], [], [], [], [], [], [], False, False, True),
 ('cb', 'on_epoch_start', 'train', 1, 1, '', 0, False, 0, 0, [], [], [], [], [], [], [], False, False, True),
 ('log', 'on_loader_start', 'train', 1, 1, 'train', 0, True, 2, 0, [], [], [], [], [], ['train'], [], False,
  False, True),
 ('cb', 'on_loader_start', 'train', 1, 1, 'train', 0, True, 2, 0, [], [], [], [], [], ['train'], [], False, False,
  True),
 ('log', 'on_batch_start', 'train', 1, 1, 'train', 0, True, 2, 4, ['features', 'targets'], [], [], [], [],
  ['train'], [], False, False, True),
 ('cb', 'on_batch_start', 'train', 1, 1, 'train', 0, True, 2, 4, ['features', 'targets'], [], [], [], [],
  ['train'], [], False, False, True),
 ('cb', 'on_batch_end', 'train', 1, 1, 'train', 0, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], [], False, False, True),
 ('log', 'on_batch_end', 'train', 1, 1, 'train', 0, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], [], False, False, True),
 ('log', 'on_batch_start', 'train', 1, 1, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['train'], [], False, False, True),
 ('cb', 'on_batch_start', 'train', 1, 1, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['train'], [], False, False, True),
 ('cb', 'on_batch_end', 'train', 1, 1, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], [], False, False, True),
 ('log', 'on_batch_end', 'train', 1, 1, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], [], False, False, True),
 ('cb', 'on_loader_end', 'train', 1, 1, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train'], [], False, False, True),
 ('log', 'on_loader_end', 'train', 1, 1, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train'], [], False, False, True),
 ('log', 'on_loader_start', 'train', 1, 1, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], [], False, False, False),
 ('cb', 'on_loader_start', 'train', 1, 1, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], [], False, False, False),
 ('log', 'on_batch_start', 'train', 1, 1, 'valid', 0, False, 2, 4, ['features', 'targets'], ['logits'], [], [],
  [], ['train', 'valid'], [], False, False, False),
 ('cb', 'on_batch_start', 'train', 1, 1, 'valid', 0, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['train', 'valid'], [], False, False, False),
 ('cb', 'on_batch_end', 'train', 1, 1, 'valid', 0, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], [], False, False, False),
 ('log', 'on_batch_end', 'train', 1, 1, 'valid', 0, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], [], False, False, False),
 ('log', 'on_batch_start', 'train', 1, 1, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [],
  [], ['train', 'valid'], [], False, False, False),
 ('cb', 'on_batch_start', 'train', 1, 1, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['train', 'valid'], [], False, False, False),
 ('cb', 'on_batch_end', 'train', 1, 1, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], [], False, False, False),
 ('log', 'on_batch_end', 'train', 1, 1, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], [], False, False, False),
 ('cb', 'on_loader_end', 'train', 1, 1, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train', 'valid'], [], False, False, False),
 ('log', 'on_loader_end', 'train', 1, 1, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train', 'valid'], [], False, False, False),
 ('cb', 'on_epoch_end', 'train', 1, 1, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train', 'valid'], ['loss'], True, False, False),
 ('log', 'on_epoch_end', 'train', 1, 1, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train', 'valid'], ['loss'], True, False, False),
 ('log', 'on_epoch_start', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], [], ['loss'], True, False, False),
 ('cb', 'on_epoch_start', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], [], ['loss'], True, False, False),
 ('log', 'on_loader_start', 'train', 2, 2, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], ['loss'], True, False, True),
 ('cb', 'on_loader_start', 'train', 2, 2, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], ['loss'], True, False, True),
 ('log', 'on_batch_start', 'train', 2, 2, 'train', 0, True, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['train'], ['loss'], True, False, True),
 ('cb', 'on_batch_start', 'train', 2, 2, 'train', 0, True, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['train'], ['loss'], True, False, True),
 ('cb', 'on_batch_end', 'train', 2, 2, 'train', 0, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], ['loss'], True, False, True),
 ('log', 'on_batch_end', 'train', 2, 2, 'train', 0, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], ['loss'], True, False, True),
 ('log', 'on_batch_start', 'train', 2, 2, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['train'], ['loss'], True, False, True),
 ('cb', 'on_batch_start', 'train', 2, 2, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['train'], ['loss'], True, False, True),
 ('cb', 'on_batch_end', 'train', 2, 2, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], ['loss'], True, False, True),
 ('log', 'on_batch_end', 'train', 2, 2, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], ['loss'], True, False, True),
 ('cb', 'on_loader_end', 'train', 2, 2, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train'], ['loss'], True, False, True),
 ('log', 'on_loader_end', 'train', 2, 2, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train'], ['loss'], True, False, True),
 ('log', 'on_loader_start', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], ['loss'], True, False, False),
 ('cb', 'on_loader_start', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], ['loss'], True, False, False),
 ('log', 'on_batch_start', 'train', 2, 2, 'valid', 0, False, 2, 4, ['features', 'targets'], ['logits'], [], [],
  [], ['train', 'valid'], ['loss'], True, False, False),
 ('cb', 'on_batch_start', 'train', 2, 2, 'valid', 0, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['train', 'valid'], ['loss'], True, False, False),
 ('cb', 'on_batch_end', 'train', 2, 2, 'valid', 0, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], ['loss'], True, False, False),
 ('log', 'on_batch_end', 'train', 2, 2, 'valid', 0, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], ['loss'], True, False, False),
 ('log', 'on_batch_start', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [],
  [], ['train', 'valid'], ['loss'], True, False, False),
 ('cb', 'on_batch_start', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['train', 'valid'], ['loss'], True, False, False),
 ('cb', 'on_batch_end', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], ['loss'], True, False, False),
 ('log', 'on_batch_end', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], ['loss'], True, False, False),
 ('cb', 'on_loader_end', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train', 'valid'], ['loss'], True, False, False),
 ('log', 'on_loader_end', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train', 'valid'], ['loss'], True, False, False),
 ('cb', 'on_epoch_end', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train', 'valid'], ['loss'], True, False, False),
 ('log', 'on_epoch_end', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train', 'valid'], ['loss'], True, False, False),
 ('cb', 'on_stage_end', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train', 'valid'], ['loss'], True, False, False),
 ('log', 'on_stage_end', 'train', 2, 2, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train', 'valid'], ['loss'], True, False, False),
 ('log', 'on_stage_start', 'infer', 1, 1, '', 0, False, 0, 0, [], [], [], [], [], [], [], False, False, False),
 ('cb', 'on_stage_start', 'infer', 1, 1, '', 0, False, 0, 0, [], [], [], [], [], [], [], False, False, False),
 ('log', 'on_epoch_start', 'infer', 1, 1, '', 0, False, 0, 0, [], [], [], [], [], [], [], False, False, False),
 ('cb', 'on_epoch_start', 'infer', 1, 1, '', 0, False, 0, 0, [], [], [], [], [], [], [], False, False, False),
 ('log', 'on_loader_start', 'infer', 1, 1, 'infer', 0, False, 2, 0, [], [], [], [], [], ['infer'], [], False,
  False, False),
 ('cb', 'on_loader_start', 'infer', 1, 1, 'infer', 0, False, 2, 0, [], [], [], [], [], ['infer'], [], False,
  False, False),
 ('log', 'on_batch_start', 'infer', 1, 1, 'infer', 0, False, 2, 4, ['features', 'targets'], [], [], [], [],
  ['infer'], [], False, False, False),
 ('cb', 'on_batch_start', 'infer', 1, 1, 'infer', 0, False, 2, 4, ['features', 'targets'], [], [], [], [],
  ['infer'], [], False, False, False),
 ('cb', 'on_batch_end', 'infer', 1, 1, 'infer', 0, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['infer'], [], False, False, False),
 ('log', 'on_batch_end', 'infer', 1, 1, 'infer', 0, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['infer'], [], False, False, False),
 ('log', 'on_batch_start', 'infer', 1, 1, 'infer', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [],
  [], ['infer'], [], False, False, False),
 ('cb', 'on_batch_start', 'infer', 1, 1, 'infer', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['infer'], [], False, False, False),
 ('cb', 'on_batch_end', 'infer', 1, 1, 'infer', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['infer'], [], False, False, False),
 ('log', 'on_batch_end', 'infer', 1, 1, 'infer', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['infer'], [], False, False, False),
 ('cb', 'on_loader_end', 'infer', 1, 1, 'infer', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['infer'], [], False, False, False),
 ('log', 'on_loader_end', 'infer', 1, 1, 'infer', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['infer'], [], False, False, False),
 ('cb', 'on_epoch_end', 'infer', 1, 1, 'infer', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['infer'], [], False, False, False),
 ('log', 'on_epoch_end', 'infer', 1, 1, 'infer', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['infer'], [], False, False, False),
 ('cb', 'on_stage_end', 'infer', 1, 1, 'infer', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['infer'], [], False, False, False),
 ('log', 'on_stage_end', 'infer', 1, 1, 'infer', 1, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['infer'], [], False, False, False),
 ('log', 'on_stage_start', 'train', 0, 0, '', 0, False, 0, 0, [], [], [], [], [], [], [], False, False, False),
 ('cb', 'on_stage_start', 'train', 0, 0, '', 0, False, 0, 0, [], [], [], [], [], [], [], False, False, False),
 ('log', 'on_epoch_start', 'train', 1, 1, '', 0, False, 0, 0, [], [], [], [], [], [], [], False, False, False),
 ('cb', 'on_epoch_start', 'train', 1, 1, '', 0, False, 0, 0, [], [], [], [], [], [], [], False, False, False),
 ('log', 'on_loader_start', 'train', 1, 1, 'train', 0, True, 2, 0, [], [], [], [], [], ['train'], [], False,
  False, True),
 ('cb', 'on_loader_start', 'train', 1, 1, 'train', 0, True, 2, 0, [], [], [], [], [], ['train'], [], False, False,
  True),
 ('log', 'on_batch_start', 'train', 1, 1, 'train', 0, True, 2, 4, ['features', 'targets'], [], [], [], [],
  ['train'], [], False, False, True),
 ('cb', 'on_batch_start', 'train', 1, 1, 'train', 0, True, 2, 4, ['features', 'targets'], [], [], [], [],
  ['train'], [], False, False, True),
 ('cb', 'on_batch_end', 'train', 1, 1, 'train', 0, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], [], False, False, True),
 ('log', 'on_batch_end', 'train', 1, 1, 'train', 0, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], [], False, False, True),
 ('log', 'on_batch_start', 'train', 1, 1, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['train'], [], False, False, True),
 ('cb', 'on_batch_start', 'train', 1, 1, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['train'], [], False, False, True),
 ('cb', 'on_batch_end', 'train', 1, 1, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], [], False, False, True),
 ('log', 'on_batch_end', 'train', 1, 1, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train'], [], False, False, True),
 ('cb', 'on_loader_end', 'train', 1, 1, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train'], [], False, False, True),
 ('log', 'on_loader_end', 'train', 1, 1, 'train', 1, True, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], ['loss'], ['train'], [], False, False, True),
 ('log', 'on_loader_start', 'train', 1, 1, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], [], False, False, False),
 ('cb', 'on_loader_start', 'train', 1, 1, 'valid', 1, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], [], False, False, False),
 ('log', 'on_batch_start', 'train', 1, 1, 'valid', 0, False, 2, 4, ['features', 'targets'], ['logits'], [], [],
  [], ['train', 'valid'], [], False, False, False),
 ('cb', 'on_batch_start', 'train', 1, 1, 'valid', 0, False, 2, 4, ['features', 'targets'], ['logits'], [], [], [],
  ['train', 'valid'], [], False, False, False),
 ('cb', 'on_batch_end', 'train', 1, 1, 'valid', 0, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], [], False, False, False),
 ('cb', 'on_exception', 'train', 1, 1, 'valid', 0, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], [], False, False, False),
 ('log', 'on_exception', 'train', 1, 1, 'valid', 0, False, 2, 4, ['features', 'targets'], ['logits'], ['loss'],
  ['loss'], [], ['train', 'valid'], [], False, False, False)]


@pytest.mark.slow
def test_hook_sequence_is_main_s(tmp_path):
    assert record(str(tmp_path / "run")) == GOLDEN


def test_the_loop_runs_without_a_runner():
    """TrainingLoop gets the two batch steps, not the runner; loop.py names no runner."""
    source = Path(loop_module.__file__).read_text()
    names = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    assert not {"runner", "Runner", "Stepper"} & names
    seen = []

    class Seen(Callback):
        def on_batch_end(self, state):
            seen.append((state.loader_name, state.batch_index, tuple(state.output["y"].shape)))

    model = nn.Conv2d(3, 2, 1)
    state = RunnerState(stage="infer", num_epochs=1, model=model)
    data = DataLoader(torch.rand(6, 3, 64, 64), batch_size=4)
    loop = loop_module.TrainingLoop(state, lambda b: {"x": b}, lambda s, m: {"y": m(s.input["x"])}, {"a": data})
    loop.run_infer([Seen()])
    assert seen == [("a", 0, (4, 2, 64, 64)), ("a", 1, (2, 2, 64, 64))]


# ---- 2. the settings ---------------------------------------------------------------------------------------

def test_settings_object_or_keywords(tiny, loaders, tmp_path):
    from segzoo.training import TrainSettings

    runner = SupervisedRunner()
    state = runner.train(tiny, nn.BCEWithLogitsLoss(), torch.optim.SGD(tiny.parameters(), 0.1), loaders,
                         tmp_path / "a", settings=TrainSettings(num_epochs=2, main_metric="loss", check=True))
    assert (state.global_epoch, state.max_batches) == (2, 4)
    args = (tiny, nn.BCEWithLogitsLoss(), torch.optim.SGD(tiny.parameters(), 0.1), loaders, tmp_path / "b")
    with pytest.raises(TypeError, match="num_epochs both as a keyword and in settings"):
        runner.train(*args, settings=TrainSettings(), num_epochs=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_epoch'; did you mean 'num_epochs'"):
        runner.train(*args, num_epoch=2)
    with pytest.raises(TypeError, match="settings must be a TrainSettings, got dict"):
        runner.train(*args, settings={"num_epochs": 2})
    with pytest.raises(ValueError, match="give either amp=True or fp16"):
        runner.train(*args, settings=TrainSettings(amp=True), fp16=True)
    with pytest.raises(ValueError, match="monitoring_params"):
        runner.train(*args, settings=TrainSettings(), monitoring_params={"project": "x"})
    assert not (tmp_path / "b").exists()


def test_catalyst_fp16_maps_onto_the_settings_and_warns_at_the_caller():
    from segzoo.training import TrainSettings

    with pytest.warns(UserWarning, match="native torch.autocast"):
        settings = TrainSettings.from_keywords(None, fp16=dict(opt_level="O1"), num_epochs=3)
    assert settings == TrainSettings(amp=True, num_epochs=3)
    with pytest.warns(UserWarning, match="native torch.autocast") as caught, pytest.raises(ValueError, match="loaders"):
        SupervisedRunner().train(nn.Conv2d(3, 1, 1), None, None, {}, "unused", fp16=True)
    assert caught[0].filename == __file__  # the user's train() line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TrainSettings.from_keywords(TrainSettings(seed=1), fp16=None) == TrainSettings(seed=1)


# ---- 3. one owner of the logdir claim ----------------------------------------------------------------------

def test_a_held_claim_is_the_runner_s_logdir(tiny, loaders, tmp_path):
    import segzoo.training.logdir as logdir_module
    from segzoo.training.logdir import LogdirClaim

    assert not hasattr(logdir_module, "_HELD")
    claim = LogdirClaim(tmp_path / "run")
    with pytest.raises(ValueError, match="is not held"):
        train(tiny, loaders, claim)
    with claim as folder:
        (folder / "notes.txt").write_text("mine")  # the claim made the folder the run's: the runner takes it as is
        state = train(tiny, loaders, claim)
        assert state.logdir == folder and (folder / "checkpoints" / "best.pth").is_file()
        with pytest.raises(FileExistsError, match="in use by another running training"):  # a second claim
            train(tiny, loaders, folder)
        with pytest.raises(ValueError, match="claimed with resume=None"):
            train(tiny, loaders, claim, resume=folder)
        with pytest.raises(ValueError, match="claimed without overwrite"):
            train(tiny, loaders, claim, overwrite_logdir=True)
        with pytest.raises(RuntimeError, match="already held"):
            claim.__enter__()
    assert not claim.held
    with claim_logdir(tmp_path / "run", resume=tmp_path / "run") as again:  # released
        assert again == folder


# ---- 4. RunnerState's flat names, declared -----------------------------------------------------------------

# every flat name main's RunnerState exposed (its properties, attached at import)
MAIN_FLAT_NAMES = [
    "amp_dtype", "batch_index", "batch_metrics", "batch_size", "best_name", "best_valid_metric", "callbacks",
    "channels_last", "checkpoint_data", "criterion", "device", "distributed", "epoch", "epoch_metrics", "exception",
    "global_epoch", "input", "is_best_valid", "is_main_process", "loader_len", "loader_metrics", "loader_name",
    "logdir", "loggers", "loss", "main_metric", "max_batches", "metrics", "minimize_metric", "model",
    "need_backward", "nonfinite", "num_epochs", "optimizer", "output", "run_settings", "scaler", "scheduler",
    "skipped_batches", "stage", "stage_index", "stop_training", "valid_loader", "valid_metrics", "world_size",
]


def test_flat_names_are_declared_and_read_and_write_their_group():
    from segzoo.training.state import FIELD_GROUP

    source = Path(loop_module.__file__).with_name("state.py").read_text()
    body = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "RunnerState").body
    declared = {n.target.id for n in body if isinstance(n, ast.AnnAssign)}
    assert set(FIELD_GROUP) <= declared and "setattr(RunnerState" not in source
    state = RunnerState()
    for name in MAIN_FLAT_NAMES:
        if name == "metrics":
            assert state.metrics.batch_values is state.batch_metrics
            continue
        group = getattr(state, FIELD_GROUP[name])
        assert getattr(state, name) is getattr(group, name)
        value = object()
        setattr(state, name, value)
        assert getattr(group, name) is value and getattr(state, name) is value
    assert set(MAIN_FLAT_NAMES) == set(FIELD_GROUP) | {"metrics"}


# ---- 5. default callbacks apart from the Catalyst keyword shims --------------------------------------------

def test_default_callbacks_and_catalyst_shims_are_apart():
    import segzoo.training.catalyst_args as catalyst_args
    import segzoo.training.defaults as defaults

    assert callable(defaults.with_default_callbacks) and callable(defaults.name_run_callbacks)
    assert not hasattr(catalyst_args, "with_default_callbacks") and not hasattr(catalyst_args, "name_run_callbacks")
    assert callable(catalyst_args.fp16_to_amp) and callable(catalyst_args.check_monitoring_params)


# ---- 6. one unwrap helper ----------------------------------------------------------------------------------

def test_unwrap_model_only_unwraps_wrappers():
    from segzoo.models.registry import get_model_spec, set_model_spec

    class UserWrapper(nn.Module):  # a user's model holding a child named "module": not a wrapper
        def __init__(self):
            super().__init__()
            self.module, self.head = TinyNet(), nn.Conv2d(1, 1, 1)

    model = UserWrapper()
    set_model_spec(model, "user", {"k": 1})
    assert get_model_spec(torch.compile(model)) == {"name": "user", "kwargs": {"k": 1}}

    from segzoo.unwrap import unwrap_model

    assert unwrap_model(model) is model
    inner = TinyNet()
    assert unwrap_model(nn.DataParallel(torch.compile(inner))) is inner
    assert unwrap_model(torch.compile(nn.DataParallel(inner))) is inner


@pytest.mark.slow
def test_keywords_train_as_before(tmp_path):
    """The old keyword spelling of a run still trains (the README's and Catalyst scripts' way)."""
    model = TinyNet()
    state = train(model, make_loaders(), tmp_path / "run", num_epochs=2, main_metric="loss", minimize_metric=True,
                  verbose=False, valid_loader="valid", seed=3, amp=False, channels_last=False, compile=False,
                  normalization=None, nonfinite="raise", checkpoint_data={"x": 1}, check=True, timeit=True,
                  overwrite_logdir=False, run_config=None, fp16=None, monitoring_params=None, stages=None,
                  callbacks=[LoggerCallback(), Callback(CallbackOrder.Metric)])
    assert state.global_epoch == 2 and "_timers/batch_time" in state.valid_metrics
