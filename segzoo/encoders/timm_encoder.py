"""Any timm model that supports ``features_only=True`` as an encoder."""

from __future__ import annotations

import math
from typing import Any

import torch

from segzoo.encoders.base import EncoderSpec, register_encoder
from segzoo.encoders.vit import ViTEncoder, is_plain_vit
from segzoo.encoders.weights import timm_missing_keys, timm_weights_access, timm_weights_hint
from segzoo.errors import (
    CheckpointError,
    NotFoundError,
    WeightsUnavailableError,
    short_repr,
    unknown_name_error,
)

#: timm arguments that set the input size; given any of them, segzoo does not ask for a dynamic size
SIZE_ARGUMENTS = ("img_size", "dynamic_img_size", "strict_img_size")
#: output strides timm's dilation (``output_stride=``) supports
OUTPUT_STRIDES = (8, 16, 32)


def timm_name_error(name: str) -> NotFoundError:
    """The one-line error for an unknown timm model name: up to 5 close matches, never timm's whole list."""
    import timm

    wildcard = timm.list_models(f"*{name}*") if name and not any(c in name for c in "*?[]") else []
    wildcard.sort(key=lambda m: (not m.startswith(name), len(m)))  # 'swin' -> swin_* before *abswin*
    return unknown_name_error("timm model", name, timm.list_models(), limit=5, more=wildcard,
                              listing="timm.list_models('pattern*') lists them")


def _check_name(name: object) -> str | None:
    """Refuse a name timm cannot build before anything is built; return its source (``"hf-hub"``,
    ``"local-dir"``: left to timm) or ``None`` for a registry name."""
    from timm.models import get_pretrained_cfg, is_model, parse_model_name, split_model_name_tag

    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a timm model name (a non-empty str), got {type(name).__name__}")
    source, model_name = parse_model_name(name)
    if source is not None:
        return source
    base, tag = split_model_name_tag(model_name)
    if not is_model(base):
        raise timm_name_error(name)
    try:
        known_tag = not tag or get_pretrained_cfg(model_name) is not None
    except RuntimeError:  # timm: "Invalid pretrained tag"
        known_tag = False
    if not known_tag:
        import timm

        raise unknown_name_error(f"pretrained tag of timm model {base!r}:", name, timm.list_pretrained(f"{base}.*"),
                                 limit=5, more=[base], listing=f"timm.list_pretrained('{base}.*') lists them")
    return None


def _fixed_input_size(model: torch.nn.Module) -> tuple[int, int] | None:
    """The (H, W) a timm model takes exclusively (a fixed ``img_size``), or ``None`` when it takes other sizes."""
    try:
        from timm.models import get_model_input_config
    except ImportError:  # timm before model traits: the pretrained config and the model's flag say it
        cfg = getattr(model, "pretrained_cfg", None) or {}
        fixed = bool(cfg.get("fixed_input_size")) and not getattr(model, "dynamic_img_size", False)
        size = cfg.get("input_size", (3, 224, 224))
    else:
        config = get_model_input_config(model)
        fixed, size = bool(config.get("fixed_input_size")), config["input_size"]
    return (int(size[-2]), int(size[-1])) if fixed else None


