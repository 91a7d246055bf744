"""The front-door fixes the smp examples needed (issue 22), and how they fail: ``segzoo.smp.datasets``,
smp's ResNeXt and MiT encoder names, ``save_pretrained(dataset=, metrics=, push_to_hub=)`` and
``from_pretrained`` of folders smp 0.6 itself wrote."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import segzoo.smp as smp
from segzoo.errors import CheckpointError


def _real():
    return pytest.importorskip("segmentation_models_pytorch")


def test_simple_oxford_pet_dataset_gives_smps_samples(oxford_pet_root):
    real = _real()
    for mode in ("train", "valid", "test"):
        ours, theirs = smp.datasets.SimpleOxfordPetDataset(oxford_pet_root, mode), \
            real.datasets.SimpleOxfordPetDataset(oxford_pet_root, mode)
        assert ours.filenames == theirs.filenames and len(ours) > 0
        for a, b in zip(ours, theirs):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
    plain = smp.datasets.OxfordPetDataset(oxford_pet_root, "test")[0]
    assert plain["image"].ndim == 3 and plain["mask"].dtype == np.float32 and set(np.unique(plain["mask"])) <= {0, 1}


def test_oxford_pet_errors_are_one_line(tmp_path, oxford_pet_root):
    smp.datasets.SimpleOxfordPetDataset.download(oxford_pet_root)  # present: nothing to do, nothing fetched
    with pytest.raises(FileNotFoundError, match="segzoo downloads nothing: fetch https://www.robots.ox.ac.uk") as info:
        smp.datasets.SimpleOxfordPetDataset.download(tmp_path / "empty")
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="trainval.txt: no such file"):
        smp.datasets.OxfordPetDataset(tmp_path, "train")
    with pytest.raises(ValueError, match="mode must be one of"):
        smp.datasets.OxfordPetDataset(oxford_pet_root, "val")


def test_resnext_and_mit_encoder_names_build_smps_encoders():
    real = _real()
    ours = smp.FPN("resnext50_32x4d", encoder_weights=None, classes=2)
    theirs = real.FPN("resnext50_32x4d", encoder_weights=None, classes=2)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours.encoder) == count(theirs.encoder)
    assert ours(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    for name in ("resnext50_32x4d", "resnext101_32x8d", "mit_b0", "mit_b5"):  # smp's (it downloads them): ImageNet's
        assert smp.encoders.get_preprocessing_params(name) == {
            "input_space": "RGB", "input_range": [0, 1], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert smp.Segformer("mit_b0", encoder_weights=None, classes=3)(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="encoder_weights=None") as info:
        smp.Segformer("mit_b0")  # smp downloads the MiT ImageNet weights: segzoo has no offline copy
    assert "\n" not in str(info.value)


def test_save_pretrained_writes_smps_model_card_but_keeps_a_users_readme(tmp_path):
    model = smp.Unet("resnet18", encoder_weights=None, classes=2)
    model.save_pretrained(tmp_path / "a", metrics={"iou": 0.5}, dataset="mine")
    card = (tmp_path / "a" / "README.md").read_text()
    assert json.dumps({"iou": 0.5}, indent=4) in card and "Dataset name: mine" in card
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README.md").write_text("my notes\n")
    model.save_pretrained(tmp_path / "b", dataset="mine")
    assert (tmp_path / "b" / "README.md").read_text() == "my notes\n"
    with pytest.raises(ValueError, match="metrics must be JSON data"):
        model.save_pretrained(tmp_path / "c", metrics={"iou": object()})


def test_push_to_hub_offline_is_one_line_and_the_folder_stays(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = smp.Unet("resnet18", encoder_weights=None, classes=2)
    with pytest.raises(ConnectionError, match="push_to_hub 'me/net' failed") as info:
        model.save_pretrained(tmp_path / "net", push_to_hub=True, repo_id="me/net")
    assert "\n" not in str(info.value) and (tmp_path / "net" / "model.safetensors").is_file()


def test_from_pretrained_loads_a_folder_smp_wrote(tmp_path):
    real = _real()
    theirs = real.Unet("resnet18", encoder_weights=None, classes=2, decoder_channels=(64, 32, 16, 8, 8)).eval()
    theirs.save_pretrained(tmp_path / "smp-unet")
    x = torch.rand(2, 3, 64, 96)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = smp.from_pretrained(tmp_path / "smp-unet")
    assert type(ours).__name__ == "Unet" and not ours.training
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    with pytest.raises(CheckpointError, match="load it with segzoo.smp.from_pretrained") as info:
        smp.Unet.from_pretrained(tmp_path / "smp-unet")  # the class method: segzoo's folders only
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="classes=5 is not available for smp's own folders"):
        smp.from_pretrained(tmp_path / "smp-unet", classes=5, strict=False)


@pytest.mark.parametrize("edit", [{"_model_class": ["Unet"]}, {"_model_class": "../../Unet"}, {"encoder_depth": "five"},
                                  {"classes": "two"}, {"nonsense": 1}, {"_model_class": "Segformer"}])
def test_a_crafted_smp_folder_is_refused_in_one_line(tmp_path, edit):
    real = _real()
    real.Unet("resnet18", encoder_weights=None, classes=2).save_pretrained(tmp_path / "f")
    config = json.loads((tmp_path / "f" / "config.json").read_text())
    (tmp_path / "f" / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(CheckpointError) as info:
        smp.from_pretrained(tmp_path / "f")
    assert "\n" not in str(info.value) and str(tmp_path / "f") in str(info.value)
