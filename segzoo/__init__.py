"""segzoo: PyTorch semantic-segmentation models from pluggable encoder, bridge, decoder and head parts."""

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

__version__ = "0.1.0"

__all__ = ["Unet", "Linknet", "FPNUnet", "PSPnet", "ResnetUnet", "ResnetLinknet", "ResnetFPNUnet", "ResnetPSPnet",
           "UnetMetaSpec", "create_model", "list_models", "get_model_spec", "model_from_spec", "load_model", "__version__"]
