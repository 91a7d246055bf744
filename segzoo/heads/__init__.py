"""Heads: ``HeadSpec``, the head registry, ``UnetHead`` and ``FPNHead``; ``ClassificationHead`` (``aux_params``)."""

from segzoo.heads.base import HEADS, HeadSpec, create_head, list_heads, register_head
from segzoo.heads.classification import AUX_HEADS, ClassificationHead, check_aux_params
from segzoo.heads.fpn import FPNHead
from segzoo.heads.unet import UnetHead

__all__ = ["HeadSpec", "UnetHead", "FPNHead", "HEADS", "register_head", "create_head", "list_heads",
           "ClassificationHead", "AUX_HEADS", "check_aux_params"]
