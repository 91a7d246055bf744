"""``segzoo models [PATTERN] [--parts]``: the registry names, answered without importing torch.

The names come from the torch-free tables of :mod:`segzoo.cli.args` (a test keeps them equal to
the registries).
"""

from __future__ import annotations

import argparse
import fnmatch

from segzoo.cli.args import MODEL_NAMES, PART_NAMES


def list_model_names(pattern: str = "*") -> list[str]:
    """The built-in model names matching a shell-style ``pattern``, sorted (no torch import)."""
    return [n for n in MODEL_NAMES if fnmatch.fnmatch(n, pattern)]


def list_part_lines(pattern: str = "*") -> list[str]:
    """``kind: name`` of each built-in part whose name or kind matches the shell-style ``pattern``
    (no torch import): ``"u*"`` matches names, ``"decoder"`` / ``"decoders"`` every decoder."""
    return [f"{kind}: {name}" for kind, names in PART_NAMES.items() for name in names
            if any(fnmatch.fnmatch(text, pattern) for text in (name, kind, f"{kind}s"))]


def run(args: argparse.Namespace) -> int:
    """Print the built-in model names matching ``args.pattern``, one a line; with ``args.parts``,
    ``kind: name`` of each encoder, bridge, decoder and head whose name or kind matches.

    Raises:
        NotFoundError: nothing matches (the message lists close matches).
    """
    from segzoo.errors import unknown_name_error

    if getattr(args, "parts", False):
        lines = list_part_lines(args.pattern)
        if not lines:
            raise unknown_name_error("part pattern", args.pattern,
                                     [*PART_NAMES, *sorted({n for names in PART_NAMES.values() for n in names})])
        print("\n".join(lines))
        return 0
    names = list_model_names(args.pattern)
    if not names:
        raise unknown_name_error("model pattern", args.pattern, MODEL_NAMES)
    print("\n".join(names))
    return 0
