"""Issue 23 point 4, the data path: the loader wait of training steps measured, uint8 batches normalized on the
device (exactly the per-image values), ``data.num_workers: auto`` and the worker settings, careless-user cases."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from segzoo.cli import main
from segzoo.data import DataError, ProceduralSegmentation, SegmentationFolder, get_transforms
from segzoo.training import SupervisedRunner
from segzoo.training.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def _dp():
    """segzoo.training.data_path, imported by each test (so each fails on its own on code without it)."""
    import segzoo.training.data_path as data_path

    return data_path

TINY = {
    "seed": 3, "logdir": "LOGDIR",
    "model": {"name": "unet", "params": {"num_classes": 1, "num_channels": 8, "num_blocks": 2}},
    "data": {"kind": "procedural", "params": {"image_size": 32}, "train_size": 8, "valid_size": 4, "batch_size": 4},
    "callbacks": [{"name": "DiceCallback", "params": {"threshold": 0.5}}],
    "num_epochs": 1,
    "runner": {"main_metric": "dice", "minimize_metric": False, "device": "cpu", "verbose": False},
}


def _write(tmp_path, cfg, name="cfg.yml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False).replace("LOGDIR", str(tmp_path / "run")))
    return path


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        assert x.dtype == torch.float32  # never uint8: the loop normalized the batch
        return self.conv(x)


class _Clock:
    """A fake ``perf_counter`` for the loop: items and steps advance it by what they say, nothing else does."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class _Items(Dataset):
    """Float items each taking ``cost`` seconds of the fake clock."""

    def __init__(self, n, clock, cost):
        self.n, self.clock, self.cost = n, clock, cost

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.clock.now += self.cost
        x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i))
        return {"features": x, "targets": (x.mean(0, keepdim=True) > 0.5).float()}


def _train(loaders, logdir, clock=None, step_cost=0.0, **kw):
    torch.manual_seed(0)
    model = _Net()
    if clock is not None:
        model.register_forward_hook(lambda *_: setattr(clock, "now", clock.now + step_cost))
    state = SupervisedRunner().train(model, torch.nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.1),
                                     loaders, logdir, num_epochs=kw.pop("num_epochs", 2), verbose=False,
                                     normalization={"mean": [0.5] * 3, "std": [0.25] * 3}, **kw)
    return model, state


# ---- 1. the measurement ---------------------------------------------------------------------------------------


def _timed_loaders(monkeypatch, item_cost):
    import segzoo.training.loop as loop

    clock = _Clock()
    monkeypatch.setattr(loop, "time", clock)
    return clock, {"train": DataLoader(_Items(12, clock, item_cost), batch_size=4),
                   "valid": DataLoader(_Items(4, clock, item_cost), batch_size=4)}


def test_data_wait_lands_in_epoch_metrics_metrics_json_and_one_line(tmp_path, capsys, monkeypatch):
    clock, loaders = _timed_loaders(monkeypatch, item_cost=0.01)  # 40 ms of data per batch, 60 ms of step
    _, state = _train(loaders, tmp_path / "run", clock, step_cost=0.06)
    train = state.epoch_metrics["train"]
    assert train["data_wait"] == pytest.approx(3 * 0.04) and train["data_wait_share"] == pytest.approx(0.4)
    assert "data_wait" not in state.valid_metrics  # training steps only: valid metrics are the user's
    epochs = json.loads((tmp_path / "run" / "checkpoints" / "_metrics.json").read_text())["epochs"]
    assert [e["metrics"]["train"]["data_wait_share"] for e in epochs] == [pytest.approx(0.4)] * 2
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("data loading took")]
    assert lines[0] == ("data loading took 40% of epoch 1 (train: 40.0 of 100.0 ms per step waiting for the next "
                        "batch): raise data.num_workers (the DataLoader's num_workers)") and len(lines) == 2
    assert sum("data loading took" in ln for ln in (tmp_path / "run" / "log.txt").read_text().splitlines()) == 2


