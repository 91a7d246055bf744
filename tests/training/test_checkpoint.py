"""CheckpointCallback files and keys, resuming, and the fault paths (NaN loss, Ctrl-C)."""

import json

import pytest
import torch
from _helpers import Counter, TinyNet, make_loaders, scripted_metric, train

import segzoo
from segzoo.checkpoint import load_checkpoint
from segzoo.models.registry import model_from_spec
from segzoo.training import Callback, CallbackOrder, LoggerCallback, RunnerState, Stage, SupervisedRunner
from segzoo.training.callbacks import CheckpointCallback, EarlyStoppingCallback, NonFiniteLossError
from segzoo.training.callbacks.checkpoint import model_checkpoint


def test_checkpoint_files_keys_and_top_n(loaders, tmp_path):
    model = segzoo.create_model("unet", num_channels=4, num_blocks=2)
    train(model, loaders, tmp_path, num_epochs=3, main_metric="m",
          callbacks=[scripted_metric([3.0, 1.0, 2.0]), CheckpointCallback(save_n_best=2, keep_full=True)],
          normalization={"mean": [0.5] * 3, "std": [0.2] * 3})
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "_metrics.json", "best.pth", "best_full.pth", "last.pth", "last_full.pth",
        "train.2.pth", "train.2_full.pth", "train.3.pth", "train.3_full.pth"]  # epoch 1 (worst) dropped
    for name in ("best.pth", "last.pth", "train.2.pth", "best_full.pth", "last_full.pth"):
        ck = torch.load(folder / name, weights_only=True)  # plain data only
        assert {"model_state_dict", "model_spec", "normalization", "epoch", "stage", "valid_metrics",
                "epoch_metrics"} <= set(ck)
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in ck["model_state_dict"])
        assert ("optimizer_state_dict" in ck) == name.endswith("_full.pth")
    best = load_checkpoint(folder / "best.pth")
    assert best["epoch"] == 2 and best["stage"] == "train" and best["valid_metrics"]["m"] == 1.0
    assert best["model_spec"] == {"name": "unet", "kwargs": {"num_channels": 4, "num_blocks": 2}}
    assert best["normalization"] == {"mean": [0.5] * 3, "std": [0.2] * 3}
    assert set(best["epoch_metrics"]) == {"train", "valid"}
    full = load_checkpoint(folder / "last_full.pth")
    assert {"optimizer_state_dict", "scheduler_state_dict", "rng_state", "callbacks_state"} <= set(full)
    assert full["epoch"] == 3
    metrics = json.loads((folder / "_metrics.json").read_text())
    assert metrics["best"]["epoch"] == 2 and metrics["last"]["epoch"] == 3 and len(metrics["epochs"]) == 3


@pytest.mark.slow
def test_model_spec_rebuilds_identical_model(loaders, tmp_path):
    torch.manual_seed(0)
    model = segzoo.create_model("resnet18_unet", num_classes=1, pretrained=False)
    train(model, make_loaders(n_train=4, n_valid=2, size=32, batch_size=2), tmp_path)
    ck = load_checkpoint(tmp_path / "checkpoints" / "best.pth")
    rebuilt = model_from_spec(ck["model_spec"])
    rebuilt.load_state_dict(ck["model_state_dict"])
    x = torch.rand(2, 3, 32, 32)
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.slow  # importing torch.compile's machinery takes seconds
def test_compiled_and_wrapped_models_store_plain_keys():
    model = TinyNet()
    state = RunnerState(model=torch.compile(model))  # wrapping is lazy: nothing is compiled here
    keys = set(model_checkpoint(state)["model_state_dict"])
    assert keys == set(model.state_dict())
    assert model_checkpoint(state)["model_spec"] is None  # not a registry model


