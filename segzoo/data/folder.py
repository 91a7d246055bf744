"""Image / mask folder dataset (``images/NAME.png`` paired with ``masks/NAME.png``) and the image reader.

How files are read (training, validation and ``segzoo predict`` alike):

Images become RGB. 8-bit files (RGB, grey ``L``, palette ``P``, 1-bit, CMYK, YCbCr) give uint8
(H, W, 3), later divided by 255. Alpha (RGBA, LA, PA) is dropped: the stored colours are used.
16-bit grey (PNG/TIFF ``I;16``, or ``I`` with values in 0..65535) gives float32 (H, W, 3) in
[0, 1] (divided by 65535), so it has the same [0, 1] range as 8-bit images before the
normalization. 32-bit float (``F``) TIFFs must already hold values in [0, 1]. 16-bit colour PNGs
are decoded by Pillow at 8-bit precision. Multi-frame files (animated PNG, multi-page TIFF) are
refused; of an MPO JPEG (phone photos) the main picture, frame 0, is read. Pixels are used as
stored (EXIF orientation is not applied).

Masks are single-channel class indices, never colour-converted: ``L`` (8-bit), ``P`` (palette
PNG: the palette indices are the classes), ``1`` (1-bit: 0/1), 16-bit ``I;16`` / ``I`` (class ids
above 255 stay exact), or an RGB file whose three channels are equal everywhere. Anything else
(colour masks, alpha, float) is refused.

Every problem with a file raises :class:`DataError` (a ``ValueError``) whose message is one line
naming the file and the reason, also when it is re-raised from a ``DataLoader`` worker process.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from segzoo.data.visual import IMAGENET_MEAN, IMAGENET_STD, check_mean_std, check_normalize_mode, to_item
from segzoo.errors import SegzooError
from segzoo.fileio import os_error_reason, stat_input_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_SUFFIXES = (".png",)
# Pillow's own decompression-bomb limit (about 9459 x 9459): a larger image needs an explicit max_pixels
MAX_PIXELS = 89_478_485

_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_IMAGE_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV", "F",
                *_GREY16)
_MASK_MODES = ("L", "P", "1", "RGB", *_GREY16)
_WORKER_PREFIX = "Caught "
_PIL_LIMIT_LOCK = threading.Lock()


def show_path(path: str | os.PathLike) -> str:
    """``path`` for an error message: as is, or quoted when it holds control characters (newlines...)."""
    text = os.fspath(path)
    text = text if isinstance(text, str) else os.fsdecode(text)
    return text if text.isprintable() else repr(text)


class DataError(SegzooError, ValueError):
    """An image or mask file cannot be used: unreadable, corrupt, unsupported mode, too large, wrong size.

    ``str()`` is one line naming the file and the reason. A ``DataLoader`` worker's error is
    re-raised by torch as ``DataError("Caught DataError in DataLoader worker process 0.\\nOriginal
    Traceback ...")``; this class recovers the original line from that text (the full worker
    traceback stays in :attr:`worker_traceback`), so the first line still names the file.
    """

    def __init__(self, message: object = "") -> None:
        text = str(message)
        self.worker_traceback: str | None = None
        if text.startswith(_WORKER_PREFIX) and "\nOriginal Traceback" in text:
            head, _, rest = text.partition("\n")
            marker = f"{type(self).__module__}.{type(self).__qualname__}: "
            lines = [ln for ln in rest.splitlines() if ln.startswith(marker)]
            if lines:
                where = head[len(_WORKER_PREFIX) + len(type(self).__name__):].strip(" .")
                self.worker_traceback = text
                text = f"{lines[-1][len(marker):]} ({where})"
        super().__init__(text)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return os_error_reason(exc)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


@contextmanager
def open_image(path: str | os.PathLike, what: str = "image", max_pixels: int = MAX_PIXELS) -> Iterator[Image.Image]:
    """Open an image file (header only) and check it before anything is decoded.

    Refused with a :class:`DataError` naming the file: not a regular file, not an image, more than
    ``max_pixels`` pixels (checked from the header, so a decompression bomb is never decoded),
    several frames (except MPO JPEGs: frame 0), a mode segzoo does not read (see the module docstring).

    Args:
        path: the file.
        what: ``"image"`` or ``"mask"`` (named in errors; masks accept fewer modes).
        max_pixels: largest accepted width x height.

    Raises:
        FileNotFoundError: no such file.
        DataError: see above.
    """
    path = Path(path)
    stat_input_file(path, what, DataError, shown=show_path(path))  # not a folder, FIFO, broken link...
    with _open_checked(path, path, what, max_pixels) as img:
        yield img


@contextmanager
def _open_checked(source: Path | io.BytesIO, path: str | os.PathLike, what: str,
                  max_pixels: int, formats: Sequence[str] | None = None) -> Iterator[Image.Image]:
    """:func:`open_image` on a path or in-memory bytes (``source``); ``path`` is what errors name.

    ``formats`` (Pillow format names) restricts the decoders Pillow tries (``None``: all it has).
    """
    try:
        # Pillow's own limit would warn (or refuse) below max_pixels: the size is checked here instead.
        # The lock keeps concurrent calls from restoring each other's None as Pillow's limit.
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(source, formats=formats)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except Exception as exc:  # Pillow raises many types for hostile files; all mean "cannot read"
        name = "not a recognized image file" if isinstance(exc, Image.UnidentifiedImageError) else _reason(exc)
        raise DataError(f"cannot read {what} {show_path(path)}: {name}") from None
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise DataError(f"{what} {show_path(path)} is {w}x{h} ({w * h / 1e6:.1f} Mpixels), over the limit of "
                            f"{max_pixels} pixels; raise max_pixels (--max-pixels) if the image is real")
        if w < 1 or h < 1:
            raise DataError(f"{what} {show_path(path)} is empty ({w}x{h})")
        frames = getattr(img, "n_frames", 1)
        if frames > 1 and img.format != "MPO":
            raise DataError(f"{what} {show_path(path)} has {frames} frames (animation or multi-page); segzoo "
                            f"reads single-frame images")
        modes = _MASK_MODES if what == "mask" else _IMAGE_MODES
        if img.mode not in modes:
            accepted = "L, P, 1-bit, 16-bit or grey RGB" if what == "mask" else "8-bit, 16-bit grey or float"
            raise DataError(f"{what} {show_path(path)} has mode {img.mode}; {what}s must be {accepted}"
                            + (" (single-channel class indices)" if what == "mask" else ""))
        yield img


def _decode(img: Image.Image, path: Path, what: str) -> None:
    try:
        img.load()
    except Exception as exc:  # truncated data, bad zlib stream, broken JPEG...
        raise DataError(f"cannot read {what} {show_path(path)}: {_reason(exc)}") from None


def _image_array(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode in _GREY16:
        grey = np.asarray(img)
        if mode == "I" and grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise DataError(f"image {show_path(path)} is 32-bit integer with values in [{grey.min()}, {grey.max()}]; "
                            f"integer images must be 8- or 16-bit (0..65535)")
        grey = grey.astype(np.float32) / 65535
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "F":
        grey = np.asarray(img, dtype=np.float32)
        if not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > 1:
            finite = grey[np.isfinite(grey)]
            span = f"[{finite.min():.4g}, {finite.max():.4g}]" if finite.size else "no finite values"
            nonfinite = "" if np.isfinite(grey).all() else " and NaN/inf"
            raise DataError(f"image {show_path(path)} is 32-bit float with values in {span}{nonfinite}; "
                            f"float images must hold values in [0, 1]")
        return np.repeat(grey[..., None], 3, axis=-1)
    # 8-bit modes: Pillow's conversion (alpha dropped, palette looked up, grey/1-bit/CMYK/YCbCr to RGB)
    try:
        if "transparency" in img.info and mode in ("P", "L", "1"):
            img = img.convert("RGBA")  # Pillow warns on a direct RGB conversion; alpha is dropped below
        return np.asarray(img.convert("RGB"))
    except ValueError as exc:
        raise DataError(f"image {show_path(path)} has mode {mode}, which cannot be converted to RGB: "
                        f"{_reason(exc)}") from None


def _mask_array(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode == "1":
        return np.asarray(img).astype(np.uint8)
    if mode == "RGB":
        rgb = np.asarray(img)
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
            raise DataError(f"mask {show_path(path)} is a colour (RGB) image; masks must be single-channel class "
                            f"indices (L, P, 1-bit or 16-bit PNG)")
        return rgb[..., 0]
    return np.asarray(img)  # L / P (palette indices) / 16-bit: the stored values are the classes


def read_image(path: str | os.PathLike, mode: str = "RGB", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image (``mode="RGB"``) or a mask (``mode="mask"``) with the rules of the module docstring.

    Returns:
        ``"RGB"``: (H, W, 3), uint8 for 8-bit files, float32 in [0, 1] for 16-bit grey and float
        files. ``"mask"``: (H, W) integers (uint8, uint16 or int32), the stored class indices.

    Raises:
        FileNotFoundError: no such file.
        DataError: a ``ValueError`` naming the file: unreadable or corrupt, an unsupported mode,
            several frames, more than ``max_pixels`` pixels.
    """
    if mode not in ("RGB", "mask"):
        raise ValueError(f"read_image mode must be 'RGB' or 'mask', got {mode!r}")
    path = Path(path)
    what = "mask" if mode == "mask" else "image"
    with open_image(path, what, max_pixels) as img:
        _decode(img, path, what)
        return _mask_array(img, path) if what == "mask" else _image_array(img, path)


