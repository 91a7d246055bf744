"""Model assembly (UnetMetaSpec), the architecture table, the named models, Catalyst 19.x's legacy models
(MobileUnet, ResNetUnet, ResNetLinknet) and the registry.

The model classes exported here are the ones :mod:`segzoo.architectures` names (each row's generic and
ResNet classes, and the Catalyst classes); a row without a hand-written class in
:mod:`segzoo.models.named` gets one made from the row.
"""

from typing import TYPE_CHECKING

from segzoo.architectures import ARCHITECTURES, Architecture, model_classes
from segzoo.models import catalyst as _catalyst
from segzoo.models.meta import UnetMetaSpec
from segzoo.models.named import MODEL_CLASSES as _MODEL_CLASSES
from segzoo.models.named import GenericModel, ResnetModel
from segzoo.models.registry import (
    MODELS,
    create_model,
    get_model_spec,
    list_models,
    model_from_spec,
    register_model,
)

globals().update(_MODEL_CLASSES)
globals().update({name: getattr(_catalyst, name) for name in model_classes() if name not in _MODEL_CLASSES})

__all__ = ["UnetMetaSpec", *model_classes(), "GenericModel", "ResnetModel", "Architecture", "ARCHITECTURES", "MODELS",
           "create_model", "list_models", "register_model", "get_model_spec", "model_from_spec"]

if TYPE_CHECKING:  # static analysers and IDEs see the hand-written classes (the exports above come from the table)
    from segzoo.models.catalyst import MobileUnet, ResNetLinknet, ResNetUnet  # noqa: F401
    from segzoo.models.named import (  # noqa: F401
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
        UPerNet,
    )
