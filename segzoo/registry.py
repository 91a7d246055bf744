"""One small registry class for every kind of named thing (models, encoders, bridges, decoders, heads).

timm's pattern: each kind has ``register_*`` / ``create_*`` / ``list_*`` functions, which are the
bound methods of one :class:`Registry`. Registering a name twice raises; looking up an unknown
name raises :class:`~segzoo.errors.NotFoundError` (a ``KeyError``) listing close matches.
A registry is a read-only ``Mapping`` of name -> factory, so ``REG[name]``, ``name in REG``,
``dict(REG)`` and ``{**REG}`` work as with a plain dict.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from segzoo.errors import unknown_name_error

Factory = Callable[..., Any]


class Registry(Mapping[str, Factory]):
    """Names -> factories (classes or functions) of one ``kind`` of object, with bound defaults.

    Args:
        kind: what the names are, used in error messages (``"decoder"``, ``"model"``...).

    Example:
        >>> DECODERS = Registry("decoder")
        >>> @DECODERS.register("fpn", pyramid_channels=128)
        ... class FPNDecoder(DecoderSpec): ...
        >>> DECODERS.create("fpn", [64, 128], [4, 8])  # FPNDecoder([64, 128], [4, 8], pyramid_channels=128)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Factory] = {}
        self._defaults: dict[str, dict[str, Any]] = {}

    def register(self, name: str, factory: Factory | None = None, **defaults: Any) -> Any:
        """Register ``factory`` under ``name`` with keyword ``defaults``; without ``factory``, a decorator.

        Returns:
            ``factory`` (so that it can decorate a class or function).

        Raises:
            ValueError: ``name`` is already registered, or is not a non-empty string.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if factory is None:
            return lambda f: self.register(name, f, **defaults)
        if name in self._factories:
            raise ValueError(f"{self.kind} name {name!r} is already registered")
        if not callable(factory):
            raise TypeError(f"{self.kind} {name!r}: factory must be callable, got {type(factory).__name__}")
        self._factories[name] = factory
        self._defaults[name] = dict(defaults)
        return factory

    def register_classes(self, namespace: Any, base: type) -> list[str]:
        """Register every public subclass of ``base`` found in ``namespace`` (a module) under its attribute name.

        This is how a registry takes the classes of a library it does not own (torch's optimizers,
        schedulers and losses); names already registered keep their factory.

        Returns:
            The names added.
        """
        added = []
        for name, cls in vars(namespace).items():
            if (inspect.isclass(cls) and issubclass(cls, base) and cls is not base and not name.startswith("_")
                    and name not in self._factories):
                self.register(name, cls)
                added.append(name)
        return added

    def include(self, other: Registry) -> None:
        """Register every name of ``other`` with its factory and defaults.

        Raises:
            ValueError: a name of ``other`` is already registered here.
        """
        for name in other:
            self.register(name, other[name], **other.defaults(name))

    def __getitem__(self, name: str) -> Factory:
        if not isinstance(name, str) or name not in self._factories:
            raise unknown_name_error(self.kind, str(name), self._factories)
        return self._factories[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def defaults(self, name: str) -> dict[str, Any]:
        """A copy of the keyword arguments bound to ``name`` at registration."""
        self[name]  # noqa: B018  (raises for unknown names)
        return dict(self._defaults[name])

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style ``pattern`` (``"resnet*"``)."""
        return sorted(n for n in self._factories if fnmatch.fnmatch(n, pattern))

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the factory of ``name`` with ``args`` and ``kwargs`` on top of its defaults.

        Raises:
            NotFoundError: unknown name (the message lists close matches and valid names).
        """
        factory = self[name]
        return factory(*args, **{**self._defaults[name], **kwargs})

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} names)"


def is_plain_data(value: Any) -> bool:
    """Whether ``value`` is plain data a spec may record (None, bool, int, float, str; lists, tuples and
    str-keyed dicts of them), so that it survives a checkpoint read with ``weights_only=True``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain_data(v) for k, v in value.items())
    return False


def plain_copy(value: Any) -> Any:
    """A deep copy of plain data (:func:`is_plain_data`), tuples as lists (as YAML and JSON give them back)."""
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_copy(v) for v in value]
    return value
