"""Built-in callbacks: optimizer (accumulation, clipping, argument checks), scheduler, criteria,
early stopping and the metric callbacks (exact epoch Dice / IoU, batch-size weighted means)."""

import pytest
import torch
from _helpers import TinyNet, make_loaders, scripted_metric, train
from torch.utils.data import DataLoader, TensorDataset

from segzoo.metrics import dice, iou
from segzoo.training import Callback, SupervisedRunner
from segzoo.training.callbacks import (
    CriterionAggregatorCallback,
    CriterionCallback,
    DiceCallback,
    EarlyStoppingCallback,
    IouCallback,
    MetricCallback,
    OptimizerCallback,
    SchedulerCallback,
)


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
    train(tiny, make_loaders(n_train=7, batch_size=1), tmp_path, callbacks=[OptimizerCallback(accumulation_steps=n), counter])
    assert counter.steps == expected


def test_accumulation_matches_large_batch(tmp_path):
    torch.manual_seed(0)
    a, b = TinyNet(), TinyNet()
    b.load_state_dict(a.state_dict())
    train(a, make_loaders(n_train=8, batch_size=2, shuffle=False), tmp_path / "a",
          callbacks=[OptimizerCallback(accumulation_steps=4)])
    train(b, make_loaders(n_train=8, batch_size=8, shuffle=False), tmp_path / "b")
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_grad_clip_value_bounds_the_update(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    before = [p.detach().clone() for p in model.parameters()]
    SupervisedRunner().train(model, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), lr=1.0),
                             make_loaders(n_train=4, batch_size=4), tmp_path,
                             callbacks=[OptimizerCallback(grad_clip_params={"clip_value": 1e-4})])
    change = max((p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before))
    assert 0 < change <= 1e-4 * 1.001  # one SGD step of lr 1 with every gradient entry clipped to 1e-4


@pytest.mark.parametrize("kwargs,match", [
    ({"accumulation_steps": 0}, "accumulation_steps"), ({"grad_clip_params": {"norm": 1}}, "grad_clip_params")])
def test_optimizer_callback_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimizerCallback(**kwargs)


def test_reduce_on_plateau_follows_the_valid_metric(tiny, loaders, tmp_path):
    opt = torch.optim.SGD(tiny.parameters(), 0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=0, factor=0.5)
    state = SupervisedRunner().train(tiny, torch.nn.BCEWithLogitsLoss(), opt, loaders, tmp_path, num_epochs=3,
                                     scheduler=plateau, callbacks=[scripted_metric([1.0, 2.0, 2.0]),
                                                                   SchedulerCallback(reduce_metric="m")])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # improved at epoch 2, not at epoch 3
    assert state.epoch_metrics["train"]["lr"] == pytest.approx(0.1)  # lr logged during the last epoch


def test_batch_scheduler_steps_every_train_batch(tiny, tmp_path):
    opt = torch.optim.SGD(tiny.parameters(), 0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    SupervisedRunner().train(tiny, torch.nn.BCEWithLogitsLoss(), opt, make_loaders(n_train=12, batch_size=4),
                             tmp_path, scheduler=sched, num_epochs=2, callbacks=[SchedulerCallback(mode="batch")])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**6)  # 3 batches x 2 epochs
    with pytest.raises(ValueError, match="mode"):
        SchedulerCallback(mode="step")


def test_criteria_dict_and_aggregation(tiny, loaders, tmp_path):
    criteria = {"bce": torch.nn.BCEWithLogitsLoss(), "l1": torch.nn.L1Loss()}
    state = SupervisedRunner().train(
        tiny, criteria, torch.optim.SGD(tiny.parameters(), 0.1), loaders, tmp_path, callbacks=[
            CriterionCallback(prefix="loss_bce", criterion_key="bce"),
            CriterionCallback(prefix="loss_l1", criterion_key="l1", multiplier=2.0),
            CriterionAggregatorCallback("loss", loss_keys={"loss_bce": 1.0, "loss_l1": 0.5},
                                        loss_aggregate_fn="weighted_sum")])
    v = state.valid_metrics
    assert v["loss"] == pytest.approx(v["loss_bce"] + 0.5 * v["loss_l1"], rel=1e-5)
    with pytest.raises(KeyError, match="nope"):
        SupervisedRunner().train(tiny, criteria, torch.optim.SGD(tiny.parameters(), 0.1), loaders, tmp_path / "x",
                                 callbacks=[CriterionCallback(criterion_key="nope")])
    with pytest.raises(ValueError, match="weighted_sum"):
        CriterionAggregatorCallback("loss", ["a"], loss_aggregate_fn="weighted_sum")


