"""Heads: ``HeadSpec``, the head registry, ``UnetHead`` and ``FPNHead``."""

from segzoo.heads.base import HEADS, HeadSpec, create_head, list_heads, register_head
from segzoo.heads.fpn import FPNHead
from segzoo.heads.unet import UnetHead

__all__ = ["HeadSpec", "UnetHead", "FPNHead", "HEADS", "register_head", "create_head", "list_heads"]
