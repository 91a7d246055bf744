"""The encoder contract."""

from __future__ import annotations

import functools
import inspect
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from segzoo.parts import DeclaresFeatures
from segzoo.registry import Registry, is_plain_data, plain_copy

ENCODERS = Registry("encoder")
register_encoder = ENCODERS.register
create_encoder = ENCODERS.create
list_encoders = ENCODERS.names

#: constructor arguments that say where an encoder's weights come from: an encoder's
#: :attr:`~EncoderSpec.encoder_spec` leaves them out (``pretrained`` is recorded as ``False``)
WEIGHT_ARGUMENTS = ("pretrained", "state_dict", "weights", "checkpoint_path")  # the last: timm's


def _structure(module: nn.Module) -> int:
    """A fingerprint of ``module``'s layers and weight shapes: what a rebuild from its spec must reproduce."""
    layers = tuple((name, type(m).__qualname__) for name, m in module.named_modules())
    shapes = tuple((name, tuple(t.shape)) for name, t in module.state_dict().items())
    return hash((layers, shapes))


_MISSING = object()


def _registered_name(cls: type, arguments: dict[str, Any]) -> str | None:
    """The encoder registry name whose factory is ``cls`` and whose bound defaults ``arguments`` agree with."""
    for name in ENCODERS:
        if ENCODERS[name] is cls and all(arguments.get(k, _MISSING) == v for k, v in ENCODERS.defaults(name).items()):
            return name
    return None


def _spec_of(encoder: EncoderSpec, cls: type, init: Callable[..., None], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """``{"name", "params"}`` rebuilding ``encoder`` (built by ``cls.__init__(*args, **kwargs)``), or ``None``."""
    sig = inspect.signature(init)
    try:
        bound = sig.bind(encoder, *args, **kwargs)
    except TypeError:
        return None
    params = list(sig.parameters.values())

    def flat(arguments: dict[str, Any]) -> dict[str, Any] | None:
        out = {}
        for p in params[1:]:
            if p.name not in arguments:
                continue
            if p.kind is p.VAR_POSITIONAL:
                if arguments[p.name]:
                    return None  # positional extras have no name to record them under
            elif p.kind is p.VAR_KEYWORD:
                out.update(arguments[p.name])
            else:
                out[p.name] = arguments[p.name]
        return out

    given = flat(dict(bound.arguments))
    bound.apply_defaults()
    full = flat(dict(bound.arguments))
    name = _registered_name(cls, full) if given is not None and full is not None else None
    if name is None:
        return None
    fixed = ENCODERS.defaults(name)
    spec = {k: v for k, v in given.items() if k not in fixed and k not in WEIGHT_ARGUMENTS}
    if "pretrained" in sig.parameters and sig.parameters["pretrained"].default is not False:
        spec["pretrained"] = False  # the weights come from the model's checkpoint, never downloaded again
    if full.get("requires_grad", False) is None:  # "None: not pretrained" would change meaning without the weights
        spec["requires_grad"] = not encoder.frozen
    return {"name": name, "params": plain_copy(spec)} if is_plain_data(spec) else None


def _recording(cls: type, init: Callable[..., None]) -> Callable[..., None]:
    """``init`` that also records the spec of the instances of exactly ``cls`` (not of a user's subclass)."""

    @functools.wraps(init)
    def __init__(self: EncoderSpec, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self) is cls:
            spec = _spec_of(self, cls, init, args, kwargs)
            object.__setattr__(self, "encoder_spec", spec)
            object.__setattr__(self, "_spec_structure", _structure(self) if spec is not None else None)

    return __init__


def encoder_rebuild_spec(encoder: nn.Module) -> dict[str, Any] | None:
    """A copy of ``encoder``'s :attr:`~EncoderSpec.encoder_spec` when it still describes it, else ``None``.

    ``None`` for an encoder of a user's class, one built from non-plain arguments (a dict of weights), or
    one whose layers or weight shapes were changed after it was built (a rebuild would differ).
    """
    spec = getattr(encoder, "encoder_spec", None)
    if spec is None or getattr(encoder, "_spec_structure", None) != _structure(encoder):
        return None
    return plain_copy(spec)


class EncoderSpec(DeclaresFeatures):
    """Base class of encoders: an image in, a list of feature maps out, shallow to deep.

    A custom encoder subclasses this and implements :attr:`out_channels`,
    :attr:`out_strides` and :meth:`forward`; every segzoo model then accepts it::

        class TinyEncoder(EncoderSpec):
            def __init__(self):
                super().__init__()
                self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
                self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)

            @property
            def out_channels(self): return [8, 16]

            @property
            def out_strides(self): return [2, 4]

            def forward(self, x):
                a = self.a(x)
                return [a, self.b(a)]

        model = Unet(encoder=TinyEncoder(), num_classes=3)

    Shapes: (B, in_channels, H, W) -> [(B, out_channels[i], H / out_strides[i], W / out_strides[i])];
    ``out_channels`` / ``out_strides`` are declared as for every part (:class:`segzoo.parts.DeclaresFeatures`).
    ``in_channels`` (optional, ``None`` = unchecked) lets models reject wrong inputs early.
    :attr:`size_multiple` (optional) says what input sizes the encoder needs.
    """

    in_channels: int | None = None
    #: segzoo's registered encoder classes record ``{"name": registry name, "params": {...}}`` (plain data) on each
    #: instance: ``create_encoder(name, **params)`` rebuilds its architecture. Weight sources are left out
    #: (:data:`WEIGHT_ARGUMENTS`; ``pretrained`` is recorded as ``False``): a model holding the encoder records it
    #: in its spec, and its weights come from its checkpoint. ``None``: a user's class (which keeps today's
    #: behaviour: rebuild such a model with your own factory), or arguments that are not plain data.
    encoder_spec: dict[str, Any] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap the ``__init__`` of segzoo's own encoder classes so that instances record :attr:`encoder_spec`."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and cls.__module__.split(".")[0] == "segzoo":
            cls.__init__ = _recording(cls, init)

    @property
    def size_multiple(self) -> int:
        """What input H and W must be multiples of (a model pads inputs to it and crops the logits back).

        Default: the deepest of :attr:`out_strides`. An encoder with another constraint (attention
        windows, a fixed input size) overrides it.
        """
        return max(self.out_strides)

    @abstractmethod
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Map (B, C_in, H, W) to feature maps, shallow to deep."""

    def freeze(self) -> None:
        """Stop gradients to the encoder and keep its normalization layers in eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        self.train(self.training)

    def unfreeze(self) -> None:
        """Undo :meth:`freeze`."""
        for p in self.parameters():
            p.requires_grad_(True)
        self._frozen = False
        self.train(self.training)

    @property
    def frozen(self) -> bool:
        """Whether :meth:`freeze` is in effect."""
        return getattr(self, "_frozen", False)

    def train(self, mode: bool = True) -> EncoderSpec:
        """Set train/eval mode; a frozen encoder keeps its BatchNorm statistics fixed."""
        super().train(mode)
        if mode and self.frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self