def test_aggregate_mean(tiny, loaders, tmp_path):
    state = train(tiny, loaders, tmp_path, callbacks=[
        CriterionCallback(prefix="a"), CriterionCallback(prefix="b", multiplier=3.0),
        CriterionAggregatorCallback("loss", ["a", "b"], loss_aggregate_fn="mean")])
    assert state.valid_metrics["loss"] == pytest.approx(2 * state.valid_metrics["a"], rel=1e-5)


@pytest.mark.parametrize("minimize,values,patience,stopped_at", [
    (True, [5, 4, 4.5, 4.2, 3, 3], 2, 4),
    (False, [1, 2, 1.5, 1.8, 3, 3], 2, 4),
    (True, [5, 4, 3, 2, 1, 0], 1, 6),      # always improving: never stops, patience=1 not after epoch 1
    (False, [1, 0.5, 2, 2, 2, 2], 1, 2),
])
def test_early_stopping(tiny, loaders, tmp_path, minimize, values, patience, stopped_at):
    state = train(tiny, loaders, tmp_path, num_epochs=6, callbacks=[
        scripted_metric(values), EarlyStoppingCallback(patience, metric="m", minimize=minimize)])
    assert state.epoch == stopped_at
    with pytest.raises(ValueError, match="patience"):
        EarlyStoppingCallback(0)


def test_exact_epoch_dice_and_iou(tiny, tmp_path):
    loaders = make_loaders(n_valid=10, batch_size=3)  # batches of 3, 3, 3, 1: a batch mean would differ
    state = train(tiny, loaders, tmp_path, callbacks=[DiceCallback(threshold=0.5), IouCallback()])
    tiny.eval()
    with torch.no_grad():
        outs = torch.cat([b["features"] for b in loaders["valid"]])
        outs = tiny(outs)
    targets = torch.cat([b["targets"] for b in loaders["valid"]])
    assert state.valid_metrics["dice"] == pytest.approx(float(dice(outs, targets, threshold=0.5)), abs=1e-6)
    assert state.valid_metrics["iou"] == pytest.approx(float(iou(outs, targets)), abs=1e-6)


def test_multiclass_dice_logs_per_class_values(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 1)
    x = torch.rand(8, 3, 8, 8)
    y = x.argmax(1)  # (B, H, W) class indices
    loaders = {"train": DataLoader(TensorDataset(x, y), batch_size=4),
               "valid": DataLoader(TensorDataset(x, y), batch_size=3)}
    state = SupervisedRunner().train(model, torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.1),
                                     loaders, tmp_path, callbacks=[
                                         DiceCallback(activation="Softmax2d", class_names=["bg", "a", "b"])])
    v = state.valid_metrics
    assert {"dice", "dice/bg", "dice/a", "dice/b"} <= set(v)
    assert v["dice"] == pytest.approx((v["dice/bg"] + v["dice/a"] + v["dice/b"]) / 3)


def test_metric_callback_weights_batches_by_size(tiny, tmp_path):
    loaders = make_loaders(n_valid=5, batch_size=4)  # valid batches of 4 and 1
    state = train(tiny, loaders, tmp_path, callbacks=[
        MetricCallback("first", lambda o, t, scale: scale * t.flatten(1)[:, 0].mean(), scale=2.0)])
    targets = torch.cat([b["targets"] for b in loaders["valid"]])
    assert state.valid_metrics["first"] == pytest.approx(2.0 * targets.flatten(1)[:, 0].mean().item(), abs=1e-6)


def test_missing_keys_are_named(tiny, loaders, tmp_path):
    with pytest.raises(KeyError, match=r"DiceCallback: no model output 'mask'; available: \['logits'\]"):
        train(tiny, loaders, tmp_path, callbacks=[DiceCallback(output_key="mask")])
    with pytest.raises(KeyError, match=r"CriterionCallback: no batch key 'y'; available: \['features', 'targets'\]"):
        train(tiny, loaders, tmp_path, callbacks=[CriterionCallback(input_key="y")])
