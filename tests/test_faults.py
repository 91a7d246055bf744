"""Faults: kill -9 at random moments leaves loadable checkpoints and a resumable run; Ctrl-C saves one."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from segzoo.checkpoint import load_checkpoint

# many short epochs, so that every kill lands mid-run (an epoch takes ~0.1 s here)
EPOCHS = 60


def _config(tmp_path: Path) -> Path:
    cfg = {
        "seed": 1, "logdir": str(tmp_path / "run"),
        "model": {"name": "unet", "params": {"num_channels": 4, "num_blocks": 2}},
        "data": {"kind": "procedural", "params": {"image_size": 32}, "train_size": 48, "valid_size": 16,
                 "batch_size": 8},
        "callbacks": [{"name": "DiceCallback", "params": {"threshold": 0.5}}],
        "num_epochs": EPOCHS,
        "runner": {"main_metric": "dice", "minimize_metric": False},
    }
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _default_sigint() -> None:
    # a test run started in the background (`cmd &` without job control, nohup) inherits SIGINT
    # ignored, and Python then leaves it ignored, as a user's `nohup segzoo train &` wants: the child
    # here gets the default disposition, as in a terminal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(cfg: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "segzoo.cli", "train", "--config", str(cfg), *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120, after_ns: int = -1) -> None:
    """Wait until ``path`` exists and was written after ``after_ns`` (its mtime in ns)."""
    end = time.time() + timeout
    while not path.exists() or path.stat().st_mtime_ns <= after_ns:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.02)


def _all_checkpoints_load(folder: Path) -> int:
    files = [p for p in folder.glob("*.pth")]
    for p in files:
        load_checkpoint(p)  # raises on any truncated file
    return len(files)


@pytest.mark.slow
def test_kill9_at_random_moments_then_resume(tmp_path):
    cfg = _config(tmp_path)
    folder = tmp_path / "run" / "checkpoints"
    rng = random.Random(0)
    for _ in range(3):
        last = folder / "last_full.pth"
        before = last.stat().st_mtime_ns if last.exists() else -1
        proc = _start(cfg, *(["runner.resume=" + str(last)] if last.exists() else []))
        _wait_for(last, proc, after_ns=before)  # this run has completed an epoch (last_full is its last file)
        time.sleep(rng.uniform(0.0, 0.4))
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _all_checkpoints_load(folder) >= 2
    # the last resume trains a few epochs past the killed runs' progress (not all 60: the suite stays fast)
    target = load_checkpoint(folder / "last_full.pth")["epoch"] + 3
    proc = _start(cfg, "runner.resume=" + str(folder / "last_full.pth"), f"num_epochs={target}")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    last = load_checkpoint(folder / "last.pth")
    assert last["epoch"] == target
    assert _all_checkpoints_load(folder) >= 4


@pytest.mark.slow
def test_ctrl_c_saves_resumable_checkpoint(tmp_path):
    cfg = _config(tmp_path)
    folder = tmp_path / "run" / "checkpoints"
    proc = _start(cfg)
    # last_full.pth is written last in an epoch (the CheckpointCallback runs after the loggers and writes it
    # after its other files): the Ctrl-C then lands in the next epoch (in the epoch's own writes it would
    # finish them, and save no interrupted state)
    _wait_for(folder / "last_full.pth", proc)
    proc.send_signal(signal.SIGINT)
    sent_at = time.time()
    out, err = proc.communicate(timeout=120)
    epochs = len(json.loads((folder / "_metrics.json").read_text())["epochs"])
    assert proc.returncode == 130, (f"exit {proc.returncode} {time.time() - sent_at:.1f} s after SIGINT, "
                                    f"{epochs} epochs done; stdout {out[-2000:]!r}; stderr {err[-2000:]!r}")
    assert "Traceback" not in err and "interrupted" in err, err
    ck = load_checkpoint(folder / "last_full.pth")
    # the Ctrl-C lands in the next epoch's batches (an interrupted state), or on a busy machine still among the
    # previous epoch's last steps after last_full appeared (removing dropped files): those are finished, and
    # last_full is that complete epoch's state
    assert "optimizer_state_dict" in ck and (ck.get("interrupted") is True or ck["epoch"] == epochs), ck.keys()
    target = epochs + 3  # the interrupted epoch again, then two more (not all 60: the suite stays fast)
    proc = _start(cfg, f"runner.resume={folder / 'last_full.pth'}", f"num_epochs={target}")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert load_checkpoint(folder / "last.pth")["epoch"] == target
