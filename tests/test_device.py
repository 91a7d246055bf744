"""segzoo.device.resolve_device: the one device resolver of the trainer, export, predict and inference."""

import pytest
import torch

from segzoo.device import resolve_device


def test_names_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto") == expected


@pytest.mark.parametrize("bad", ["gpu0", "", "cpu:x"])
def test_invalid_name_is_one_value_error(bad):
    with pytest.raises(ValueError, match=r"invalid device .*expected 'cpu', 'cuda', 'cuda:N' or 'auto'"):
        resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_missing_cuda_is_named():
    with pytest.raises(ValueError, match="'cuda:1' asked for but CUDA is not available"):
        resolve_device("cuda:1")


def test_every_user_gets_the_same_errors():
    """The trainer used to raise torch's RuntimeError for a bad name; export/predict a ValueError."""
    from segzoo.export import resolve_device as export_resolve
    from segzoo.training import SupervisedRunner

    assert export_resolve is resolve_device
    runner = SupervisedRunner(model=torch.nn.Conv2d(3, 1, 1), device="gpu0")
    with pytest.raises(ValueError, match="invalid device 'gpu0'"):
        runner.predict_loader(runner.model, [torch.zeros(1, 3, 8, 8)])
