"""Catalyst 19.x names segzoo does not carry, and the one-line message naming what to write instead.

Dependency-free so that any module's ``__getattr__`` can use it during imports.
"""

from __future__ import annotations

# Catalyst 19.x names segzoo does not carry -> what to write instead (one line each)
LEGACY: dict[str, str] = {
    "UnetSpec": "UnetSpec (Catalyst's base class) is not in segzoo: customise Unet/Linknet/FPNUnet/PSPnet with "
                "encoder=, encoder_params=, bridge_params=, decoder_params=, head_params=, or compose "
                "UnetMetaSpec(encoder, decoder, bridge, head)",
    "ResnetUnetSpec": "ResnetUnetSpec (Catalyst's base class) is not in segzoo: use ResnetUnet/ResnetLinknet/"
                      "ResnetFPNUnet/ResnetPSPnet(arch=..., encoder_params=...), or compose "
                      "UnetMetaSpec(ResnetEncoder(...), decoder, bridge, head)",
    "InferMaskCallback": "InferMaskCallback is not in segzoo: collect logits with InferCallback() and write "
                         "masks yourself, or run `segzoo predict LOGDIR --input IMAGES --output MASKS`",
    "RaiseExceptionCallback": "RaiseExceptionCallback is not needed in segzoo: the runner always re-raises "
                              "exceptions; drop it",
    "FocalLossMultiClass": "FocalLossMultiClass is not in segzoo (Catalyst's flattened (B, C, H, W) logits "
                           "with view(-1, C), mixing classes and pixels): use FocalLoss(mode='multiclass', "
                           "gamma=..., ignore_index=...) with (B, H, W) class-index targets",
    "SupervisedAlchemyRunner": "SupervisedAlchemyRunner is not in segzoo (no Alchemy monitoring): use "
                               "SupervisedRunner and TensorboardLogger",
    "SupervisedWandbRunner": "SupervisedWandbRunner is not in segzoo (no W&B monitoring): use "
                             "SupervisedRunner and TensorboardLogger",
}


def legacy_getattr(module: str, name: str):
    """Body of a module ``__getattr__``: ImportError naming the replacement for a Catalyst name, else AttributeError.

    An ImportError (not an AttributeError) keeps its message through ``from module import name``.
    """
    if name in LEGACY:
        raise ImportError(LEGACY[name])
    raise AttributeError(f"module {module!r} has no attribute {name!r}")