def test_resume_continues_identically(tmp_path):
    def run(logdir, epochs, resume=None):
        torch.manual_seed(0)
        model = TinyNet()
        opt = torch.optim.Adam(model.parameters(), 0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
        state = SupervisedRunner().train(model, torch.nn.BCEWithLogitsLoss(), opt, make_loaders(), logdir,
                                         scheduler=sched, num_epochs=epochs, resume=resume, seed=0)
        return model, opt, state

    straight, opt_a, _ = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed, opt_b, state = run(tmp_path / "b", 4, resume=tmp_path / "b" / "checkpoints" / "last_full.pth")
    for pa, pb in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(pa, pb)
    for sa, sb in zip(opt_a.state.values(), opt_b.state.values()):
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"] == 0.01 * 0.5**4
    ck = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pth")
    assert ck["epoch"] == 4 and ck["global_epoch"] == 4
    assert len(json.loads((tmp_path / "b" / "checkpoints" / "_metrics.json").read_text())["epochs"]) == 4


def test_resume_restores_callback_state(tiny, loaders, tmp_path):
    values = [5, 4, 4.5, 4.6, 4.7, 4.8]
    train(tiny, loaders, tmp_path, num_epochs=3, main_metric="m",
          callbacks=[scripted_metric(values), EarlyStoppingCallback(3, metric="m")])
    # resumed through CheckpointCallback(resume=...): the early-stopping counter (1 bad epoch) carries on
    state = train(TinyNet(), loaders, tmp_path, num_epochs=6, main_metric="m", callbacks=[
        scripted_metric(values), EarlyStoppingCallback(3, metric="m"),
        CheckpointCallback(resume="last_full.pth", resume_dir=str(tmp_path / "checkpoints"))])
    assert state.epoch == 5 and state.best_valid_metric == 4


def test_resume_errors(tiny, loaders, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        train(tiny, loaders, tmp_path, resume=tmp_path / "nothing.pth")
    train(tiny, loaders, tmp_path / "a", num_epochs=1)
    with pytest.raises(ValueError, match="from stage 'train', not one of \\['other'\\]"):
        train(tiny, loaders, tmp_path / "b", resume=tmp_path / "a", stages=[Stage("other", 2)])
    with pytest.raises(ValueError, match="nothing left to train"):
        train(tiny, loaders, tmp_path / "a", resume=tmp_path / "a", num_epochs=1)
    with pytest.raises(ValueError, match="save_n_best"):
        CheckpointCallback(save_n_best=0)


class Poison(Callback):
    """Turns the train loss of epoch 2, batch 1 into NaN."""

    def __init__(self):
        super().__init__(CallbackOrder.Criterion + 1)

    def on_batch_end(self, state):
        if state.epoch == 2 and state.batch_index == 1 and state.need_backward:
            state.loss["loss"] = state.loss["loss"] * float("nan")


def test_nan_loss_stops_and_keeps_checkpoint(tiny, loaders, tmp_path):
    with pytest.raises(NonFiniteLossError, match="non-finite loss nan at stage 'train', epoch 2, batch 1"):
        train(tiny, loaders, tmp_path, num_epochs=3, callbacks=[Poison()])
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert last["epoch"] == 1 and "interrupted" not in last
    assert all(torch.isfinite(v).all() for v in last["model_state_dict"].values())
    state = train(TinyNet(), loaders, tmp_path / "skip", num_epochs=2, callbacks=[Poison()], nonfinite="skip")
    assert state.skipped_batches == 1 and state.epoch == 2
    with pytest.raises(ValueError, match="nonfinite"):
        train(TinyNet(), loaders, tmp_path / "x", nonfinite="ignore")


def test_keyboard_interrupt_leaves_resumable_checkpoint(tiny, loaders, tmp_path):
    class Interrupt(Callback):
        def on_batch_end(self, state):
            if state.epoch == 2 and state.batch_index == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny, loaders, tmp_path, num_epochs=3, callbacks=[Interrupt()])
    ck = load_checkpoint(tmp_path / "checkpoints" / "last_full.pth")
    assert ck["interrupted"] and ck["epoch"] == 2 and "optimizer_state_dict" in ck  # the epoch interrupted
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pth")["interrupted"]
    state = train(TinyNet(), loaders, tmp_path, num_epochs=3, resume=tmp_path)  # a log dir: its last_full
    assert state.epoch == 3 and state.global_epoch == 3


@pytest.mark.parametrize("name", ["../outside", "a/b", "..", ""])
def test_file_names_cannot_leave_the_logdir(tiny, loaders, tmp_path, name):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="plain file name"):
        CheckpointCallback(metric_filename=name)
    with pytest.raises(ValueError, match="stage name.*plain file name"):
        train(tiny, loaders, run, stages=[Stage(name, 1)])
    assert not (tmp_path / "outside").exists() and not list(tmp_path.rglob("*.pth"))


def test_resume_restores_each_callback_state_whatever_their_order(tiny, loaders, tmp_path):
    a, b = Counter("a", step=1), Counter("b", step=10)
    train(tiny, loaders, tmp_path, num_epochs=2, callbacks=[a, b])
    full = load_checkpoint(tmp_path / "checkpoints" / "last_full.pth")
    assert full["callbacks_state"]["Counter{'name': 'a', 'step': 1}"] == {"count": 2}
    a, b = Counter("a", step=1), Counter("b", step=10)
    train(TinyNet(), loaders, tmp_path, num_epochs=3, callbacks=[b, a], resume=tmp_path)  # the other order
    assert (a.count, b.count) == (3, 30)


