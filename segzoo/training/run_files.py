"""What a training run writes into its log directory, recognised by exact names and patterns.

``segzoo train --force`` / ``train(overwrite_logdir=True)`` removes these files and nothing else,
and a previous run is moved aside only when its folder holds nothing else
(see :mod:`segzoo.training.logdir`):

- top level: ``config.yml`` carrying segzoo's header line, ``log.txt``, ``metrics.csv``;
- ``checkpoints/``: ``best.pth``, ``last.pth``, ``{stage}.{epoch}.pth`` and their ``_full``
  siblings, ``_metrics.json``;
- ``predictions/``: ``{stage}.{epoch}.png``;
- ``trace/``: ``traced-*.pth`` (``segzoo trace`` and ``runner.trace``);
- ``{loader}_log/`` (``train_log/``, ``valid_log/``...): TensorBoard's ``events.out.tfevents.*``;
- in each of these folders, the temporary files :mod:`segzoo.fileio` leaves when a process dies
  mid-write (``.{name}.XXXXXXXX.tmp``, for one of the names above).

Anything else - another file name, a sub-folder, a symbolic link (segzoo writes none) - is the
user's.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from pathlib import Path

from segzoo.errors import WriteError, short_repr
from segzoo.export.torchscript import traced_filename
from segzoo.fileio import TEMP_NAME_CHARS, os_error_reason, temp_name_target

# traced-{checkpoint}-{method}[...].pth as segzoo.export names them: the part before and after the variable middle
_TRACED_HEAD, _TRACED_TAIL = (re.escape(part) for part in traced_filename(None, "\0").split("\0"))

CONFIG_NAME = "config.yml"
# first line of the config.yml segzoo writes; --force removes a config.yml only when it carries it
CONFIG_HEADER = "# segzoo train: the effective config of this run (written once, when it started)\n"
LOADER_LOGS = "{loader}_log"  # key of RUN_FILES for every loader's TensorBoard folder

# folder of the log directory ("" is the top level) -> the file names segzoo writes there (regular expressions)
RUN_FILES: dict[str, tuple[str, ...]] = {
    "": (r"config\.yml", r"log\.txt", r"metrics\.csv"),
    "checkpoints": (r"(?:best|last|.+\.\d+)(?:_full)?\.pth", r"_metrics\.json"),
    "predictions": (r".+\.\d+\.png",),
    "trace": (_TRACED_HEAD + ".+" + _TRACED_TAIL,),
    LOADER_LOGS: (r"events\.out\.tfevents\..+",),
}
# how a name cut to TEMP_NAME_CHARS in a temporary file's name may start (a stage name may be long)
_CUT_NAMES = {"checkpoints": r".+", "predictions": r".+", "trace": _TRACED_HEAD + ".+"}


def show_path(path: Path | str) -> str:
    """``path`` for a message, cut when very long."""
    return short_repr(str(path), 160).strip("'\"") if len(str(path)) > 160 else str(path)


def list_names(folder: Path) -> list[str]:
    """The sorted entries of ``folder`` (none when it is missing).

    Raises:
        WriteError: the folder cannot be read (one line naming it and why).
    """
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise WriteError(exc.errno, f"cannot read log directory {show_path(folder)}: {os_error_reason(exc)}") from None


def is_segzoo_config(path: Path) -> bool:
    """Whether ``path`` is a ``config.yml`` written by ``segzoo train`` (its first line is :data:`CONFIG_HEADER`)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline() == CONFIG_HEADER
    except OSError:
        return False


def _kind(path: Path) -> str:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "gone"
    except OSError as exc:
        raise WriteError(exc.errno, f"cannot read {show_path(path)}: {os_error_reason(exc)}") from None
    return "file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else "other"


def _folder_key(name: str) -> str | None:
    if name in RUN_FILES and name:
        return name
    return LOADER_LOGS if name.endswith("_log") and len(name) > len("_log") else None


def _is_run_file(key: str, name: str) -> bool:
    if any(re.fullmatch(p, name, re.DOTALL) for p in RUN_FILES[key]):
        return True
    target = temp_name_target(name)
    if target is None or key == LOADER_LOGS:  # TensorBoard writes its own files, never through fileio
        return False
    return (any(re.fullmatch(p, target, re.DOTALL) for p in RUN_FILES[key])
            or (len(target) == TEMP_NAME_CHARS and re.fullmatch(_CUT_NAMES.get(key, "(?!)"), target, re.DOTALL)
                is not None))


@dataclasses.dataclass
class RunContents:
    """A log directory sorted into what a run wrote there and what else it holds.

    Attributes:
        files: segzoo's files (paths inside the log directory).
        folders: segzoo's folders (``checkpoints/``...), each holding only segzoo's files.
        foreign: everything else, relative to the log directory (a folder ends with ``/``; a
            segzoo folder holding a foreign entry is listed by that entry).
    """

    files: list[Path]
    folders: list[Path]
    foreign: list[str]


def scan_run(folder: Path) -> RunContents:
    """Sort the entries of the log directory ``folder`` (see the module docstring); nothing is changed.

    Raises:
        WriteError: a folder cannot be read.
    """
    contents = RunContents([], [], [])
    for name in list_names(folder):
        path, kind, key = folder / name, _kind(folder / name), _folder_key(name)
        if kind == "folder" and key is not None:
            before = len(contents.foreign)
            for child in list_names(path):
                child_kind = _kind(path / child)
                if child_kind == "file" and _is_run_file(key, child):
                    contents.files.append(path / child)
                elif child_kind != "gone":
                    contents.foreign.append(f"{name}/{child}" + ("/" if child_kind == "folder" else ""))
            if len(contents.foreign) == before:
                contents.folders.append(path)
        elif kind == "file" and _is_run_file("", name) and (name != CONFIG_NAME or is_segzoo_config(path)):
            contents.files.append(path)
        elif kind != "gone":
            contents.foreign.append(name + ("/" if kind == "folder" else ""))
    return contents
