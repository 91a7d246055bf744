"""segzoo: PyTorch semantic-segmentation models from pluggable encoder, bridge, decoder and head parts."""

from segzoo.loading import load_model
from segzoo.models import (
    DeepLabV3Plus,
    FPNUnet,
    Linknet,
    PSPnet,
    ResnetDeepLabV3Plus,
    ResnetFPNUnet,
    ResnetLinknet,
    ResnetPSPnet,
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

__version__ = "0.1.0"

__all__ = ["Unet", "Linknet", "FPNUnet", "PSPnet", "ResnetUnet", "ResnetLinknet", "ResnetFPNUnet", "ResnetPSPnet",
           "DeepLabV3Plus", "ResnetDeepLabV3Plus", "UPerNet", "ResnetUPerNet",
           "UnetMetaSpec", "create_model", "list_models", "get_model_spec", "model_from_spec", "load_model", "__version__"]


def __getattr__(name: str):
    """Catalyst 19.x model names segzoo does not carry (``MobileUnet``, ``ResNetUnet``, ...) raise an
    ImportError naming the replacement (see :mod:`segzoo.compat`)."""
    from segzoo._legacy import legacy_getattr

    return legacy_getattr(__name__, name)
