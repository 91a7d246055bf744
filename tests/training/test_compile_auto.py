"""compile="auto" (issue 23, point 2): compiled only when the compile time is repaid over the planned steps.

torch.compile is never run here (slow on CPU): the measurement is replaced (``run_choices._MEASURE``).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn as nn
from _helpers import TinyNet, make_loaders, train

from segzoo.training import Stage, run_choices


class Marked(nn.Module):
    """Stands for the compiled model: runs the same module, and says it was used."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def fake_measure(eager_s, compiled_s=None, compile_s=None, error=None, calls=None):
    def measure(model, batch, forward, autocast, eager_only=False):
        (calls if calls is not None else []).append(eager_only)
        forward(model, batch)  # the runner's forward works on the drawn batch
        if eager_only:
            return {"eager_s": eager_s}
        if error is not None:
            raise error
        return {"eager_s": eager_s, "compiled_s": compiled_s, "compile_s": compile_s, "compiled_model": Marked(model)}
    return measure


def test_compile_pays():
    assert run_choices.compile_pays(1000, 0.10, 0.05, 20.0)          # 50 s saved > 20 s
    assert not run_choices.compile_pays(100, 0.10, 0.05, 20.0)       # 5 s saved < 20 s
    assert not run_choices.compile_pays(10**6, 0.05, 0.06, 1.0)      # slower compiled: never


def test_few_steps_stay_eager_without_compiling(monkeypatch, tmp_path):
    """Old code: compile='auto' was taken as truthy and compiled. Now 4 steps cannot repay a compile."""
    calls = []
    monkeypatch.setattr(run_choices, "_MEASURE", [fake_measure(0.01, calls=calls)])
    state = train(TinyNet(), make_loaders(), tmp_path / "run", compile="auto")
    assert calls == [True]  # only the eager step was timed
    record = state.checkpoint_data["compile"]
    assert record["compiled"] is False and "cannot repay" in record["source"] and record["steps"] == 4
    assert not isinstance(state.model, Marked)


def test_many_steps_compile(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(run_choices, "_MEASURE", [fake_measure(1.0, 0.5, 10.0, calls=calls)])
    state = train(TinyNet(), make_loaders(), tmp_path / "run", compile="auto",
                  stages=[Stage("a", 30), Stage("b", 20)])
    assert calls == [True, False]
    assert isinstance(state.model, Marked) and state.model.calls > 0  # trained with the compiled model
    record = state.checkpoint_data["compile"]
    assert record["compiled"] and record["steps"] == 200 and "repaid over 200 steps" in record["source"]


def test_a_compile_failure_trains_eagerly_after_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(run_choices, "_MEASURE",
                        [fake_measure(1.0, error=RuntimeError("inductor: no C++ compiler\nlong traceback"))])
    with pytest.warns(RuntimeWarning) as caught:
        state = train(TinyNet(), make_loaders(), tmp_path / "run", num_epochs=30, compile="auto")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "\n" not in messages[0] and "no C++ compiler" in messages[0]
    assert state.global_epoch == 30 and state.checkpoint_data["compile"]["compiled"] is False


def test_bad_compile_setting(tmp_path):
    with pytest.raises(ValueError, match="compile must be True, False, 'auto'"):
        train(TinyNet(), make_loaders(), tmp_path / "run", compile="yes")


def test_drawing_the_timed_batch_moves_no_random_generator():
    loaders = make_loaders()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    assert run_choices.first_train_batch(loaders) is not None
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_eager_timing_leaves_the_model_as_it_was():
    """The real measurement (eager only): BatchNorm statistics and gradients are as before."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = run_choices.measure_compile(model, torch.rand(2, 3, 8, 8), lambda m, b: m(b),
                                      torch.autocast("cpu", enabled=False), eager_only=True)
    assert out["eager_s"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
