"""Model assembly (UnetMetaSpec), the named models and the registry."""

from segzoo.models.meta import UnetMetaSpec
from segzoo.models.named import (
    FPNUnet,
    Linknet,
    PSPnet,
    ResnetFPNUnet,
    ResnetLinknet,
    ResnetPSPnet,
    ResnetUnet,
    Unet,
)
from segzoo.models.registry import (
    create_model,
    get_model_spec,
    list_models,
    model_from_spec,
    register_model,
)

__all__ = ["UnetMetaSpec", "Unet", "Linknet", "FPNUnet", "PSPnet", "ResnetUnet", "ResnetLinknet", "ResnetFPNUnet",
           "ResnetPSPnet", "create_model", "list_models", "register_model", "get_model_spec", "model_from_spec"]
