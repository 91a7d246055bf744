"""Predict masks for PNG/JPEG images with a trained model: ``segzoo predict``.

One mask PNG is written per input image, at the image's size, named ``{stem}.png``:
class indices (uint8, or 16-bit beyond 256 classes) for multi-class models, 0/255 for
one-class (binary) models, whose sigmoid probability is compared with ``threshold``.
``overlay=True`` also writes ``{stem}_overlay.png``: the image with predicted classes
blended in colour (background left as is).

Large images: models take any H x W, so by default each image is run whole (exact, but
memory grows with the pixel count). ``tile=SIZE`` runs SIZE x SIZE windows that overlap by
``tile_overlap`` pixels (default SIZE // 4) and averages the logits where they overlap;
memory is then bounded by the tile, at the cost of context at tile borders.

Everything a user can get wrong (missing checkpoint, no images, an unreadable image, an
output file that exists) is checked before the model runs; existing masks are refused
unless ``force=True``, and every file is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from segzoo.data.folder import IMAGE_SUFFIXES, read_image
from segzoo.data.visual import palette
from segzoo.export import atomic_output, resolve_device
from segzoo.loading import IMAGENET_NORMALIZATION, ModelFactory, load_model_info

OVERLAY_ALPHA = 0.5


def list_images(source: str | os.PathLike) -> list[Path]:
    """The PNG/JPEG files of a folder (sorted, not recursive), or ``[source]`` for one image.

    Raises:
        FileNotFoundError: ``source`` does not exist, or the folder holds no PNG/JPEG image.
        ValueError: ``source`` is a file that is not a PNG/JPEG image by its suffix.
    """
    source = Path(source)
    if source.is_dir():
        images = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"input folder {source} has no {'/'.join(IMAGE_SUFFIXES)} images")
        return images
    if not source.exists():
        raise FileNotFoundError(f"input not found: {source}")
    if source.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"input {source} is not a {'/'.join(IMAGE_SUFFIXES)} image")
    return [source]


def check_images(images: Sequence[Path]) -> None:
    """Open and decode every image so unreadable files fail before any work (or any mask) is done.

    Raises:
        ValueError: an image that PIL cannot identify or whose data is corrupt (named).
    """
    for path in images:
        try:
            with Image.open(path) as img:
                img.verify()
            # verify() checks PNG chunk checksums but decodes nothing: a truncated JPEG passes it
            with Image.open(path) as img:
                img.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc


def plan_outputs(images: Sequence[Path], output: str | os.PathLike, overlay: bool = False,
                 force: bool = False) -> list[tuple[Path, ...]]:
    """Output paths per image: ``(mask,)`` or ``(mask, overlay)`` inside ``output``.

    Raises:
        FileExistsError: an output exists (and not ``force``), or two inputs share a stem.
        NotADirectoryError: ``output`` is an existing file.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"output {output} is a file, expected a folder")
    seen: dict[str, Path] = {}
    plans = []
    for path in images:
        if path.stem in seen:
            raise FileExistsError(f"inputs {seen[path.stem]} and {path} would both write {path.stem}.png")
        seen[path.stem] = path
        outs = (output / f"{path.stem}.png",) + ((output / f"{path.stem}_overlay.png",) if overlay else ())
        existing = [o for o in outs if o.exists()]
        if existing and not force:
            raise FileExistsError(f"output {existing[0]} exists; pass --force to overwrite")
        plans.append(outs)
    return plans


def to_input(image: np.ndarray, channels: int, normalization: Mapping[str, Sequence[float]]) -> torch.Tensor:
    """uint8 (H, W, 3) RGB image -> normalized float (channels, H, W); 1 channel = luminance."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255)
    if channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    mean = torch.tensor([float(v) for v in normalization["mean"]]).view(-1, 1, 1)
    std = torch.tensor([float(v) for v in normalization["std"]]).view(-1, 1, 1)
    return (x - mean) / std


def check_normalization(normalization: Mapping[str, Sequence[float]] | None, channels: int) -> dict:
    """The normalization to use: given (validated) or ImageNet's (3 channels) / 0.5, 0.5 (1 channel)."""
    if normalization is None:
        return dict(IMAGENET_NORMALIZATION) if channels == 3 else {"mean": [0.5], "std": [0.5]}
    mean, std = list(normalization.get("mean", [])), list(normalization.get("std", []))
    if len(mean) != channels or len(std) != channels or min(std, default=0) <= 0:
        raise ValueError(f"normalization must give {channels} mean and {channels} positive std values, "
                         f"got mean={mean} std={std}")
    return {"mean": mean, "std": std}


