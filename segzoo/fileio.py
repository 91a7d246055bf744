"""The one way segzoo writes files: atomic, never over a file it was not told to replace.

Every file a command writes (checkpoints, JSON, configs, TorchScript/ONNX artifacts, masks)
goes through :func:`atomic_path` or one of its two shortcuts:

- the content is written to a temporary file in the destination folder, flushed and fsync'ed;
- without ``overwrite`` it is published with a hard link, which fails if the destination
  appeared meanwhile: two processes writing the same output never silently replace each
  other, the loser gets one :class:`FileExistsError` line;
- with ``overwrite`` it is renamed over the destination (``os.replace``): readers see the old
  file or the new one, never a truncated one, and each published file is its own inode.
  ``overwrite`` replaces the file that was there when the write began: if the destination was
  created, replaced or modified by another process meanwhile, it is left alone and the write
  fails with :class:`FileExistsError` (a forced overwrite never clobbers a concurrent writer);
- published files get the usual ``0o666 & ~umask`` permissions (not the temp file's ``0o600``);
- on any failure the temporary file is removed, and an ``OSError`` (disk full, read-only
  folder, name too long, permission) becomes a one-line :class:`segzoo.errors.WriteError`
  naming the path; the destination keeps its previous content.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from segzoo.errors import WriteError

# temporary files of atomic_path: "." + the destination's name cut to TEMP_NAME_CHARS + "." + mkstemp's
# 8 random characters + ".tmp"; temp_name_target reads them back (what ``segzoo train --force`` may remove)
TEMP_NAME_CHARS = 80
_TEMP_NAME = re.compile(rf"\.(.{{1,{TEMP_NAME_CHARS}}})\.[a-z0-9_]{{8}}\.tmp", re.DOTALL)

_REASONS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted", errno.ENAMETOOLONG: "file name too long",
            errno.ENOTDIR: "a parent is not a folder", errno.EISDIR: "is a folder",
            errno.ELOOP: "too many levels of symbolic links", errno.EFBIG: "file too large"}


def os_error_reason(exc: OSError) -> str:
    """A short lower-case reason for an ``OSError`` ("no space left on device", ...)."""
    return _REASONS.get(exc.errno, (exc.strerror or type(exc).__name__).lower())


def write_error(path: str | os.PathLike, exc: OSError) -> WriteError:
    """Build the one-line :class:`WriteError` for a failed write of ``path``."""
    err = WriteError(exc.errno, f"cannot write {path}: {os_error_reason(exc)}")
    err.filename = str(path)
    return err


def stat_input_file(path: str | os.PathLike, what: str, error: type[Exception], shown: str | None = None,
                    expected: str = "") -> os.stat_result:
    """``os.stat`` of a file about to be read, refusing anything but a regular file before it is opened.

    A folder, a FIFO or a device (which would block or never end), a broken symbolic link, a
    symbolic-link loop or an unreadable path is refused with one line
    ``cannot read {what} {shown}: {reason}``, e.g. ``cannot read checkpoint run/best.pth: it is a folder``.

    Args:
        path: the file.
        what: what the file is, for the message (``"image"``, ``"checkpoint"``...).
        error: the exception class of the refusals (``DataError``, ``CheckpointError``...).
        shown: ``path`` as the message shows it (default: as given).
        expected: added to the folder refusal, e.g. ``"expected a .pth file"``.

    Raises:
        FileNotFoundError: nothing at ``path`` (``no such {what}: {shown}``).
        error: ``path`` exists but is not a readable regular file.
    """
    shown = os.fspath(path) if shown is None else shown
    prefix = f"cannot read {what} {shown}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise error(f"{prefix}: broken symbolic link to a missing file") from None
        raise FileNotFoundError(f"no such {what}: {shown}") from None
    except OSError as exc:  # ELOOP (a symlink loop), ENAMETOOLONG, EACCES...
        raise error(f"{prefix}: {os_error_reason(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{prefix}: it is a folder" + (f", {expected}" if expected else ""))
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{prefix}: not a regular file (a pipe or a device?)")
    return st


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_not_input(path: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str = "output") -> None:
    """Refuse an output path that is (or links to) one of the ``inputs``; inputs are never written.

    Raises:
        ValueError: ``path`` is one of the inputs.
    """
    path = Path(path)
    for src in inputs:
        if _same_file(path, Path(src)):
            raise ValueError(f"{what} {path} is the input {src}; inputs are never overwritten, "
                             f"choose another output path")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the renames and removals in ``folder`` durable (``fsync`` of the folder; errors ignored).

    What :func:`atomic_path` does after each file unless ``sync_dir=False``: a writer publishing
    several files into one folder passes that and calls this once after the last one.
    """
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _identity(path: Path) -> tuple[int, ...] | None:
    """What tells a file apart from its replacement: device, inode, size, modification time."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _umask() -> int:
    try:  # Linux >= 4.7: read it without changing it (os.umask would race with other threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish(tmp: Path, path: Path, replaces: tuple[int, ...] | None) -> None:
    """Move ``tmp`` to ``path``; ``replaces`` is the identity of the file it may replace (None: none)."""
    if replaces is not None:
        if _identity(path) != replaces:
            raise FileExistsError(f"{path} was replaced or removed by another process meanwhile; "
                                  f"it was left as it is")
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} was created by another process meanwhile; "
                              f"it was left as it is") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # a file system without hard links: exclusive create, then rename over our own empty file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _make_parents(folder: Path) -> None:
    """``mkdir -p folder``; a parent that is a file is ENOTDIR (mkdir says EEXIST, which misleads)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from None