def read_image_bytes(data: bytes, mode: str = "RGB", max_pixels: int = MAX_PIXELS,
                     name: str = "image data", formats: Sequence[str] | None = None) -> np.ndarray:
    """:func:`read_image` for an encoded file held in memory (e.g. an HTTP request body); same rules and result.

    ``name`` is what error messages call the data; ``formats`` (Pillow format names, e.g.
    ``("PNG", "JPEG")``) are the only decoders tried (``None``: every format Pillow reads).

    Raises:
        DataError: empty data, or any reason :func:`read_image` gives (not an image, too many
            pixels, several frames, an unsupported mode, corrupt data).
    """
    if mode not in ("RGB", "mask"):
        raise ValueError(f"read_image mode must be 'RGB' or 'mask', got {mode!r}")
    what = "mask" if mode == "mask" else "image"
    if not data:
        raise DataError(f"cannot read {what} {show_path(name)}: it is empty (0 bytes)")
    with _open_checked(io.BytesIO(data), name, what, max_pixels, formats) as img:
        _decode(img, name, what)
        return _mask_array(img, name) if what == "mask" else _image_array(img, name)


def image_header(data: bytes, max_pixels: int = MAX_PIXELS, name: str = "image data",
                 formats: Sequence[str] | None = None) -> tuple[int, int, str]:
    """Width, height and Pillow mode of an encoded image held in memory, from its header (nothing is decoded).

    The checks of :func:`read_image_bytes` that need no pixels are made (recognized format,
    ``max_pixels``, frames, mode), so a caller can refuse or budget an image before decoding it.

    Raises:
        DataError: as :func:`read_image_bytes`.
    """
    if not data:
        raise DataError(f"cannot read image {show_path(name)}: it is empty (0 bytes)")
    with _open_checked(io.BytesIO(data), name, "image", max_pixels, formats) as img:
        return img.size[0], img.size[1], img.mode


