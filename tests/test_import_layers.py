"""Imports run one way (issue 20): the command line on top, the utilities at the bottom, no loops.

The import graph is read from the source with ``ast`` (nothing is imported): absolute ``segzoo.``
imports, relative ones and ``importlib.import_module("segzoo....")`` with a literal name, at any
depth (a function's lazy import is still an import); only imports under ``if TYPE_CHECKING:`` are left
out. ``from package import name`` is an edge to ``package.name`` when that is a module, else to the
package's ``__init__``. Importing ``a.b.c`` from outside package ``a.b`` also runs ``a/b/__init__.py``:
that is an edge to it too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segzoo"

# ARCHITECTURE.md's layer table, top (command line) to bottom (utilities); the longest prefix wins.
LAYERS: dict[str, int] = {
    "segzoo.cli": 9,
    "segzoo.serve": 8, "segzoo.predict": 8, "segzoo.benchmark": 8, "segzoo.tuning": 8,
    "segzoo.compat": 8,  # Catalyst names of models, losses and callbacks
    "segzoo.smp": 8,  # smp 0.6 names of models, losses, metrics and preprocessing
    "segzoo.training": 7,
    "segzoo.export": 6,
    "segzoo.inference": 5,
    "segzoo.loading": 4, "segzoo.checkpoint_format": 4,
    "segzoo.models": 3,
    "segzoo.architectures": 0,  # the torch-free table of architecture names, read by the CLI and the models
    "segzoo.encoders": 2, "segzoo.bridges": 2, "segzoo.decoders": 2, "segzoo.heads": 2, "segzoo.blocks": 2,
    "segzoo.parts": 2,
    "segzoo.losses": 1, "segzoo.metrics": 1, "segzoo.data": 1,
    "segzoo.fileio": 0, "segzoo.checkpoint": 0, "segzoo.registry": 0, "segzoo.errors": 0, "segzoo.device": 0,
    "segzoo.hardware": 0, "segzoo._legacy": 0, "segzoo.unwrap": 0,
    # the package's face: it imports only segzoo._legacy; its public names it imports by a name held
    # in a table, on first use (the modules of those names are checked where they are defined)
    "segzoo": 0,
}
CLI = LAYERS["segzoo.cli"]

# modules that import each other today, left to a later change: test_pending_loops_are_still_there fails
# once one is gone, so that this list is emptied then (the checkpoint <-> resume loop went with issue 20's
# checkpoint-format module)
PENDING_LOOPS: list[list[str]] = []

# ``python -m segzoo``: not library code, it may import the command line (every command is a subcommand of it)
ENTRY_POINTS = {"segzoo.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST):
    """Every node under ``node`` except the bodies of ``if TYPE_CHECKING:`` (their ``else`` is kept)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _walk(other)
            continue
        yield child
        yield from _walk(child)


def _target(name: str) -> str | None:
    """The module ``name`` is, or the nearest package of it that is a module of segzoo."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str) -> set[str]:
    """The segzoo modules that module ``name`` imports (see the module docstring)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and (
                    (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                    or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))):
            names = [node.args[0].value]
        for imported in names:
            if imported != "segzoo" and not imported.startswith("segzoo."):
                continue
            target = _target(imported)
            if target is None:
                continue
            found.add(target)
            parent = target.rpartition(".")[0]  # packages run on the way in, unless we are inside them
            while parent and parent != "segzoo" and not (name + ".").startswith(parent + "."):
                found.add(parent)
                parent = parent.rpartition(".")[0]
    found.discard(name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> int:
    prefix = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def test_the_graph_is_read():
    """The reader sees real edges (a broken reader would pass every check below)."""
    assert "segzoo.models.meta" in GRAPH["segzoo.models"]
    assert "segzoo.training.runner" in GRAPH["segzoo.training"]
    assert "segzoo.inference" in GRAPH["segzoo.predict"]
    assert "segzoo.data.folder" in GRAPH["segzoo.inference.quantize"]  # a lazy import, inside a function
    assert "segzoo.models" not in GRAPH["segzoo"]  # only under TYPE_CHECKING
    assert "segzoo.cli.args" in GRAPH["segzoo.cli"]
    assert all(layer(name) is not None for name in MODULES)


def test_the_library_never_imports_the_command_line():
    offenders = sorted(f"{name} -> {target}" for name, targets in GRAPH.items() for target in targets
                       if layer(target) == CLI and layer(name) != CLI
                       and name not in ENTRY_POINTS)
    assert not offenders, offenders


def _cycles() -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return components


def test_no_import_cycles():
    cycles = [c for c in _cycles() if c not in PENDING_LOOPS]
    assert not cycles, "modules that import each other in a loop: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_pending_loops_are_still_there():
    gone = [loop for loop in PENDING_LOOPS if loop not in _cycles()]
    assert not gone, f"{gone} are no loops any more: remove them from PENDING_LOOPS"


def test_no_import_runs_back_up_a_layer():
    upward = sorted(f"{name} ({layer(name)}) -> {target} ({layer(target)})" for name, targets in GRAPH.items()
                    for target in targets if layer(target) > layer(name) and name not in ENTRY_POINTS)
    assert not upward, upward


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_entry_points_are_entry_points(module):
    """The modules allowed to import the command line are ``__main__`` modules that exist."""
    assert module.endswith(".__main__") and module in MODULES


def test_the_only_python_m_entry_point_is_segzoo_itself():
    """``python -m segzoo.hardware`` / ``python -m segzoo.benchmark`` imported the command line from inside the
    library (imports running back up); their commands are ``segzoo hardware`` / ``segzoo benchmark`` now."""
    mains = {name for name in MODULES if name.endswith(".__main__") and not name.startswith("segzoo.cli.")}
    assert mains == ENTRY_POINTS  # python -m segzoo.cli lives in the command line itself
