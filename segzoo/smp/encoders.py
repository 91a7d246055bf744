"""smp's ``encoders.get_preprocessing_params`` / ``get_preprocessing_fn``, offline, for the encoders segzoo knows.

``"resnet18"`` ... ``"resnet152"`` (torchvision's ImageNet weights: ImageNet mean/std, RGB, input range
[0, 1]), smp's torchvision ResNeXts (:data:`TIMM_TWINS`: built as timm's copy of torchvision's model and weights),
``"mit_b0"`` ... ``"mit_b5"`` (ImageNet mean/std, as smp) and ``"tu-<timm name>"`` (the model's pretrained config as timm ships it in its package; nothing
is downloaded). The function works as smp's: an (H, W, C) numpy image in, an (H, W, C) float numpy
image out, ``(x / 255 - mean) / std`` (the division by 255 only when the image's maximum is above 1).
segzoo's own :func:`segzoo.data.normalize` returns a (C, H, W) torch tensor instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from segzoo.architectures import RESNET_ENCODERS
from segzoo.data.visual import IMAGENET_MEAN, IMAGENET_STD
from segzoo.encoders.mit import MIT_VARIANTS

__all__ = ["TIMM_TWINS", "get_encoder_names", "get_preprocessing_params", "get_preprocessing_fn", "preprocess_input"]


#: smp encoder name -> the timm model (and tag) with the same layers and smp's ``"imagenet"`` weights
#: (torchvision's, which timm ships as ``tv_in1k``)
TIMM_TWINS: dict[str, str] = {"resnext50_32x4d": "resnext50_32x4d.tv_in1k",
                              "resnext101_32x8d": "resnext101_32x8d.tv_in1k"}


def get_encoder_names() -> list[str]:
    """The ``encoder_name`` values the front door builds besides ``"tu-<timm name>"`` (``mit_b*``: segzoo's
    :class:`~segzoo.encoders.MixTransformerEncoder`, random or from a local weights file)."""
    return [*RESNET_ENCODERS, *TIMM_TWINS, *MIT_VARIANTS]


def _unknown(encoder_name: str) -> ValueError:
    return ValueError(f"encoder_name={encoder_name!r} is not an encoder segzoo has: use one of "
                      f"{get_encoder_names()} or 'tu-<timm model name>'")


def get_preprocessing_params(encoder_name: str, pretrained: str = "imagenet") -> dict[str, Any]:
    """``{"input_space", "input_range", "mean", "std"}`` of an encoder's pretrained weights (offline).

    Raises:
        ValueError: an encoder segzoo does not have, weights it does not have, or a timm model without
            pretrained weights, in one line.
    """
    if not isinstance(encoder_name, str):
        raise _unknown(encoder_name)
    if encoder_name.startswith("tu-"):
        import timm

        name = encoder_name[3:]
        if not timm.models.is_model_pretrained(name):
            raise ValueError(f"encoder_name={encoder_name!r}: timm has no pretrained weights (and so no "
                             f"preprocessing parameters) for {name!r}")
        settings = timm.models.get_pretrained_cfg(name).__dict__
        return {"input_space": settings.get("input_space", "RGB") or "RGB",
                "input_range": list(settings.get("input_range") or [0, 1]),
                "mean": list(settings["mean"]), "std": list(settings["std"])}
    if encoder_name not in get_encoder_names():
        raise _unknown(encoder_name)
    if pretrained != "imagenet":
        raise ValueError(f"{encoder_name}: segzoo has the 'imagenet' weights only (torchvision's), "
                         f"got pretrained={pretrained!r}")
    return {"input_space": "RGB", "input_range": [0, 1], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def preprocess_input(x: np.ndarray, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     input_space: str = "RGB", input_range: Sequence[float] | None = None,
                     **kwargs: Any) -> np.ndarray:
    """smp's normalization of an (H, W, C) image: BGR flip if asked, ``/ 255`` when the encoder takes [0, 1]
    and the image's maximum is above 1, then ``(x - mean) / std`` per channel; (H, W, C) float out."""
    x = np.asarray(x)
    if input_space == "BGR":
        x = x[..., ::-1].copy()
    if input_range is not None and x.max() > 1 and input_range[1] == 1:
        x = x / 255.0
    if mean is not None:
        x = x - np.array(mean)
    if std is not None:
        x = x / np.array(std)
    return x


def get_preprocessing_fn(encoder_name: str, pretrained: str = "imagenet") -> Callable[[np.ndarray], np.ndarray]:
    """:func:`preprocess_input` bound to the encoder's parameters (:func:`get_preprocessing_params`)."""
    return functools.partial(preprocess_input, **get_preprocessing_params(encoder_name, pretrained))
