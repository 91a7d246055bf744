"""Decoders: ``DecoderSpec``, the decoder registry and the Unet/Linknet, FPN, PSP, DeepLabV3(+), UPerNet, Segformer,
DPT, UNet++, MA-Net and PAN decoders."""

from segzoo.decoders.base import DECODERS, DecoderSpec, create_decoder, list_decoders, register_decoder
from segzoo.decoders.deeplab import ASPP, DeepLabV3Decoder, DeepLabV3PlusDecoder
from segzoo.decoders.dpt import DPTDecoder
from segzoo.decoders.fpn import FPNDecoder
from segzoo.decoders.manet import MAnetDecoder
from segzoo.decoders.pan import PANDecoder
from segzoo.decoders.psp import PSPDecoder, adaptive_avg_pool, pyramid_avg_pool
from segzoo.decoders.segformer import SegformerDecoder
from segzoo.decoders.unet import DecoderConcatBlock, DecoderSumBlock, UNetDecoder
from segzoo.decoders.unetplusplus import UnetPlusPlusDecoder
from segzoo.decoders.upernet import UPerNetDecoder

__all__ = ["DecoderSpec", "UNetDecoder", "FPNDecoder", "PSPDecoder", "DeepLabV3PlusDecoder", "UPerNetDecoder", "ASPP",
           "DeepLabV3Decoder", "SegformerDecoder", "DPTDecoder",
           "UnetPlusPlusDecoder", "MAnetDecoder", "PANDecoder",
           "DecoderConcatBlock", "DecoderSumBlock", "adaptive_avg_pool", "pyramid_avg_pool",
           "DECODERS", "register_decoder", "create_decoder", "list_decoders"]
