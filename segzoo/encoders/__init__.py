"""Encoders: ``EncoderSpec`` and the built-in ResNet, Unet and timm encoders."""

from segzoo.encoders.base import EncoderSpec
from segzoo.encoders.resnet import RESNET_CHANNELS, ResnetEncoder
from segzoo.encoders.timm_encoder import TimmEncoder
from segzoo.encoders.unet import UnetEncoder

__all__ = ["EncoderSpec", "ResnetEncoder", "TimmEncoder", "UnetEncoder", "RESNET_CHANNELS"]