def test_a_small_share_is_recorded_without_a_line(tmp_path, capsys, monkeypatch):
    clock, loaders = _timed_loaders(monkeypatch, item_cost=0.001)
    _, state = _train(loaders, tmp_path / "run", clock, step_cost=0.1, num_epochs=1)
    assert state.epoch_metrics["train"]["data_wait_share"] == pytest.approx(0.004 / 0.104)
    assert "data loading took" not in capsys.readouterr().out


@pytest.mark.parametrize("first, workers, advice", [
    (0.1, 1, "raise data.num_workers (the DataLoader's num_workers)"),
    (0.1, 2, "2 workers already use the 2 usable CPUs: make the items cheaper (smaller images, lighter transforms) "
             "or faster to read"),
    (0.4, 1, "400 ms of it before the first batch (worker start-up, a short epoch): persistent workers pay it once"),
])
def test_the_line_says_what_to_do(monkeypatch, capsys, first, workers, advice):
    import segzoo.hardware.threads as threads
    from segzoo.training import RunnerState

    monkeypatch.setattr(threads, "available_cpus", lambda: (2, "affinity 2"))
    state = RunnerState(epoch=3, loader_name="train", is_main_process=True)
    state.loader_metrics = {}
    _dp().record_data_wait(state, 0.5, 1.0, 10, first, workers)
    assert capsys.readouterr().out == (f"data loading took 50% of epoch 3 (train: 50.0 of 100.0 ms per step waiting "
                                       f"for the next batch): {advice}\n")


# ---- 2. uint8 batches, normalized on the device, equal to the per-image path ---------------------------------


def _batches(dataset, n=8):
    return next(iter(DataLoader(dataset, batch_size=n)))


@pytest.mark.parametrize("kw", [{}, {"num_classes": 4, "labels": True},
                                {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.25)}])
def test_procedural_uint8_batch_equals_float_items(kw):
    item, batch = (_batches(ProceduralSegmentation(8, 64, seed=5, normalize=m, **kw)) for m in ("item", "batch"))
    assert batch["features"].dtype == torch.uint8 and batch["features"].shape == (8, 3, 64, 64)
    x = _dp().batch_normalizer(DataLoader(ProceduralSegmentation(8, 64, normalize="batch", **kw)), torch.device("cpu"))(
        batch["features"])
    assert x.dtype == torch.float32 and (x - item["features"]).abs().max() <= 1e-6
    for key in item:
        if key != "features":
            assert torch.equal(item[key], batch[key])


