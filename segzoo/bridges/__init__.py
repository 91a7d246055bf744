"""Bridges between encoder and decoder, and the bridge registry."""

from segzoo.bridges.base import BRIDGES, BridgeSpec, create_bridge, list_bridges, register_bridge
from segzoo.bridges.unet import UnetBridge

__all__ = ["BridgeSpec", "UnetBridge", "BRIDGES", "register_bridge", "create_bridge", "list_bridges"]
