"""Catalyst 19.x scripts with only their imports changed: the segmentation tutorial's flow on procedural data.

Train with Dice/IoU/BCE criteria aggregated by CriterionAggregatorCallback, infer with
CheckpointCallback(resume=) + InferCallback, predict_batch, predict_loader, trace; plus the
19.x keywords (fp16, monitoring_params, check, timeit) and a 19.x-style custom metric callback.
"""

import copy
import json
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

import segzoo
from segzoo.data import ProceduralSegmentation
from segzoo.losses import DiceLoss, IoULoss
from segzoo.training import Callback, CallbackOrder, RunnerState, SupervisedRunner
from segzoo.training.callbacks import (
    CheckpointCallback,
    CriterionAggregatorCallback,
    CriterionCallback,
    DiceCallback,
    EarlyStoppingCallback,
    InferCallback,
    IouCallback,
    OptimizerCallback,
    TensorboardLogger,
)
from segzoo.training.catalyst_args import fp16_to_amp


class TutorialDataset(Dataset):
    """The tutorial's item layout: ``{"image", "mask", "filename"}`` (here from the procedural data)."""

    def __init__(self, n, seed, size=32):
        self.data = ProceduralSegmentation(n, image_size=size, seed=seed)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        item = self.data[i]
        return {"image": item["features"], "mask": item["targets"], "filename": f"img{i}.png"}


def tiny_unet():
    return segzoo.Unet(num_classes=1, num_channels=4, num_blocks=2)


@pytest.fixture
def loaders():
    return OrderedDict([("train", DataLoader(TutorialDataset(8, seed=1), batch_size=4, shuffle=True)),
                        ("valid", DataLoader(TutorialDataset(4, seed=2), batch_size=2))])


def tutorial_train(model, loaders, logdir, **kw):
    """The tutorial's train() call: three criteria, a weighted aggregate, Dice and IoU, best by IoU."""
    runner = SupervisedRunner(input_key="image", input_target_key="mask")
    criterion = {"dice": DiceLoss(), "iou": IoULoss(), "bce": nn.BCEWithLogitsLoss()}
    callbacks = [
        CriterionCallback(input_key="mask", prefix="loss_dice", criterion_key="dice"),
        CriterionCallback(input_key="mask", prefix="loss_iou", criterion_key="iou"),
        CriterionCallback(input_key="mask", prefix="loss_bce", criterion_key="bce"),
        CriterionAggregatorCallback(prefix="loss", loss_aggregate_fn="weighted_sum",
                                    loss_keys={"loss_dice": 1.0, "loss_iou": 1.0, "loss_bce": 0.8}),
        DiceCallback(input_key="mask"),
        IouCallback(input_key="mask"),
    ]
    kw.setdefault("num_epochs", 2)
    state = runner.train(model=model, criterion=criterion, optimizer=torch.optim.Adam(model.parameters(), 1e-2),
                         loaders=loaders, callbacks=callbacks, logdir=logdir, main_metric="iou",
                         minimize_metric=False, fp16=None, monitoring_params=None, verbose=False, **kw)
    return runner, state


def eager_logits(model, loader):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(b["image"]) for b in loader]).numpy()


def test_tutorial_train_flow(tmp_path, loaders):
    torch.manual_seed(0)
    model = tiny_unet()
    runner, state = tutorial_train(model, loaders, tmp_path / "logs")
    v = state.valid_metrics
    assert {"dice", "iou", "loss_dice", "loss_iou", "loss_bce", "loss"} <= set(v)
    # the aggregate is the weighted sum of the three criteria (loader means are linear)
    assert v["loss"] == pytest.approx(v["loss_dice"] + v["loss_iou"] + 0.8 * v["loss_bce"], rel=1e-5)
    # runner.callbacks in run order: the list's callbacks keyed by position after sorting by order,
    # the runner's own by Catalyst's default names
    assert list(runner.callbacks) == [0, 1, 2, 3, "_optimizer", 4, 5, "_saver"]
    assert [type(runner.callbacks[i]).__name__ for i in range(6)] == [
        "CriterionCallback", "CriterionCallback", "CriterionCallback", "CriterionAggregatorCallback",
        "DiceCallback", "IouCallback"]
    assert list(runner.loggers) == ["console"]
    assert runner.model is model  # the model stays on the runner
    best = json.loads((tmp_path / "logs" / "checkpoints" / "_metrics.json").read_text())["best"]
    assert best["metrics"]["valid"]["iou"] == pytest.approx(state.best_valid_metric)


