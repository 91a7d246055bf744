import json

import numpy as np
import pytest
import torch
from _helpers import TinyNet, make_loaders

import segzoo
from segzoo.checkpoint import load_checkpoint
from segzoo.metrics import dice
from segzoo.training import Callback, CallbackOrder, LoggerCallback, Stage, SupervisedRunner
from segzoo.training.callbacks import (
    CheckpointCallback,
    DiceCallback,
    EarlyStoppingCallback,
    IouCallback,
    MetricCallback,
    NonFiniteLossError,
    OptimizerCallback,
)


def _train(model, loaders, logdir, **kw):
    kw.setdefault("num_epochs", 1)
    return SupervisedRunner().train(model, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.1),
                                    loaders, logdir, **kw)


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


def test_callback_order_pinned(tiny, loaders, tmp_path):
    log = []
    cbs = [Recorder(log, "other", CallbackOrder.Other), Recorder(log, "metric_a", CallbackOrder.Metric),
           RecLogger(log), Recorder(log, "metric_b", CallbackOrder.Metric),
           Recorder(log, "internal", CallbackOrder.Internal)]
    _train(tiny, loaders, tmp_path, callbacks=cbs)
    assert log[:5] == ["start:logger", "start:internal", "start:metric_a", "start:metric_b", "start:other"]
    assert log[5:] == ["internal", "metric_a", "metric_b", "other", "logger"]


class CountSteps(Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_stage_start(self, state):
        original = state.optimizer.step

        def step(*a, **k):
            self.steps.append(state.batch_index)
            return original(*a, **k)

        state.optimizer.step = step


@pytest.mark.parametrize("n,expected", [(1, [0, 1, 2, 3, 4, 5, 6]), (2, [1, 3, 5, 6]), (3, [2, 5, 6]), (4, [3, 6])])
def test_accumulation_steps_exact(tiny, tmp_path, n, expected):
    counter = CountSteps()
    _train(tiny, make_loaders(n_train=7, batch_size=1), tmp_path,
           callbacks=[OptimizerCallback(accumulation_steps=n), counter])
    assert counter.steps == expected


def test_accumulation_matches_large_batch(tmp_path):
    torch.manual_seed(0)
    a, b = TinyNet(), TinyNet()
    b.load_state_dict(a.state_dict())
    _train(a, make_loaders(n_train=8, batch_size=2, shuffle=False), tmp_path / "a",
           callbacks=[OptimizerCallback(accumulation_steps=4)])
    _train(b, make_loaders(n_train=8, batch_size=8, shuffle=False), tmp_path / "b")
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


class Scripted(MetricCallback):
    """Valid metric values scripted per epoch."""

    def __init__(self, values):
        super().__init__("m", lambda o, t: 0.0)
        self.values = values

    def on_loader_end(self, state):
        state.loader_metrics["m"] = self.values[state.epoch - 1]


@pytest.mark.parametrize("minimize,values,patience,stopped_at", [
    (True, [5, 4, 4.5, 4.2, 3, 3], 2, 4),
    (False, [1, 2, 1.5, 1.8, 3, 3], 2, 4),
    (True, [5, 4, 3, 2, 1, 0], 1, 6),      # always improving: never stops, patience=1 not after epoch 1
    (False, [1, 0.5, 2, 2, 2, 2], 1, 2),
])
def test_early_stopping(tiny, loaders, tmp_path, minimize, values, patience, stopped_at):
    state = _train(tiny, loaders, tmp_path, num_epochs=6, callbacks=[
        Scripted(values), EarlyStoppingCallback(patience, metric="m", minimize=minimize)])
    assert state.epoch == stopped_at


def test_checkpoint_files_keys_and_top_n(tiny, loaders, tmp_path):
    spec_model = segzoo.create_model("unet", num_channels=4, num_blocks=2)
    state = _train(spec_model, loaders, tmp_path, num_epochs=3, callbacks=[
        Scripted([3.0, 1.0, 2.0]), CheckpointCallback(save_n_best=2)], main_metric="m",
        normalization={"mean": [0.5] * 3, "std": [0.2] * 3})
    folder = tmp_path / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["_metrics.json", "best.pth", "best_full.pth", "last.pth", "last_full.pth",
                     "train.2.pth", "train.2_full.pth", "train.3.pth", "train.3_full.pth"]
    best = load_checkpoint(folder / "best.pth")
    assert best["epoch"] == 2 and best["valid_metrics"]["m"] == 1.0
    assert best["model_spec"] == {"name": "unet", "kwargs": {"num_channels": 4, "num_blocks": 2}}
    assert best["normalization"] == {"mean": [0.5] * 3, "std": [0.2] * 3}
    assert not any(k.startswith("module.") for k in best["model_state_dict"])
    full = torch.load(folder / "last_full.pth", weights_only=True)
    assert {"optimizer_state_dict", "rng_state", "callbacks_state"} <= set(full) and full["epoch"] == 3
    metrics = json.loads((folder / "_metrics.json").read_text())
    assert metrics["best"]["epoch"] == 2 and len(metrics["epochs"]) == 3
    # the spec rebuilds the model and the weights load into it
    rebuilt = segzoo.model_from_spec(best["model_spec"])
    rebuilt.load_state_dict(best["model_state_dict"])
    assert state.is_main_process


def test_resume_continues_identically(tmp_path):
    def run(logdir, epochs, resume=None):
        torch.manual_seed(0)
        model = TinyNet()
        opt = torch.optim.Adam(model.parameters(), 0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
        SupervisedRunner().train(model, torch.nn.BCEWithLogitsLoss(), opt, make_loaders(), logdir,
                                 scheduler=sched, num_epochs=epochs, resume=resume, seed=0)
        return model, opt

    straight, opt_a = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed, opt_b = run(tmp_path / "b", 4, resume=tmp_path / "b" / "checkpoints" / "last_full.pth")
    for pa, pb in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(pa, pb)
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"] == 0.01 * 0.5**4
    ck = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pth")
    assert ck["epoch"] == 4 and ck["global_epoch"] == 4


def test_exact_epoch_dice(tiny, tmp_path):
    loaders = make_loaders(n_valid=10, batch_size=3)
    state = _train(tiny, loaders, tmp_path, callbacks=[DiceCallback(threshold=0.5), IouCallback()])
    tiny.eval()
    with torch.no_grad():
        outs = torch.cat([tiny(b["features"]) for b in loaders["valid"]])
    targets = torch.cat([b["targets"] for b in loaders["valid"]])
    assert state.valid_metrics["dice"] == pytest.approx(float(dice(outs, targets, threshold=0.5)), abs=1e-6)


def test_nan_loss_stops_and_keeps_checkpoint(tiny, loaders, tmp_path):
    class Poison(Callback):
        def __init__(self):
            super().__init__(CallbackOrder.Criterion + 1)

        def on_batch_end(self, state):
            if state.epoch == 2 and state.batch_index == 1 and state.need_backward:
                state.loss["loss"] = state.loss["loss"] * float("nan")

    with pytest.raises(NonFiniteLossError, match="non-finite loss nan at stage 'train', epoch 2, batch 1"):
        _train(tiny, loaders, tmp_path, num_epochs=3, callbacks=[Poison()])
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model_state_dict"].values())
    state = _train(TinyNet(), loaders, tmp_path / "skip", num_epochs=2, callbacks=[Poison()], nonfinite="skip")
    assert state.skipped_batches == 1


def test_keyboard_interrupt_leaves_resumable_checkpoint(tiny, loaders, tmp_path):
    class Interrupt(Callback):
        def on_batch_end(self, state):
            if state.epoch == 2 and state.batch_index == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tiny, loaders, tmp_path, num_epochs=3, callbacks=[Interrupt()])
    ck = load_checkpoint(tmp_path / "checkpoints" / "last_full.pth")
    assert ck["interrupted"] and ck["epoch"] == 1
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pth")["interrupted"]
    state = _train(TinyNet(), loaders, tmp_path, num_epochs=3, resume=tmp_path)
    assert state.epoch == 3 and state.global_epoch == 3


def test_seeded_runs_reproducible(tmp_path):
    results = []
    init = TinyNet().state_dict()
    for i in range(2):
        model = TinyNet()
        model.load_state_dict(init)
        torch.rand(i + 1)  # different global RNG state before training: seed= must reset it
        _train(model, make_loaders(), tmp_path / str(i), seed=7, num_epochs=2)
        results.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])


