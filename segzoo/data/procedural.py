"""A procedural segmentation dataset: textured shapes on textured, noisy backgrounds.

Needs no download, is deterministic by ``(seed, index)``, and works at any size.
Colour alone does not give the answer (shape and background colours are drawn from
the same range); each class has its own stripe texture (orientation and frequency),
so a model has to learn texture and shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from segzoo.data.visual import IMAGENET_MEAN, IMAGENET_STD, check_mean_std, check_normalize_mode, to_item


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        h = w = image_size
    else:
        h, w = (int(v) for v in image_size)
    if h < 8 or w < 8:
        raise ValueError(f"image_size must be at least 8x8, got {image_size!r}")
    return h, w


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int = 6) -> np.ndarray:
    """Low-frequency noise (h, w) in about [-1, 1]: a small random grid, bilinearly enlarged."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1))
    ys = np.linspace(0, cells, h)
    xs = np.linspace(0, cells, w)
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx) + g11 * fy * fx)


def _shape_mask(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boolean mask of a random rotated ellipse, rectangle or triangle."""
    s = min(h, w)
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    a, b = rng.uniform(0.1, 0.3) * s, rng.uniform(0.1, 0.3) * s
    t = rng.uniform(0, math.pi)
    u = (xx - cx) * math.cos(t) + (yy - cy) * math.sin(t)
    v = -(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)
    kind = rng.integers(3)
    if kind == 0:
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == 1:
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    # triangle: apex up in the rotated frame
    return (v >= -b) & (v <= b) & (np.abs(u) <= a * (b - v) / (2 * b))


class ProceduralSegmentation(Dataset):
    """Random textured shapes and their masks, generated on the fly.

    Args:
        num_samples: dataset length.
        image_size: ``int`` or ``(H, W)``.
        num_classes: 1 for binary masks, or the number of classes including background 0.
        seed: items depend only on ``(seed, index)``.
        mean: normalization mean (RGB, 0..1 scale).
        std: normalization std.
        transforms: optional albumentations-style callable ``transforms(image=uint8 HWC, mask=HW)``.
        labels: also give an image-level target ``"label"``: float32 (K,) with 1 where foreground class k + 1
            appears in the (transformed) mask, K = :attr:`label_classes` = ``max(num_classes - 1, 1)`` (binary:
            whether any shape is visible); the target of a model's ``aux_params=dict(classes=K)`` head with
            ``BCEWithLogitsLoss``.
        normalize: ``"item"`` (default): ``features`` are float32, normalized here; ``"batch"`` (or
            ``"auto"``, the same here: the images are 8-bit): ``features`` are the uint8 pixels (3, H, W)
            and segzoo's training loop converts and normalizes each batch on the device (exactly the
            same values, a quarter of the bytes through the DataLoader workers and the host-to-device copy).

    Items: ``{"features": float32 (3, H, W) normalized, "targets": float32 (1, H, W) in {0, 1}}``
    for binary, or ``"targets": int64 (H, W)`` class indices when ``num_classes > 1``; with ``labels=True``
    also ``"label": float32 (K,)``. With ``normalize="batch"``, ``features`` is uint8 (3, H, W).
    """

    def __init__(self, num_samples: int, image_size: int | Sequence[int] = 64, num_classes: int = 1, seed: int = 0,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 transforms: Callable | None = None, labels: bool = False, normalize: str = "item") -> None:
        if not isinstance(labels, bool):
            raise ValueError(f"labels must be true or false, got {labels!r}")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_samples = num_samples
        self.height, self.width = _size(image_size)
        self.num_classes = num_classes
        self.seed = int(seed)
        self.mean, self.std = check_mean_std(mean, std)
        self.transforms = transforms
        self.labels = labels
        #: ``"item"`` or ``"batch"`` (``"auto"`` resolved): where ``features`` are normalized
        self.normalize = "item" if check_normalize_mode(normalize) == "item" else "batch"
        #: number of image-level labels of the ``"label"`` target (``labels=True``)
        self.label_classes = max(num_classes - 1, 1)

    def __len__(self) -> int:
        return self.num_samples

    @property
    def batch_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(mean, std)`` the batches' uint8 ``features`` are to be normalized with (``normalize="batch"``), else ``None``."""
        return (self.mean, self.std) if self.normalize == "batch" else None

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw item: image uint8 (H, W, 3) and mask int64 (H, W) of class indices."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = np.random.default_rng([self.seed, index])
        h, w = self.height, self.width
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(0.2, 0.8, 3)
        image = base[None, None, :] + 0.15 * _smooth_noise(rng, h, w)[..., None] * rng.uniform(0.5, 1.0, 3)
        mask = np.zeros((h, w), dtype=np.int64)
        labels = max(self.num_classes - 1, 1)
        for _ in range(rng.integers(1, 4)):
            k = int(rng.integers(1, labels + 1))
            region = _shape_mask(rng, yy, xx, h, w)
            angle = k * math.pi / (labels + 1) + rng.uniform(-0.15, 0.15)
            period = max(3.0, min(h, w) / (6 + 3 * k)) * rng.uniform(0.85, 1.15)
            stripes = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period
                             + rng.uniform(0, 2 * math.pi))
            color = rng.uniform(0.2, 0.8, 3)
            texture = color[None, None, :] + 0.18 * stripes[..., None]
            image = np.where(region[..., None], texture, image)
            mask[region] = k
        image = image + rng.normal(0, 0.04, image.shape)
        image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
        return image, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self.sample(index)
        item = to_item(image, mask, self.num_classes, self.mean, self.std, self.transforms,
                       on_batch=self.normalize == "batch")
        if self.labels:
            targets = item["targets"]
            if self.num_classes == 1:
                item["label"] = (targets > 0).any().float().reshape(1)
            else:
                present = torch.zeros(self.num_classes, dtype=torch.bool)
                present[targets.unique().clamp(0, self.num_classes - 1)] = True
                item["label"] = present[1:].float()
        return item
