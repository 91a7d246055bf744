"""Model assembly (UnetMetaSpec), the architecture table, the named models, Catalyst 19.x's legacy models
(MobileUnet, ResNetUnet, ResNetLinknet) and the registry."""

from segzoo.models.archs import ARCHITECTURES, Architecture
from segzoo.models.catalyst import MobileUnet, ResNetLinknet, ResNetUnet
from segzoo.models.meta import UnetMetaSpec
from segzoo.models.named import (
    DeepLabV3Plus,
    FPNUnet,
    GenericModel,
    Linknet,
    PSPnet,
    ResnetDeepLabV3Plus,
    ResnetFPNUnet,
    ResnetLinknet,
    ResnetModel,
    ResnetPSPnet,
    ResnetUnet,
    ResnetUPerNet,
    Unet,
    UPerNet,
)
from segzoo.models.registry import (
    MODELS,
    create_model,
    get_model_spec,
    list_models,
    model_from_spec,
    register_model,
)

__all__ = ["UnetMetaSpec", "Unet", "Linknet", "FPNUnet", "PSPnet", "DeepLabV3Plus", "UPerNet", "ResnetUnet",
           "ResnetLinknet", "ResnetFPNUnet", "ResnetPSPnet", "ResnetDeepLabV3Plus", "ResnetUPerNet", "MobileUnet", "ResNetUnet",
           "ResNetLinknet", "GenericModel",
           "ResnetModel", "Architecture", "ARCHITECTURES", "MODELS", "create_model", "list_models", "register_model",
           "get_model_spec", "model_from_spec"]
