"""Shared test setup: no network, deterministic seeds, small thread counts."""

from __future__ import annotations

import os

import pytest
import torch

# tests never download: a missing weights file must raise, not fetch
os.environ.setdefault("SEGZOO_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


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
