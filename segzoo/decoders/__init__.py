"""Decoders: ``DecoderSpec`` and the Unet/Linknet, FPN and PSP decoders."""

from segzoo.decoders.base import DecoderSpec
from segzoo.decoders.fpn import FPNDecoder
from segzoo.decoders.psp import PSPDecoder, adaptive_avg_pool, pyramid_avg_pool
from segzoo.decoders.unet import DecoderConcatBlock, DecoderSumBlock, UNetDecoder

__all__ = ["DecoderSpec", "UNetDecoder", "FPNDecoder", "PSPDecoder", "DecoderConcatBlock", "DecoderSumBlock",
           "adaptive_avg_pool", "pyramid_avg_pool"]
