"""Pre- and post-processing shared by every backend: image -> normalized tensor, logits -> masks.

These functions are the single definition used by ``segzoo predict``, ``segzoo serve`` and
:class:`segzoo.inference.Predictor`, so the two commands give identical masks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from segzoo.data.visual import IMAGENET_MEAN, IMAGENET_STD, check_mean_std, palette, to_unit_range

OVERLAY_ALPHA = 0.5
_LUMA = (0.299, 0.587, 0.114)


def to_input(image: np.ndarray, channels: int, normalization: Mapping[str, Sequence[float]]) -> torch.Tensor:
    """(H, W, 3) RGB image -> normalized float32 (channels, H, W); 1 channel = luminance.

    uint8 images are divided by 255, float ones (16-bit files as read) are in [0, 1] already.
    """
    x = to_unit_range(image)
    if channels == 1:
        x = (x * torch.tensor(_LUMA).view(3, 1, 1)).sum(0, keepdim=True)
    mean = torch.tensor([float(v) for v in normalization["mean"]]).view(-1, 1, 1)
    std = torch.tensor([float(v) for v in normalization["std"]]).view(-1, 1, 1)
    return (x - mean) / std


def check_normalization(normalization: Mapping[str, Sequence[float]] | None, channels: int) -> dict:
    """The normalization to use: given (validated) or ImageNet's (3 channels) / 0.5, 0.5 (1 channel).

    Raises:
        ValueError: not ``channels`` mean and std values, or a std that is not positive
            (:func:`segzoo.data.visual.check_mean_std`).
    """
    if normalization is None:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
        return {"mean": list(mean), "std": list(std)}  # new lists: a caller may change them
    mean, std = check_mean_std(normalization.get("mean", []), normalization.get("std", []), channels)
    return {"mean": list(mean), "std": list(std)}


def _windows(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


@torch.no_grad()
def tiled_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
                 batch_size: int = 1) -> torch.Tensor:
    """Logits (B, K, H, W) from overlapping ``tile`` x ``tile`` windows of ``x`` (B, C, H, W), averaged.

    Windows start every ``tile - overlap`` pixels; the last one is flush with the border.
    An image no larger than the tile is run whole. ``model`` is any callable
    (B', C, h, w) -> (B', K, h, w); ``batch_size`` windows go through it at once.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, {tile}), got {overlap}")
    h, w = x.shape[-2:]
    th, tw = min(tile, h), min(tile, w)
    boxes = [(top, left) for top in _windows(h, th, tile - overlap) for left in _windows(w, tw, tile - overlap)]
    out = count = None
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        crops = torch.cat([x[..., t:t + th, s:s + tw] for t, s in chunk])
        logits = model(crops).float()
        if out is None:
            out = x.new_zeros((x.shape[0], logits.shape[1], h, w), dtype=torch.float32)
            count = x.new_zeros((1, 1, h, w), dtype=torch.float32)
        for j, (t, s) in enumerate(chunk):
            out[..., t:t + th, s:s + tw] += logits[j * x.shape[0]:(j + 1) * x.shape[0]]
            count[..., t:t + th, s:s + tw] += 1
    return out / count


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) -> probabilities (B, K, H, W): sigmoid if K == 1, else softmax over classes."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def logits_to_masks(logits: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """Logits (B, K, H, W) -> masks (B, H, W): 0/255 uint8 if K == 1, else argmax class indices.

    Class indices are uint8 up to 256 classes, uint16 beyond.
    """
    if logits.shape[1] == 1:
        return ((torch.sigmoid(logits[:, 0].float()) > threshold).to(torch.uint8) * 255).cpu().numpy()
    dtype = np.uint8 if logits.shape[1] <= 256 else np.uint16
    return logits.argmax(1).cpu().numpy().astype(dtype)


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend class colours into an RGB image (H, W, 3) -> uint8 (H, W, 3); background (0) pixels stay unchanged.

    ``image`` is uint8, or float in [0, 1] (16-bit files as read), shown at 8 bits.
    """
    if image.dtype != np.uint8:
        image = (to_unit_range(image).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    classes = (mask > 0).astype(np.int64) if num_classes == 1 else mask.astype(np.int64)
    colours = palette(max(2, num_classes))[classes].astype(np.float32)
    blended = image.astype(np.float32) * (1 - alpha) + colours * alpha
    return np.where((classes > 0)[..., None], blended, image).round().astype(np.uint8)


def class_counts(mask: np.ndarray, num_classes: int) -> dict[int, int]:
    """Pixels per class of a mask (H, W); a binary (0/255) mask counts as classes 0 and 1."""
    classes = (mask > 0).astype(np.int64) if num_classes == 1 else mask.astype(np.int64)
    counts = np.bincount(classes.ravel(), minlength=max(2, num_classes))
    return {int(k): int(v) for k, v in enumerate(counts) if v}


def run_lengths(mask: np.ndarray) -> dict[str, list[int]]:
    """Run-length code of a mask (H, W) in row-major order: ``{"values": [...], "lengths": [...]}``.

    ``np.repeat(values, lengths).reshape(H, W)`` gives the mask back.
    """
    flat = np.asarray(mask).ravel()
    if flat.size == 0:
        return {"values": [], "lengths": []}
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return {"values": flat[starts].astype(np.int64).tolist(), "lengths": lengths.astype(np.int64).tolist()}
