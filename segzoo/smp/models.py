"""smp 0.6's model constructors on segzoo's parts: ``Unet(encoder_name=..., encoder_weights=..., classes=...)``.

One class per row of :data:`segzoo.architectures.ARCHITECTURES` that names an smp twin (``Architecture.smp``),
with smp's signature. What the arguments build:

- ``encoder_name``: ``"resnet18"`` ... ``"resnet152"`` -> segzoo's torchvision ResNet encoder (as the ``Resnet*``
  models); ``"resnext50_32x4d"``, ``"resnext101_32x8d"`` -> timm's copy of torchvision's model
  (:data:`~segzoo.smp.encoders.TIMM_TWINS`); ``"tu-<timm name>"`` -> :class:`~segzoo.encoders.TimmEncoder`;
  ``"mit_b0"`` ... ``"mit_b5"`` -> segzoo's MiT (random: ``encoder_weights=None``; smp's weights load with
  ``from_smp``); others: one line naming these.
- ``encoder_weights``: ``"imagenet"`` -> pretrained (ResNet: torchvision's weights; timm: its default
  weights), ``None`` -> random.
- ``in_channels``, ``classes``; ``activation`` (``"sigmoid"``, ``"softmax2d"``, ``"softmax"``,
  ``"logsoftmax"``, ``"tanh"``, ``"identity"``, ``None`` or a callable making a module) is applied at the
  end of ``forward``, as smp.
- decoder arguments at smp's defaults build segzoo's architecture with segzoo's defaults (widths differ from
  smp's); another value maps onto segzoo's equivalent (e.g. Unet's ``decoder_channels``, deep to shallow,
  without smp's last full-resolution block) or, where segzoo has none, is refused in one line.
- ``aux_params`` (a classification head on the deepest encoder feature, as smp:
  ``dict(classes=K, pooling="avg"|"max", dropout=0.2, activation=None|"sigmoid"|"softmax"|...)``; ``dropout``
  defaults to smp's 0.2): ``forward`` then returns ``(masks, labels (B, K))``.
- ``structure="smp"`` (segzoo's keyword, default ``"segzoo"``): build smp's exact decoder and head (Unet: smp's
  widths, two convs per block, the full-resolution block, the 3x3 head; also Linknet, FPN, PSPNet
  (:mod:`segzoo.smp.twin_linknet_fpn_psp`), DeepLabV3, DeepLabV3Plus, PAN (smp's ASPP / FPA and GAU blocks, smp's ResNet
  dilation: :mod:`segzoo.smp.twin_deeplab_pan`), UnetPlusPlus, MAnet, UPerNet (:mod:`segzoo.smp.twin_unetpp_manet_upernet`),
  Segformer, DPT (:mod:`segzoo.smp.twin_segformer_dpt`)), so that smp's weights load
  (:func:`segzoo.smp.from_smp`, :func:`segzoo.smp.load_smp_state_dict`); architectures without it refuse it.

The models are :class:`~segzoo.models.UnetMetaSpec` (any input size, ``save_pretrained`` /
``from_pretrained``, ``torch.jit.script``).
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn

from segzoo.architectures import ARCHITECTURES, RESNET_ENCODERS
from segzoo.encoders import MIT_VARIANTS, MixTransformerEncoder, ResnetEncoder, TimmEncoder
from segzoo.encoders.vit import is_plain_vit
from segzoo.errors import CheckpointError
from segzoo.models.archs import build_parts
from segzoo.models.meta import UnetMetaSpec
from segzoo.models.pretrained import resolve_folder
from segzoo.smp.encoders import TIMM_TWINS, get_encoder_names
from segzoo.smp.structure import smp_handled, smp_structure

__all__ = ["SmpModel", "MODEL_CLASSES", "create_model"]

_COMMON_HEAD = (("encoder_name", "resnet34"), ("encoder_depth", 5), ("encoder_weights", "imagenet"))
_COMMON_TAIL = (("in_channels", 3), ("classes", 1), ("activation", None))
_UNET = (("decoder_use_norm", "batchnorm"), ("decoder_channels", (256, 128, 64, 32, 16)),
         ("decoder_attention_type", None), ("decoder_interpolation", "nearest"))

#: smp 0.6's constructor parameters per class (besides ``aux_params`` and ``**kwargs``), in smp's order
SIGNATURES: dict[str, tuple[tuple[str, Any], ...]] = {
    "Unet": (*_COMMON_HEAD, *_UNET, *_COMMON_TAIL),
    "UnetPlusPlus": (*_COMMON_HEAD, *_UNET, *_COMMON_TAIL),
    "Linknet": (*_COMMON_HEAD, ("decoder_use_norm", "batchnorm"), *_COMMON_TAIL),
    "FPN": (*_COMMON_HEAD, ("decoder_pyramid_channels", 256), ("decoder_segmentation_channels", 128),
            ("decoder_merge_policy", "add"), ("decoder_dropout", 0.2), ("decoder_interpolation", "nearest"),
            *_COMMON_TAIL, ("upsampling", 4)),
    "PSPNet": (("encoder_name", "resnet34"), ("encoder_weights", "imagenet"), ("encoder_depth", 3),
               ("psp_out_channels", 512), ("decoder_use_norm", "batchnorm"), ("psp_dropout", 0.2), *_COMMON_TAIL,
               ("upsampling", 8)),
    "DeepLabV3Plus": (*_COMMON_HEAD, ("encoder_output_stride", 16), ("decoder_channels", 256),
                      ("decoder_atrous_rates", (12, 24, 36)), ("decoder_aspp_separable", True),
                      ("decoder_aspp_dropout", 0.5), *_COMMON_TAIL, ("upsampling", 4)),
    "DeepLabV3": (*_COMMON_HEAD, ("encoder_output_stride", 8), ("decoder_channels", 256),
                  ("decoder_atrous_rates", (12, 24, 36)), ("decoder_aspp_separable", False),
                  ("decoder_aspp_dropout", 0.5), *_COMMON_TAIL, ("upsampling", None)),
    "UPerNet": (*_COMMON_HEAD, ("decoder_channels", 256), ("decoder_use_norm", "batchnorm"), *_COMMON_TAIL,
                ("upsampling", 4)),
    "MAnet": (*_COMMON_HEAD, ("decoder_use_norm", "batchnorm"), ("decoder_channels", (256, 128, 64, 32, 16)),
              ("decoder_pab_channels", 64), ("decoder_interpolation", "nearest"), *_COMMON_TAIL),
    "PAN": (*_COMMON_HEAD, ("encoder_output_stride", 16), ("decoder_channels", 32),
            ("decoder_interpolation", "bilinear"), *_COMMON_TAIL, ("upsampling", 4)),
    "Segformer": (*_COMMON_HEAD, ("decoder_segmentation_channels", 256), *_COMMON_TAIL, ("upsampling", 4)),
    "DPT": (("encoder_name", "tu-vit_base_patch16_224.augreg_in21k"), ("encoder_depth", 4),
            ("encoder_weights", "imagenet"), ("encoder_output_indices", None), ("decoder_readout", "cat"),
            ("decoder_intermediate_channels", (256, 512, 1024, 1024)), ("decoder_fusion_channels", 256),
            *_COMMON_TAIL),
}
_GENERIC = (*_COMMON_HEAD, *_COMMON_TAIL)

_NORMS = {"batchnorm": "bn", True: "bn", "identity": "identity", False: "identity"}


def _norm(value: Any) -> str:
    if not isinstance(value, (str, bool)) or value not in _NORMS:  # smp's dict form included
        raise ValueError(f"decoder_use_norm={value!r} is not supported by segzoo's decoder: use one of "
                         f"{[k for k in _NORMS]}")
    return _NORMS[value]


def _unet_widths(value: Any) -> list[int]:
    widths = list(value)
    return widths[:-1][::-1]  # smp: deep to shallow, the last block at full resolution; segzoo: shallow to deep


#: smp argument -> (part, segzoo key, value conversion), per smp class; a non-default value of any other
#: argument is refused (``upsampling``: segzoo's heads always return the input's size)
MAPPINGS: dict[str, dict[str, tuple[str, str, Callable[[Any], Any]]]] = {
    "Unet": {"decoder_channels": ("decoder", "channels", _unet_widths),
             "decoder_use_norm": ("decoder", "norm", _norm),
             "decoder_interpolation": ("decoder", "upsample", str)},
    "Linknet": {"decoder_use_norm": ("decoder", "norm", _norm)},
    "FPN": {"decoder_pyramid_channels": ("decoder", "pyramid_channels", int),
            "decoder_segmentation_channels": ("head", "hidden_channels", int),
            "decoder_dropout": ("head", "dropout", float),
            "decoder_merge_policy": ("head", "merge", str),
            "decoder_interpolation": ("decoder", "upsample", str)},
    "PSPNet": {"psp_out_channels": ("decoder", "out_channels", int), "psp_dropout": ("decoder", "dropout", float),
               "decoder_use_norm": ("decoder", "norm", _norm)},
    "DeepLabV3Plus": {"decoder_channels": ("decoder", "out_channels", int),
                      "decoder_atrous_rates": ("decoder", "atrous_rates", list),
                      "decoder_aspp_separable": ("decoder", "separable", bool),
                      "decoder_aspp_dropout": ("decoder", "aspp_dropout", float),
                      "encoder_output_stride": ("encoder", "output_stride", int)},
    "UPerNet": {"decoder_channels": ("decoder", "channels", int), "decoder_use_norm": ("decoder", "norm", _norm)},
    "MAnet": {"decoder_channels": ("decoder", "channels", lambda v: list(v)[:-2][::-1]),  # segzoo's: stride >= 4
              "decoder_pab_channels": ("decoder", "key_channels", int), "decoder_use_norm": ("decoder", "norm", _norm),
              "decoder_interpolation": ("decoder", "upsample", str)},
    "UnetPlusPlus": {"decoder_channels": ("decoder", "channels", _unet_widths),
                     "decoder_use_norm": ("decoder", "norm", _norm),
                     "decoder_interpolation": ("decoder", "upsample", str)},
}
MAPPINGS["Segformer"] = {"decoder_segmentation_channels": ("decoder", "channels", int)}
MAPPINGS["DPT"] = {"decoder_readout": ("encoder", "readout", str), "encoder_output_indices": ("encoder", "out_indices", list),
                   "decoder_intermediate_channels": ("decoder", "channels", list),
                   "decoder_fusion_channels": ("decoder", "fusion_channels", int)}
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "identity": nn.Identity, "sigmoid": nn.Sigmoid, "softmax2d": lambda: nn.Softmax(dim=1),
    "softmax": lambda: nn.Softmax(dim=1), "logsoftmax": lambda: nn.LogSoftmax(dim=1), "tanh": nn.Tanh}


def _activation(value: Any) -> nn.Module:
    if value is None:
        return nn.Identity()
    if isinstance(value, str) and value in _ACTIVATIONS:
        return _ACTIVATIONS[value]()
    if callable(value) and not isinstance(value, str):
        module = value()
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"segzoo.smp: activation={value!r} is not supported: use None, one of {list(_ACTIVATIONS)} or a "
                     f"callable returning an nn.Module")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class SmpModel(UnetMetaSpec):
    """An smp 0.6 model on segzoo's parts: the base of the front door's classes (see the module docstring).

    Shapes: (B, in_channels, H, W) float -> (B, classes, H, W), after ``activation``.
    """

    smp_name: ClassVar[str] = ""
    architecture: ClassVar[str] = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        name, row = self.smp_name, ARCHITECTURES[self.architecture]
        if kwargs.get("decoder_use_batchnorm") is not None and "decoder_use_norm" not in kwargs:
            kwargs["decoder_use_norm"] = kwargs.pop("decoder_use_batchnorm")  # smp's older spelling
        kwargs.pop("decoder_use_batchnorm", None)
        if name == "PSPNet" and "psp_use_batchnorm" in kwargs:  # smp's older spelling
            value = kwargs.pop("psp_use_batchnorm")
            if value is not None and "decoder_use_norm" not in kwargs:
                kwargs["decoder_use_norm"] = value
        mode = kwargs.pop("upscale_mode", None) if name == "PAN" else None
        if mode is not None:  # smp's older spelling of PAN's decoder_interpolation (smp warns, then uses it)
            warnings.warn("segzoo.smp.PAN: upscale_mode is deprecated (as in smp): use decoder_interpolation",
                          DeprecationWarning, stacklevel=2)
            kwargs["decoder_interpolation"] = mode
        structure = kwargs.pop("structure", "segzoo")
        if name == "DPT" and isinstance(kwargs.get("dynamic_img_size"), bool):
            kwargs.pop("dynamic_img_size")  # smp's timm ViT option: segzoo's DPT takes any H x W without it
        try:
            bound = _signature(name).bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"segzoo.smp.{name}: {exc}; its arguments: "
                            f"{[p for p in _signature(name).parameters][:-1]}") from None
        extra = bound.arguments.pop("kwargs", {})
        if extra:
            raise TypeError(f"segzoo.smp.{name}: unexpected argument(s) {sorted(extra)}")
        args_ = {p.name: p.default for p in _signature(name).parameters.values() if p.kind != p.VAR_KEYWORD}
        args_.update(bound.arguments)
        aux_params = args_.pop("aux_params")
        if isinstance(aux_params, dict):
            aux_params = {"dropout": 0.2, **aux_params}  # smp's ClassificationHead default
        defaults = dict(SIGNATURES.get(name, _GENERIC))
        parts: dict[str, dict[str, Any]] = {"encoder": {}, "decoder": {}, "head": {}}
        fixed = {"encoder_name", "encoder_weights", "encoder_depth", "in_channels", "classes", "activation"}
        handled = smp_handled(name) if structure == "smp" else frozenset()
        for key, value in args_.items():
            if key in fixed or key in handled or _same(value, defaults.get(key)):
                continue
            if key not in MAPPINGS.get(name, {}):
                raise ValueError(f"segzoo.smp.{name}: {key}={value!r} is not supported for {name} by segzoo yet "
                                 f"(leave it at smp's default {defaults.get(key)!r})")
            part, target, convert = MAPPINGS[name][key]
            parts[part][target] = convert(value)
        parts = smp_structure(name, structure, args_, parts)
        encoder = _encoder(name, row, args_, defaults, parts["encoder"])
        bridge, decoder, head = build_parts(row, encoder, args_["classes"], family_bridge=False,
                                            decoder_params=parts["decoder"], head_params=parts["head"])
        try:
            super().__init__(encoder, decoder, bridge=bridge, head=head, aux_params=aux_params)
        except (TypeError, ValueError) as exc:
            if "aux_params" not in str(exc):
                raise
            raise type(exc)(f"segzoo.smp.{name}: {exc}") from None
        self.activation = _activation(args_["activation"])
        arguments = {k: _plain(v) for k, v in args_.items()}
        if aux_params is not None:
            arguments["aux_params"] = dict(aux_params)
        object.__setattr__(self, "smp_arguments", arguments)
        object.__setattr__(self, "structure", structure)

    @property
    def segmentation_head(self) -> nn.Module:
        """smp's name of the head."""
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``activation(logits)`` (B, classes, H, W) for an input (B, in_channels, H, W); with ``aux_params``,
        ``(activation(logits), labels (B, K))`` as smp."""
        out = super().forward(x)
        if isinstance(out, tuple):
            return self.activation(out[0]), out[1]
        return self.activation(out)

    def pretrained_config(self) -> dict[str, Any]:
        """``config.json``'s content: the smp class and its arguments (``encoder_weights`` is not re-fetched).

        Raises:
            ValueError: a callable ``activation`` (not storable as JSON).
        """
        arguments = dict(self.smp_arguments)
        if arguments.get("activation") is not None and not isinstance(arguments["activation"], str):
            raise ValueError(f"activation={arguments['activation']!r} is not storable in config.json: pass its "
                             f"name (e.g. 'sigmoid') or apply it after the model")
        config = {"builder": "segzoo.smp", "smp_class": self.smp_name, "arguments": arguments}
        return config if self.structure == "segzoo" else {**config, "structure": self.structure}

    def save_pretrained(self, save_directory: str | os.PathLike, *, push_to_hub: bool = False,
                        repo_id: str | None = None, private: bool | None = None, token: str | None = None,
                        dataset: str | None = None, metrics: Any = None) -> Any:
        """smp's ``save_pretrained``: ``config.json`` + ``model.safetensors`` and a ``README.md`` model card
        (``dataset`` name, ``metrics`` as JSON) in ``save_directory``; ``push_to_hub=True`` then uploads the
        folder (:func:`segzoo.smp.hub.push_folder`). Returns the folder, or the Hub's commit info when pushed."""
        from segzoo.smp.hub import push_folder, write_model_card

        folder = super().save_pretrained(save_directory)
        write_model_card(folder, self.smp_name, dataset, metrics)
        return push_folder(folder, repo_id, private, token) if push_to_hub else folder

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, classes: int | None = None,
                        strict: bool = True, revision: str | None = None) -> nn.Module:
        """A folder or Hub id ``save_pretrained`` wrote (see :class:`~segzoo.models.pretrained.PretrainedMixin`).

        Raises:
            CheckpointError: a folder smp 0.6 itself wrote (one line: :func:`segzoo.smp.from_pretrained` loads it).
        """
        from segzoo.smp.hub import read_smp_config

        folder = resolve_folder(pretrained_model_name_or_path, revision)
        smp_config = read_smp_config(folder)
        if smp_config is not None:
            raise CheckpointError(f"{folder}: written by smp 0.6 ({smp_config['_model_class']!r}); load it with "
                                  f"segzoo.smp.from_pretrained(folder), which maps smp's weights")
        return super().from_pretrained(folder, classes=classes, strict=strict)

    @classmethod
    def from_pretrained_config(cls, config: dict[str, Any], classes: int | None, source: Path,
                               weight_names: Collection[str] = ()) -> nn.Module:
        """The untrained model ``config`` describes (``classes`` outputs if given; ``weight_names``: unused, the
        smp front door's defaults have not changed)."""
        name, arguments = config.get("smp_class"), config.get("arguments")
        if config.get("builder") != "segzoo.smp" or name not in MODEL_CLASSES or not isinstance(arguments, dict):
            raise CheckpointError(f"{source}: not a segzoo.smp model config (builder {config.get('builder')!r}, "
                             f"smp_class {name!r}); load it with its own class's from_pretrained")
        target = MODEL_CLASSES[name]
        if cls is not SmpModel and not issubclass(target, cls):
            raise CheckpointError(f"{source}: describes segzoo.smp.{name}, not {cls.__name__}; load it with "
                             f"segzoo.smp.{name}.from_pretrained")
        arguments = {**arguments, "encoder_weights": None}
        if classes is not None:
            arguments["classes"] = classes
        try:
            return target(**arguments, structure=config.get("structure", "segzoo"))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: cannot rebuild segzoo.smp.{name}: {exc}") from None


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) == list(default)
    return value is default or (type(value) is type(default) and value == default)


