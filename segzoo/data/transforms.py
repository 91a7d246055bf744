"""Albumentations presets (the ``train`` extra)."""

from __future__ import annotations

from collections.abc import Sequence

from segzoo.errors import install_hint


def _albumentations():
    try:
        import albumentations as A
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(f"augmentation presets need albumentations: {install_hint('train')}") from exc
    return A


def get_transforms(kind: str = "train", image_size: int | Sequence[int] = 256, seed: int | None = None):
    """An albumentations ``Compose`` for ``kind`` in {"train", "valid"}, working on uint8 HWC images and masks.

    - train: random resized crop to ``image_size``, flips, 90-degree rotations (square sizes),
      brightness/contrast;
    - valid: pad to at least ``image_size`` then center crop (no resampling of masks).

    ``seed``: the pipeline's own random state (albumentations draws from it, not from torch's or numpy's);
    ``None``: from the OS, a different run each time. segzoo's loaders with workers reseed it per worker
    (:func:`segzoo.training.data_path.init_worker`).

    Raises:
        ValueError: unknown ``kind`` or a bad ``image_size``.
        ImportError: albumentations is not installed (it comes with ``segzoo[train]``).
    """
    if kind not in ("train", "valid"):
        raise ValueError(f"transforms kind must be 'train' or 'valid', got {kind!r}")
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        h = w = image_size
    elif isinstance(image_size, Sequence) and len(image_size) == 2 and all(isinstance(v, int) for v in image_size):
        h, w = image_size
    else:
        raise ValueError(f"image_size must be an int or (H, W) ints, got {image_size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    A = _albumentations()
    if kind == "train":
        steps = [A.RandomResizedCrop(size=(h, w), scale=(0.5, 1.0)), A.HorizontalFlip(), A.VerticalFlip()]
        if h == w:  # a quarter turn would swap H and W otherwise
            steps.append(A.RandomRotate90())
        return A.Compose([*steps, A.RandomBrightnessContrast(p=0.5)], seed=seed)
    return A.Compose([A.PadIfNeeded(min_height=h, min_width=w), A.CenterCrop(height=h, width=w)], seed=seed)