def _list(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {show_path(folder)}")
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list {what} folder {show_path(folder)}: {os_error_reason(exc)}") from None
    files: dict[str, Path] = {}
    for p in entries:
        if p.suffix.lower() not in suffixes:
            continue
        if p.stem in files:
            raise DataError(f"{what} {show_path(files[p.stem])} and {show_path(p)} have the same name {p.stem!r}; "
                            f"keep one of them")
        files[p.stem] = p
    if not files:
        raise ValueError(f"{what} folder {show_path(folder)} has no {'/'.join(suffixes)} files")
    return files


def _check_positive_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class SegmentationFolder(Dataset):
    """Pairs images and masks by file stem; every file is checked when the dataset is built.

    Images are read as RGB and masks as class indices by :func:`read_image` (see the module
    docstring for the accepted modes): 8-bit images are divided by 255 and 16-bit grey ones by
    65535, so both reach the normalization in [0, 1]; alpha is dropped; palette masks keep their
    indices and 16-bit masks their exact values. For ``num_classes == 1`` any non-zero mask value
    (1 or 255) is foreground. Other files in the folders are ignored.

    Building the dataset opens every file's header (cheap: nothing is decoded) and refuses
    unreadable files, unsupported modes, images over ``max_pixels`` and image/mask size mismatches,
    so these fail at once, naming the file, instead of in a DataLoader worker mid-epoch. Errors
    found when an item is decoded (truncated data, mask values outside the classes) are a
    :class:`DataError` whose message names the file, also through ``DataLoader(num_workers > 0)``.

    Args:
        images_dir: folder of PNG/JPEG/TIFF/BMP images.
        masks_dir: folder of PNG masks with the same stems.
        num_classes: 1 (binary) or the number of classes including background 0.
        transforms: optional albumentations-style callable ``transforms(image=, mask=)`` (images are
            uint8, or float32 in [0, 1] for 16-bit files).
        mean: normalization mean (RGB, 0..1 scale).
        std: normalization std.
        image_suffixes: accepted image file endings.
        max_pixels: largest accepted width x height of a file.
        normalize: ``"item"`` (default): float32 ``features``; ``"batch"``: uint8 (3, H, W), normalized per batch by
            segzoo's training loop, the same values (8-bit files, uint8 transforms); ``"auto"``: batch if all 8-bit.

    Items: as :class:`~segzoo.data.ProceduralSegmentation`; also ``"name"`` (the stem).

    Raises:
        FileNotFoundError: a folder is missing.
        DataError: a file cannot be used (named), two files share a stem, an image and its mask
            differ in size.
        ValueError: empty folders, images without masks or masks without images (stems named),
            bad ``num_classes`` / ``mean`` / ``std`` / ``max_pixels``.
    """

    def __init__(self, images_dir: str | Path, masks_dir: str | Path, num_classes: int = 1,
                 transforms: Callable | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
                 max_pixels: int = MAX_PIXELS, normalize: str = "item") -> None:
        _check_positive_int(num_classes, "num_classes")
        check_normalize_mode(normalize)
        self.max_pixels = _check_positive_int(max_pixels, "max_pixels")
        self.mean, self.std = check_mean_std(mean, std)
        images = _list(Path(images_dir), tuple(s.lower() for s in image_suffixes), "images")
        masks = _list(Path(masks_dir), MASK_SUFFIXES, "masks")
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
        wide = [name for name in self.names if self._check_headers(name)]
        if wide and normalize == "batch":
            raise DataError(f"image {show_path(self.images[wide[0]])} is not 8-bit (16-bit or float): "
                            f"normalize='batch' needs 8-bit images; use normalize='item' (or 'auto')")
        self.normalize = "batch" if normalize == "batch" or (normalize == "auto" and not wide) else "item"

    #: ``(mean, std)`` of the batches' uint8 ``features`` (``normalize="batch"``, ``"auto"`` resolved), else ``None``
    batch_normalization = property(lambda self: (self.mean, self.std) if self.normalize == "batch" else None)

    def _check_headers(self, name: str) -> bool:
        """Check the pair's headers; whether the image is read as float (16-bit grey or float file)."""
        with open_image(self.images[name], "image", self.max_pixels) as img:
            image_size, wide = img.size, img.mode in (*_GREY16, "F")
        with open_image(self.masks[name], "mask", self.max_pixels) as mask:
            mask_size = mask.size
        if image_size != mask_size:
            raise DataError(f"mask {show_path(self.masks[name])} is {mask_size[0]}x{mask_size[1]} but image "
                            f"{show_path(self.images[name])} is {image_size[0]}x{image_size[1]} (WxH)")
        return wide

    def __len__(self) -> int:
        return len(self.names)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw pair: image (H, W, 3) (uint8, or float32 in [0, 1] for 16-bit files) and int64 (H, W) mask.

        Raises:
            DataError: a file became unreadable or its size changed since the dataset was built,
                or mask values outside the classes (file named).
        """
        name = self.names[index]
        image = read_image(self.images[name], max_pixels=self.max_pixels)
        mask = read_image(self.masks[name], mode="mask", max_pixels=self.max_pixels)
        if mask.shape != image.shape[:2]:
            raise DataError(f"mask {show_path(self.masks[name])} is {mask.shape[1]}x{mask.shape[0]} but image "
                            f"{show_path(self.images[name])} is {image.shape[1]}x{image.shape[0]} (WxH)")
        mask = mask.astype(np.int64)
        if self.num_classes == 1:
            bad = np.setdiff1d(np.unique(mask), [0, 1, 255])
        else:
            bad = np.unique(mask[(mask < 0) | (mask >= self.num_classes)])
        if bad.size:
            raise DataError(f"mask {show_path(self.masks[name])} has values {bad[:10].tolist()} outside the "
                            f"{self.num_classes} class(es)")
        return image, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        image, mask = self.sample(index)
        try:  # naming the file (one replaced by a 16-bit file since the dataset was built...)
            item = to_item(image, mask, self.num_classes, self.mean, self.std, self.transforms, self.normalize == "batch")
        except ValueError as exc:
            raise DataError(f"image {show_path(self.images[self.names[index]])}: {exc}") from None
        item["name"] = self.names[index]
        return item
