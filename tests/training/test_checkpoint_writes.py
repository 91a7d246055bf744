"""CheckpointCallback writes: independent files, rotation order, disk full, Ctrl-C after the epoch's files."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from _helpers import TinyNet, scripted_metric, train

import segzoo.training.callbacks.checkpoint as ckpt_module
from segzoo.checkpoint import load_checkpoint
from segzoo.errors import WriteError
from segzoo.fileio import write_error
from segzoo.training import Callback, CallbackOrder
from segzoo.training.callbacks import CheckpointCallback

ROOT = Path(__file__).resolve().parents[2]


def _all_load(folder):
    """Every .pth in ``folder`` loads; no temporary file is left; returns {name: epoch}."""
    assert [p.name for p in folder.iterdir() if ".tmp" in p.name] == []
    return {p.name: load_checkpoint(p)["epoch"] for p in folder.glob("*.pth")}


def test_checkpoint_files_are_independent(tiny, loaders, tmp_path):
    # epoch 1 is last, best and train.1 at once
    train(tiny, loaders, tmp_path, num_epochs=1, callbacks=[CheckpointCallback(keep_full=True)])
    folder = tmp_path / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["_metrics.json", "best.pth", "best_full.pth", "last.pth", "last_full.pth",
                     "train.1.pth", "train.1_full.pth"]
    for name in names:
        st = os.stat(folder / name)
        assert st.st_nlink == 1, name
        assert st.st_mode & 0o777 == 0o666 & ~_umask(), name  # not the temp file's 0600
    with open(folder / "best.pth", "r+b") as f:  # damaging one file leaves the others as they were
        f.truncate(100)
    with open(folder / "last_full.pth", "r+b") as f:
        f.truncate(0)
    assert load_checkpoint(folder / "last.pth")["epoch"] == 1
    assert load_checkpoint(folder / "train.1.pth")["epoch"] == 1
    assert load_checkpoint(folder / "best_full.pth")["epoch"] == 1
    for bad in ("best.pth", "last_full.pth"):
        with pytest.raises(ValueError, match="truncated|empty"):
            load_checkpoint(folder / bad)


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_new_top_n_file_is_written_before_the_old_one_is_removed(tiny, loaders, tmp_path, monkeypatch):
    real = ckpt_module.write_bytes_atomic

    def failing(path, data, **kw):  # the disk fills up when epoch 2 is said complete (last_full, written last)
        if Path(path).name == "last_full.pth" and load_checkpoint(tmp_path / "checkpoints" / "last.pth")["epoch"] == 2:
            raise write_error(path, OSError(errno.ENOSPC, "No space left on device"))
        return real(path, data, **kw)

    monkeypatch.setattr(ckpt_module, "write_bytes_atomic", failing)
    with pytest.raises(WriteError, match="cannot write .*last_full.pth: no space left on device"):
        train(tiny, loaders, tmp_path, num_epochs=3, main_metric="m",
              callbacks=[scripted_metric([3.0, 2.0, 1.0]), CheckpointCallback(save_n_best=1)])
    epochs = _all_load(tmp_path / "checkpoints")
    # epoch 1's top-1 file stays until epoch 2 is complete; resuming reads last_full: epoch 1
    assert epochs == {"train.1.pth": 1, "train.2.pth": 2, "best.pth": 2, "last.pth": 2, "last_full.pth": 1}
    monkeypatch.undo()
    state = train(TinyNet(), loaders, tmp_path, num_epochs=3, main_metric="m", resume=tmp_path,
                  callbacks=[scripted_metric([3.0, 2.0, 1.0]), CheckpointCallback(save_n_best=1)])
    assert (state.epoch, state.best_name) == (3, "train.3")  # epoch 2 re-run, then 3
    assert _all_load(tmp_path / "checkpoints") == {"train.3.pth": 3, "best.pth": 3, "last.pth": 3, "last_full.pth": 3}
    metrics = json.loads((tmp_path / "checkpoints" / "_metrics.json").read_text())
    assert [e["name"] for e in metrics["epochs"]] == ["train.1", "train.2", "train.3"]


def test_disk_full_stops_the_run_and_keeps_earlier_checkpoints(tiny, loaders, make_tmpfs):
    # TinyNet: light 3 KB (1 page), full 18 KB (5 pages); epoch 1's files (4 light, last_full, JSON) take 36 KiB,
    # epoch 2 needs 60 KiB at its peak (last_full's temporary file next to the old one): the disk fills
    logdir = make_tmpfs("56k") / "run"
    with pytest.raises(WriteError) as info:
        train(tiny, loaders, logdir, num_epochs=6, main_metric="m",
              callbacks=[scripted_metric([6, 5, 4, 3, 2, 1]), CheckpointCallback(save_n_best=1)])
    message = str(info.value)
    assert "\n" not in message and "no space left on device" in message and str(logdir) in message
    assert "last_full.pth" in message
    epochs = _all_load(logdir / "checkpoints")
    assert epochs["last_full.pth"] == 1 and epochs["best.pth"] == 2  # epoch 2 is not complete: resume re-runs it
    assert epochs["train.1.pth"] == 1  # the old top-1 is removed only once epoch 2 is complete
    json.loads((logdir / "checkpoints" / "_metrics.json").read_text())


class _InterruptAfterCheckpoints(Callback):
    """Ctrl-C in the end of epoch 2, after CheckpointCallback wrote it (another saver of higher order)."""

    saves_run_state = True

    def __init__(self):
        super().__init__(CallbackOrder.External + 20)

    def on_epoch_end(self, state):
        if state.epoch == 2:
            raise KeyboardInterrupt


def test_ctrl_c_after_the_epochs_checkpoints_keeps_the_complete_epoch(tiny, loaders, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(tiny, loaders, tmp_path, num_epochs=3, callbacks=[_InterruptAfterCheckpoints()])
    last = load_checkpoint(tmp_path / "checkpoints" / "last_full.pth")
    assert last["epoch"] == 2 and "interrupted" not in last  # not re-labelled as an unfinished epoch 1
    state = train(TinyNet(), loaders, tmp_path, num_epochs=3, resume=tmp_path)
    assert state.epoch == 3 and state.global_epoch == 3


def test_disk_full_during_ctrl_c_save_keeps_the_interruption(tiny, loaders, tmp_path, monkeypatch, capsys):
    class Interrupt(Callback):
        def on_batch_end(self, state):
            if state.epoch == 2 and state.batch_index == 1:
                monkeypatch.setattr(ckpt_module, "write_bytes_atomic", full_disk)
                raise KeyboardInterrupt

    def full_disk(path, data, **kw):
        raise write_error(path, OSError(errno.ENOSPC, "No space left on device"))

    with pytest.raises(KeyboardInterrupt):  # not replaced by the failed save
        train(tiny, loaders, tmp_path, num_epochs=3, callbacks=[Interrupt()])
    err = capsys.readouterr().err
    assert "the interrupted state was not saved: cannot write" in err and "no space left" in err
    assert _all_load(tmp_path / "checkpoints")["last_full.pth"] == 1


@pytest.mark.slow
def test_cli_train_on_a_full_disk_is_one_line_exit_2(tmp_path, make_tmpfs):
    # a 30k-parameter Unet with Adam: the full checkpoint (~0.5 MB) fits 1 MiB once, not twice
    logdir = make_tmpfs("1m") / "run"
    cfg = {"seed": 0, "logdir": str(logdir),
           "model": {"name": "unet", "params": {"num_classes": 1, "num_channels": 8, "num_blocks": 2}},
           "data": {"kind": "procedural", "params": {"image_size": 32, "num_classes": 1},
                    "train_size": 4, "valid_size": 4, "batch_size": 4},
           "loss": {"name": "BCEDiceLoss"}, "optimizer": {"name": "Adam", "params": {"lr": 0.001}},
           "num_epochs": 2, "runner": {"device": "cpu"}}
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEGZOO_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "segzoo.cli", "train", "--config", str(path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("segzoo train: error: cannot write "), res.stderr
    assert "no space left on device" in lines[0] and str(logdir) in lines[0]
    epochs = _all_load(logdir / "checkpoints")
    assert epochs.get("last_full.pth") == 1
    assert torch.load(logdir / "checkpoints" / "last.pth", weights_only=True)["epoch"] == 1


def test_epoch_files_are_fsynced_and_their_folder_once_before_an_old_one_is_removed(tiny, loaders, tmp_path,
                                                                                     monkeypatch):
    import stat

    events = []
    real_fsync, real_unlink = os.fsync, Path.unlink

    def fsync(fd):
        events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def unlink(self, missing_ok=False):
        if self.suffix == ".pth":
            events.append(f"rm {self.name}")
        real_unlink(self, missing_ok=missing_ok)

    class Mark(Callback):  # on epoch end the CheckpointCallback runs after every other callback
        def __init__(self):
            super().__init__(CallbackOrder.External + 20)

        def on_epoch_end(self, state):
            events.append(f"end {state.epoch}")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "unlink", unlink)
    train(tiny, loaders, tmp_path, num_epochs=2, main_metric="m",
          callbacks=[scripted_metric([2.0, 1.0]), CheckpointCallback(save_n_best=1), Mark()])
    monkeypatch.undo()
    # epoch 2 (after the last Mark): train.2, best, the JSON and last (4 files), one folder sync, then
    # last_full and its folder sync (the epoch is complete), and only then train.1 goes
    epoch2 = events[events.index("end 2") + 1:]
    stale = ["rm train.2_full.pth", "rm best_full.pth"]  # no _full of another epoch passes for this one's
    assert epoch2 == [stale[0], "file", stale[1]] + ["file"] * 3 + ["dir", "file", "dir", "rm train.1.pth",
                                                                    "rm train.1_full.pth"]
    assert events[events.index("end 1") + 1:events.index("end 2")] == (
        ["rm train.1_full.pth", "file", "rm best_full.pth"] + ["file"] * 3 + ["dir", "file", "dir"])
    assert sorted(_all_load(tmp_path / "checkpoints")) == ["best.pth", "last.pth", "last_full.pth", "train.2.pth"]


def test_only_last_full_holds_the_optimizer_state_unless_keep_full(loaders, tmp_path):
    values = [3.0, 1.0, 2.0]
    train(TinyNet(), loaders, tmp_path / "light", num_epochs=3, main_metric="m",
          callbacks=[scripted_metric(values), CheckpointCallback(save_n_best=2)])
    folder = tmp_path / "light" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["_metrics.json", "best.pth", "last.pth", "last_full.pth",
                                                        "train.2.pth", "train.3.pth"]
    assert "optimizer_state_dict" in load_checkpoint(folder / "last_full.pth")
    assert not any("optimizer_state_dict" in load_checkpoint(p) for p in folder.glob("*.pth") if "_full" not in p.name)

    train(TinyNet(), loaders, tmp_path / "full", num_epochs=3, main_metric="m",
          callbacks=[scripted_metric(values), CheckpointCallback(save_n_best=2, keep_full=True)])
    folder = tmp_path / "full" / "checkpoints"
    assert _all_load(folder) == {"best.pth": 2, "best_full.pth": 2, "last.pth": 3, "last_full.pth": 3,
                                 "train.2.pth": 2, "train.2_full.pth": 2, "train.3.pth": 3, "train.3_full.pth": 3}
    with pytest.raises(ValueError, match="keep_full must be true or false"):
        CheckpointCallback(keep_full="yes")


def test_a_full_file_of_another_epoch_never_stays_next_to_a_new_light_one(loaders, tmp_path):
    values = [3.0, 2.0, 1.0]
    train(TinyNet(), loaders, tmp_path, num_epochs=2, main_metric="m",
          callbacks=[scripted_metric(values), CheckpointCallback(keep_full=True)])
    assert load_checkpoint(tmp_path / "checkpoints" / "best_full.pth")["epoch"] == 2
    # resumed without keep_full: epoch 3 is the new best, and best_full.pth (epoch 2) would pass for its full file
    train(TinyNet(), loaders, tmp_path, num_epochs=3, main_metric="m", resume=tmp_path,
          callbacks=[scripted_metric(values), CheckpointCallback()])
    assert _all_load(tmp_path / "checkpoints") == {"best.pth": 3, "last.pth": 3, "last_full.pth": 3, "train.3.pth": 3}


def test_resume_refuses_a_damaged_last_full_in_one_line(tiny, loaders, tmp_path):
    import zipfile

    from segzoo.errors import CheckpointError

    train(tiny, loaders, tmp_path, num_epochs=1)
    path = tmp_path / "checkpoints" / "last_full.pth"
    with zipfile.ZipFile(path) as zf:  # a tensor record: the last bytes of the file before the zip directory
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    middle = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    before = (tmp_path / "checkpoints" / "last.pth").read_bytes()
    with pytest.raises(CheckpointError) as info_:
        train(TinyNet(), loaders, tmp_path, num_epochs=2, resume=tmp_path)
    assert "\n" not in str(info_.value) and f"{path} is damaged" in str(info_.value)
    assert (tmp_path / "checkpoints" / "last.pth").read_bytes() == before  # nothing was trained or written


def test_resuming_from_a_full_file_no_longer_kept_says_what_to_use(tiny, loaders, tmp_path):
    train(tiny, loaders, tmp_path, num_epochs=1)
    with pytest.raises(FileNotFoundError, match=r"best_full.pth; only last_full.pth keeps the optimizer state unless "
                                                r"CheckpointCallback\(keep_full=True\).* or from best.pth"):
        train(TinyNet(), loaders, tmp_path, num_epochs=2, resume=tmp_path / "checkpoints" / "best_full.pth")