def test_resume_reads_checkpoints_with_the_old_callback_keys(loaders, tmp_path):
    values = [5.0, 4.0, 4.5, 4.6]
    train(TinyNet(), loaders, tmp_path, num_epochs=2, main_metric="m",
          callbacks=[scripted_metric(values), Counter("a"), Counter("b", step=10)])
    path = tmp_path / "checkpoints" / "last_full.pth"
    ck = load_checkpoint(path)  # as written before Callback.state_key: class name and occurrence, no best_name
    old = {"Counter{'name': 'a', 'step': 1}": "Counter:1", "Counter{'name': 'b', 'step': 10}": "Counter:2",
           "CheckpointCallback{}": "CheckpointCallback:1"}
    assert set(ck["callbacks_state"]) == set(old)
    ck["callbacks_state"] = {old[k]: v for k, v in ck["callbacks_state"].items()}
    del ck["best_name"]
    torch.save(ck, path)
    a, b = Counter("a"), Counter("b", step=10)
    state = train(TinyNet(), loaders, tmp_path, num_epochs=4, main_metric="m", resume=path,
                  callbacks=[scripted_metric(values), a, b])
    assert (a.count, b.count) == (4, 40)
    assert state.best_name == "train.2" and state.best_valid_metric == 4.0
    metrics = json.loads((tmp_path / "checkpoints" / "_metrics.json").read_text())
    assert metrics["best"]["name"] == "train.2" and len(metrics["epochs"]) == 4


