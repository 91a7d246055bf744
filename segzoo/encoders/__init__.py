"""Encoders: ``EncoderSpec``, the encoder registry and the built-in ResNet, MobileNetV2, Unet, timm, ViT and
Mix Transformer (``mit_b0`` .. ``mit_b5``) encoders."""

from segzoo.encoders.base import ENCODERS, EncoderSpec, create_encoder, list_encoders, register_encoder
from segzoo.encoders.mit import MIT_VARIANTS, MixTransformerEncoder
from segzoo.encoders.mobilenet import MobileNetV2Encoder
from segzoo.encoders.resnet import RESNET_CHANNELS, ResnetEncoder
from segzoo.encoders.timm_encoder import TimmEncoder
from segzoo.encoders.unet import UnetEncoder
from segzoo.encoders.vit import ViTEncoder

__all__ = ["EncoderSpec", "ResnetEncoder", "MobileNetV2Encoder", "TimmEncoder", "UnetEncoder", "ViTEncoder", "RESNET_CHANNELS",
           "MixTransformerEncoder", "MIT_VARIANTS",
           "ENCODERS", "register_encoder", "create_encoder", "list_encoders"]
