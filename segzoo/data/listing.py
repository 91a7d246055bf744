"""The images of an input folder (or one image file), as ``segzoo predict`` and the int8 calibration read them.

A folder is listed, not read: :func:`scan_input` returns its images (by name, sorted, not
recursive) and names what else it holds, so a caller can say what was left out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from segzoo.data.folder import IMAGE_SUFFIXES, DataError, show_path
from segzoo.fileio import os_error_reason

__all__ = ["given_path", "join_names", "list_images", "scan_input"]

_KINDS = "/".join(s.lstrip(".").upper() for s in IMAGE_SUFFIXES if s not in (".jpeg", ".tiff"))


def join_names(names: Sequence[str], limit: int = 5) -> str:
    """``a, b, c, d, e (+N more)``: at most ``limit`` names, then how many were left out."""
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def given_path(path: str | os.PathLike, what: str) -> Path:
    """``Path(path)``, refusing an empty string (``Path("")`` would silently be the current folder)."""
    if not os.fspath(path).strip():
        raise ValueError(f"{what} is an empty path; give a folder or a file (use '.' for the current folder)")
    return Path(path)


def scan_input(source: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """The images of a folder (sorted by name, not recursive) and the names of its other entries.

    An image is an entry whose name ends in one of ``IMAGE_SUFFIXES`` (any case) and is not a
    folder; everything else (other files, sub-folders, shown with a trailing ``/``) is returned
    in the second list so that the caller can say what was not read. For a file, ``([source], [])``.

    Raises:
        FileNotFoundError: ``source`` does not exist, or the folder holds no image.
        ValueError: ``source`` is empty, a file whose name is not an image's, a broken link, or an
            unreadable folder.
    """
    source = given_path(source, "input")
    try:
        st_is_dir = source.is_dir()
        os.stat(source)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            if not os.path.lexists(source):
                raise FileNotFoundError(f"input not found: {show_path(source)}") from None
            raise DataError(f"cannot read input {show_path(source)}: broken symbolic link") from None
        raise DataError(f"cannot read input {show_path(source)}: {os_error_reason(exc)}") from None
    if not st_is_dir:
        if source.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"input {show_path(source)} is not a {_KINDS} image (by its name)")
        return [source], []
    try:
        entries = sorted(os.scandir(source), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list input folder {show_path(source)}: {os_error_reason(exc)}") from None
    images, other = [], []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if not is_dir and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            images.append(source / entry.name)
        else:
            other.append(show_path(entry.name) + ("/" if is_dir else ""))
    if not images:
        held = f"it holds only {join_names(other)}" if other else "it is empty"
        raise FileNotFoundError(f"input folder {show_path(source)} has no {_KINDS} images ({held})")
    return images, other


def list_images(source: str | os.PathLike) -> list[Path]:
    """The images of a folder (sorted, not recursive), or ``[source]`` for one image (see :func:`scan_input`)."""
    return scan_input(source)[0]