def test_tuple_batches_predict_and_infer(tiny, tmp_path):
    loaders = make_loaders(tuples=True)
    _train(tiny, loaders, tmp_path)
    out = SupervisedRunner().predict_loader(tiny, loaders["valid"])
    assert isinstance(out, np.ndarray) and out.shape == (8, 1, 8, 8)
    state = SupervisedRunner().infer(tiny, {"valid": loaders["valid"]}, callbacks=[DiceCallback()])
    assert 0 <= state.epoch_metrics["valid"]["dice"] <= 1


def test_multistage_and_errors(tiny, loaders, tmp_path):
    opt2 = torch.optim.SGD(tiny.parameters(), 0.01)
    state = _train(tiny, loaders, tmp_path, stages=[Stage("warmup", 1), Stage("finetune", 2, optimizer=opt2)])
    assert state.stage == "finetune" and state.global_epoch == 3
    assert (tmp_path / "checkpoints" / "finetune.2.pth").exists() or (tmp_path / "checkpoints" / "best.pth").exists()
    with pytest.raises(ValueError, match="'valid' loader"):
        _train(tiny, {"train": loaders["train"]}, tmp_path)
    with pytest.raises(KeyError, match="main_metric 'dice'"):
        _train(tiny, loaders, tmp_path / "x", main_metric="dice")
    with pytest.raises(TypeError, match="dict or a"):
        _train(tiny, {"train": [torch.rand(3, 8, 8)], "valid": [torch.rand(3, 8, 8)]}, tmp_path / "y")


def test_amp_bf16_on_cpu(tiny, loaders, tmp_path):
    state = _train(tiny, loaders, tmp_path, amp="bf16", channels_last=True, callbacks=[DiceCallback()])
    assert np.isfinite(state.valid_metrics["loss"])


@pytest.mark.gpu
def test_amp_fp16_cuda(tiny, loaders, tmp_path):
    runner = SupervisedRunner(device="cuda")
    state = runner.train(tiny, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(tiny.parameters(), 0.1), loaders,
                         tmp_path, amp="fp16", channels_last=True)
    assert state.scaler is not None and np.isfinite(state.valid_metrics["loss"])