def _folder(tmp_path, n=4, sixteen_bit=()):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(n):
        if i in sixteen_bit:
            Image.fromarray(rng.integers(0, 65535, (40, 36), dtype=np.uint16)).save(tmp_path / "images" / f"{i}.png")
        else:
            Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray((rng.integers(0, 2, (40, 36)) * 255).astype(np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    return tmp_path / "images", tmp_path / "masks"


def test_folder_uint8_batch_equals_float_items(tmp_path):
    images, masks = _folder(tmp_path)
    tf = get_transforms("valid", 32)
    item = _batches(SegmentationFolder(images, masks, transforms=tf), 4)
    ds = SegmentationFolder(images, masks, transforms=tf, normalize="auto")
    assert ds.normalize == "batch"
    batch = _batches(ds, 4)
    x = _dp().batch_normalizer(DataLoader(ds), torch.device("cpu"))(batch["features"])
    assert (x - item["features"]).abs().max() <= 1e-6 and torch.equal(item["targets"], batch["targets"])
    # through a Subset, and float_item (the config's pre-flight sample) as the model sees it
    assert _dp().batch_normalizer(DataLoader(Subset(ds, [0, 1])), torch.device("cpu")) is not None
    assert (_dp().float_item(ds)["features"] - item["features"][0]).abs().max() <= 1e-6


def test_folder_with_16_bit_images_keeps_float_items(tmp_path):
    images, masks = _folder(tmp_path, sixteen_bit=(2,))
    assert SegmentationFolder(images, masks, normalize="auto").normalize == "item"
    assert _batches(SegmentationFolder(images, masks, normalize="auto"), 4)["features"].dtype == torch.float32
    with pytest.raises(DataError, match=r"2\.png is not 8-bit.*normalize='item'"):
        SegmentationFolder(images, masks, normalize="batch")


def test_batch_mode_refuses_a_transform_returning_floats_naming_the_file(tmp_path):
    images, masks = _folder(tmp_path)
    ds = SegmentationFolder(images, masks, transforms=lambda image, mask: {"image": image / 255.0, "mask": mask},
                            normalize="batch")
    with pytest.raises(DataError, match=r"0\.png.*normalize='batch' needs uint8"):
        ds[0]
    with pytest.raises(ValueError, match="normalize must be"):
        ProceduralSegmentation(4, normalize="device")


def test_user_float_datasets_are_untouched_and_mixed_concat_refused():
    assert _dp().batch_normalizer(DataLoader(_Items(2, _Clock(), 0)), torch.device("cpu")) is None
    assert _dp().batch_normalizer([1, 2], torch.device("cpu")) is None  # any iterable of batches
    mixed = ConcatDataset([ProceduralSegmentation(2, 32, normalize="batch"), ProceduralSegmentation(2, 32)])
    with pytest.raises(ValueError, match="ConcatDataset mixes"):
        _dp().batch_normalizer(DataLoader(mixed), torch.device("cpu"))


def test_training_on_uint8_batches_is_the_same_run(tmp_path):
    """Same seed, item vs batch normalization: the same weights and metrics (compile=auto's timing batch too)."""
    runs = {}
    for mode in ("item", "batch"):
        loaders = {"train": DataLoader(ProceduralSegmentation(8, 32, seed=1, normalize=mode), batch_size=4,
                                       shuffle=True),
                   "valid": DataLoader(ProceduralSegmentation(4, 32, seed=2, normalize=mode), batch_size=4)}
        torch.manual_seed(0)
        model, state = _train(loaders, tmp_path / mode, seed=0, compile="auto", channels_last=True)
        runs[mode] = (model.conv.weight.detach().clone(), state.valid_metrics["loss"])
    assert torch.equal(runs["item"][0], runs["batch"][0]) and runs["item"][1] == runs["batch"][1]


def test_config_run_normalizes_uint8_batches(tmp_path):
    """``segzoo train`` gives procedural data normalize=auto: uint8 batches; pre-flight and training run."""
    from segzoo.training.build import build_loaders

    loaders, norm = build_loaders({"kind": "procedural", "params": {"image_size": 32}, "num_workers": 0}, 0)
    assert next(iter(loaders["train"]))["features"].dtype == torch.uint8
    assert loaders["train"].dataset.batch_normalization == (tuple(norm["mean"]), tuple(norm["std"]))
    item_loaders, _ = build_loaders({"kind": "procedural", "params": {"image_size": 32, "normalize": "item"},
                                     "num_workers": 0}, 0)
    assert next(iter(item_loaders["valid"]))["features"].dtype == torch.float32
    assert main(["train", "--config", str(_write(tmp_path, TINY)), "data.num_workers=0"]) == 0


# ---- 3. num_workers: auto, worker settings, careless users ---------------------------------------------------


def test_auto_num_workers_leaves_a_cpu_to_the_step():
    assert [_dp().auto_num_workers(c) for c in (1, 2, 3, 4, 64)] == [0, 1, 2, 2, 2]
    assert _dp().loader_options("auto")["num_workers"] == _dp().auto_num_workers()


def test_loader_options_persistent_prefetch_pin():
    assert _dp().loader_options(0) == {"num_workers": 0, "pin_memory": torch.cuda.is_available()}
    opts = _dp().loader_options(1, prefetch_factor=4)
    assert opts["persistent_workers"] is True and opts["prefetch_factor"] == 4
    for bad in (-1, "lots", True, 1.5):
        with pytest.raises(ValueError, match="num_workers must be 'auto' or an int >= 0"):
            _dp().loader_options(bad)


def test_workers_do_not_print_a_broken_pipe_when_their_parent_stopped_reading(monkeypatch):
    """A Ctrl-C during training printed a worker's BrokenPipeError traceback (multiprocessing's fd-sharing thread
    calls sys.excepthook): the workers' init hook drops exactly those, and every other error still prints."""
    import sys

    dp = _dp()
    assert dp.loader_options(1)["worker_init_fn"] is dp.init_worker
    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: seen.append(kind))
    dp.quiet_if_parent_left(0)
    for kind in (BrokenPipeError, ConnectionResetError, EOFError, ValueError, KeyboardInterrupt):
        sys.excepthook(kind, kind(), None)
    assert seen == [ValueError, KeyboardInterrupt]


def test_config_num_workers_auto_is_the_default(tmp_path):
    from segzoo.training.build import build_loaders

    cfg = load_config(_write(tmp_path, TINY), ["data.num_workers=auto", "data.prefetch_factor=3"])
    loaders, _ = build_loaders(cfg["data"], 0)
    assert loaders["train"].num_workers == _dp().auto_num_workers()
    loaders, _ = build_loaders({k: v for k, v in cfg["data"].items() if k != "num_workers"}, 0)
    assert loaders["valid"].num_workers == _dp().auto_num_workers()
    if _dp().auto_num_workers():
        assert loaders["valid"].persistent_workers and loaders["valid"].prefetch_factor == 3
    for config in ("demo.yml", "folder.yml", "multiclass.yml", "sweep.yml"):
        assert load_config(ROOT / "configs" / config)["data"].get("num_workers", "auto") == "auto", config


@pytest.mark.slow
def test_folder_augmentations_differ_from_epoch_to_epoch_with_workers(tmp_path):
    """A worker started afresh each epoch replays its augmentation draws: identical images came out identical."""
    from PIL import Image

    from segzoo.training.build import build_loaders

    images, masks = _folder(tmp_path)
    for i in range(1, 4):  # four copies of one picture: only the augmentations tell the items apart
        Image.open(images / "0.png").save(images / f"{i}.png")
        Image.open(masks / "0.png").save(masks / f"{i}.png")
    data = {"kind": "folder", "train_images": str(images), "train_masks": str(masks), "valid_images": str(images),
            "valid_masks": str(masks), "image_size": 32, "num_workers": 1, "batch_size": 4}
    loader = build_loaders(data, 0)[0]["train"]
    first, second = (next(iter(loader))["features"] for _ in range(2))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("workers", [0, 2])
def test_folder_augmentations_are_seeded_and_differ_between_workers(tmp_path, workers):
    """The albumentations pipeline has its own random state: it was seeded from the OS (a run's augmentations
    could not be drawn again) and forked workers shared one copy of it (worker 1 drew what worker 0 drew)."""
    from PIL import Image

    from segzoo.training.build import build_loaders

    images, masks = _folder(tmp_path)
    for i in range(1, 8):  # copies of one picture: only the augmentations tell the items apart
        Image.open(images / "0.png").save(images / f"{i}.png")
        Image.open(masks / "0.png").save(masks / f"{i}.png")
    data = {"kind": "folder", "train_images": str(images), "train_masks": str(masks), "valid_images": str(images),
            "valid_masks": str(masks), "image_size": 32, "num_workers": workers, "batch_size": 4}

    def batches(seed):
        loader = build_loaders(data, seed)[0]["train"]
        return [b["features"] for b in loader]

    first = batches(0)
    assert len(first) == 2
    assert all(torch.equal(a, b) for a, b in zip(first, batches(0)))  # the same seed: the same augmentations
    assert not all(torch.equal(a, b) for a, b in zip(first, batches(1)))
    assert not torch.equal(first[0], first[1])  # two batches (two workers with 2) do not repeat each other


@pytest.mark.parametrize("value, needle", [("-1", "data.num_workers must be >= 0, got -1"),
                                           ("lots", "data.num_workers must be 'auto' or an int >= 0"),
                                           ("0.5", "data.num_workers must be int or str"),
                                           ("true", "data.num_workers must be int or str, got a bool")])
def test_bad_num_workers_is_one_line_naming_the_key(tmp_path, capsys, value, needle):
    assert main(["train", "--config", str(_write(tmp_path, TINY)), f"data.num_workers={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "run").exists()


def test_bad_normalize_and_prefetch_are_one_line(tmp_path, capsys):
    for override, needle in (("data.params.normalize=gpu", "data.params.normalize must be auto, batch"),
                             ("data.prefetch_factor=0", "data.prefetch_factor must be >= 1")):
        assert main(["train", "--config", str(_write(tmp_path, TINY)), override]) == 2
        assert needle in capsys.readouterr().err


def test_more_workers_than_cpus_is_said_in_one_line(monkeypatch, capsys):
    import segzoo.hardware.threads as threads

    monkeypatch.setattr(threads, "available_cpus", lambda: (2, "affinity 2"))
    assert _dp().loader_options(8)["num_workers"] == 8  # allowed: slow storage may want them
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "8 data loading workers on 2 usable CPUs" in out


@pytest.mark.slow
def test_a_corrupt_file_in_a_persistent_worker_names_the_file(tmp_path):
    from segzoo.training.build import build_loaders

    images, masks = _folder(tmp_path)
    (images / "1.png").write_bytes((images / "1.png").read_bytes()[:200])  # header intact, data truncated
    data = {"kind": "folder", "train_images": str(images), "train_masks": str(masks), "valid_images": str(images),
            "valid_masks": str(masks), "image_size": 32, "num_workers": 1, "batch_size": 2}
    loaders, _ = build_loaders(data, 0)
    with pytest.raises(DataError, match=r"^cannot read image .*1\.png"):
        for _ in loaders["valid"]:
            pass


@pytest.mark.slow
def test_ctrl_c_with_persistent_workers_exits_130_without_hanging(tmp_path):
    cfg = {**TINY, "data": {**TINY["data"], "train_size": 4000, "num_workers": 2}, "num_epochs": 5}
    path = _write(tmp_path, cfg)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "segzoo", "train", "--config", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        line = proc.stdout.readline()  # the run's first line: training starts now
        assert line.startswith("segzoo: threads"), line
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C goes to the whole foreground group, workers included
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "segzoo: interrupted" in err, err[-2000:]
    assert len(err.strip().splitlines()) <= 2, err[-2000:]  # no traceback from the workers


@pytest.mark.slow
def test_resumed_run_with_workers_is_the_uninterrupted_run(tmp_path):
    """Persistent workers draw no random number per epoch, the resumed run's new ones neither: same weights.

    (A folder run is not compared: its albumentations presets draw from a generator of their own, which
    checkpoints do not hold, with or without workers.)"""
    cfg = {**TINY, "data": {**TINY["data"], "num_workers": 1}, "num_epochs": 3}
    path = _write(tmp_path, cfg)
    assert main(["train", "--config", str(path), f"logdir={tmp_path / 'whole'}"]) == 0
    assert main(["train", "--config", str(path), f"logdir={tmp_path / 'part'}", "num_epochs=1"]) == 0
    assert main(["train", "--config", str(path), f"logdir={tmp_path / 'part'}",
                 f"runner.resume={tmp_path / 'part'}"]) == 0
    whole, part = (torch.load(tmp_path / run / "checkpoints" / "last.pth", weights_only=True)["model_state_dict"]
                   for run in ("whole", "part"))
    assert all(torch.equal(whole[k], part[k]) for k in whole)
