"""Shared test setup: no network, deterministic seeds, small thread counts."""

from __future__ import annotations

import os
import subprocess

# One torch thread per test process, and per process the tests start (set before torch is imported, so
# subprocesses inherit it). The models here are tiny (64x64 inputs): a second thread buys little when the
# machine is idle, and on a busy machine threads that wait for each other at every operation made the
# suite several times slower (36 min against about 6 idle on 2 cores). pytest-xdist's workers (``-n``)
# then use the cores. A value the user set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# tests never download: a missing weights file must raise, not fetch
os.environ.setdefault("SEGZOO_OFFLINE", "1")
# precision="auto" (the trainer's default) is fp32 in tests, as the numbers they check were: it would time
# a step and write the user's cache otherwise (tests/training/test_precision.py tests auto itself)
os.environ.setdefault("SEGZOO_PRECISION", "fp32")
_threads = os.environ["OMP_NUM_THREADS"]
torch.set_num_threads(max(1, int(_threads)) if _threads.isdigit() else 1)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` when CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty torch hub cache (TORCH_HOME) of the test's own; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def make_tmpfs(tmp_path):
    """Mount a tmpfs of the given size (e.g. ``"64k"``) for disk-full tests; skipped where mounting is not allowed.

    Returns a function ``size -> folder``; every mount is removed after the test.
    """
    mounts = []

    def mount(size: str = "64k", name: str = "full"):
        folder = tmp_path / name
        folder.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounts.append(folder)
        return folder

    yield mount
    for folder in reversed(mounts):
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def tiny_fs(make_tmpfs):
    """A 64 KiB tmpfs (we are root in CI); skipped where mounting is not allowed."""
    return make_tmpfs("64k")
