"""Rebuild a trained model from a checkpoint: ``load_model(logdir_or_file)``.

The model is rebuilt from the checkpoint's ``model_spec`` (registry name + keyword
arguments) or, for models outside the registry, through a factory given as an import
path ``"package.module:factory"``. The checkpoint is read with
:func:`segzoo.checkpoint_format.read_checkpoint` (``weights_only=True``: nothing in the file is
executed, and no code dumped into the log directory is used; an older format is migrated).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from segzoo.checkpoint import clean_state_dict, resolve_checkpoint
from segzoo.checkpoint_format import read_checkpoint
from segzoo.encoders.weights import check_weights, load_into
from segzoo.errors import CheckpointError, ConfigError
from segzoo.models.registry import ModelFactory, model_from_spec, set_model_spec

#: a model factory (:data:`segzoo.models.registry.ModelFactory`) or its import path ``"package.module:factory"``
ModelFactoryLike = ModelFactory | str

_MISMATCH_HINT = " (wrong --model factory or model arguments?)"

@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with where it came from.

    Attributes:
        model: the model in eval mode, on the requested device.
        path: the checkpoint file that was read.
        info: the checkpoint's entries other than ``model_state_dict`` (``model_spec``,
            ``normalization``, ``epoch``, ``stage``, metrics ...).
    """

    model: nn.Module
    path: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def normalization(self) -> dict[str, list[float]] | None:
        """``{"mean": [...], "std": [...]}`` stored by the trainer, or ``None``."""
        norm = self.info.get("normalization")
        return dict(norm) if isinstance(norm, Mapping) else None