#: encoder arguments a ``structure="smp"`` passes to a timm encoder (smp's feature indices, DPT's readout)
_TIMM_STRUCTURE = {"out_indices", "readout"}


def _encoder(name: str, row: Any, args: dict[str, Any], defaults: dict[str, Any], params: dict[str, Any]):
    enc, weights, depth = args["encoder_name"], args["encoder_weights"], args["encoder_depth"]
    if weights not in ("imagenet", None) and not (isinstance(enc, str) and enc.startswith("tu-")):
        raise ValueError(f"segzoo.smp.{name}: encoder_weights={weights!r} is not available in segzoo for {enc!r}: "
                         f"use 'imagenet' (torchvision's weights) or None")
    default_depth = defaults.get("encoder_depth", 5)
    if not isinstance(depth, int) or not 1 <= depth <= 5:
        raise ValueError(f"segzoo.smp.{name}: encoder_depth must be an int in 1..5, got {depth!r}")
    timm_name = enc[3:] if isinstance(enc, str) and enc.startswith("tu-") else \
        TIMM_TWINS.get(enc) if isinstance(enc, str) else None
    if timm_name is not None:
        if set(params) - _TIMM_STRUCTURE:
            raise ValueError(f"segzoo.smp.{name}: {sorted(params)} not supported with a timm encoder ({enc!r})")
        if is_plain_vit(timm_name):  # a ViT's depth is its count of token maps, spread over its blocks (as smp)
            extra = {"num_features": depth}
        else:
            extra = {"out_indices": list(range(depth))} if depth != 5 else {}
        return TimmEncoder(timm_name, pretrained=weights is not None, in_channels=args["in_channels"],
                           **{**extra, **params})
    if isinstance(enc, str) and enc in MIT_VARIANTS:  # segzoo's MiT: smp's weights load with from_smp
        if weights is not None or depth != 5 or params:
            raise ValueError(f"segzoo.smp.{name}: {enc!r} is segzoo's MiT: encoder_weights=None and encoder_depth=5 "
                             f"only (smp's weights load with segzoo.smp.from_smp / load_smp_state_dict)")
        return MixTransformerEncoder(enc, in_channels=args["in_channels"])
    if enc not in RESNET_ENCODERS:
        raise ValueError(f"segzoo.smp.{name}: encoder_name={enc!r} is not an encoder segzoo has: use one of "
                         f"{get_encoder_names()} or 'tu-<timm model name>'")
    kwargs = {**row.resnet_encoder, **params}
    if depth != default_depth:
        kwargs["layers_indices"] = list(range(depth)) if name != "PSPNet" else [depth - 1]
    return ResnetEncoder(arch=enc, pretrained=weights == "imagenet", in_channels=args["in_channels"], **kwargs)


