"""The log directory of a training run: who may write into it, and what ``--force`` removes.

Policy (``segzoo train`` and :meth:`segzoo.training.Runner.train` alike, except where said):

- a fresh run needs a log directory that is absent or empty;
- a directory that already holds anything is accepted when the run resumes from a checkpoint
  inside it (``runner.resume=LOGDIR`` / ``train(resume=LOGDIR)``), or when the user asked to
  replace the previous run (``segzoo train --force`` / ``train(overwrite_logdir=True)``);
- replacing removes only the files a run writes there, recognised by their exact names
  (:mod:`segzoo.training.run_files`: ``config.yml`` with segzoo's header line, ``log.txt``,
  ``metrics.csv``, ``checkpoints/{best,last,stage.epoch}[_full].pth``, ``_metrics.json``,
  ``predictions/{stage}.{epoch}.png``, ``trace/traced-*.pth``, ``{loader}_log/`` TensorBoard
  files, segzoo's leftover temporary files), then the folders they leave empty. It refuses, naming
  the first one, when the folder holds anything else (a folder holding a foreign file is never
  removed), or when one of the run's inputs (its config file, a data folder, the checkpoint it
  resumes from) is among what would be removed;
- otherwise ``segzoo train`` refuses (it has ``--force``), while ``Runner.train`` (a script or
  notebook that trains several models into one ``logdir``, as Catalyst allowed) moves the
  previous run aside to the first free sibling ``LOGDIR.1``, ``LOGDIR.2``, ... (never over an
  existing one), says so in one warning line, and starts fresh in ``LOGDIR``; a folder holding
  anything segzoo did not write, or the current working directory, is refused instead;
- while a run trains, it holds an exclusive ``flock`` on the directory: a second run (fresh,
  resumed or forced) into the same directory is refused with one line instead of mixing files,
  and a run being written is never moved aside.
  The lock dies with the process (``kill -9`` included), so nothing stale is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from segzoo.errors import WriteError, short_repr
from segzoo.fileio import move_folder_aside, os_error_reason
from segzoo.training.run_files import CONFIG_HEADER, CONFIG_NAME, list_names, scan_run
from segzoo.training.run_files import show_path as _show

try:  # POSIX; elsewhere concurrent runs are caught by the exclusive creation of config.yml only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["CONFIG_HEADER", "LogdirMovedWarning", "check_logdir_path", "run_dir_of", "resumes_in",
           "check_logdir_free", "LogdirClaim", "claim_logdir"]

# how each caller spells the three ways out of a refusal
HINTS = {
    "cli": ("choose a new logdir=...", "continue it with runner.resume={logdir}", "pass --force to replace it"),
    "python": ("choose another logdir", "continue it with resume={logdir!r}", "pass overwrite_logdir=True "
                                                                               "to replace it"),
}


class LogdirMovedWarning(UserWarning):
    """``Runner.train`` moved the previous run out of its ``logdir`` to a sibling folder (named in the message)."""


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


def _foreign(foreign: list[str]) -> str:
    """The first foreign entry of a log directory, for a message (and how many more there are)."""
    what = ("a config.yml without segzoo's header line (not written by segzoo train)"
            if foreign[0] == CONFIG_NAME else short_repr(foreign[0]))
    return what + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")


def _holds_cwd(folder: Path) -> bool:
    try:
        return _same_or_inside(Path.cwd(), folder)
    except OSError:  # the current folder was removed: it is in no log directory
        return False


def _remove_previous_run(folder: Path, inputs: Iterable[str | os.PathLike], remove: bool) -> None:
    contents = scan_run(folder)
    if contents.foreign:
        raise ValueError(f"--force replaces only what segzoo train wrote, but log directory {_show(folder)} also "
                         f"holds {_foreign(contents.foreign)}; move it away or choose another logdir")
    for src in inputs:
        for path in (*contents.files, *contents.folders):
            if _same_or_inside(Path(src), path):
                raise ValueError(f"--force would delete {_show(path)}, which holds the input "
                                 f"{_show(src)}; copy it elsewhere first or choose another logdir")
    if not remove:
        return
    for path in contents.files:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise WriteError(exc.errno, f"cannot remove {_show(path)} of the previous run: "
                                        f"{os_error_reason(exc)}") from None
    for path in contents.folders:
        try:
            path.rmdir()  # only an empty folder: a file put there meanwhile stays, and says so
        except OSError as exc:
            raise WriteError(exc.errno, f"cannot remove {_show(path)} of the previous run: "
                                        f"{os_error_reason(exc)}") from None


#: the lock file descriptors this process holds; a forked child (a DataLoader worker) closes its copies at once, so
#: that a run killed with SIGKILL frees its folder when it dies, not when its orphaned workers notice and exit
_FDS_TO_CLOSE_AT_FORK: set[int] = set()


def _close_held_in_child() -> None:
    for fd in list(_FDS_TO_CLOSE_AT_FORK):
        with contextlib.suppress(OSError):
            os.close(fd)
    _FDS_TO_CLOSE_AT_FORK.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


def _unlock(fd: int) -> None:
    _FDS_TO_CLOSE_AT_FORK.discard(fd)
    os.close(fd)


def _lock(folder: Path) -> int | None:
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise FileExistsError(f"log directory {_show(folder)} is in use by another running training (or by a "
                                  f"LogdirClaim held here: pass that claim as the logdir); wait for it or choose "
                                  f"another logdir") from None
        return None  # a file system without flock: run unlocked
    _FDS_TO_CLOSE_AT_FORK.add(fd)
    return fd


def check_logdir_free(logdir: str | os.PathLike, *, resume: str | os.PathLike | None = None, overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike] = (), caller: str = "python", remove: bool = False) -> bool:
    """Apply the policy to ``logdir`` without creating anything (``remove``: also clear a previous run).

    ``segzoo train`` calls it before building anything, so that a refused ``logdir`` costs no time;
    :func:`claim_logdir` applies it again under the lock.

    Returns:
        True when ``logdir`` holds a previous run that :func:`claim_logdir` moves aside
        (``caller="python"``, neither resumed nor overwritten); False when it is free to use.

    Raises:
        FileExistsError: the folder holds something and the run neither resumes in it nor overwrites
            it (``caller="cli"``), or (``caller="python"``) it holds something segzoo did not write
            or the current working directory, so it cannot be moved aside.
        ValueError: ``overwrite`` would remove something not written by segzoo, or an input.
    """
    folder = check_logdir_path(logdir)
    names = list_names(folder)
    if not names or resumes_in(resume, folder):
        return False
    if overwrite:
        _remove_previous_run(folder, [*inputs, *([resume] if resume is not None else [])], remove)
        return False
    new, cont, force = (h.format(logdir=_show(folder)) for h in HINTS[caller])
    if caller == "cli":
        shown = ", ".join(n if len(n) <= 40 else n[:37] + "..." for n in names[:4]) + (", ..." if len(names) > 4 else "")
        if not any((folder / "checkpoints").glob("*.pth")):  # stopped before its first epoch ended
            raise FileExistsError(f"log directory {_show(folder)} already holds a run ({shown}) that has no "
                                  f"checkpoint to resume from; {new} or {force}")
        raise FileExistsError(f"log directory {_show(folder)} already holds a run ({shown}); "
                              f"{new}, {cont}, or {force}")
    foreign = scan_run(folder).foreign
    if foreign:
        raise FileExistsError(f"log directory {_show(folder)} holds {_foreign(foreign)}, not written by segzoo (a "
                              f"previous run is moved aside only when its folder holds nothing else); {new} "
                              f"or move it away")
    if _holds_cwd(folder):
        raise FileExistsError(f"log directory {_show(folder)} already holds a run and is the current folder (or "
                              f"holds it), so it cannot be moved aside; {new}, {cont}, or {force}")
    return True


@contextlib.contextmanager
def _reserved(folder: Path) -> Iterator[None]:
    fd = _lock(folder)
    try:
        yield
    finally:
        if fd is not None:
            _unlock(fd)


def _user_stacklevel() -> int:
    """The ``stacklevel`` of a warning shown at the first caller outside segzoo (the user's ``train`` line)."""
    package = str(Path(__file__).parents[1]) + os.sep
    level, frame = 1, sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename.startswith(package)
                                 or frame.f_code.co_filename == contextlib.__file__):
        level, frame = level + 1, frame.f_back
    return level


