"""Turning arrays into training items and back into pictures."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# background black, then well-separated colours
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], dtype=np.uint8)


def check_mean_std(mean: Sequence[float], std: Sequence[float],
                   channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate a per-channel ``mean`` / ``std`` (``channels`` numbers each, std > 0) and return float tuples.

    The one normalization check of segzoo: datasets call it with RGB values, and
    :func:`segzoo.inference.processing.check_normalization` with a stored ``{"mean", "std"}`` mapping.

    Raises:
        ValueError: a wrong number of values, a non-number, or a std that is not positive.
    """
    mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean_t) != channels or len(std_t) != channels or min(std_t, default=0) <= 0:
        raise ValueError(f"normalization must give {channels} mean and {channels} positive std values, "
                         f"got mean={list(mean_t)} std={list(std_t)}")
    return mean_t, std_t


def to_unit_range(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) image -> float32 (C, H, W) tensor in [0, 1].

    uint8 is divided by 255 and uint16 by 65535; float images (what 16-bit and float files are
    read as, see :func:`segzoo.data.read_image`) are taken as already in [0, 1].

    Raises:
        ValueError: another dtype (int32, bool...), or float values outside [0, 1].
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        scale = 255.0
    elif image.dtype == np.uint16:
        scale = 65535.0
    elif image.dtype.kind == "f":
        scale = 1.0
        if image.size and not (np.isfinite(image).all() and -1e-3 <= image.min() and image.max() <= 1 + 1e-3):
            raise ValueError(f"float images must hold values in [0, 1], got values in "
                             f"[{np.nanmin(image):.4g}, {np.nanmax(image):.4g}] (a transform returning 0..255 floats?)")
    else:
        raise ValueError(f"images must be uint8, uint16 or float in [0, 1], got dtype {image.dtype}")
    x = torch.from_numpy(np.array(image, dtype=np.float32, copy=True)).permute(2, 0, 1)
    return x.div_(scale) if scale != 1.0 else x


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) image -> float32 (3, H, W) tensor ``(x - mean) / std`` with ``x`` in [0, 1].

    ``x`` is ``image / 255`` for uint8, ``image / 65535`` for uint16, ``image`` for float (see
    :func:`to_unit_range`), so 8-bit and 16-bit files of the same picture give the same input.
    """
    x = to_unit_range(image)
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def denormalize(features: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Undo :func:`normalize`: (3, H, W) or (B, 3, H, W) -> same shape, clipped to [0, 1]."""
    m = torch.tensor(mean, device=features.device).view(-1, 1, 1)
    s = torch.tensor(std, device=features.device).view(-1, 1, 1)
    return (features.float() * s + m).clamp(0, 1)


def palette(num_colors: int) -> np.ndarray:
    """uint8 (num_colors, 3) colours: :data:`PALETTE` first, then fixed pseudo-random bright colours."""
    if num_colors <= len(PALETTE):
        return PALETTE[:num_colors]
    extra = np.random.default_rng(1234).integers(40, 256, (num_colors - len(PALETTE), 3)).astype(np.uint8)
    return np.concatenate([PALETTE, extra])


def colorize_mask(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """Class-index mask (H, W) -> uint8 RGB (H, W, 3) with a fixed palette (class 0 black).

    Raises:
        ValueError: negative class indices.
    """
    m = (mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)).astype(np.int64)
    if m.size and m.min() < 0:
        raise ValueError(f"colorize_mask needs class indices >= 0, got min {int(m.min())}")
    return palette(int(m.max()) + 1 if m.size else 1)[m]


NORMALIZE_MODES = ("item", "batch", "auto")


def check_normalize_mode(mode: object) -> str:
    """Validate a dataset's ``normalize=`` (``"item"``, ``"batch"`` or ``"auto"``).

    Raises:
        ValueError: another value.
    """
    if not isinstance(mode, str) or mode not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be 'item' (float features, normalized per image), 'batch' (uint8 "
                         f"features, normalized per batch on the device by segzoo's training loop) or 'auto', "
                         f"got {mode!r}")
    return mode


def to_item(image: np.ndarray, mask: np.ndarray, num_classes: int, mean: Sequence[float], std: Sequence[float],
            transforms: Callable | None = None, on_batch: bool = False) -> dict[str, torch.Tensor]:
    """Apply ``transforms(image=, mask=)`` then build ``{"features", "targets"}`` (see the datasets).

    ``on_batch``: ``features`` is the uint8 image as (3, H, W), left to the batch's normalization
    (:func:`segzoo.training.data_path.batch_normalizer`) instead of float32 normalized here.

    Raises:
        ValueError: ``on_batch`` and the (transformed) image is not uint8 (H, W, 3).
    """
    if transforms is not None:
        out = transforms(image=image, mask=mask)
        image, mask = out["image"], out["mask"]
    if on_batch:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"normalize='batch' needs uint8 (H, W, C) images after the transforms, got {image.dtype} "
                             f"{tuple(image.shape)} (a 16-bit file or a transform returning floats?); use "
                             f"normalize='item'")
        features = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    else:
        features = normalize(image, mean, std)
    mask = torch.as_tensor(np.ascontiguousarray(mask), dtype=torch.int64)
    if num_classes == 1:
        return {"features": features, "targets": (mask > 0).float().unsqueeze(0)}
    return {"features": features, "targets": mask}
