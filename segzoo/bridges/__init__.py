"""Bridges between encoder and decoder."""

from segzoo.bridges.base import BridgeSpec
from segzoo.bridges.unet import UnetBridge

__all__ = ["BridgeSpec", "UnetBridge"]
