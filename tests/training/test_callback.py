"""Callback ordering, the CallbackOrder values and the CALLBACKS registry."""

import pytest
import torch
from _helpers import Counter, train

from segzoo.training import CALLBACKS, Callback, CallbackOrder, LoggerCallback
from segzoo.training.callbacks import CheckpointCallback, ConsoleLogger, CriterionCallback, OptimizerCallback


class Recorder(Callback):
    def __init__(self, log, name, order):
        super().__init__(order)
        self.log, self.name = log, name

    def on_batch_end(self, state):
        if state.batch_index == 0 and state.loader_name == "train":
            self.log.append(self.name)

    def on_epoch_start(self, state):
        self.log.append(f"start:{self.name}")


class RecLogger(LoggerCallback):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def on_batch_end(self, state):
        if state.batch_index == 0 and state.loader_name == "train":
            self.log.append("logger")

    def on_epoch_start(self, state):
        self.log.append("start:logger")

    def on_exception(self, state):
        self.log.append("exception:logger")


def test_callback_order_pinned(tiny, loaders, tmp_path):
    log = []
    cbs = [Recorder(log, "other", CallbackOrder.Other), Recorder(log, "metric_a", CallbackOrder.Metric),
           RecLogger(log), Recorder(log, "metric_b", CallbackOrder.Metric),
           Recorder(log, "internal", CallbackOrder.Internal)]
    train(tiny, loaders, tmp_path, callbacks=cbs)
    assert log[:5] == ["start:logger", "start:internal", "start:metric_a", "start:metric_b", "start:other"]
    assert log[5:] == ["internal", "metric_a", "metric_b", "other", "logger"]


def test_builtin_callbacks_run_in_catalyst_order(tiny, loaders, tmp_path):
    seen = []

    class Spy(Callback):
        def __init__(self, order):
            super().__init__(order)

        def on_batch_end(self, state):
            if state.batch_index == 0 and state.loader_name == "train":
                seen.append((self.order, sorted(state.loss), state.model.net[0].weight.grad is not None))

    train(tiny, loaders, tmp_path, callbacks=[Spy(CallbackOrder.Criterion + 1), Spy(CallbackOrder.Internal),
                                              Spy(CallbackOrder.Optimizer + 1)])
    # before the criterion: no loss; after it: a loss; after the optimizer: it stepped and zeroed the grads
    assert seen == [(0, [], False), (21, ["loss"], False), (41, ["loss"], False)]


def test_exception_reaches_loggers_last(tiny, loaders, tmp_path):
    log = []

    class Boom(Recorder):
        def on_batch_end(self, state):
            raise RuntimeError("boom")

        def on_exception(self, state):
            log.append(f"exception:{type(state.exception).__name__}")

    with pytest.raises(RuntimeError, match="boom"):
        train(tiny, loaders, tmp_path, callbacks=[RecLogger(log), Boom(log, "boom", CallbackOrder.Other)])
    assert log[-2:] == ["exception:RuntimeError", "exception:logger"]


def test_order_values_and_registry():
    assert {o.name: int(o) for o in CallbackOrder} == {
        "Unknown": -100, "Internal": 0, "Criterion": 20, "Optimizer": 40, "Scheduler": 60, "Metric": 80,
        "External": 100, "Other": 200}
    assert CALLBACKS["CriterionCallback"] is CriterionCallback
    assert CALLBACKS["OptimizerCallback"] is OptimizerCallback
    assert {"DiceCallback", "IouCallback", "EarlyStoppingCallback", "TensorboardLogger", "SchedulerCallback",
            "CriterionAggregatorCallback", "PredictionSaverCallback", "MetricCallback"} <= set(CALLBACKS)
    assert all(issubclass(c, Callback) for c in CALLBACKS.values())
    assert isinstance(ConsoleLogger(), LoggerCallback)
    assert CheckpointCallback().state_dict() == {"top": [], "history": []}


def test_callbacks_registry_register_create_list(monkeypatch):
    from segzoo.registry import Registry
    from segzoo.training import create_callback, list_callbacks, register_callback
    from segzoo.training.callbacks import ProgressBarLogger

    assert isinstance(CALLBACKS, Registry) and CALLBACKS["VerboseLogger"] is ProgressBarLogger
    assert "DiceCallback" in list_callbacks() and dict(CALLBACKS)["DiceCallback"].__name__ == "DiceCallback"
    with pytest.raises(KeyError, match="DiceCallback"):
        CALLBACKS["DiceCallbak"]
    with pytest.raises(ValueError, match="already registered"):
        register_callback("DiceCallback", Callback)
    with pytest.raises(TypeError):
        CALLBACKS["X"] = Callback  # read-only: registration is the one way in
    monkeypatch.setattr(CALLBACKS, "_factories", dict(CALLBACKS._factories))  # forgotten after the test
    monkeypatch.setattr(CALLBACKS, "_defaults", dict(CALLBACKS._defaults))

    @register_callback("MyCallback", order=7)
    class MyCallback(Callback):
        pass

    assert create_callback("MyCallback").order == 7 and "MyCallback" in list_callbacks("My*")