def make_folder(folder: str | os.PathLike) -> Path:
    """``mkdir -p folder``; any failure (a file in the way, read-only, disk full) is one :class:`WriteError` line."""
    folder = Path(folder)
    try:
        _make_parents(folder)
    except OSError as exc:
        raise write_error(folder, exc) from None
    return folder


def temp_name_target(name: str) -> str | None:
    """The destination name a temporary file of :func:`atomic_path` was made for, or None.

    ``".best.pth.k3x9_a0q.tmp"`` gives ``"best.pth"``. Names are cut to :data:`TEMP_NAME_CHARS`
    characters in temporary names, so a result of that length may be the start of a longer name.
    """
    match = _TEMP_NAME.fullmatch(name)
    return match.group(1) if match else None


def move_folder_aside(folder: str | os.PathLike,
                      reserve: Callable[[Path], contextlib.AbstractContextManager[Any]] | None = None) -> Path:
    """Rename ``folder`` to its first free sibling ``{name}.1``, ``{name}.2``, ... ; never over anything.

    A sibling name is taken by creating it as an empty folder (``mkdir`` fails on any existing
    name, so two processes never take the same one); ``folder`` is then renamed over that empty
    folder in one step. A file another process put into it meanwhile makes the rename fail: that
    folder is left to it, and the next name is tried.

    Args:
        folder: the folder to move (a symbolic link is followed: the real folder moves).
        reserve: entered on the freshly made empty sibling and held until the rename is done
            (e.g. a lock that keeps other processes from using it meanwhile); raising
            ``FileExistsError`` there skips that name.

    Returns:
        The new path of the folder.

    Raises:
        WriteError: the folder cannot be moved (one line naming it and why); it stays where it was.
    """
    src = Path(folder).resolve()
    for n in range(1, 100_000):
        dest = src.with_name(f"{src.name}.{n}")
        try:
            os.mkdir(dest)
        except FileExistsError:
            continue
        except OSError as exc:
            raise WriteError(exc.errno, f"cannot move {src} aside to {dest}: {os_error_reason(exc)}") from None
        with contextlib.ExitStack() as held:
            try:
                if reserve is not None:
                    held.enter_context(reserve(dest))
            except FileExistsError:
                continue  # the empty folder is another process's now; leave it to it
            try:
                os.rename(src, dest)  # replaces our empty folder, and only an empty one
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    continue  # another process put a file into it meanwhile: that folder is its own now
                with contextlib.suppress(OSError):
                    os.rmdir(dest)  # our empty folder (not empty: another process's file, kept)
                raise WriteError(exc.errno, f"cannot move {src} aside to {dest}: {os_error_reason(exc)}") from None
        fsync_dir(src.parent)
        return dest
    raise WriteError(errno.EEXIST, f"cannot move {src} aside: {src.name}.1 to {src.name}.99999 all exist")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False, force_hint: str = "--force",
                sync_dir: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; publish it at ``path`` only if the block succeeds.

    Args:
        path: destination file; missing parent folders are created.
        overwrite: replace an existing file (atomically). Without it an existing ``path``
            is refused before anything is written, and so is one that appears meanwhile.
            With it, the file that existed at the start is replaced, but a file another
            process created, replaced or changed at ``path`` meanwhile is not.
        force_hint: what the user passes to allow overwriting, named in the error.
        sync_dir: ``fsync`` the folder after publishing (the file's name then survives a power
            loss too); ``False`` leaves that to the caller's :func:`fsync_dir` after a series of files.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False, or another process wrote it meanwhile.
        IsADirectoryError: ``path`` is a folder.
        WriteError: the write failed (disk full, read-only, name too long...); nothing is left behind.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(f"output {path} is a folder, expected a file path")
        if not overwrite and os.path.lexists(path):
            raise FileExistsError(f"output {path} exists; pass {force_hint} to overwrite it")
        replaces = _identity(path) if overwrite else None
        _make_parents(path.parent)
        fd, name = tempfile.mkstemp(prefix=f".{path.name[:TEMP_NAME_CHARS]}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except (FileExistsError, IsADirectoryError):
        raise
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        _publish(tmp, path, replaces)
        if sync_dir:
            fsync_dir(path.parent)
    except FileExistsError:
        raise
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


class _WatchedFile:
    """A binary file that remembers the ``OSError`` of a failed write.

    ``torch.save`` turns a failed write into an opaque ``RuntimeError`` ("enforce fail at
    inline_container.cc"); the remembered error names the real cause (ENOSPC...).
    """

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, overwrite: bool = False,
                 force_hint: str = "--force", sync_dir: bool = True) -> Path:
    """Write ``path`` atomically with ``write(binary_file)`` (for example ``lambda f: torch.save(obj, f)``).

    A failure of the underlying file (disk full...) is reported as a :class:`WriteError` even when
    ``write`` wrapped it in another exception (torch's serializer does).

    Raises:
        FileExistsError, IsADirectoryError, WriteError: see :func:`atomic_path`.
    """
    path = Path(path)
    with atomic_path(path, overwrite=overwrite, force_hint=force_hint, sync_dir=sync_dir) as tmp:
        with open(tmp, "wb") as raw:
            f = _WatchedFile(raw)
            try:
                write(f)
                f.flush()
            except Exception as exc:
                if f.error is not None and not isinstance(exc, OSError):
                    raise f.error from None
                raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes, **kwargs: Any) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write` for the options)."""
    return atomic_write(path, lambda f: f.write(data), **kwargs)


def write_json_atomic(obj: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (see :func:`atomic_write`)."""
    return write_bytes_atomic(path, json.dumps(obj, indent=2).encode(), **kwargs)
