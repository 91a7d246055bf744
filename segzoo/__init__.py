"""segzoo: PyTorch semantic-segmentation models from pluggable encoder, bridge, decoder and head parts.

The public names (``from segzoo import ResnetUnet`` ...) are imported on first use (PEP 562), so
``import segzoo.cli`` and ``segzoo --help`` do not pay for importing torch; ``segzoo.ResnetUnet``,
``from segzoo import *`` and ``dir(segzoo)`` work as with eager imports. Subpackages are also
reachable as attributes (``segzoo.encoders``), imported on first access. Catalyst 19.x's model names
are here too (``MobileUnet``, ``ResNetUnet``, ``ResNetLinknet``); its names segzoo does not carry
(``UnetSpec``, ``ResnetUnetSpec``) raise an ImportError naming the replacement (see :mod:`segzoo.compat`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from segzoo._legacy import LEGACY as _LEGACY
from segzoo._legacy import legacy_getattr as _legacy_getattr
from segzoo.architectures import model_classes as _model_classes

__version__ = "0.1.0"

# public name -> module that defines it; the model classes are the ones the architecture table names
_EXPORTS: dict[str, str] = {
    **dict.fromkeys([*_model_classes(), "UnetMetaSpec", "create_model", "list_models", "get_model_spec",
                     "model_from_spec"], "segzoo.models"),
    "load_model": "segzoo.loading",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # static analysers and IDEs see the real names (tests/test_architectures.py keeps them = _EXPORTS)
    from segzoo.loading import load_model  # noqa: F401
    from segzoo.models import (  # noqa: F401
        DeepLabV3Plus,
        FPNUnet,
        Linknet,
        MobileUnet,
        PSPnet,
        ResnetDeepLabV3Plus,
        ResnetFPNUnet,
        ResNetLinknet,
        ResnetLinknet,
        ResnetPSPnet,
        ResNetUnet,
        ResnetUnet,
        ResnetUPerNet,
        Unet,
        UnetMetaSpec,
        UPerNet,
        create_model,
        get_model_spec,
        list_models,
        model_from_spec,
    )


def __getattr__(name: str) -> Any:
    """Import a public name, or a subpackage such as ``segzoo.encoders``, on first access.

    Raises:
        ImportError: ``name`` is a Catalyst 19.x name segzoo does not carry (the message names the
            replacement; an ImportError keeps it through ``from segzoo import name``).
        AttributeError: any other unknown name.
    """
    if name in _LEGACY:
        _legacy_getattr(__name__, name)  # raises the ImportError naming the replacement
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later accesses skip __getattr__
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # the submodule exists but one of its own imports is missing
    return _legacy_getattr(__name__, name)  # AttributeError


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
