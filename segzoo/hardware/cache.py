"""Reading the layout cache (``layout.json``) without trusting it.

The cache lives in a user folder any program can write to, so reading it must neither hang,
nor exhaust memory, nor crash the command that only wanted a model: a FIFO (``open`` would
block until a writer comes), a link to ``/dev/zero`` (an endless read), a huge file, JSON nested
deeply enough to exhaust the parser's recursion, or a file of the wrong shape are all *ignored*
by :func:`read_cache`, which gives the reason; the caller prints one warning line naming the
file and falls back to the rules. A missing file is the normal case and is not reported.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

__all__ = ["MAX_CACHE_BYTES", "MAX_CACHE_DEPTH", "read_cache"]

#: Largest cache file read: an entry is ~700 bytes, so this holds hundreds of machines.
MAX_CACHE_BYTES = 256 * 1024
#: Deepest nesting of ``{`` / ``[`` accepted (an entry uses 3: cache -> machine -> times).
MAX_CACHE_DEPTH = 8

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _depth(text: str, limit: int) -> int:
    """Deepest ``{`` / ``[`` nesting of JSON ``text`` (brackets inside strings do not count); stops past ``limit``."""
    depth = deepest = 0
    for ch in _NOT_BRACKET.sub("", _STRING.sub('""', text)):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        else:
            depth -= 1
    return deepest


def _read_bytes(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the regular file ``path``; never blocks on a FIFO or reads a device.

    Raises:
        OSError: cannot be opened or read.
        ValueError: not a regular file, or larger than ``limit`` bytes (the reason is the message).
    """
    # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer; fstat then refuses it
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ValueError("it is a folder")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file (a pipe or a device?)")
        if st.st_size > limit:
            raise ValueError(f"{st.st_size} bytes, more than the {limit} a layout cache can hold")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise ValueError(f"more than {limit} bytes (it grew while read)")
    return b"".join(chunks)


def read_cache(path: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """The cache's entries and, when the file is there but cannot be used, why it was ignored.

    Returns:
        ``(entries, reason)``: ``entries`` maps machine keys to their JSON objects (empty when
        the file is missing or ignored); ``reason`` is ``None`` unless the file exists and was
        ignored, e.g. ``"not a regular file (a pipe or a device?)"`` or ``"nested deeper than 8 levels"``.
        Never raises for a bad file.
    """
    path = Path(path)
    try:
        data = _read_bytes(path, MAX_CACHE_BYTES)
    except FileNotFoundError:
        return {}, ("broken symbolic link" if os.path.lexists(path) else None)
    except ValueError as exc:
        return {}, str(exc)
    except OSError as exc:
        from segzoo.fileio import os_error_reason

        return {}, f"cannot read it: {os_error_reason(exc)}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return {}, "not UTF-8 text"
    if _depth(text, MAX_CACHE_DEPTH) > MAX_CACHE_DEPTH:
        return {}, f"JSON nested deeper than {MAX_CACHE_DEPTH} levels"
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return {}, "not valid JSON"
    if not isinstance(obj, dict):
        return {}, f"a JSON {type(obj).__name__}, expected an object of machine entries"
    if not all(isinstance(v, dict) for v in obj.values()):
        return {}, "not a layout cache (an entry is not a JSON object)"
    return obj, None
