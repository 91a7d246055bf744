import pytest
import torch
from _helpers import TinyNet, make_loaders


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def loaders():
    return make_loaders()