def import_factory(path: str) -> Callable[..., nn.Module]:
    """Import ``"package.module:factory"`` (``factory`` may be dotted, e.g. ``Class.build``).

    The module is imported like any Python import, from ``sys.path``: a module in the current
    directory is found by ``python -m segzoo.cli`` but not by the ``segzoo`` script unless
    ``PYTHONPATH`` names the directory (the error says so).

    Raises:
        ConfigError: the string is malformed, the module cannot be imported, the attribute
            does not exist or is not callable.
    """
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ConfigError(f"model factory must look like 'package.module:factory', got {path!r}")
    module_name, attr = path.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConfigError(f"cannot import model factory {path!r}: no module named {missing!r} on the Python path; "
                              f"the folder that contains it must be on PYTHONPATH (the segzoo command does not "
                              f"look in the current directory: run PYTHONPATH=. segzoo ...)") from exc
        raise ConfigError(f"cannot import model factory {path!r}: {module_name!r} needs {missing!r}, "
                          f"which is not installed ({exc})") from exc
    except ImportError as exc:
        raise ConfigError(f"cannot import model factory {path!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"cannot import model factory {path!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model factory {path!r} is a {type(obj).__name__}, not callable")
    return obj


def _accepted(factory: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``kwargs`` that ``factory``'s signature takes (all when it takes ``**kwargs`` or has no signature)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in named}


def rebuild_model(spec: Mapping[str, Any] | None, model_factory: ModelFactoryLike | None = None) -> nn.Module:
    """Rebuild the untrained model of a checkpoint from its spec or from a factory.

    Args:
        spec: ``{"name", "kwargs"}`` from a checkpoint, or ``None``.
        model_factory: a callable or ``"package.module:factory"``; called with the spec's
            ``kwargs`` that its signature takes (all of them if it has ``**kwargs``), with no
            arguments when there is no spec. Takes precedence over the registry name of the spec:
            ``lambda: Unet(encoder=MyEncoder())`` rebuilds a checkpoint whose spec records an encoder.

    Raises:
        CheckpointError: no spec and no factory.
        ConfigError: the factory cannot be imported or fails on the spec's arguments.
        TypeError: the factory does not return an ``nn.Module``.
    """
    if model_factory is None:
        if not spec:
            raise CheckpointError("the checkpoint has no model_spec (a model outside the registry); "
                                  "pass its factory as 'package.module:factory' (--model on the command line)")
        return model_from_spec(dict(spec))
    factory = import_factory(model_factory) if isinstance(model_factory, str) else model_factory
    if not callable(factory):
        raise TypeError(f"model_factory must be a callable or 'package.module:factory', got {type(factory).__name__}")
    kwargs = _accepted(factory, dict(spec.get("kwargs") or {}) if spec else {})
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model factory {model_factory!r} failed with arguments {sorted(kwargs)}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise TypeError(f"model factory {model_factory!r} returned a {type(model).__name__}, expected an nn.Module")
    if spec and "name" in spec:  # the checkpoint's spec (the weights load strictly: it describes this model)
        set_model_spec(model, spec["name"], dict(spec.get("kwargs") or {}))
    return model


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load ``state_dict`` (``module.``/``_orig_mod.`` prefixes stripped) strictly into ``model``.

    The checks are :func:`segzoo.encoders.weights.load_into`'s: missing/unexpected keys, shapes,
    lossy dtype casts (an int8 checkpoint into float parameters) and NaN/Inf values are refused
    in one :class:`CheckpointError` line naming ``source`` and the key.
    """
    load_into(model, clean_state_dict(state_dict), f"the model {type(model).__name__}", source=source,
              hint=_MISMATCH_HINT)


def load_model_info(checkpoint_or_logdir: str | os.PathLike, checkpoint: str = "best",
                    model_factory: ModelFactoryLike | None = None,
                    map_location: str | torch.device = "cpu") -> LoadedModel:
    """Like :func:`load_model`, also returning the checkpoint path and metadata."""
    path = resolve_checkpoint(checkpoint_or_logdir, checkpoint)
    ckpt = read_checkpoint(path, map_location="cpu")  # verified and migrated: an older format's spec is upgraded
    spec = ckpt.get("model_spec")
    if spec is not None and not isinstance(spec, Mapping):
        raise CheckpointError(f"checkpoint {path} has a malformed model_spec of type {type(spec).__name__}")
    state_dict = clean_state_dict(ckpt["model_state_dict"])
    # build on the meta device first (no memory): a spec asking for a huge model is refused by
    # the comparison with the weights before anything is allocated
    try:
        with torch.device("meta"):
            skeleton = rebuild_model(spec, model_factory)
    except (NotImplementedError, RuntimeError):
        skeleton = None  # a factory that cannot run on the meta device: checked after the real build
    if skeleton is not None:
        check_weights(skeleton.state_dict(), state_dict, f"the model {type(skeleton).__name__}", path,
                      hint=_MISMATCH_HINT)
        del skeleton
    model = rebuild_model(spec, model_factory)
    load_weights(model, state_dict, path)
    model = model.to(map_location).eval()
    info = {k: v for k, v in ckpt.items() if k != "model_state_dict"}
    return LoadedModel(model=model, path=path, info=info)


def load_model(checkpoint_or_logdir: str | os.PathLike, checkpoint: str = "best",
               model_factory: ModelFactoryLike | None = None,
               map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from a checkpoint file or a trainer log directory.

    Example:
        >>> model = segzoo.load_model("logs/run1")              # logs/run1/checkpoints/best.pth
        >>> model = segzoo.load_model("logs/run1", "last")
        >>> model = segzoo.load_model("my.pth", model_factory="my_pkg.models:build")
        >>> logits = model(torch.rand(1, 3, 256, 256))          # (B, num_classes, H, W)

    Args:
        checkpoint_or_logdir: a ``.pth`` checkpoint, or a log directory with ``checkpoints/``.
        checkpoint: ``best``, ``last``, ``{stage}.{epoch}`` or a path (ignored for a file).
        model_factory: for models outside the registry: a callable or an import path
            ``"package.module:factory"``, called with the spec's kwargs if the checkpoint
            has a spec, else with none. Never rebuilt from pickled code.
        map_location: device of the returned model.

    Returns:
        The model in eval mode with the checkpoint's weights.

    Raises:
        FileNotFoundError: missing log directory or checkpoint (the message lists those present).
        CheckpointError: truncated, foreign or unsafe (pickled objects) file; no spec and no
            factory; weights that do not fit the model.
        ConfigError: the factory cannot be imported.
    """
    return load_model_info(checkpoint_or_logdir, checkpoint, model_factory, map_location).model