def test_state_key_from_constructor_arguments():
    from segzoo.training.callback import state_keys
    from segzoo.training.callbacks import EarlyStoppingCallback, MetricCallback

    assert Counter("a").state_key == Counter(name="a", step=1).state_key == "Counter{'name': 'a', 'step': 1}"
    assert Counter("a").state_key != Counter("b").state_key != Counter("a", 2).state_key
    # a function is named, never shown by address: the key is the same in another process
    assert MetricCallback("m", torch.mean).state_key == MetricCallback("m", torch.mean).state_key
    assert "0x" not in MetricCallback("m", lambda o, t: 0.0).state_key
    # what may change on resume is left out of the built-ins' keys
    assert EarlyStoppingCallback(3, metric="m").state_key == EarlyStoppingCallback(5, metric="m", min_delta=0.1).state_key
    assert CheckpointCallback().state_key == CheckpointCallback(resume="x.pth", save_n_best=3).state_key
    # identically configured callbacks are numbered in run order
    assert state_keys([Counter("a"), Counter("b"), Counter("a")])[2] == "Counter{'name': 'a', 'step': 1}#2"


def test_hooks_skip_empty_hooks_and_keep_every_other_call():
    from segzoo.training.loop import Hooks, event_calls
    from segzoo.training.state import RunnerState

    log = []
    rec, logger, plain = Recorder(log, "rec", CallbackOrder.Metric), RecLogger(log), Callback()
    assign = Callback()
    assign.on_loader_start = lambda state: log.append("assigned")  # a hook set on the instance counts
    calls = event_calls([plain, rec, logger, assign], "on_epoch_start")
    assert calls == [logger.on_epoch_start, rec.on_epoch_start]  # loggers first on *_start; no empty hooks
    assert event_calls([plain, rec, logger], "on_batch_end") == [rec.on_batch_end, logger.on_batch_end]
    assert event_calls([plain, rec], "on_stage_end") == []
    assert event_calls([assign], "on_loader_start") == [assign.on_loader_start]

    class Dynamic(Callback):  # computes its attributes: asked for the hook at every call, as fire() did
        def __init__(self):
            super().__init__()
            self.asked = 0

        def __getattribute__(self, name):
            if name == "on_stage_end":
                object.__setattr__(self, "asked", object.__getattribute__(self, "asked") + 1)
            return object.__getattribute__(self, name)

    dyn = Dynamic()
    callbacks = [rec, dyn]
    hooks = Hooks(callbacks)
    state = RunnerState()
    for _ in range(3):
        hooks("on_stage_end", state)
    assert dyn.asked == 3
    hooks("on_epoch_start", state)
    callbacks.append(logger)  # a callback added meanwhile gets the next events
    hooks("on_epoch_start", state)
    assert log == ["start:rec", "start:logger", "start:rec"]


def test_criterion_multiplier_one_adds_no_op_and_keeps_the_values():
    from segzoo.training.state import RunnerState

    x, y = torch.tensor([[0.3, -1.2]]), torch.tensor([[1.0, 0.0]])
    state = RunnerState(criterion=torch.nn.BCEWithLogitsLoss())
    state.output, state.input = {"logits": x.requires_grad_()}, {"targets": y}
    CriterionCallback().on_batch_end(state)
    one = state.loss["loss"]
    assert one.grad_fn.name() == "BinaryCrossEntropyWithLogitsBackward0"  # the criterion's own tensor
    assert state.batch_metrics["loss"] == torch.nn.functional.binary_cross_entropy_with_logits(x, y).item()
    CriterionCallback(multiplier=2.5).on_batch_end(state)
    assert torch.equal(state.loss["loss"], one * 2.5)
    state.criterion = lambda o, t: torch.tensor(3)  # an integer loss still becomes float, as before
    CriterionCallback().on_batch_end(state)
    assert state.loss["loss"].dtype == torch.float32 and state.batch_metrics["loss"] == 3.0