class _CountingLogger(LoggerCallback):
    """A stateful logger (loggers run after the other callbacks on on_epoch_end)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def on_epoch_end(self, state):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state_dict):
        self.count = state_dict["count"]


def test_full_checkpoint_holds_every_callbacks_end_of_epoch_state(loaders, tmp_path):
    late = Counter("late")
    late.order = CallbackOrder.Other  # the default order: after CheckpointCallback's own order
    values = [5.0, 4.0, 4.5, 4.6, 1.0]
    state = train(TinyNet(), loaders, tmp_path, num_epochs=5, main_metric="m", callbacks=[
        scripted_metric(values), late, _CountingLogger(), EarlyStoppingCallback(2, metric="m")])
    assert state.epoch == 4  # early stopping ended the run after epoch 4
    folder = tmp_path / "checkpoints"
    saved = load_checkpoint(folder / "last_full.pth")
    assert saved["epoch"] == 4 and saved["stage_stopped"] is True
    cbs = saved["callbacks_state"]
    assert cbs["Counter{'name': 'late', 'step': 1}"] == {"count": 4}
    assert cbs["_CountingLogger{}"] == {"count": 4}
    assert cbs["EarlyStoppingCallback{'metric': 'm', 'minimize': True}"] == {"best": 4.0, "wait": 2}
    # "best" was decided from the epochs' metrics, before early stopping stopped the run
    assert load_checkpoint(folder / "best.pth")["epoch"] == 2
    assert json.loads((folder / "_metrics.json").read_text())["best"]["name"] == "train.2"


class _CrashAt(Callback):
    """A RuntimeError (on which nothing is saved) at ``event`` of stage ``stage``, epoch ``epoch``."""

    def __init__(self, event, stage, epoch):
        super().__init__()
        self.event, self.stage, self.epoch = event, stage, epoch

    def _crash(self, event, state):
        if (event, state.stage, state.epoch) == (self.event, self.stage, self.epoch):
            raise RuntimeError("crash")

    def on_stage_end(self, state):
        self._crash("on_stage_end", state)

    def on_epoch_start(self, state):
        self._crash("on_epoch_start", state)


@pytest.mark.parametrize("event,stage,epoch,own_saver", [
    ("on_stage_end", "a", 3, True),     # after early stopping ended stage a (epoch 3 of 4)
    ("on_stage_end", "a", 3, False),    # the default CheckpointCallback is the stage's: stage b's starts new
    ("on_epoch_start", "b", 2, False),  # inside stage b: early stopping keeps stage b's state
])
def test_resume_across_stages_behaves_like_the_uninterrupted_run(loaders, tmp_path, event, stage, epoch, own_saver):
    values = [5.0, 4.0, 4.5, 9.0, 3.0, 3.5, 3.4, 3.3]  # by global epoch

    def run(logdir, extra=(), resume=None):
        stopper = EarlyStoppingCallback(1, metric="m")
        saver = [CheckpointCallback()] if own_saver else []  # given: one object for every stage
        torch.manual_seed(0)
        state = train(TinyNet(), loaders, logdir, main_metric="m", stages=[Stage("a", 4), Stage("b", 4)],
                      callbacks=[scripted_metric(values), stopper, *saver, *extra], resume=resume, seed=0)
        names = [e["name"] for e in json.loads((logdir / "checkpoints" / "_metrics.json").read_text())["epochs"]]
        return state, stopper, names

    state, stopper, names = run(tmp_path / "once")
    # both stages stopped early; the metrics history is the run's (own saver) or the last stage's
    assert names == ["a.1", "a.2", "a.3", "b.1", "b.2", "b.3"][0 if own_saver else 3:]
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / "twice", extra=[_CrashAt(event, stage, epoch)])
    state2, stopper2, names2 = run(tmp_path / "twice", resume=tmp_path / "twice")
    assert names2 == names
    assert (stopper2.best, stopper2.wait) == (stopper.best, stopper.wait) == (3.0, 1)
    assert (state2.stage, state2.epoch, state2.global_epoch) == (state.stage, state.epoch, state.global_epoch)
    assert state2.best_name == state.best_name == "b.2"


def test_ctrl_c_checkpoint_names_the_interrupted_epoch_and_resume_redoes_it(tiny, loaders, tmp_path, capsys):
    class Interrupt(Callback):
        def on_batch_end(self, state):
            if state.epoch == 1 and state.batch_index == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny, loaders, tmp_path, num_epochs=2, callbacks=[Interrupt()])
    err = capsys.readouterr().err
    assert "interrupted in stage 'train', epoch 1;" in err and "re-runs epoch 1" in err, err
    for name in ("last_full.pth", "last.pth"):
        ck = load_checkpoint(tmp_path / "checkpoints" / name)
        assert ck["interrupted"] and (ck["epoch"], ck["global_epoch"]) == (1, 1)
    state = train(TinyNet(), loaders, tmp_path, num_epochs=2, resume=tmp_path)
    assert (state.epoch, state.global_epoch) == (2, 2)
    epochs = json.loads((tmp_path / "checkpoints" / "_metrics.json").read_text())["epochs"]
    assert [e["name"] for e in epochs] == ["train.1", "train.2"]  # epoch 1 was run (again), then epoch 2


def test_ctrl_c_in_epoch_end_keeps_the_previous_epoch(tiny, loaders, tmp_path, capsys):
    """A Ctrl-C after some callbacks' on_epoch_end: re-running the epoch on resume does not count it twice."""
    class InterruptAtEnd(Callback):  # after the Counter on epoch end, before the CheckpointCallback
        def __init__(self):
            super().__init__(CallbackOrder.External + 10)

        def on_epoch_end(self, state):
            if state.epoch == 2:
                raise KeyboardInterrupt

    counter = Counter("c")
    with pytest.raises(KeyboardInterrupt):
        train(tiny, loaders, tmp_path, num_epochs=3, callbacks=[counter, InterruptAtEnd()])
    assert counter.count == 2  # epoch 2's on_epoch_end had run for the counter
    assert "at its end, before its checkpoints were written; kept " in capsys.readouterr().err
    ck = load_checkpoint(tmp_path / "checkpoints" / "last_full.pth")  # epoch 1's, as epoch 2 found it
    assert "interrupted" not in ck and ck["epoch"] == 1
    assert {"count": 1} in ck["callbacks_state"].values()
    resumed = Counter("c")
    train(TinyNet(), loaders, tmp_path, num_epochs=3, resume=tmp_path, callbacks=[resumed])
    assert resumed.count == 3  # epochs 1, 2 (re-run) and 3, each counted once


def test_resuming_an_old_concat_fusion_upernet_into_the_new_default_says_how(loaders, tmp_path):
    from segzoo.errors import CheckpointError
    from segzoo.models import create_model

    def upernet(**decoder):
        torch.manual_seed(0)
        return create_model("upernet", num_channels=4, num_blocks=3, decoder_params={"channels": 8, **decoder})

    train(upernet(fuse="concat"), loaders, tmp_path)
    # the run's checkpoint names what it was given
    with pytest.raises(ValueError, match=r"changed model: model\.kwargs\.decoder_params\.fuse=<absent> "
                                         r"\(the run used 'concat'\)"):
        train(upernet(), loaders, tmp_path, num_epochs=2, resume=tmp_path)
    full = tmp_path / "checkpoints" / "last_full.pth"  # as written before run settings were stored
    torch.save({k: v for k, v in torch.load(full, weights_only=True).items() if k != "run_settings"}, full)
    with pytest.raises(CheckpointError, match=r"per-level fusion default: resume with "
                                              r"model\.params\.decoder_params\.fuse=concat\)"):
        train(upernet(), loaders, tmp_path, num_epochs=2, resume=tmp_path)
    state = train(upernet(fuse="concat"), loaders, tmp_path, num_epochs=2, resume=tmp_path)
    assert state.global_epoch == 2
