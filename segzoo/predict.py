"""Predict masks for images with a trained model (the library side of ``segzoo predict``, :mod:`segzoo.cli.predict`).

One mask PNG is written per input image, at the image's size, named ``{stem}.png``:
class indices (uint8, or 16-bit beyond 256 classes) for multi-class models, 0/255 for
one-class (binary) models, whose sigmoid probability is compared with ``threshold``.
``overlay=True`` also writes ``{stem}_overlay.png``: the image with predicted classes
blended in colour (background left as is). A model built with ``aux_params`` (a classification
head) also gets ``{stem}_labels.json`` per image: ``{"image": "<input file name>", "labels": [K' numbers]}``,
the head's output (its ``activation`` applied as built; with tiles, the mean over the windows).

Images are read as in training (:func:`segzoo.data.read_image`): 8-bit files divided by 255,
16-bit grey ones by 65535, alpha dropped; a folder's other files are listed, not read.

Large images: models take any H x W, so by default each image is run whole (exact, but
memory grows with the pixel count). ``tile=SIZE`` runs windows of at most SIZE x SIZE that
overlap by at least ``tile_overlap`` pixels (default SIZE // 4, at most SIZE // 2), start at
multiples of the model's size multiple, and blends their logits with linear weights that fall
toward each window's inner borders (:func:`segzoo.inference.processing.tiled_logits`); memory
is then bounded by the tile, and masks match the untiled ones except where context from beyond
the overlap matters. An image no larger than SIZE is run whole, exactly as without tiling.
Images over ``max_pixels`` (default Pillow's 89.5 Mpixels) are refused from their header.

Safety: everything a user can get wrong (missing checkpoint, no images, an unreadable image,
an output file that exists, two inputs that would write the same output, an output that is an
input) is checked before the model runs and before anything is written. Inputs are never
written to. An existing output is replaced only with ``force=True``; a file that another
process creates meanwhile is never replaced. Every file is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from tqdm import tqdm

from segzoo.data.folder import IMAGE_SUFFIXES, MAX_PIXELS, DataError, read_image, show_path  # noqa: F401  (names of segzoo.predict)
from segzoo.data.listing import given_path, join_names, list_images, scan_input  # noqa: F401  (public names of segzoo.predict)
from segzoo.device import resolve_device
from segzoo.fileio import atomic_path, check_not_input, write_json_atomic
from segzoo.inference import BACKENDS, Predictor, from_loaded, load_predictor, source_kind
from segzoo.inference.processing import (  # noqa: F401  (public names of segzoo.predict)
    OVERLAY_ALPHA,
    check_normalization,
    logits_to_masks,
    overlay,
    tiled_logits,
    to_input,
)
from segzoo.loading import ModelFactoryLike, load_model_info

MIN_TILE = 32  # smaller windows cost more than they save and see almost no context
MAX_BATCH_SIZE = 1024
def check_images(images: Sequence[Path], max_pixels: int = MAX_PIXELS) -> None:
    """Decode every image so unreadable files fail before any work (or any mask) is done.

    Raises:
        FileNotFoundError: an image is missing.
        DataError: a ``ValueError`` naming the image (see :func:`segzoo.data.read_image`).
    """
    for path in images:
        read_image(path, max_pixels=max_pixels)


def _check_output_folder(output: Path) -> int:
    """Refuse an output that is not (and cannot become) a folder; returns the file-name length limit."""
    if os.path.lexists(output) and not output.is_dir():
        kind = "a file" if output.is_file() else "not a folder (a broken link?)"
        raise NotADirectoryError(f"output {show_path(output)} is {kind}, expected a folder")
    existing = output
    for parent in (output, *output.parents):
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise NotADirectoryError(f"output {show_path(output)}: {show_path(parent)} is not a folder")
            existing = parent
            break
    try:
        return int(os.pathconf(existing, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _input_index(images: Sequence[Path]) -> tuple[dict[str, Path], dict[tuple[int, int], Path]]:
    by_path: dict[str, Path] = {}
    by_inode: dict[tuple[int, int], Path] = {}
    for image in images:
        by_path[os.path.realpath(image)] = image
        try:
            st = os.stat(image)
        except OSError:
            continue
        by_inode[(st.st_dev, st.st_ino)] = image
    return by_path, by_inode


def plan_outputs(images: Sequence[Path], output: str | os.PathLike, overlay: bool = False,
                 force: bool = False, labels: bool = False) -> list[tuple[Path, ...]]:
    """Output paths per image: ``(mask,)`` or ``(mask, overlay)`` inside ``output``, all checked first;
    ``labels=True`` adds ``{stem}_labels.json`` last (a model built with ``aux_params``).

    Refused before anything is written: two inputs whose outputs would have the same name (also
    when the names differ only in case, which is one file on case-insensitive file systems), an
    output that is an input file or a link to one (whatever ``force`` says), an existing output
    without ``force``, an output that is a folder, a name over the file system's length limit.

    Raises:
        ValueError: a clash between inputs, an output that is an input, a name too long, an empty ``output``.
        FileExistsError: an output exists (and not ``force``).
        IsADirectoryError: an output path is a folder.
        NotADirectoryError: ``output`` (or a parent) is a file.
    """
    output = given_path(output, "output")
    name_max = _check_output_folder(output)
    taken: dict[str, tuple[Path, str]] = {}
    plans = []
    for path in images:
        names = [f"{path.stem}.png"] + ([f"{path.stem}_overlay.png"] if overlay else []) \
            + ([f"{path.stem}_labels.json"] if labels else [])
        outs = []
        for name in names:
            size = len(os.fsencode(name))
            if size > name_max:
                raise ValueError(f"output name for input {show_path(path)} would be {size} bytes, over the file "
                                 f"system's limit of {name_max}; rename the input")
            out = output / name
            if out.parent != output:  # a name from the file system never holds a separator; stay inside regardless
                raise ValueError(f"output name {show_path(name)} of input {show_path(path)} leaves {show_path(output)}")
            key = name.casefold()
            if key in taken:
                other, other_name = taken[key]
                case = "" if other_name == name else f" ({other_name} and {name} differ only in case)"
                raise ValueError(f"inputs {show_path(other)} and {show_path(path)} would both write "
                                 f"{show_path(out)}{case}; rename one of them")
            taken[key] = (path, name)
            outs.append(out)
        plans.append(tuple(outs))
    by_path, by_inode = _input_index(images)
    for out in (o for plan in plans for o in plan):
        hit = by_path.get(os.path.realpath(out))
        if hit is None:
            try:
                st = os.stat(out)
                hit = by_inode.get((st.st_dev, st.st_ino))
            except OSError:
                pass
        if hit is not None:
            check_not_input(out, [hit])
            raise ValueError(f"output {show_path(out)} is the input {show_path(hit)}; inputs are never "
                             f"overwritten, choose another output folder")
        if os.path.lexists(out):
            if out.is_dir():
                raise IsADirectoryError(f"output {show_path(out)} is a folder, expected a file path")
            if not force:
                raise FileExistsError(f"output {show_path(out)} exists; pass --force to overwrite it")
    return plans


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_options(threshold: float = 0.5, batch_size: int = 1, tile: int | None = None,
                  tile_overlap: int | None = None, max_pixels: int = MAX_PIXELS) -> int:
    """Validate prediction options; returns the tile overlap to use (0 without tiling).

    Raises:
        ValueError: threshold outside [0, 1], batch size outside [1, MAX_BATCH_SIZE], tile below
            ``MIN_TILE``, overlap outside [0, tile // 2] (more would run each pixel many times),
            max_pixels below 1.
    """
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if not _is_int(batch_size) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch size must be an integer in [1, {MAX_BATCH_SIZE}], got {batch_size!r}")
    if not _is_int(max_pixels) or max_pixels < 1:
        raise ValueError(f"max pixels must be a positive integer, got {max_pixels!r}")
    if tile is None:
        return 0
    if not _is_int(tile) or tile < MIN_TILE:
        raise ValueError(f"tile size must be an integer >= {MIN_TILE}, got {tile!r}")
    overlap = tile // 4 if tile_overlap is None else tile_overlap
    if not _is_int(overlap) or not 0 <= overlap <= tile // 2:
        raise ValueError(f"tile overlap must be an integer in [0, {tile // 2}] (half the tile), got {overlap!r}")
    return overlap


def check_model_tile(model: nn.Module, tile: int | None) -> None:
    """Refuse a tile smaller than the model's ``size_multiple`` (its input is padded to it anyway).

    Raises:
        ValueError: ``tile`` below ``model.size_multiple``.
    """
    multiple = int(getattr(model, "size_multiple", 1) or 1)
    if tile is not None and tile < multiple:
        raise ValueError(f"tile size {tile} is smaller than the model's size multiple {multiple}; "
                         f"use --tile {multiple} or more")


def _save_png(array: np.ndarray | dict, path: Path, overwrite: bool) -> None:
    """Write ``array`` as a PNG (a dict: as JSON) atomically; replace an existing ``path`` only if ``overwrite``."""
    try:
        if isinstance(array, dict):
            write_json_atomic(array, path, overwrite=overwrite)
            return
        with atomic_path(path, overwrite=overwrite) as tmp:
            Image.fromarray(array).save(tmp, format="PNG")
    except FileExistsError:  # planned outputs were free (or --force'd): this one appeared during the run
        raise FileExistsError(f"output {show_path(path)} was created by another process during this run; "
                              f"it was left as it is") from None


def predict_images(model: nn.Module | Predictor, images: Sequence[str | os.PathLike], output: str | os.PathLike,
                   normalization: Mapping[str, Sequence[float]] | None = None, threshold: float = 0.5,
                   with_overlay: bool = False, device: str = "cpu", batch_size: int = 1, tile: int | None = None,
                   tile_overlap: int | None = None, force: bool = False, progress: bool = True,
                   max_pixels: int = MAX_PIXELS) -> list[Path]:
    """Write a mask PNG (and optionally an overlay) per image; see the module docstring.

    Args:
        model: a :class:`segzoo.inference.Predictor` (any backend), or a module mapping (B, C, H, W)
            float to logits (B, K, H, W), C = 1 or 3, run on the ``eager`` backend (not folded).
        images: image files (PNG/JPEG/TIFF/BMP).
        output: output folder (created).
        normalization: ``{"mean", "std"}`` per channel for a module (``None``: ImageNet's); a
            predictor carries its own.
        threshold: probability threshold of one-class models, in [0, 1].
        with_overlay: also write ``{stem}_overlay.png``.
        device: ``cpu`` | ``cuda`` | ``cuda:N`` (for a module; a predictor is already placed).
        batch_size: images (or tiles) per forward pass, at most ``MAX_BATCH_SIZE``; only same-size
            images share a batch, and a batch holds at most ``max_pixels`` pixels.
        tile: run overlapping, blended windows of at most SIZE x SIZE instead of the whole image (SIZE >=
            ``MIN_TILE`` and >= the model's ``size_multiple``; images no larger than SIZE run whole).
        tile_overlap: least overlap of windows in pixels (default ``tile // 4``, at most ``tile // 2``).
        force: replace outputs that exist when the run starts (never an input).
        progress: show a tqdm progress bar over files.
        max_pixels: refuse images with more pixels (read from the header, before decoding).

    Returns:
        The mask paths, in input order (a model built with ``aux_params`` also writes ``{stem}_labels.json``).

    Raises:
        ValueError, OSError: see :func:`plan_outputs`, :func:`check_options`, :func:`check_images`;
            all are raised before the first file is written.
    """
    overlap = check_options(threshold, batch_size, tile, tile_overlap, max_pixels)
    check_model_tile(model, tile)
    if isinstance(model, Predictor):
        if normalization is not None:
            raise ValueError("normalization is given twice: the predictor carries its own (load_predictor("
                             "normalization=...))")
        predictor = model
    else:
        channels = int(getattr(model, "in_channels", None) or 3)
        if channels not in (1, 3):
            raise ValueError(f"predict reads RGB images: the model must take 1 or 3 channels, not {channels}")
        check_normalization(normalization, channels)
    images = [Path(p) for p in images]
    labels = (model.aux_classes if isinstance(model, Predictor) else getattr(model, "aux_classes", None)) is not None
    plans = plan_outputs(images, output, with_overlay, force, labels)
    existed = {o for plan in plans for o in plan if os.path.lexists(o)}  # only these may be replaced (force)
    check_images(images, max_pixels)
    if not isinstance(model, Predictor):
        predictor = Predictor.from_module(model.to(resolve_device(device)), normalization)
    tiles_per_pass = max(1, min(batch_size, max_pixels // (tile * tile))) if tile else 1
    bar = tqdm(total=len(images), unit="image", disable=not progress, desc="predict")
    try:
        pending = None
        i = 0
        while i < len(images):
            first = pending if pending is not None else read_image(images[i], max_pixels=max_pixels)
            pending = None
            group = [(i, first)]
            pixels = first.shape[0] * first.shape[1]
            while (tile is None and len(group) < batch_size and i + len(group) < len(images)
                   and (len(group) + 1) * pixels <= max_pixels):
                nxt = read_image(images[i + len(group)], max_pixels=max_pixels)
                if nxt.shape != first.shape:
                    pending = nxt
                    break
                group.append((i + len(group), nxt))
            x = torch.stack([predictor.preprocess(img) for _, img in group])
            logits, found = predictor.logits_and_labels(x, tile, overlap, tiles_per_pass)
            masks = logits_to_masks(logits, threshold)
            for j, ((k, img), mask) in enumerate(zip(group, masks)):
                _save_png(mask, plans[k][0], force and plans[k][0] in existed)
                if with_overlay:
                    _save_png(overlay(img, mask, logits.shape[1]), plans[k][1], force and plans[k][1] in existed)
                if labels and found is not None:
                    _save_png({"image": images[k].name, "labels": [float(v) for v in found[j]]}, plans[k][-1],
                              force and plans[k][-1] in existed)
            bar.update(len(group))
            i += len(group)
    except BaseException:
        bar.leave = False  # the error line alone stays on the terminal
        raise
    finally:
        bar.close()
    return [p[0] for p in plans]


def predict_checkpoint(logdir_or_file: str | os.PathLike, source: str | os.PathLike | Sequence[str | os.PathLike],
                       output: str | os.PathLike, checkpoint: str = "best", model_factory: ModelFactoryLike | None = None,
                       device: str = "cpu", backend: str | None = None,
                       normalization: Mapping[str, Sequence[float]] | None = None, threads: int | None = None,
                       calibration: str | os.PathLike | None = None, calibration_count: int | None = None,
                       **options) -> list[Path]:
    """Load a model with :func:`segzoo.inference.load_predictor` and run :func:`predict_images` on it.

    ``logdir_or_file`` is a log directory, a checkpoint, a TorchScript, ``.pt2`` or ONNX file;
    ``backend`` one of :data:`segzoo.inference.BACKENDS` or ``auto`` (default: the source's own; for a
    checkpoint ``auto``, see :func:`segzoo.inference.from_loaded`). The
    normalization stored with the model is used unless ``normalization`` is given (ImageNet's,
    with a warning, if there is none). ``source`` is a folder, an image or a list of images;
    ``options`` are :func:`predict_images`'s keyword arguments. Inputs and outputs are checked
    before the model is loaded.
    """
    check_options(options.get("threshold", 0.5), options.get("batch_size", 1), options.get("tile"),
                  options.get("tile_overlap"), options.get("max_pixels", MAX_PIXELS))
    if backend is not None and backend not in (*BACKENDS, "auto"):
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} or auto")
    if isinstance(source, (str, os.PathLike)):
        images = list_images(source)
    else:
        images = [Path(p) for p in source]
    plan_outputs(images, output, options.get("with_overlay", False), options.get("force", False))
    dev = resolve_device(device)
    # images are decoded and checked by predict_images, before any mask is written
    common = dict(normalization=normalization, threads=threads, calibration=calibration,
                  calibration_count=calibration_count)
    if source_kind(logdir_or_file) == "checkpoint":
        loaded = load_model_info(logdir_or_file, checkpoint, model_factory, map_location=dev)
        predictor = from_loaded(loaded, backend, **common)  # None: auto, said only when a precision check exists
    else:
        predictor = load_predictor(logdir_or_file, backend, device=str(dev), **common)
    return predict_images(predictor, images, output, **options)
