"""segzoo: PyTorch semantic-segmentation models from pluggable encoder, bridge, decoder and head parts.

The public names (``from segzoo import ResnetUnet`` ...) are imported on first use (PEP 562), so
``import segzoo.cli`` and ``segzoo --help`` do not pay for importing torch; ``segzoo.ResnetUnet``,
``from segzoo import *`` and ``dir(segzoo)`` work as with eager imports. Subpackages are also
reachable as attributes (``segzoo.encoders``), imported on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["Unet", "Linknet", "FPNUnet", "PSPnet", "ResnetUnet", "ResnetLinknet", "ResnetFPNUnet",
                     "ResnetPSPnet", "UnetMetaSpec", "create_model", "list_models", "get_model_spec",
                     "model_from_spec"], "segzoo.models"),
    "load_model": "segzoo.loading",
}

__all__ = ["Unet", "Linknet", "FPNUnet", "PSPnet", "ResnetUnet", "ResnetLinknet", "ResnetFPNUnet", "ResnetPSPnet",
           "UnetMetaSpec", "create_model", "list_models", "get_model_spec", "model_from_spec", "load_model", "__version__"]

if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from segzoo.loading import load_model
    from segzoo.models import (
        FPNUnet,
        Linknet,
        PSPnet,
        ResnetFPNUnet,
        ResnetLinknet,
        ResnetPSPnet,
        ResnetUnet,
        Unet,
        UnetMetaSpec,
        create_model,
        get_model_spec,
        list_models,
        model_from_spec,
    )


def __getattr__(name: str) -> Any:
    """Import a public name, or a subpackage such as ``segzoo.encoders``, on first access."""
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
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
