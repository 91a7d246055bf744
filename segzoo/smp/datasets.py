"""smp's ``datasets``: :class:`OxfordPetDataset` and :class:`SimpleOxfordPetDataset` over the Oxford-IIIT Pet
folder layout, as smp's binary segmentation notebook reads it.

The layout (the two archives of https://www.robots.ox.ac.uk/~vgg/data/pets/ extracted into ``root``)::

    root/images/<name>.jpg                 RGB images
    root/annotations/trimaps/<name>.png    trimaps: 1 pet, 2 background, 3 border
    root/annotations/trainval.txt          "<name> ..." per line: train (9 of 10) and valid (every 10th)
    root/annotations/test.txt              the test split

A sample is ``{"image", "mask", "trimap"}``: the mask is the pet and its border (trimap 1 or 3) as float32
1.0, the background 0.0. segzoo downloads nothing: :meth:`OxfordPetDataset.download` checks the layout is
there and otherwise says, in one line, what to fetch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["OxfordPetDataset", "SimpleOxfordPetDataset"]

_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
_MODES = ("train", "valid", "test")


class OxfordPetDataset(torch.utils.data.Dataset):
    """The Oxford-IIIT Pet images and pet masks of one split (``mode``: ``"train"``, ``"valid"``, ``"test"``).

    Samples: ``image`` (H, W, 3) uint8, ``mask`` (H, W) float32 0/1, ``trimap`` (H, W) uint8, passed through
    ``transform(**sample)`` when given (albumentations' calling convention), as smp's.

    Raises:
        ValueError: an unknown ``mode``.
        FileNotFoundError: the split file is missing (one line naming it).
    """

    def __init__(self, root: str | os.PathLike, mode: str = "train",
                 transform: Callable[..., dict[str, Any]] | None = None) -> None:
        if mode not in _MODES:
            raise ValueError(f"OxfordPetDataset: mode must be one of {list(_MODES)}, got {mode!r}")
        self.root, self.mode, self.transform = os.fspath(root), mode, transform
        self.images_directory = os.path.join(self.root, "images")
        self.masks_directory = os.path.join(self.root, "annotations", "trimaps")
        self.filenames = self._read_split()

    def _read_split(self) -> list[str]:
        path = Path(self.root, "annotations", "test.txt" if self.mode == "test" else "trainval.txt")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (OxfordPetDataset reads the Oxford-IIIT Pet layout: "
                                    f"images/, annotations/trimaps/, annotations/trainval.txt and test.txt)")
        names = [line.split(" ")[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if self.mode == "train":
            return [n for i, n in enumerate(names) if i % 10 != 0]
        if self.mode == "valid":
            return [n for i, n in enumerate(names) if i % 10 == 0]
        return names

    def __len__(self) -> int:
        return len(self.filenames)

    @staticmethod
    def _pet_mask(trimap: np.ndarray) -> np.ndarray:
        """1.0 where the trimap is pet (1) or border (3), 0.0 elsewhere; float32, the trimap's shape."""
        return np.isin(trimap, (1, 3)).astype(np.float32)

    def _read(self, idx: int) -> dict[str, np.ndarray]:
        from PIL import Image

        name = self.filenames[idx]
        with Image.open(os.path.join(self.images_directory, name + ".jpg")) as im:
            image = np.array(im.convert("RGB"))
        with Image.open(os.path.join(self.masks_directory, name + ".png")) as im:
            trimap = np.array(im)
        return {"image": image, "mask": self._pet_mask(trimap), "trimap": trimap}

    def __getitem__(self, idx: int) -> dict[str, Any]:
        sample = self._read(idx)
        return self.transform(**sample) if self.transform is not None else sample

    @staticmethod
    def download(root: str | os.PathLike) -> None:
        """Check that ``root`` holds the dataset; segzoo does not download it (smp's does).

        Raises:
            FileNotFoundError: a part of the layout is missing; the message names it and the archives to fetch.
        """
        for part in ("images", os.path.join("annotations", "trimaps"), os.path.join("annotations", "trainval.txt"),
                     os.path.join("annotations", "test.txt")):
            if not os.path.exists(os.path.join(root, part)):
                raise FileNotFoundError(f"{os.path.join(root, part)}: missing; segzoo downloads nothing: fetch "
                                        f"{_URL}images.tar.gz and {_URL}annotations.tar.gz and extract both into "
                                        f"{os.fspath(root)}")


class SimpleOxfordPetDataset(OxfordPetDataset):
    """:class:`OxfordPetDataset` resized to 256x256 and channels first, as smp's: ``image`` (3, 256, 256) uint8,
    ``mask`` (1, 256, 256) float32 0/1, ``trimap`` (1, 256, 256) uint8 (``transform`` is applied first)."""

    size = (256, 256)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        from PIL import Image

        sample = super().__getitem__(idx)
        image = np.array(Image.fromarray(sample["image"]).resize(self.size, Image.BILINEAR))
        mask = np.array(Image.fromarray(sample["mask"]).resize(self.size, Image.NEAREST))
        trimap = np.array(Image.fromarray(sample["trimap"]).resize(self.size, Image.NEAREST))
        return {**sample, "image": np.moveaxis(image, -1, 0), "mask": mask[None], "trimap": trimap[None]}