def test_infer_with_checkpoint_resume_predicts_with_the_checkpoint(tmp_path, loaders):
    torch.manual_seed(0)
    tutorial_train(tiny_unet(), loaders, tmp_path / "logs")
    best = tmp_path / "logs" / "checkpoints" / "best.pth"
    reference = tiny_unet()
    reference.load_state_dict(torch.load(best, weights_only=True)["model_state_dict"])
    expected = eager_logits(reference, loaders["valid"])

    torch.manual_seed(123)  # a fresh, untrained model, as in the tutorial's infer cell
    fresh = tiny_unet()
    untrained = eager_logits(copy.deepcopy(fresh), loaders["valid"])
    assert not np.allclose(untrained, expected, atol=1e-3)

    runner = SupervisedRunner(input_key="image", input_target_key="mask")
    runner.infer(model=fresh, loaders={"infer": loaders["valid"]},
                 callbacks=[CheckpointCallback(resume=str(best)), InferCallback()])
    assert isinstance(runner.callbacks[0], InferCallback)  # as the 19.x tutorials index it
    logits = runner.callbacks[0].predictions["logits"]
    assert isinstance(logits, np.ndarray) and logits.shape == (4, 1, 32, 32)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)

    # the tutorial's OrderedDict form, looked up by name
    runner2 = SupervisedRunner(input_key="image")
    runner2.infer(model=tiny_unet(), loaders={"infer": loaders["valid"]}, callbacks=OrderedDict([
        ("loader", CheckpointCallback(resume=str(best))), ("infer", InferCallback())]))
    np.testing.assert_allclose(runner2.callbacks["infer"].predictions["logits"], expected, rtol=1e-4, atol=1e-5)
    assert list(runner2.callbacks) == ["infer", "loader"]  # run order: InferCallback runs first


class EventLog(Callback):
    """Counts every event, to check infer fires them all and check=True bounds the batches."""

    def __init__(self):
        super().__init__(CallbackOrder.Other)
        self.events, self.batches = [], {}

    def __getattribute__(self, name):
        if name.startswith("on_") and name != "on_batch_end":
            object.__getattribute__(self, "events").append(name)
        return object.__getattribute__(self, name)

    def on_batch_end(self, state: RunnerState):
        key = (state.stage, state.epoch, state.loader_name)
        self.batches[key] = self.batches.get(key, 0) + 1


def test_infer_fires_every_event_and_refuses_what_it_cannot_honour(tmp_path, loaders):
    log = EventLog()
    SupervisedRunner(input_key="image").infer(tiny_unet(), {"infer": loaders["valid"]}, callbacks=[log])
    assert log.events == ["on_stage_start", "on_epoch_start", "on_loader_start", "on_batch_start",
                          "on_batch_start", "on_loader_end", "on_epoch_end", "on_stage_end"]
    runner = SupervisedRunner(input_key="image")
    model = tiny_unet()
    infer_loaders = {"infer": loaders["valid"]}
    with pytest.raises(ValueError, match="infer\\(\\) cannot honour OptimizerCallback"):
        runner.infer(model, infer_loaders, callbacks=[OptimizerCallback()])
    with pytest.raises(ValueError, match="infer\\(\\) cannot honour EarlyStoppingCallback"):
        runner.infer(model, infer_loaders, callbacks=[EarlyStoppingCallback(patience=2)])
    with pytest.raises(ValueError, match="CheckpointCallback\\(\\) in infer\\(\\) has nothing to do"):
        runner.infer(model, infer_loaders, callbacks=[CheckpointCallback(), InferCallback()])
    with pytest.raises(ValueError, match="disagree"):
        runner.infer(model, infer_loaders, resume=tmp_path / "a.pth",
                     callbacks=[CheckpointCallback(resume=str(tmp_path / "b.pth"))])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        runner.infer(model, infer_loaders, callbacks=[CheckpointCallback(resume=str(tmp_path / "missing.pth"))])
    with pytest.raises(TypeError, match="not a segzoo Callback"):
        runner.infer(model, infer_loaders, callbacks=[lambda s: None])


def test_check_runs_a_bounded_number_of_batches(tmp_path):
    data = TutorialDataset(10, seed=3, size=16)
    loaders = {"train": DataLoader(data, batch_size=1), "valid": DataLoader(data, batch_size=1)}
    log = EventLog()
    runner = SupervisedRunner(input_key="image", input_target_key="mask")
    model = segzoo.Unet(num_classes=1, num_channels=4, num_blocks=2)
    runner.train(model, nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.01), loaders,
                 tmp_path / "logs", callbacks=[log], num_epochs=5, check=True)
    assert log.batches == {("train", e, name): 4 for e in (1, 2, 3) for name in ("train", "valid")}
    log = EventLog()
    runner.infer(None, {"infer": loaders["valid"]}, callbacks=[log], check=True)
    assert log.batches == {("infer", 1, "infer"): 4}


