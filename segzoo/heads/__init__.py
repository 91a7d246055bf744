"""Heads: ``HeadSpec``, ``UnetHead`` and ``FPNHead``."""

from segzoo.heads.base import HeadSpec
from segzoo.heads.fpn import FPNHead
from segzoo.heads.unet import UnetHead

__all__ = ["HeadSpec", "UnetHead", "FPNHead"]
