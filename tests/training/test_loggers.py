"""Loggers and pictures: console + log.txt, TensorBoard scalars and images, progress bar, PNG grids."""

import numpy as np
import pytest
import torch
from _helpers import make_loaders, train
from PIL import Image

from segzoo.training.callbacks import DiceCallback, PredictionSaverCallback, TensorboardLogger


def test_console_logger_writes_one_line_per_loader_and_epoch(tiny, loaders, tmp_path, capsys):
    train(tiny, loaders, tmp_path, num_epochs=2, callbacks=[DiceCallback()])
    lines = (tmp_path / "log.txt").read_text().splitlines()
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
