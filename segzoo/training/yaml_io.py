"""YAML reading for configs: a SafeLoader with ``1e-3`` floats and bounded alias expansion, size and depth."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from segzoo.errors import ConfigError, short_repr


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` / ``3E+2`` as floats (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


MAX_NODES = 100_000   # YAML nodes after alias expansion (a config has hundreds)
MAX_DEPTH = 100
MAX_CONFIG_BYTES = 1 << 20


def _expanded_size(node: yaml.Node, sizes: dict[int, int], depth: int, what: str) -> int:
    """Nodes in ``node`` with every alias expanded (memoized: an alias bomb is counted, not expanded)."""
    if id(node) in sizes:
        if sizes[id(node)] < 0:
            raise ConfigError(f"{what}: a YAML alias refers to its own anchor (a recursive value)")
        return sizes[id(node)]
    if depth > MAX_DEPTH:
        raise ConfigError(f"{what}: values nested deeper than {MAX_DEPTH} levels")
    sizes[id(node)] = -1
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, depth + 1, what)
        if total > MAX_NODES:
            raise ConfigError(f"{what}: YAML aliases expand to more than {MAX_NODES} values (an alias bomb?); "
                              f"write the config without such repetition")
    sizes[id(node)] = total
    return total


def parse_yaml(text: str, what: str = "config") -> Any:
    """Parse YAML with :class:`_Loader`, refusing aliases that expand past :data:`MAX_NODES` values.

    Raises:
        ConfigError: alias bomb, recursive alias or too deep nesting (naming ``what``).
        yaml.YAMLError: invalid YAML.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, 0, what)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{what}: values nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path) -> Any:
    """The YAML document of ``path`` (at most 1 MiB, UTF-8, aliases bounded).

    Raises:
        FileNotFoundError: no such file.
        ConfigError: a folder, too large, not UTF-8, invalid YAML, an alias bomb.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder; give a YAML file (e.g. configs/demo.yml)")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path} is {size} bytes, more than a config can be ({MAX_CONFIG_BYTES} bytes); "
                              f"is it the right file?")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {exc.start}); is it the right file?") from None
    try:
        return parse_yaml(text, f"config {path}")
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {path}: {short_repr(str(exc).splitlines()[0], 200)}") from exc
