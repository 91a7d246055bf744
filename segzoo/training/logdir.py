"""The log directory of a training run: who may write into it, and what ``--force`` removes.

Policy (``segzoo train`` and :meth:`segzoo.training.Runner.train` alike):

- a fresh run needs a log directory that is absent or empty;
- a directory that already holds anything is accepted only when the run resumes from a
  checkpoint inside it (``runner.resume=LOGDIR`` / ``train(resume=LOGDIR)``), or when the user
  asked to replace the previous run (``segzoo train --force`` / ``train(overwrite_logdir=True)``);
- replacing removes only what segzoo writes there (:data:`RUN_ENTRIES`: ``config.yml`` with
  segzoo's header line, ``log.txt``, ``metrics.csv`` (CSVLogger's default file name),
  ``checkpoints/``, ``train_log/``, ``valid_log/``, ``predictions/``, ``trace/``, leftover
  ``.*.tmp`` files) and refuses when the folder holds
  anything else or when one of the run's inputs (its config file, a data folder, the checkpoint
  it resumes from) lies in what would be removed;
- while a run trains, it holds an exclusive ``flock`` on the directory: a second run (fresh,
  resumed or forced) into the same directory is refused with one line instead of mixing files.
  The lock dies with the process (``kill -9`` included), so nothing stale is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from segzoo.errors import WriteError, short_repr
from segzoo.fileio import os_error_reason

try:  # POSIX; elsewhere concurrent runs are caught by the exclusive creation of config.yml only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CONFIG_NAME = "config.yml"
# first line of the config.yml segzoo writes; --force removes a config.yml only when it carries it
CONFIG_HEADER = "# segzoo train: the effective config of this run (written once, when it started)\n"
RUN_ENTRIES = ("config.yml", "log.txt", "metrics.csv", "checkpoints", "train_log", "valid_log", "predictions",
               "trace")

# how each caller spells the three ways out of a refusal
HINTS = {
    "cli": ("choose a new logdir=...", "continue it with runner.resume={logdir}", "pass --force to replace it"),
    "python": ("choose another logdir", "continue it with resume={logdir!r}", "pass overwrite_logdir=True "
                                                                               "to replace it"),
}

_HELD: dict[Path, int] = {}  # log directories this process holds the lock of -> directory fd


def _show(path: Path | str) -> str:
    return short_repr(str(path), 160).strip("'\"") if len(str(path)) > 160 else str(path)


def check_logdir_path(logdir: object, where: str = "logdir") -> Path:
    """``logdir`` as a Path, refusing an empty value and a path that is a file.

    Raises:
        ValueError: empty, not a string/path, or an existing non-folder.
    """
    if not isinstance(logdir, str | os.PathLike) or not str(logdir).strip():
        raise ValueError(f"{where} must name a folder (e.g. logs/run), got {short_repr(logdir)}; "
                         f"an empty logdir would write into the current folder")
    path = Path(logdir)
    try:
        path.stat()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise WriteError(exc.errno, f"{where} {_show(path)}: {os_error_reason(exc)}") from None
    if path.exists() and not path.is_dir():
        raise ValueError(f"{where} {_show(path)} is a file, not a folder; choose another logdir")
    return path


def run_dir_of(resume: str | os.PathLike) -> Path:
    """The log directory a resume path belongs to (``LOGDIR`` or ``LOGDIR/checkpoints/X.pth``)."""
    path = Path(resume)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _same_or_inside(path: Path, folder: Path) -> bool:
    try:
        path, folder = path.resolve(), folder.resolve()
    except OSError:
        return False
    return path == folder or folder in path.parents


def resumes_in(resume: str | os.PathLike | None, logdir: str | os.PathLike) -> bool:
    """Whether ``resume`` is the log directory ``logdir`` or a file inside it (continuing that run)."""
    return resume is not None and _same_or_inside(Path(resume), Path(logdir))


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise WriteError(exc.errno, f"cannot read log directory {_show(folder)}: {os_error_reason(exc)}") from None


def _is_ours(folder: Path, name: str) -> bool:
    if name == CONFIG_NAME:
        try:
            with open(folder / name, encoding="utf-8", errors="replace") as f:
                return f.readline() == CONFIG_HEADER
        except OSError:
            return False
    return name in RUN_ENTRIES or (name.startswith(".") and name.endswith(".tmp"))


def _remove_previous_run(folder: Path, inputs: Iterable[str | os.PathLike], remove: bool) -> None:
    names = _entries(folder)
    foreign = [n for n in names if not _is_ours(folder, n)]
    if foreign:
        what = ("a config.yml without segzoo's header line (not written by segzoo train)"
                if foreign[0] == CONFIG_NAME else short_repr(foreign[0]))
        raise ValueError(f"--force replaces only what segzoo train wrote, but log directory {_show(folder)} also "
                         f"holds {what}" + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")
                         + "; move it away or choose another logdir")
    for src in inputs:
        for name in names:
            if _same_or_inside(Path(src), folder / name):
                raise ValueError(f"--force would delete {_show(folder / name)}, which holds the input "
                                 f"{_show(src)}; copy it elsewhere first or choose another logdir")
    for name in names if remove else ():
        path = folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            raise WriteError(exc.errno, f"cannot remove {_show(path)} of the previous run: "
                                        f"{os_error_reason(exc)}") from None


def _lock(folder: Path) -> int | None:
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise FileExistsError(f"log directory {_show(folder)} is in use by another running training; "
                                  f"wait for it or choose another logdir") from None
        return None  # a file system without flock: run unlocked
    return fd


def check_logdir_free(logdir: str | os.PathLike, *, resume: str | os.PathLike | None = None, overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike] = (), caller: str = "python", remove: bool = False) -> None:
    """Apply the policy to ``logdir`` without creating anything (``remove``: also clear a previous run).

    ``segzoo train`` calls it before building anything, so that a refused ``logdir`` costs no time;
    :func:`claim_logdir` applies it again under the lock.

    Raises:
        FileExistsError: the folder holds something and the run neither resumes in it nor overwrites it.
        ValueError: ``overwrite`` would remove something not written by segzoo, or an input.
    """
    folder = check_logdir_path(logdir)
    names = _entries(folder)
    if not names or resumes_in(resume, folder):
        return
    if not overwrite:
        shown = ", ".join(n if len(n) <= 40 else n[:37] + "..." for n in names[:4]) + (", ..." if len(names) > 4 else "")
        new, cont, force = (h.format(logdir=_show(folder)) for h in HINTS[caller])
        raise FileExistsError(f"log directory {_show(folder)} already holds a run ({shown}); "
                              f"{new}, {cont}, or {force}")
    _remove_previous_run(folder, [*inputs, *([resume] if resume is not None else [])], remove)


@contextlib.contextmanager
def claim_logdir(logdir: str | os.PathLike, *, resume: str | os.PathLike | None = None, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = (), caller: str = "python") -> Iterator[Path]:
    """Check the log-directory policy, create the folder and hold its lock for the ``with`` block.

    A claim already held by this process (``segzoo train`` claims before it writes
    ``config.yml``, then calls :meth:`Runner.train`) is reused as it is.

    Args:
        logdir: the run's log directory.
        resume: the checkpoint or log directory the run continues from, if any.
        overwrite: replace a previous run in ``logdir`` (see the module docstring).
        inputs: files and folders the run reads; ``overwrite`` never removes them.
        caller: ``"cli"`` or ``"python"``: how the refusal spells the ways out.

    Yields:
        The log directory (created).

    Raises:
        ValueError: the folder holds something and the run neither resumes in it nor overwrites it,
            or ``overwrite`` would remove something not written by segzoo or an input.
        FileExistsError: another running training holds the folder.
        OSError: the folder cannot be created (one line naming it and why).
    """
    folder = check_logdir_path(logdir)
    key = folder.resolve()
    if key in _HELD:
        yield folder
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(exc.errno, f"cannot create log directory {_show(folder)}: {os_error_reason(exc)}") from None
    fd = _lock(folder)
    _HELD[key] = fd if fd is not None else -1
    try:
        check_logdir_free(folder, resume=resume, overwrite=overwrite, inputs=inputs, caller=caller, remove=True)
        yield folder
    finally:
        del _HELD[key]
        if fd is not None:
            os.close(fd)
