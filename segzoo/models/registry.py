"""The model registry: ``create_model(name, **kwargs)``, ``list_models()``, model specs.

Every registered model records a *spec* — ``{"name": registry name, "kwargs": {...}}``
made of plain data — on the instance as ``model.segzoo_spec``. The trainer stores it in
checkpoints, and :func:`model_from_spec` rebuilds the model from it (no pickled code).
Models built around an instance of segzoo's encoder classes record it as data
(:attr:`segzoo.encoders.EncoderSpec.encoder_spec`); models built around a user's own encoder
instance have no spec (``None``): rebuild them through the user's own factory.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from segzoo.errors import ConfigError
from segzoo.registry import Registry, is_plain_data, plain_copy
from segzoo.unwrap import unwrap_model

#: a callable building a model from keyword arguments (what the registry holds)
ModelFactory = Callable[..., nn.Module]

MODELS = Registry("model")

# keyword arguments that fetch weights; dropped when a model is rebuilt to load a checkpoint
_WEIGHT_SOURCES = ("pretrained", "state_dict")


def register_model(name: str, factory: ModelFactory, **defaults: Any) -> None:
    """Register ``factory`` under ``name``; ``defaults`` are bound keyword arguments.

    Raises:
        ValueError: ``name`` is already registered.
    """
    MODELS.register(name, factory, **defaults)


def list_models(pattern: str = "*") -> list[str]:
    """Return the sorted registered model names matching a shell-style ``pattern``."""
    return MODELS.names(pattern)


def _lookup(name: str) -> tuple[ModelFactory, dict[str, Any]]:
    return MODELS[name], MODELS.defaults(name)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs`` on top of its defaults.

    Example:
        >>> model = create_model("resnet34_unet", num_classes=2, pretrained=False)
        >>> model(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 2, 64, 64])

    Raises:
        KeyError: unknown name (the message lists close matches and valid names).
        TypeError: a keyword the model does not take (named, with the valid ones).
    """
    factory, defaults = _lookup(name)
    fixed = sorted(set(defaults) & set(kwargs))
    if fixed:
        raise TypeError(f"model {name!r} fixes {fixed} by its name; pick another registered name "
                        f"(see list_models())")
    params = {**defaults, **kwargs}
    _check_kwargs(name, factory, params)
    model = factory(**params)
    if not hasattr(model, "segzoo_spec"):
        # segzoo's models record their own spec (registry name + non-default arguments);
        # a user-registered factory's model gets the arguments it was created with
        set_model_spec(model, name, kwargs)
    return model


def _check_kwargs(name: str, factory: ModelFactory, params: dict[str, Any]) -> None:
    sig = inspect.signature(factory)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    unknown = sorted(set(params) - set(sig.parameters))
    if unknown:
        raise TypeError(f"model {name!r} got unknown argument(s) {unknown}; "
                        f"valid: {sorted(sig.parameters)}")


def set_model_spec(model: nn.Module, name: str, kwargs: dict[str, Any]) -> None:
    """Record ``{"name", "kwargs"}`` on ``model``, or ``None`` if kwargs are not plain data."""
    spec = {"name": name, "kwargs": plain_copy(kwargs)} if is_plain_data(kwargs) else None
    # object.__setattr__: nn.Module would refuse nothing here, but keep it out of state_dict
    object.__setattr__(model, "segzoo_spec", spec)


def get_model_spec(model: nn.Module) -> dict[str, Any] | None:
    """Return the spec recorded on ``model`` (unwrapping DDP / torch.compile), or ``None``."""
    spec = getattr(unwrap_model(model), "segzoo_spec", None)
    return plain_copy(spec) if spec else None


def model_from_spec(spec: dict[str, Any], for_checkpoint: bool = True) -> nn.Module:
    """Rebuild a model from a spec made by :func:`set_model_spec`.

    Args:
        spec: ``{"name": registry name, "kwargs": {...}}``.
        for_checkpoint: drop weight sources (``pretrained``, ``state_dict``, also inside
            ``encoder_params`` and an ``encoder={"name", "params"}``, with an encoder's ``weights``)
            because the weights will come from a checkpoint; nothing is downloaded or read from other files.

    Raises:
        ConfigError: the spec is malformed.
        KeyError: the name is not registered.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) \
            or not isinstance(spec.get("kwargs", {}), dict):
        raise ConfigError(f"malformed model spec {spec!r}: expected {{'name': str, 'kwargs': dict}}")
    kwargs = plain_copy(spec.get("kwargs", {}))
    if for_checkpoint:
        factory, _ = _lookup(spec["name"])
        accepted = inspect.signature(factory).parameters
        for key in _WEIGHT_SOURCES:
            kwargs.pop(key, None)
        if "pretrained" in accepted:
            kwargs["pretrained"] = False
        encoder = kwargs.get("encoder")
        if isinstance(encoder, dict) and isinstance(encoder.get("params"), dict):
            kwargs["encoder"] = {**encoder, "params": _encoder_params_for_checkpoint(encoder["params"],
                                                                                     encoder.get("name"))}
        enc = kwargs.get("encoder_params")
        if isinstance(enc, dict):
            kwargs["encoder_params"] = _encoder_params_for_checkpoint(enc, encoder if isinstance(encoder, str) else None)
    return create_model(spec["name"], **kwargs)


def _encoder_params_for_checkpoint(params: dict[str, Any], name: Any) -> dict[str, Any]:
    """An encoder's arguments without their weight sources; ``pretrained=False`` when given, or when the
    registered encoder ``name`` takes it (``"resnet"``'s default is ``True``)."""
    from segzoo.encoders import ENCODERS
    from segzoo.encoders.base import WEIGHT_ARGUMENTS

    out = {k: v for k, v in params.items() if k not in WEIGHT_ARGUMENTS}
    takes = isinstance(name, str) and name in ENCODERS and "pretrained" in inspect.signature(ENCODERS[name]).parameters
    if "pretrained" in params or takes:
        out["pretrained"] = False
    return out