def _signature(name: str) -> inspect.Signature:
    params = [inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=v)
              for k, v in (*SIGNATURES.get(name, _GENERIC), ("aux_params", None))]
    return inspect.Signature([*params, inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])


def _make_class(arch: str, smp_name: str) -> type[SmpModel]:
    cls = type(smp_name, (SmpModel,), {
        "smp_name": smp_name, "architecture": arch, "__module__": __name__,
        "__doc__": f"smp 0.6's ``{smp_name}`` on segzoo's parts ({ARCHITECTURES[arch].title}); smp's arguments "
                   f"(see :mod:`segzoo.smp.models`). Shapes: (B, in_channels, H, W) -> (B, classes, H, W)."})
    cls.__signature__ = _signature(smp_name)  # type: ignore[attr-defined]
    return cls


#: smp class name -> front-door class, one per row of the architecture table with an smp twin
MODEL_CLASSES: dict[str, type[SmpModel]] = {row.smp: _make_class(arch, row.smp)
                                            for arch, row in ARCHITECTURES.items() if row.smp}
globals().update(MODEL_CLASSES)  # pickle finds them by name


def create_model(arch: str, encoder_name: str = "resnet34", encoder_weights: str | None = "imagenet",
                 in_channels: int = 3, classes: int = 1, **kwargs: Any) -> SmpModel:
    """smp's ``create_model``: the class named ``arch`` (any case: ``"unet"``, ``"DeepLabV3Plus"``).

    Raises:
        KeyError: an architecture segzoo's front door does not have (the message lists them).
    """
    by_lower = {name.lower(): cls for name, cls in MODEL_CLASSES.items()}
    if not isinstance(arch, str) or arch.lower() not in by_lower:
        raise KeyError(f"create_model: unknown arch {arch!r}; segzoo.smp has {sorted(MODEL_CLASSES)}")
    return by_lower[arch.lower()](encoder_name=encoder_name, encoder_weights=encoder_weights,
                                  in_channels=in_channels, classes=classes, **kwargs)
