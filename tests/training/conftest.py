import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # for `_helpers` (also inherited by spawned DDP workers)

from _helpers import TinyNet, make_loaders  # noqa: E402


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def loaders():
    return make_loaders()
