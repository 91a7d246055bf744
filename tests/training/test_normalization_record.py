"""Issue 22 point 5: runs trained from Python record the input normalization in their checkpoints."""

import warnings

import pytest
import torch
from _helpers import TinyNet, make_loaders, train
from torch.utils.data import ConcatDataset, DataLoader, Subset

from segzoo.checkpoint import load_checkpoint
from segzoo.data import ProceduralSegmentation
from segzoo.data.visual import IMAGENET_MEAN, IMAGENET_STD


def _procedural_loaders(train_dataset):
    valid = ProceduralSegmentation(num_samples=2, image_size=16, seed=1)
    return {"train": DataLoader(train_dataset, batch_size=2), "valid": DataLoader(valid, batch_size=2)}


def _recorded(tmp_path):
    return load_checkpoint(tmp_path / "checkpoints" / "last.pth")["normalization"]


@pytest.mark.slow
def test_the_datasets_mean_std_is_recorded(tmp_path):
    data = ProceduralSegmentation(num_samples=4, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing assumed: no warning
        train(TinyNet(), _procedural_loaders(Subset(data, [0, 1, 2])), tmp_path)
    assert _recorded(tmp_path) == {"mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.mark.slow
def test_a_plain_dataset_records_imagenets_with_one_warning(tmp_path):
    with pytest.warns(UserWarning, match="ImageNet") as record:
        train(TinyNet(), make_loaders(tuples=True), tmp_path)
    assert len([w for w in record if "ImageNet" in str(w.message)]) == 1
    assert _recorded(tmp_path) == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


@pytest.mark.slow
def test_the_given_normalization_wins(tmp_path):
    data = ProceduralSegmentation(num_samples=2, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    train(TinyNet(), _procedural_loaders(data), tmp_path, normalization={"mean": [0.1] * 3, "std": [0.2] * 3})
    assert _recorded(tmp_path) == {"mean": [0.1] * 3, "std": [0.2] * 3}


def test_concat_of_different_normalizations_is_refused(tmp_path):
    a = ProceduralSegmentation(num_samples=2, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    b = ProceduralSegmentation(num_samples=2, image_size=16)
    with pytest.raises(ValueError, match="mixes normalizations"):
        train(TinyNet(), _procedural_loaders(ConcatDataset([a, b])), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_concat_of_equal_normalizations_is_recorded():
    from segzoo.training.defaults import run_normalization

    a = ProceduralSegmentation(num_samples=2, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    loaders = {"valid": None, "fit": DataLoader(ConcatDataset([a, Subset(a, [0])]))}
    assert run_normalization(None, loaders, "valid", 3) == {"mean": [0.5] * 3, "std": [0.25] * 3}
    with pytest.warns(UserWarning, match="no input normalization recorded"):
        assert run_normalization(None, {"train": DataLoader(torch.zeros(2, 1, 4, 4)), "valid": None}, "valid", 1) is None
