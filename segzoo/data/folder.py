"""Image / mask folder dataset: ``images/NAME.png`` paired with ``masks/NAME.png``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from segzoo.data.visual import IMAGENET_MEAN, IMAGENET_STD, check_normalization, to_item

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """Read an image file as a uint8 array ((H, W, 3) for RGB, (H, W) for "L"/"P"/"I").

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable image (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert(mode) if mode == "RGB" else img)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def _list(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes}
    if not files:
        raise ValueError(f"{what} folder {folder} has no {'/'.join(suffixes)} files")
    return files


class SegmentationFolder(Dataset):
    """Pairs images and masks by file stem.

    Masks are single-channel PNGs of class indices; for ``num_classes == 1`` any non-zero
    value (1 or 255) is foreground.

    Args:
        images_dir: folder of PNG/JPEG images.
        masks_dir: folder of PNG masks with the same stems.
        num_classes: 1 (binary) or the number of classes including background 0.
        transforms: optional albumentations-style callable ``transforms(image=, mask=)``.
        mean: normalization mean (RGB, 0..1 scale).
        std: normalization std.
        image_suffixes: accepted image file endings.

    Items: as :class:`~segzoo.data.ProceduralSegmentation`; also ``"name"`` (the stem).

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: empty folders, images without masks or masks without images (stems named),
            bad ``num_classes`` / ``mean`` / ``std``. Reading an item raises ValueError naming the
            file for an unreadable image, an image/mask size mismatch or mask values outside the classes.
    """

    def __init__(self, images_dir: str | Path, masks_dir: str | Path, num_classes: int = 1,
                 transforms: Callable | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, image_suffixes: Sequence[str] = IMAGE_SUFFIXES) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.mean, self.std = check_normalization(mean, std)
        images = _list(Path(images_dir), tuple(image_suffixes), "images")
        masks = _list(Path(masks_dir), (".png",), "masks")
        lonely_images = sorted(set(images) - set(masks))
        lonely_masks = sorted(set(masks) - set(images))
        if lonely_images or lonely_masks:
            raise ValueError(f"images and masks do not pair up by name: images without masks {lonely_images[:5]}, "
                             f"masks without images {lonely_masks[:5]}")
        self.names = sorted(images)
        self.images = images
        self.masks = masks
        self.num_classes = num_classes
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.names)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw pair: uint8 (H, W, 3) image and int64 (H, W) mask, checked."""
        name = self.names[index]
        image = read_image(self.images[name])
        mask = read_image(self.masks[name], mode="mask")
        if mask.ndim != 2:
            raise ValueError(f"mask {self.masks[name]} must be single-channel, got shape {mask.shape}")
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {self.masks[name]} is {mask.shape[1]}x{mask.shape[0]} but image "
                             f"{self.images[name]} is {image.shape[1]}x{image.shape[0]} (WxH)")
        mask = mask.astype(np.int64)
        if self.num_classes == 1:
            bad = np.setdiff1d(np.unique(mask), [0, 1, 255])
        else:
            bad = np.unique(mask[(mask < 0) | (mask >= self.num_classes)])
        if bad.size:
            raise ValueError(f"mask {self.masks[name]} has values {bad[:10].tolist()} outside the "
                             f"{self.num_classes} class(es)")
        return image, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        image, mask = self.sample(index)
        item = to_item(image, mask, self.num_classes, self.mean, self.std, self.transforms)
        item["name"] = self.names[index]
        return item