class Catalyst19Metric(Callback):
    """A 19.x custom metric callback: batch values through add_batch_value, an epoch value through
    epoch_values, and a scalar straight to the loader's TensorBoard writer."""

    def __init__(self):
        super().__init__(CallbackOrder.Metric)

    def on_batch_end(self, state):
        positive = (state.output["logits"] > 0).float().mean()
        state.metrics.add_batch_value(name="positive_share", value=positive)
        tensorboard = state.loggers["tensorboard"].loggers[state.loader_name]
        tensorboard.add_scalar("custom/batch_size", state.batch_size, state.batch_index)

    def on_loader_end(self, state):
        values = state.metrics.epoch_values[state.loader_name]
        values["twice_loss"] = 2 * values["loss"]


def test_custom_19x_metric_callback_reaches_the_logs(tmp_path, loaders):
    torch.manual_seed(0)
    model = tiny_unet()
    runner = SupervisedRunner(input_key="image", input_target_key="mask")
    logdir = tmp_path / "logs"
    state = runner.train(model, nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.01), loaders,
                         logdir, callbacks=OrderedDict([("metric", Catalyst19Metric()),
                                                        ("tensorboard", TensorboardLogger(num_images=0))]),
                         main_metric="twice_loss", num_epochs=2, timeit=True)
    for loader in ("train", "valid"):
        m = state.epoch_metrics[loader]
        assert m["twice_loss"] == pytest.approx(2 * m["loss"])
        assert 0.0 <= m["positive_share"] <= 1.0
        assert m["_timers/batch_time"] > 0 and m["_timers/data_time"] >= 0
    assert state.metrics.valid_values is state.valid_metrics
    log = (logdir / "log.txt").read_text()
    assert "twice_loss=" in log and "positive_share=" in log
    metrics = json.loads((logdir / "checkpoints" / "_metrics.json").read_text())
    assert metrics["main_metric"] == "twice_loss"
    assert metrics["last"]["metrics"]["valid"]["twice_loss"] == pytest.approx(state.valid_metrics["twice_loss"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir / "valid_log"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"twice_loss/epoch", "positive_share/batch", "custom/batch_size"} <= set(tags)
    assert [e.value for e in acc.Scalars("twice_loss/epoch")][-1] == pytest.approx(state.valid_metrics["twice_loss"])
    assert list(runner.loggers) == ["_timer", "tensorboard", "console"]


def test_predict_batch_predict_loader_and_trace_after_train(tmp_path, loaders):
    torch.manual_seed(0)
    model = tiny_unet()
    runner, _ = tutorial_train(model, loaders, tmp_path / "logs", num_epochs=1)
    batch = next(iter(loaders["valid"]))  # holds file names too, as in the tutorial
    model.train()
    out = runner.predict_batch(batch)
    assert model.training  # mode restored
    expected = eager_logits(copy.deepcopy(model), [batch])
    np.testing.assert_allclose(out["logits"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert runner.predict_loader(None, loaders["valid"]).shape == (4, 1, 32, 32)

    traced = runner.trace(model=None, batch=batch, logdir=tmp_path / "logs", fp16=False)
    np.testing.assert_allclose(traced(batch["image"]).detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        loaded = torch.jit.load(str(tmp_path / "logs" / "trace" / "traced-forward.pth"))
    np.testing.assert_allclose(loaded(batch["image"]).detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())  # tracing worked on a copy
    with pytest.raises(ValueError, match="tracing is float32"):
        runner.trace(batch=batch, fp16=dict(opt_level="O1"))
    with pytest.raises(ValueError, match="predict_params"):
        runner.trace(batch=batch, predict_params={"x": 1})
    with pytest.raises(FileExistsError, match="traced-forward.pth"):
        runner.trace(batch=batch, logdir=tmp_path / "logs")
    with pytest.raises(TypeError, match="no model keyword"):
        runner.predict_batch(batch, flip=True)


def test_fp16_and_monitoring_params(tmp_path, loaders):
    assert fp16_to_amp(None, False) is False and fp16_to_amp(False, "bf16") == "bf16"
    with pytest.warns(UserWarning, match="native torch.autocast"):
        assert fp16_to_amp(dict(opt_level="O2"), False) is True
    with pytest.warns(UserWarning):
        assert fp16_to_amp(True, False) is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fp16_to_amp(dict(opt_level="O0"), False) is False
    for bad, match in ((dict(opt_level="O3"), "pure float16"), (dict(opt_level="O1", keep_bn=True), "keep_bn"),
                       (dict(opt_level="O4"), "'O0', 'O1' or 'O2'"), (dict(loss_scale=128.0), "loss_scale")):
        with pytest.raises(ValueError, match=match):
            fp16_to_amp(bad, False)
    with pytest.raises(ValueError, match="not both"):
        fp16_to_amp(dict(opt_level="O1"), "fp16")
    with pytest.raises(TypeError):
        fp16_to_amp("O1", False)

    model = tiny_unet()
    runner = SupervisedRunner(input_key="image", input_target_key="mask")
    with pytest.raises(ValueError, match="monitoring_params .* not supported"):
        runner.train(model, nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.01), loaders,
                     tmp_path / "a", monitoring_params={"token": "t", "experiment": "e"})
    with pytest.warns(UserWarning, match="native torch.autocast"):
        state = runner.train(model, nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.01), loaders,
                             tmp_path / "b", fp16=dict(opt_level="O1"), check=True)
    assert state.amp_dtype == torch.bfloat16  # CPU: native autocast in bfloat16


def test_infer_callback_writes_out_prefix_files_and_refuses_to_overwrite(tmp_path, loaders):
    with pytest.raises(ValueError, match="out_prefix"):
        InferCallback(out_dir=tmp_path)
    with pytest.raises(ValueError, match="\\{suffix\\}"):
        InferCallback(out_prefix=str(tmp_path / "preds.npy"))
    runner = SupervisedRunner(input_key="image")
    cb = InferCallback(out_dir=tmp_path / "out", out_prefix="preds.{suffix}")
    runner.infer(tiny_unet(), {"infer": loaders["valid"]}, callbacks=[cb])
    saved = np.load(tmp_path / "out" / "preds.infer.logits.npy")
    np.testing.assert_array_equal(saved, cb.predictions["logits"])
    with pytest.raises(FileExistsError):
        runner.infer(None, {"infer": loaders["valid"]}, callbacks=[InferCallback(tmp_path / "out", "preds.{suffix}")])


def test_train_refuses_conflicting_checkpoint_callbacks(tmp_path, loaders):
    model = tiny_unet()
    runner = SupervisedRunner(input_key="image", input_target_key="mask")
    args = (model, nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.01), loaders, tmp_path / "x")
    with pytest.raises(ValueError, match="2 CheckpointCallbacks"):
        runner.train(*args, callbacks=[CheckpointCallback(), CheckpointCallback(save_n_best=2)])
    with pytest.raises(ValueError, match="disagree"):
        runner.train(*args, resume=tmp_path / "a", callbacks=[CheckpointCallback(resume=str(tmp_path / "b"))])


@pytest.mark.parametrize("module, name, hint", [
    ("segzoo", "UnetSpec", "UnetMetaSpec("), ("segzoo", "ResnetUnetSpec", "ResnetUnet/"),
    ("segzoo.compat", "ResnetUnetSpec", "UnetMetaSpec"),
    ("segzoo.training.callbacks", "InferMaskCallback", "InferCallback()"),
    ("segzoo.training", "RaiseExceptionCallback", "drop it"),
    ("segzoo.losses", "FocalLossMultiClass", "FocalLoss(mode='multiclass'"),
])
def test_catalyst_names_segzoo_does_not_carry_name_the_replacement(module, name, hint):
    with pytest.raises(ImportError) as info:
        exec(f"from {module} import {name}")
    assert hint in str(info.value) and "\n" not in str(info.value)
    import importlib

    assert not hasattr(importlib.import_module(module), "NoSuchName")


def test_every_19x_name_is_importable_from_compat():
    import segzoo.compat as compat

    names = ["UnetMetaSpec", "Unet", "Linknet", "FPNUnet", "PSPnet", "ResnetUnet", "ResnetLinknet", "ResnetFPNUnet",
             "ResnetPSPnet", "MobileUnet", "ResNetUnet", "ResNetLinknet", "SupervisedRunner", "Callback", "CallbackOrder", "RunnerState", "CheckpointCallback",
             "CriterionCallback", "CriterionAggregatorCallback", "DiceCallback", "IouCallback", "InferCallback",
             "EarlyStoppingCallback", "OptimizerCallback", "SchedulerCallback", "MetricCallback", "ConsoleLogger",
             "TensorboardLogger", "VerboseLogger", "DiceLoss", "IoULoss", "BCEDiceLoss", "BCEIoULoss",
             "FocalLossBinary", "LovaszLossBinary", "LovaszLossMultiClass", "LovaszLossMultiLabel",
             "dice", "iou", "jaccard"]
    for name in names:
        assert getattr(compat, name) is not None
    for name in compat.LEGACY:
        with pytest.raises(ImportError):
            getattr(compat, name)