def _start_fresh(folder: Path, fd: int | None) -> int | None:
    """Move the previous run in ``folder`` (locked by ``fd``) aside; create, lock and return the new folder's fd."""
    real = folder.resolve()  # a logdir that is a symbolic link keeps pointing to the new folder
    try:
        moved = move_folder_aside(real, _reserved)
        warnings.warn(f"log directory {_show(folder)} held a previous run: moved it to {_show(moved)} and started "
                      f"afresh (pass overwrite_logdir=True to replace it instead, or resume={str(moved)!r} to "
                      f"continue it)", LogdirMovedWarning, stacklevel=_user_stacklevel())
        try:
            real.mkdir(exist_ok=True)
        except OSError as exc:
            raise WriteError(exc.errno, f"cannot create log directory {_show(folder)}: {os_error_reason(exc)}") from None
        new_fd = _lock(real)
    finally:
        if fd is not None:
            _unlock(fd)
    if list_names(real):
        if new_fd is not None:
            _unlock(new_fd)
        raise FileExistsError(f"log directory {_show(folder)} was filled by another process right after its previous "
                              f"run was moved to {_show(moved)}; choose another logdir")
    return new_fd


class LogdirClaim:
    """A run's claim on its log directory: the policy applied, the folder created and locked for a ``with`` block.

    The one owner of the claim: ``segzoo train`` makes one before it writes ``config.yml`` and
    passes it, held, to :meth:`~segzoo.training.Runner.train` as its ``logdir`` (which then claims
    nothing more); ``Runner.train`` given a path makes its own. ``with claim:`` yields the folder.
    The lock is a ``flock`` on the folder, released when the block ends (or the process dies); a
    second claim on a held folder, from this process or another, is refused.

    Args:
        logdir: the run's log directory.
        resume: the checkpoint or log directory the run continues from, if any.
        overwrite: replace a previous run in ``logdir`` (see the module docstring).
        inputs: files and folders the run reads; ``overwrite`` never removes them.
        caller: ``"cli"`` (refuse a folder holding a previous run) or ``"python"`` (move it aside to
            ``LOGDIR.N``, one :class:`LogdirMovedWarning`); also how the refusals spell the ways out.

    Raises:
        ValueError: ``logdir`` is empty or a file (at construction); see :meth:`__enter__` for the rest.
    """

    def __init__(self, logdir: str | os.PathLike, *, resume: str | os.PathLike | None = None, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = (), caller: str = "python") -> None:
        if caller not in HINTS:
            raise ValueError(f"caller must be one of {sorted(HINTS)}, got {caller!r}")
        self.path = check_logdir_path(logdir)
        self.resume, self.overwrite, self.caller = resume, overwrite, caller
        self.inputs = list(inputs)
        self._fd: int | None = None
        self._held = False

    @property
    def held(self) -> bool:
        """Whether the claim is held (inside its ``with`` block)."""
        return self._held

    def __repr__(self) -> str:
        return f"LogdirClaim({str(self.path)!r}, held={self._held})"

    def __enter__(self) -> Path:
        """Check the policy, create the folder, lock it (moving a previous run aside when ``caller="python"``).

        Returns:
            The log directory (created).

        Raises:
            FileExistsError: the folder holds something and the run neither resumes in it nor overwrites
                it nor can move it aside, or another running training (or claim) holds the folder.
            ValueError: ``overwrite`` would remove something not written by segzoo, or an input.
            OSError: the folder cannot be created or moved aside (one line naming it and why).
            RuntimeError: the claim is already held (a claim is entered once at a time).
        """
        if self._held:
            raise RuntimeError(f"{self!r} is already held; enter a claim once")
        folder = self.path
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(exc.errno, f"cannot create log directory {_show(folder)}: {os_error_reason(exc)}") from None
        fd = _lock(folder)
        try:
            if check_logdir_free(folder, resume=self.resume, overwrite=self.overwrite, inputs=self.inputs,
                                 caller=self.caller, remove=True):
                fd, old = None, fd
                fd = _start_fresh(folder, old)
        except BaseException:
            if fd is not None:
                _unlock(fd)
            raise
        self._fd, self._held = fd, True
        return folder

    def __exit__(self, *exc_info: object) -> None:
        """Release the lock (the folder and what the run wrote stay)."""
        fd, self._fd, self._held = self._fd, None, False
        if fd is not None:
            _unlock(fd)


def claim_logdir(logdir: str | os.PathLike, *, resume: str | os.PathLike | None = None, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = (), caller: str = "python") -> LogdirClaim:
    """A :class:`LogdirClaim` on ``logdir`` (``with claim_logdir(logdir) as folder: ...``); arguments as there."""
    return LogdirClaim(logdir, resume=resume, overwrite=overwrite, inputs=inputs, caller=caller)
