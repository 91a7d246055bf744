"""Exceptions segzoo raises for problems a user can cause.

Every user-facing error derives from a built-in exception type (``ValueError``,
``KeyError``, ``FileNotFoundError``, ...) so that ``except ValueError`` keeps working,
and from :class:`SegzooError` so that the command line can print it as one line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SegzooError(Exception):
    """Base class of the errors segzoo raises on bad user input."""


class ConfigError(SegzooError, ValueError):
    """A config file or a command-line override is invalid (unknown key, wrong type...)."""


class CheckpointError(SegzooError, ValueError):
    """A checkpoint is truncated, corrupt, foreign, or unsafe to load."""


class WeightsUnavailableError(SegzooError, RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, no cache)."""


class WriteError(SegzooError, OSError):
    """A file could not be written (disk full, read-only folder, name too long...).

    ``str()`` is one line naming the path and the reason; nothing half-written is left behind.
    """

    def __str__(self) -> str:
        return str(self.strerror or (self.args[0] if self.args else ""))


class NotFoundError(SegzooError, KeyError):
    """An unknown name was looked up in a registry.

    ``str()`` gives the plain message (``KeyError`` would wrap it in quotes).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` entries of ``choices`` that look like ``name`` (best first)."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


def unknown_name_error(kind: str, name: str, choices: Iterable[str], *, limit: int | None = None,
                       more: Iterable[str] = (), listing: str = "") -> NotFoundError:
    """Build the error for an unknown ``name`` of ``kind``, naming close matches and all choices.

    Args:
        kind: what was looked up (``"timm model"``).
        name: the unknown name.
        choices: the valid names.
        limit: for long registries: name at most ``limit`` suggestions (close matches first, then
            ``more``) and not the whole list, keeping the message one short line.
        more: further suggestions when there are fewer than ``limit`` close matches (e.g. wildcard hits).
        listing: with ``limit``, how to list every valid name (e.g. ``"timm.list_models()"``).
    """
    choices = sorted(choices)
    if limit is None:
        hint = close_matches(name, choices)
    else:
        hint = close_matches(name, choices, n=limit)
        hint += [m for m in more if m not in hint][: max(limit - len(hint), 0)]
    msg = f"unknown {kind} {short_repr(name, 60)}"
    if hint:
        msg += f"; did you mean {', '.join(repr(h) for h in hint)}?"
    if limit is None:
        msg += f"{'' if hint else ';'} Valid {kind} names: {', '.join(choices)}"
    else:
        msg += f" ({len(choices)} valid names{': ' + listing if listing else ''})"
    return NotFoundError(msg)


def check_file_name(name: object, what: str) -> str:
    """Return ``name`` if it is a plain file name (no folders), so that writes stay in the log directory.

    Raises:
        ValueError: ``name`` is not a non-empty string, contains a path separator, or is ``.``/``..``.
    """
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"{what} must be a plain file name without folders (files stay in the log "
                         f"directory), got {name!r}")
    return name


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, so that an error quoting a value stays short.

    Containers are not expanded in full (a YAML alias bomb must not produce a huge message).
    """
    if isinstance(value, dict | list | tuple | set):
        text = f"{type(value).__name__} of {len(value)} item{'s' if len(value) != 1 else ''}"
        return text if len(value) else repr(value)
    text = repr(value) if not isinstance(value, str) or len(value) <= limit else repr(value[:limit])
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: the optional extras of setup.cfg (``pip install "segzoo[train]"``)
EXTRAS = ("train", "export", "bench", "serve", "mlflow", "wandb", "tune", "all", "dev")


def install_hint(extra: str) -> str:
    """How to install the optional ``extra``, for error messages: from an index and from a checkout.

    Returns:
        ``pip install "segzoo[serve]" (or pip install -e ".[serve]" from a checkout)``.

    Raises:
        ValueError: ``extra`` is not one of :data:`EXTRAS`.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {short_repr(extra)}; segzoo's extras are {', '.join(EXTRAS)}")
    return f'pip install "segzoo[{extra}]" (or pip install -e ".[{extra}]" from a checkout)'
