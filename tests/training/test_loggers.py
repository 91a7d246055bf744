"""Loggers and pictures: console + log.txt, TensorBoard scalars and images, progress bar, PNG grids."""

import numpy as np
import pytest
import torch
from _helpers import make_loaders, train
from PIL import Image

from segzoo.training.callbacks import DiceCallback, PredictionSaverCallback, TensorboardLogger


def test_console_logger_writes_one_line_per_loader_and_epoch(tiny, loaders, tmp_path, capsys):
    train(tiny, loaders, tmp_path, num_epochs=2, callbacks=[DiceCallback()])
    first, *lines = (tmp_path / "log.txt").read_text().splitlines()
    lines = [line for line in lines if not line.startswith("data loading took")]  # a busy machine's advice line
    assert first.startswith("segzoo: threads ")  # the run's choices (threads, precision, layout, compile) come first
    assert len(lines) == 4
    assert lines[0].startswith("[train 1/2] train: loss=") and "dice=" in lines[0]
    assert lines[1].startswith("[train 1/2] valid: loss=") and lines[1].endswith("*best*")
    assert capsys.readouterr().out.count("valid: loss=") == 2


def test_tensorboard_scalars_and_images(tiny, loaders, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    train(tiny, loaders, tmp_path, num_epochs=2, callbacks=[DiceCallback(), TensorboardLogger(num_images=2)])
    train_log = event_accumulator.EventAccumulator(str(tmp_path / "train_log"))
    train_log.Reload()
    assert {"loss/batch", "loss/epoch", "dice/batch", "dice/epoch"} <= set(train_log.Tags()["scalars"])
    assert len(train_log.Scalars("loss/batch")) == 2 * len(loaders["train"])
    assert [e.step for e in train_log.Scalars("loss/epoch")] == [1, 2]
    valid_log = event_accumulator.EventAccumulator(str(tmp_path / "valid_log"))
    valid_log.Reload()
    assert "predictions" in valid_log.Tags()["images"]
    image = valid_log.Images("predictions")[-1]
    assert (image.height, image.width) == (2 * 8, 3 * 8)  # 2 samples x (image | target | prediction)


def test_tensorboard_metric_filter(tiny, loaders, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    train(tiny, loaders, tmp_path, callbacks=[DiceCallback(), TensorboardLogger(
        metric_names=["dice"], log_on_batch_end=False, num_images=0)])
    log = event_accumulator.EventAccumulator(str(tmp_path / "valid_log"))
    log.Reload()
    assert log.Tags()["scalars"] == ["dice/epoch"] and log.Tags()["images"] == []


def test_prediction_saver_writes_png_grid(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 1)
    loaders = make_loaders(n_valid=5, size=16, batch_size=4)
    train(model, loaders, tmp_path, num_epochs=2, callbacks=[PredictionSaverCallback(num_images=3)],
          normalization={"mean": [0.0] * 3, "std": [1.0] * 3})
    files = sorted(p.name for p in (tmp_path / "predictions").iterdir())
    assert files == ["train.1.png", "train.2.png"]
    grid = np.asarray(Image.open(tmp_path / "predictions" / "train.2.png"))
    assert grid.shape == (3 * 16, 3 * 16, 3) and grid.dtype == np.uint8
    first = next(iter(loaders["valid"]))["features"][0]  # identity normalization: the image column is x * 255
    np.testing.assert_allclose(grid[:16, :16].astype(float), first.permute(1, 2, 0).numpy() * 255, atol=1.0)


def test_progress_bar_when_verbose(tiny, loaders, tmp_path, capsys):
    train(tiny, loaders, tmp_path, verbose=True)
    out = capsys.readouterr().out
    assert "train 1/1 train" in out and "loss=" in out


def test_grids_have_num_images_rows_with_tensorboard_in_the_run(tmp_path):
    """configs/demo.yml: PredictionSaverCallback(num_images=6) next to a default TensorboardLogger.

    The logger (run last on *_end) used to re-capture its own default of 4 samples, cutting the PNG
    grid to 4 rows; now the saver's setting governs both pictures.
    """
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    torch.manual_seed(0)
    loaders = make_loaders(n_valid=8, size=8, batch_size=8)
    train(torch.nn.Conv2d(3, 1, 1), loaders, tmp_path,
          callbacks=[PredictionSaverCallback(num_images=6), TensorboardLogger(log_on_batch_end=False)])
    grid = np.asarray(Image.open(tmp_path / "predictions" / "train.1.png"))
    assert grid.shape == (6 * 8, 3 * 8, 3)
    log = event_accumulator.EventAccumulator(str(tmp_path / "valid_log"))
    log.Reload()
    image = log.Images("predictions")[-1]
    assert (image.height, image.width) == (6 * 8, 3 * 8)


def test_explicit_num_images_of_each_picture_are_kept(tmp_path):
    """A logger with its own num_images draws that many rows and never shrinks the saver's picture."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    torch.manual_seed(0)
    loaders = make_loaders(n_valid=8, size=8, batch_size=8)
    train(torch.nn.Conv2d(3, 1, 1), loaders, tmp_path,
          callbacks=[PredictionSaverCallback(num_images=5), TensorboardLogger(num_images=2, log_on_batch_end=False)])
    assert np.asarray(Image.open(tmp_path / "predictions" / "train.1.png")).shape[0] == 5 * 8
    log = event_accumulator.EventAccumulator(str(tmp_path / "valid_log"))
    log.Reload()
    assert log.Images("predictions")[-1].height == 2 * 8


def test_tensorboard_alone_keeps_four_images(tiny, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    train(tiny, make_loaders(n_valid=8, batch_size=8), tmp_path, callbacks=[TensorboardLogger(log_on_batch_end=False)])
    log = event_accumulator.EventAccumulator(str(tmp_path / "valid_log"))
    log.Reload()
    assert log.Images("predictions")[-1].height == 4 * 8


# ---- CSVLogger: logdir/metrics.csv ---------------------------------------------------------------

def _csv_rows(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_one_row_per_loader_and_epoch(tiny, loaders, tmp_path):
    from segzoo.training import CALLBACKS
    from segzoo.training.callbacks import CSVLogger

    assert CALLBACKS["CSVLogger"] is CSVLogger
    state = train(tiny, loaders, tmp_path, num_epochs=2, callbacks=[DiceCallback(), CSVLogger()])
    text = (tmp_path / "metrics.csv").read_text()
    assert text.splitlines()[0].startswith("stage,epoch,global_epoch,loader,loss,")
    rows = _csv_rows(tmp_path / "metrics.csv")
    assert [(r["stage"], r["epoch"], r["global_epoch"], r["loader"]) for r in rows] == [
        ("train", "1", "1", "train"), ("train", "1", "1", "valid"), ("train", "2", "2", "train"),
        ("train", "2", "2", "valid")]
    for loader, metrics in state.epoch_metrics.items():  # last epoch, full precision
        row = next(r for r in rows[2:] if r["loader"] == loader)
        assert {k: float(row[k]) for k in metrics} == metrics


def test_csv_logger_resumed_run_appends_and_fresh_run_follows_the_logdir_policy(tiny, loaders, tmp_path):
    from segzoo.training.callbacks import CSVLogger

    run = tmp_path / "run"
    train(tiny, loaders, run, num_epochs=2, callbacks=[CSVLogger()])
    before = (run / "metrics.csv").read_text()
    train(tiny, loaders, run, num_epochs=3, callbacks=[CSVLogger()], resume=run)
    after = (run / "metrics.csv").read_text()
    assert after.startswith(before) and after.count("stage,epoch") == 1
    assert [r["global_epoch"] for r in _csv_rows(run / "metrics.csv")] == ["1", "1", "2", "2", "3", "3"]
    # the logdir policy, before training: the finished run is moved aside whole, the new file is fresh
    with pytest.warns(UserWarning, match="moved it to"):
        train(tiny, loaders, run, callbacks=[CSVLogger()])
    assert (tmp_path / "run.1" / "metrics.csv").read_text() == after  # untouched
    assert [r["global_epoch"] for r in _csv_rows(run / "metrics.csv")] == ["1", "1"]
    # replacing the run (segzoo train --force) removes metrics.csv with the rest: the new file is fresh
    train(tiny, loaders, run, num_epochs=2, callbacks=[CSVLogger()], overwrite_logdir=True)
    assert [r["global_epoch"] for r in _csv_rows(run / "metrics.csv")] == ["1", "1", "2", "2"]


def test_csv_logger_refuses_an_old_file_at_a_fresh_start_unless_overwrite(tmp_path):
    """Outside the runner's policy (a custom loop), a metrics.csv present at a fresh start is refused."""
    from segzoo.training.callbacks import CSVLogger
    from segzoo.training.state import RunnerState

    (tmp_path / "metrics.csv").write_text("mine\n")
    state = RunnerState(logdir=tmp_path, stage="train", epoch=0, global_epoch=0)
    state.is_main_process = True
    with pytest.raises(FileExistsError, match=r"metrics.csv exists from an earlier run; resume.*--force"):
        CSVLogger().on_stage_start(state)
    assert (tmp_path / "metrics.csv").read_text() == "mine\n"
    logger = CSVLogger(overwrite=True)
    logger.on_stage_start(state)
    state.epoch = state.global_epoch = 1
    state.epoch_metrics = {"train": {"loss": 0.5}}
    logger.on_epoch_end(state)
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["stage,epoch,global_epoch,loader,loss",
                                                                   "train,1,1,train,0.5"]


def test_csv_logger_rows_are_on_disk_after_each_epoch(tiny, loaders, tmp_path):
    """A run that dies in epoch 3 leaves the rows of epochs 1 and 2; a metric first seen in
    epoch 2 widens the header (earlier rows get an empty cell)."""
    from segzoo.training.callback import Callback
    from segzoo.training.callbacks import CSVLogger

    class LateMetricThenCrash(Callback):
        def on_loader_end(self, state):
            if state.global_epoch >= 2:
                state.loader_metrics["late"] = 0.5

        def on_epoch_start(self, state):
            if state.global_epoch == 3:
                raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train(tiny, loaders, tmp_path, num_epochs=4, callbacks=[LateMetricThenCrash(), CSVLogger()])
    rows = _csv_rows(tmp_path / "metrics.csv")
    assert [r["global_epoch"] for r in rows] == ["1", "1", "2", "2"]
    assert [r["late"] for r in rows] == ["", "", "0.5", "0.5"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_csv_logger_failed_append_leaves_no_partial_row(tmp_path, monkeypatch):
    import errno
    import os

    from segzoo.errors import WriteError
    from segzoo.training.callbacks import CSVLogger
    from segzoo.training.state import RunnerState

    state = RunnerState(logdir=tmp_path, stage="train", epoch=1, global_epoch=1)
    state.is_main_process = True
    state.epoch_metrics = {"train": {"loss": 0.5}, "valid": {"loss": 0.25}}
    logger = CSVLogger()
    logger.on_stage_start(state)
    logger.on_epoch_end(state)
    before = (tmp_path / "metrics.csv").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    state.epoch, state.global_epoch = 2, 2
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match="metrics.csv: no space left on device"):
        logger.on_epoch_end(state)
    monkeypatch.undo()
    assert (tmp_path / "metrics.csv").read_bytes() == before
    assert before.decode().splitlines() == ["stage,epoch,global_epoch,loader,loss", "train,1,1,train,0.5",
                                            "train,1,1,valid,0.25"]


def test_csv_logger_filename_stays_in_logdir():
    from segzoo.training.callbacks import CSVLogger

    with pytest.raises(ValueError, match="plain file name"):
        CSVLogger(filename="../elsewhere.csv")