def _windows(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


@torch.no_grad()
def tiled_logits(model: nn.Module, x: torch.Tensor, tile: int, overlap: int, batch_size: int = 1) -> torch.Tensor:
    """Logits (B, K, H, W) from overlapping ``tile`` x ``tile`` windows, averaged where they overlap.

    Windows start every ``tile - overlap`` pixels; the last one is flush with the border.
    An image no larger than the tile is run whole.
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


def logits_to_masks(logits: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """Logits (B, K, H, W) -> masks (B, H, W): 0/255 uint8 if K == 1, else argmax class indices."""
    if logits.shape[1] == 1:
        return ((torch.sigmoid(logits[:, 0].float()) > threshold).to(torch.uint8) * 255).cpu().numpy()
    dtype = np.uint8 if logits.shape[1] <= 256 else np.uint16
    return logits.argmax(1).cpu().numpy().astype(dtype)


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend class colours into an RGB uint8 image (H, W, 3); background (0) pixels stay unchanged."""
    classes = (mask > 0).astype(np.int64) if num_classes == 1 else mask.astype(np.int64)
    colours = palette(max(2, num_classes))[classes].astype(np.float32)
    blended = image.astype(np.float32) * (1 - alpha) + colours * alpha
    return np.where((classes > 0)[..., None], blended, image).round().astype(np.uint8)


def check_options(threshold: float = 0.5, batch_size: int = 1, tile: int | None = None,
                  tile_overlap: int | None = None) -> int:
    """Validate prediction options; returns the tile overlap to use (0 without tiling).

    Raises:
        ValueError: threshold outside [0, 1], batch size or tile below 1, overlap outside [0, tile).
    """
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    if tile is None:
        return 0
    if not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile size must be a positive integer, got {tile!r}")
    overlap = tile // 4 if tile_overlap is None else tile_overlap
    if not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be an integer in [0, {tile}), got {overlap!r}")
    return overlap


def _save_png(array: np.ndarray, path: Path, force: bool) -> None:
    with atomic_output(path, force) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def predict_images(model: nn.Module, images: Sequence[str | os.PathLike], output: str | os.PathLike,
                   normalization: Mapping[str, Sequence[float]] | None = None, threshold: float = 0.5,
                   with_overlay: bool = False, device: str = "cpu", batch_size: int = 1, tile: int | None = None,
                   tile_overlap: int | None = None, force: bool = False, progress: bool = True) -> list[Path]:
    """Write a mask PNG (and optionally an overlay) per image; see the module docstring.

    Args:
        model: maps (B, C, H, W) float to logits (B, K, H, W); C is 1 or 3.
        images: image files (PNG/JPEG).
        output: output folder (created).
        normalization: ``{"mean", "std"}`` per channel (``None``: ImageNet's).
        threshold: probability threshold of one-class models, in [0, 1].
        with_overlay: also write ``{stem}_overlay.png``.
        device: ``cpu`` | ``cuda`` | ``cuda:N``.
        batch_size: images (or tiles) per forward pass; only same-size images share a batch.
        tile: run SIZE x SIZE overlapping windows instead of the whole image.
        tile_overlap: overlap of windows in pixels (default ``tile // 4``).
        force: overwrite existing outputs.
        progress: show a tqdm progress bar over files.

    Returns:
        The mask paths, in input order.
    """
    overlap = check_options(threshold, batch_size, tile, tile_overlap)
    channels = int(getattr(model, "in_channels", None) or 3)
    if channels not in (1, 3):
        raise ValueError(f"predict reads RGB images: the model must take 1 or 3 channels, not {channels}")
    norm = check_normalization(normalization, channels)
    images = [Path(p) for p in images]
    plans = plan_outputs(images, output, with_overlay, force)
    check_images(images)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    Path(output).mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(images), unit="image", disable=not progress, desc="predict")
    i = 0
    while i < len(images):
        first = read_image(images[i])
        group = [(i, first)]
        while len(group) < batch_size and i + len(group) < len(images) and tile is None:
            nxt = read_image(images[i + len(group)])
            if nxt.shape != first.shape:
                break
            group.append((i + len(group), nxt))
        x = torch.stack([to_input(img, channels, norm) for _, img in group]).to(dev)
        with torch.no_grad():
            logits = tiled_logits(model, x, tile, overlap, batch_size) if tile else model(x)
        masks = logits_to_masks(logits, threshold)
        for (k, img), mask in zip(group, masks):
            _save_png(mask, plans[k][0], force)
            if with_overlay:
                _save_png(overlay(img, mask, logits.shape[1]), plans[k][1], force)
        bar.update(len(group))
        i += len(group)
    bar.close()
    return [p[0] for p in plans]


def predict_checkpoint(logdir_or_file: str | os.PathLike, source: str | os.PathLike, output: str | os.PathLike,
                       checkpoint: str = "best", model_factory: ModelFactory | None = None,
                       device: str = "cpu", **options) -> list[Path]:
    """Rebuild a checkpoint's model and run :func:`predict_images` on a folder or an image.

    The normalization stored in the checkpoint is used (ImageNet's if it has none).
    ``options`` are :func:`predict_images`'s keyword arguments.
    """
    check_options(options.get("threshold", 0.5), options.get("batch_size", 1), options.get("tile"),
                  options.get("tile_overlap"))
    images = list_images(source)
    plan_outputs(images, output, options.get("with_overlay", False), options.get("force", False))
    dev = resolve_device(device)
    # images are decoded and checked by predict_images, before any mask is written
    loaded = load_model_info(logdir_or_file, checkpoint, model_factory, map_location=dev)
    return predict_images(loaded.model, images, output, normalization=loaded.normalization, device=str(dev),
                          **options)


# arguments of `segzoo predict`: segzoo.cli_args.add_predict_arguments

def run(args) -> int:
    """Run ``segzoo predict``; prints how many masks were written and where."""
    paths = predict_checkpoint(args.logdir, args.input, args.output, checkpoint=args.checkpoint,
                               model_factory=args.model, device=args.device, threshold=args.threshold,
                               with_overlay=args.overlay, batch_size=args.batch_size, tile=args.tile,
                               tile_overlap=args.tile_overlap, force=args.force, progress=not args.no_progress)
    print(f"wrote {len(paths)} mask(s) to {args.output}")
    return 0
