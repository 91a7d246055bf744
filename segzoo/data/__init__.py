"""Datasets: a built-in procedural dataset, an image/mask folder dataset, augmentation presets."""

from segzoo.data.folder import IMAGE_SUFFIXES, MAX_PIXELS, DataError, SegmentationFolder, read_image
from segzoo.data.procedural import ProceduralSegmentation
from segzoo.data.transforms import get_transforms
from segzoo.data.visual import IMAGENET_MEAN, IMAGENET_STD, colorize_mask, denormalize, normalize, palette

__all__ = ["ProceduralSegmentation", "SegmentationFolder", "DataError", "get_transforms", "read_image",
           "colorize_mask", "denormalize", "normalize", "palette", "IMAGENET_MEAN", "IMAGENET_STD",
           "IMAGE_SUFFIXES", "MAX_PIXELS"]
