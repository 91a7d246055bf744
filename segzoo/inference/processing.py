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


def _layout(size: int, tile: int, overlap: int, align: int) -> tuple[int, int]:
    """(start of the last window, number of gaps) of :func:`tile_windows` for one ``align``."""
    last = -(-(size - tile) // align) * align
    return last, -(-last // ((tile - overlap) // align * align))


def tile_windows(size: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """``(start, length)`` of the windows covering ``size`` pixels along one axis.

    One window ``(0, size)`` when ``size <= tile``. Otherwise windows of ``tile`` pixels, evenly
    spaced so that neighbours overlap by at least ``overlap`` pixels, start at multiples of
    ``align`` (the model's size multiple: each window then sees the pixel grid of its strides as the
    whole image does), or of the largest power-of-two fraction of it that needs no more windows
    than unaligned ones would (alignment never costs an extra forward pass). The last window starts
    at the first such multiple from which it reaches the border, and may be shorter.
    """
    if size <= tile:
        return [(0, size)]
    fewest = _layout(size, tile, overlap, 1)[1]
    align = align if 1 <= align <= tile - overlap else 1
    while align > 1 and _layout(size, tile, overlap, align)[1] > fewest:
        align = align // 2 if align % 2 == 0 else 1
    last, count = _layout(size, tile, overlap, align)
    starts = [round(i * last / count / align) * align for i in range(count + 1)]
    return [(s, min(tile, size - s)) for s in starts]


def _blend_weights(start: int, length: int, size: int, margin: float) -> torch.Tensor:
    """Blending weights (length,) of a window along one axis: a linear ramp up from its inner borders.

    The weight is the distance to the nearest inner border minus ``margin`` (pixels that close to a
    border, which miss the most context, get almost none: 1e-4). A border on the image's own border
    is not inner (the whole image has no context there either), so a window spanning the axis
    weighs 1 everywhere.
    """
    pos = torch.arange(length, dtype=torch.float32) + 0.5
    far = torch.full_like(pos, float("inf"))
    distance = torch.minimum(pos if start > 0 else far, (length - pos) if start + length < size else far)
    if start == 0 and start + length >= size:
        return torch.ones_like(pos)
    return (distance - margin).clamp(min=1e-4)


@torch.no_grad()
def tiled_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
                 batch_size: int = 1, align: int = 1) -> torch.Tensor:
    """Logits (B, K, H, W) of ``x`` (B, C, H, W) from overlapping windows of at most ``tile`` x ``tile``, blended.

    Windows are laid out by :func:`tile_windows` (starts at multiples of ``align``, neighbours
    overlapping by at least ``overlap`` pixels). Where windows overlap, their logits are averaged
    with weights that fall linearly toward each window's inner borders (where it lacks the context
    the whole image has) and nearly vanish within ``overlap / 4`` of them: a model whose receptive
    field reaches at most that far gets the untiled logits (to ~1e-4), others differ only where
    context from beyond the overlap matters. An image no larger than the tile is run whole, as
    without tiling. ``model`` is any callable (B', C, h, w) -> (B', K, h, w); up to ``batch_size``
    windows of one size go through it at once.

    Raises:
        ValueError: ``overlap`` not in [0, tile).
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, {tile}), got {overlap}")
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return model(x).float()
    rows, cols = tile_windows(h, tile, overlap, align), tile_windows(w, tile, overlap, align)
    margin = overlap / 4
    by_size: dict[tuple[int, int], list] = {}
    for r in rows:
        for c in cols:
            by_size.setdefault((r[1], c[1]), []).append((r, c))
    chunks = [group[i:i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]
    out = total = None
    for chunk in chunks:
        crops = torch.cat([x[..., t:t + th, s:s + tw] for (t, th), (s, tw) in chunk])
        logits = model(crops).float()
        if out is None:
            out = x.new_zeros((x.shape[0], logits.shape[1], h, w), dtype=torch.float32)
            total = x.new_zeros((1, 1, h, w), dtype=torch.float32)
        for j, ((t, th), (s, tw)) in enumerate(chunk):
            weight = (_blend_weights(t, th, h, margin)[:, None] * _blend_weights(s, tw, w, margin)[None, :])
            weight = weight.to(out.device)
            out[..., t:t + th, s:s + tw] += logits[j * x.shape[0]:(j + 1) * x.shape[0]].to(out.device) * weight
            total[..., t:t + th, s:s + tw] += weight
    return out / total


def tiled_logits_and_labels(forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
                            x: torch.Tensor, tile: int, overlap: int, batch_size: int = 1,
                            align: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`tiled_logits` of a model ``forward`` returning ``(logits, labels (B', K') or None)`` (``aux_params``),
    and the labels (B, K'): for each image, the mean of its windows' labels (``None`` without labels)."""
    batch, found = x.shape[0], []

    def run(crops: torch.Tensor) -> torch.Tensor:
        logits, labels = forward(crops)
        if labels is not None:  # crops are window after window, each of the batch's B images
            found.append(labels.reshape(-1, batch, labels.shape[1]))
        return logits

    logits = tiled_logits(run, x, tile, overlap, batch_size, align)
    return logits, (torch.cat(found).mean(0) if found else None)


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
