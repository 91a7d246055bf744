"""Albumentations presets (the ``train`` extra)."""

from __future__ import annotations

from collections.abc import Sequence


def _albumentations():
    try:
        import albumentations as A
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("augmentation presets need albumentations: pip install 'segzoo[train]'") from exc
    return A


def get_transforms(kind: str = "train", image_size: int | Sequence[int] = 256):
    """An albumentations ``Compose`` for ``kind`` in {"train", "valid"}, working on uint8 HWC images and masks.

    - train: random resized crop to ``image_size``, flips, 90-degree rotations, brightness/contrast;
    - valid: pad to at least ``image_size`` then center crop (no resampling of masks).

    Raises:
        ValueError: unknown ``kind``.
    """
    A = _albumentations()
    h, w = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    if kind == "train":
        return A.Compose([
            A.RandomResizedCrop(size=(h, w), scale=(0.5, 1.0)),
            A.HorizontalFlip(),
            A.VerticalFlip(),
            A.RandomRotate90(),
            A.RandomBrightnessContrast(p=0.5),
        ])
    if kind == "valid":
        return A.Compose([A.PadIfNeeded(min_height=h, min_width=w), A.CenterCrop(height=h, width=w)])
    raise ValueError(f"transforms kind must be 'train' or 'valid', got {kind!r}")