@register_encoder("timm")
class TimmEncoder(EncoderSpec):
    """Wrap ``timm.create_model(name, features_only=True, ...)``: any timm backbone, at its real strides.

    Channels and strides come from timm's ``feature_info`` (``channels()``, ``reduction()``); models
    whose features are NHWC (Swin and other hierarchical transformers) are permuted to NCHW.

    Input sizes (:attr:`size_multiple`, what a segzoo model pads to): a multiple of the deepest
    stride. A model with a fixed ``img_size`` (Swin, ViT...) is built with timm's
    ``dynamic_img_size=True`` when it has one, and then takes those sizes too (its attention
    windows are padded by timm). A model without it (CoAtNet, MaxViT) takes only its ``img_size``:
    smaller inputs are padded to it, others are refused with one error naming the size (build it
    with ``img_size=(H, W)`` for another). Passing ``img_size``, ``dynamic_img_size`` or
    ``strict_img_size`` yourself keeps timm's behaviour for them.

    Args:
        name: a timm model name (``timm.list_models()``, with an optional ``.tag``), e.g. ``"resnet34"``,
            ``"swin_tiny_patch4_window7_224"``, ``"test_resnet"``.
        pretrained: load timm's pretrained weights (needs them cached or a network; with
            ``SEGZOO_OFFLINE=1`` only the caches are read, and a miss is one error naming them and
            the local-file form ``pretrained_cfg_overlay=dict(file=...)``).
        in_channels: input channels (timm adapts pretrained stems itself).
        out_indices: which feature levels to return (timm's ``out_indices``).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``, ``img_size``);
            ``output_stride=8`` or ``16`` dilates the encoders that can (ResNet, ResNeXt, RegNet,
            EfficientNet, MobileNet, ConvNeXt...); one that cannot is refused in one line.

    Raises:
        NotFoundError: an unknown name (a KeyError; the message names up to 5 close matches).
        ValueError: arguments the model does not take, an ``output_stride`` it cannot honour, or no
            ``features_only`` support.
        WeightsUnavailableError: pretrained weights that cannot be had (see ``pretrained``).

    A plain ViT (``vit_*``, ``deit_*``: one stride, no pyramid) gives a :class:`~segzoo.encoders.ViTEncoder`
    (token maps of 4 blocks, any input size), the encoder DPT takes.

    Shapes: (B, in_channels, H, W) -> [(B, out_channels[i], H / out_strides[i], W / out_strides[i])].
    """

    def __new__(cls, name: str = "", pretrained: bool = False, in_channels: int = 3,
                out_indices: list[int] | None = None, **timm_kwargs: Any) -> EncoderSpec:
        if cls is TimmEncoder and isinstance(name, str) and is_plain_vit(name):
            return ViTEncoder(name, pretrained=pretrained, in_channels=in_channels, out_indices=out_indices,
                              **timm_kwargs)
        return super().__new__(cls)

    def __init__(self, name: str, pretrained: bool = False, in_channels: int = 3,
                 out_indices: list[int] | None = None, **timm_kwargs: Any) -> None:
        super().__init__()
        import timm.models

        source = _check_name(name)
        stride = timm_kwargs.get("output_stride")
        if stride is not None and (isinstance(stride, bool) or stride not in OUTPUT_STRIDES):
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES} (timm's dilation), got {stride!r}")
        kwargs = dict(features_only=True, pretrained=pretrained, in_chans=in_channels, **timm_kwargs)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        access, where, local_file = timm_weights_access(name, pretrained, timm_kwargs, source)
        cfg = None if source else timm.models.get_pretrained_cfg(timm.models.split_model_name_tag(name)[0])
        # a fixed img_size (Swin, ViT): ask for timm's dynamic size first, unless the caller chose the size
        dynamic = bool(cfg is not None and cfg.fixed_input_size and not any(k in timm_kwargs for k in SIZE_ARGUMENTS))
        with access, timm_missing_keys() as missing:
            model = self._create(name, kwargs, dynamic, where) if dynamic else None
            model = model if model is not None else self._create(name, kwargs, False, where)
        kept = list(model.state_dict())  # the classifier timm drops for features_only is no loss
        missing = [k for k in missing if any(m == k or m.endswith("." + k) for m in kept)]
        if local_file and pretrained and missing:  # timm loads leniently: a wrong file would leave random weights
            raise CheckpointError(f"weights file {local_file} does not fit timm model {name!r}: {len(missing)} of its "
                                  f"weights are not there (e.g. {short_repr(missing[0], 60)}); pass a file saved "
                                  f"from timm.create_model({name!r}), or pretrained=False")
        self.model = model
        self.name = name
        self.in_channels = in_channels
        self._arguments = dict(out_indices=out_indices, **timm_kwargs)  # what dilated() rebuilds with
        self._channels = [int(c) for c in self.model.feature_info.channels()]
        self._strides = [int(r) for r in self.model.feature_info.reduction()]
        fmt = getattr(self.model, "output_fmt", "NCHW")
        self._nhwc = str(getattr(fmt, "value", fmt)) == "NHWC"
        self.fixed_input_size = _fixed_input_size(self.model)

    @staticmethod
    def _create(name: str, kwargs: dict[str, Any], dynamic: bool, where: str) -> torch.nn.Module | None:
        """``timm.create_model`` with its errors as one line each; ``dynamic``: with ``dynamic_img_size=True``,
        ``None`` when the model has no such argument."""
        import timm

        pretrained = kwargs["pretrained"]
        try:
            return timm.create_model(name, **kwargs, **({"dynamic_img_size": True} if dynamic else {}))
        except TypeError as exc:  # an argument the model's constructor does not take
            if dynamic and "dynamic_img_size" in str(exc):
                return None
            if "output_stride" in str(exc):
                raise ValueError(f"timm model {name!r} cannot dilate (it takes no output_stride; dilation is for "
                                 f"CNNs such as resnet*, efficientnet*, convnext*): leave output_stride (a model's "
                                 f"encoder_output_stride) unset, its features keep their own strides") from exc
            raise ValueError(f"timm model {name!r} does not take these arguments: {exc}") from exc
        except RuntimeError as exc:
            if pretrained and "features_only" not in str(exc):
                raise WeightsUnavailableError(
                    f"pretrained timm weights for {name!r} could not be loaded ({exc}); use pretrained=False "
                    f"or fill the Hugging Face cache") from exc
            raise ValueError(f"timm model {name!r} does not support features_only=True: {exc}") from exc
        except OSError as exc:  # huggingface_hub raises OSError subclasses offline
            raise WeightsUnavailableError(f"{timm_weights_hint(name, where)} ({type(exc).__name__})") from exc

    @property
    def out_channels(self) -> list[int]:
        return list(self._channels)

    @property
    def out_strides(self) -> list[int]:
        return list(self._strides)

    def dilated(self, output_stride: int) -> TimmEncoder:
        """This encoder with its deepest features at ``output_stride`` (timm's dilation), same weights.

        ``self`` when it is already there; otherwise a new encoder built with ``output_stride`` (dilation
        keeps every weight's shape) holding a copy of this one's weights, mode and frozen state.

        Raises:
            ValueError: ``output_stride`` not in (8, 16, 32), or a model that cannot dilate (one line).
        """
        if max(self._strides) == output_stride:
            return self
        new = TimmEncoder(self.name, pretrained=False, in_channels=self.in_channels,
                          **{**self._arguments, "output_stride": output_stride})
        new.model.load_state_dict(self.model.state_dict())
        if self.frozen:
            new.freeze()
        new.train(self.training)
        return new

    @property
    def size_multiple(self) -> int:
        """What input H and W must be multiples of: the deepest stride, or for a fixed ``img_size`` (H, W)
        the common divisor of H and W (so an input of exactly that size is not padded)."""
        deepest = max(self._strides)
        if self.fixed_input_size is None:
            return deepest
        return math.lcm(math.gcd(*self.fixed_input_size), deepest)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C_in, H, W) -> timm's feature maps as NCHW tensors, shallow to deep.

        Raises:
            ValueError: a model with a fixed ``img_size`` gets another size.
        """
        fixed = self.fixed_input_size
        if fixed is not None and not torch.jit.is_tracing() and tuple(x.shape[-2:]) != fixed:
            raise ValueError(f"timm model {self.name!r} takes only {fixed[0]}x{fixed[1]} inputs (its fixed img_size; "
                             f"a segzoo model pads smaller inputs to it), got {x.shape[-2]}x{x.shape[-1]}: resize "
                             f"the images, or build the encoder with img_size=(H, W)")
        features = self.model(x)
        if self._nhwc:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return list(features)
