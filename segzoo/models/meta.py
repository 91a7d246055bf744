"""UnetMetaSpec: the one assembler that owns forward and input handling for every model."""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.encoders.base import EncoderSpec
from segzoo.hardware import LayoutChoice, preferred_layout, resolve_layout
from segzoo.heads.base import HeadSpec
from segzoo.heads.classification import create_aux_head
from segzoo.models.pretrained import PretrainedMixin
from segzoo.parts import FeaturePart

SIZE_MODES = ("pad", "strict")


def _declared(part: nn.Module) -> tuple[list[int], list[int]]:
    return list(part.out_channels), list(part.out_strides)


def _check_link(producer: nn.Module, consumer: nn.Module) -> None:
    """The consumer (bridge, decoder or head) must be built for what the producer declares."""
    channels, strides = _declared(producer)
    if list(consumer.in_channels) != channels or list(consumer.in_strides) != strides:
        raise ValueError(
            f"{type(consumer).__name__} expects features with channels {consumer.in_channels} and strides "
            f"{consumer.in_strides}, but {type(producer).__name__} declares channels {channels} and strides {strides}")


def nearest_valid_sizes(size: int, multiple: int) -> tuple[int, int]:
    """The multiples of ``multiple`` just below (at least ``multiple``) and just above ``size``."""
    below = max(multiple, size // multiple * multiple)
    above = -(-size // multiple) * multiple
    return below, above


class _Traced(nn.Module):
    """A traced model as a scriptable module (what :meth:`UnetMetaSpec.__prepare_scriptable__` returns)."""

    def __init__(self, traced: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.traced = traced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The traced model's output."""
        return self.traced(x)


class _TracedAux(nn.Module):
    """A traced model with ``aux_params`` (``(mask, labels)`` outputs) as a scriptable module."""

    def __init__(self, traced: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.traced = traced

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The traced model's ``(mask logits, labels)``."""
        return self.traced(x)


class UnetMetaSpec(PretrainedMixin, nn.Module):
    """``head(decoder(bridge(encoder(x))))`` with input checks and any-size support.

    Every named model (the rows of ``segzoo.models.ARCHITECTURES`` in the generic and ResNet families) is this
    class with different parts. The declared ``out_channels``/``out_strides`` of each part
    must match the next part's inputs (checked here, at construction).

    Args:
        encoder: an :class:`~segzoo.encoders.EncoderSpec`.
        decoder: a decoder built for the bridge's (or encoder's) outputs.
        bridge: optional part between encoder and decoder (``None``: identity).
        head: optional head (``None``: the decoder's feature list is returned as is, uncropped).
        size_mode: ``"pad"`` (default): inputs of any H, W are zero-padded to a multiple of
            :attr:`size_multiple` (the deepest stride, or what the encoder needs:
            :attr:`EncoderSpec.size_multiple`) and the logits cropped back to (H, W); ``"strict"``: H and W must be
            multiples of :attr:`size_multiple`, otherwise a ValueError names the nearest valid sizes.
        channels_last: ``"auto"`` (default): the layout measured fastest on this machine, per pass
            (:func:`segzoo.hardware.preferred_layout`: channels_last on AVX-512 CPUs and CUDA; on
            AVX2-only CPUs channels_last for eval forwards and NCHW for training, whose
            convolution weight gradients are slow in channels_last there). ``True`` / ``False``:
            always / never channels_last. The 4-D weights are kept in the layout of the current
            mode (``"auto"`` moves them at ``train()`` / ``eval()`` when the choice differs, unless
            the caller has converted the model's layout itself). Inputs and outputs stay in the
            caller's NCHW layout; results match within float tolerance whatever the layout.
        aux_params: ``None`` (default) or ``dict(classes=K, pooling="avg"|"max", dropout=0.0, activation=None)``:
            a :class:`~segzoo.heads.ClassificationHead` on the deepest feature map (the bridge's, or the
            encoder's without a bridge), as smp's ``aux_params``; ``forward`` then returns ``(logits, labels)``.

    Shapes: (B, C_in, H, W) float -> logits (B, num_classes, H, W); with ``aux_params``:
    ``(logits (B, num_classes, H, W), labels (B, K))``.
    """

    def __init__(self, encoder: EncoderSpec, decoder: FeaturePart, bridge: FeaturePart | None = None,
                 head: HeadSpec | None = None, size_mode: str = "pad", channels_last: bool | str = "auto",
                 aux_params: dict | None = None) -> None:
        super().__init__()
        if not isinstance(encoder, EncoderSpec):
            raise TypeError(f"encoder must be an EncoderSpec instance, got {type(encoder).__name__}")
        if size_mode not in SIZE_MODES:
            raise ValueError(f"size_mode must be one of {SIZE_MODES}, got {size_mode!r}")
        self.encoder = encoder
        self.bridge = bridge
        self.decoder = decoder
        self.head = head
        _check_link(encoder, bridge or decoder)
        if bridge is not None:
            _check_link(bridge, decoder)
        if head is not None:
            _check_link(decoder, head)
        aux_head = create_aux_head(aux_params, _declared(bridge or encoder)[0][-1])
        if aux_head is not None:  # no attribute otherwise: models without aux_params stay as they were
            self.classification_head = aux_head
        self.size_mode = size_mode
        self._layout = resolve_layout(channels_last)  # validates the argument
        self._layout_auto = channels_last == "auto"
        # inputs are padded to what the encoder needs (its deepest stride, or e.g. a transformer's window
        # constraint: EncoderSpec.size_multiple), to the bridge's deepest stride when there is one, and to a
        # decoder's own deeper level when it declares one (DPT resamples a ViT's tokens to twice their stride)
        self._deepest_stride = max(*_declared(bridge or encoder)[1], int(getattr(decoder, "deepest_stride", 1)))
        self.size_multiple = math.lcm(int(encoder.size_multiple), self._deepest_stride)
        self._has_bn = any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in self.modules())
        # weights in the activations' layout: convolution backward then writes weight gradients
        # without a layout copy per layer (measured ~4% of a resnet34 Unet train step on CPU)
        self._weight_format: torch.memory_format | None = None
        self._set_weight_format(self._layout.for_mode(self.training))

    @property
    def channels_last(self) -> bool:
        """Whether the network runs in channels_last in the current mode (see ``channels_last=``).

        Assigning a bool fixes the layout of both modes (the weights are not moved); assigning ``"auto"``
        is :meth:`set_layout` ``("auto")``. Any other value is refused (a ValueError), as by the constructor.
        """
        return self._layout.for_mode(self.training)

    @channels_last.setter
    def channels_last(self, value: bool | str) -> None:
        if isinstance(value, str) and value == "auto":
            self.set_layout("auto")
            return
        self._layout = resolve_layout(value)  # True / False; anything else ("false", 1) is one ValueError
        self._layout_auto = False
        self._weight_format = None

    def set_layout(self, channels_last: bool | str, source: str | None = None) -> None:
        """Choose the layout from now on, with the constructor's meaning of ``channels_last``.

        ``"auto"`` (the machine's choice per pass, the weights following ``train()`` / ``eval()``),
        ``True`` / ``False`` (always / never channels_last). The 4-D weights move to the current
        mode's layout at once. ``source`` replaces the choice's :attr:`~segzoo.hardware.LayoutChoice.source`
        (who chose: ``"runner channels_last=True"``).

        Raises:
            ValueError: any other value, in one line.
        """
        choice = resolve_layout(channels_last)
        self._layout = choice if source is None else dataclasses.replace(choice, source=source)
        self._layout_auto = channels_last == "auto"
        probe = self._probe_weight()
        device = probe.device if probe is not None else torch.device("cpu")
        self._set_weight_format(self._choice(device).for_mode(self.training))

    @property
    def layout_choice(self) -> LayoutChoice:
        """The layout per pass and where it came from (a rule per ISA, a calibration, the argument)."""
        return self._layout

    def _choice(self, device: torch.device) -> LayoutChoice:
        # "auto" is resolved for the CPU at construction; a model moved to a GPU asks again
        if self._layout_auto and device.type != "cpu":
            return preferred_layout(device)
        return self._layout

    def _probe_weight(self) -> torch.Tensor | None:
        # a weight whose NCHW and channels_last layouts differ (not 1x1, more than one input channel)
        return next((p for p in self.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1),
                    None)

    @torch.no_grad()
    def _set_weight_format(self, channels_last: bool) -> None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for p in self.parameters():
            if p.dim() == 4 and not p.is_contiguous(memory_format=fmt):
                p.data = p.data.contiguous(memory_format=fmt)
        self._weight_format = fmt

    def train(self, mode: bool = True) -> UnetMetaSpec:
        """Set training mode; with ``channels_last="auto"`` the weights follow the mode's layout.

        They are moved only when the two modes' layouts differ (AVX2 CPUs), and only while they are
        in the layout the model put them in: after ``model.to(memory_format=...)`` by the caller,
        the caller's layout stays.
        """
        super().train(mode)
        probe = self._probe_weight() if getattr(self, "_layout_auto", False) and self._weight_format is not None else None
        if probe is not None:
            if not probe.is_contiguous(memory_format=self._weight_format):
                self._weight_format = None  # the caller changed the layout: theirs stays
            else:
                wanted = self._choice(probe.device).for_mode(mode)
                if wanted != (self._weight_format == torch.channels_last):
                    self._set_weight_format(wanted)
        return self

    @property
    def in_channels(self) -> int | None:
        """Input channels the encoder expects (``None`` if it does not say)."""
        return getattr(self.encoder, "in_channels", None)

    @property
    def num_classes(self) -> int | None:
        """Number of output channels (``None`` without a head)."""
        return self.head.out_channels if self.head is not None else None

    @property
    def aux_classes(self) -> int | None:
        """Number of image-level labels of the ``aux_params`` head (``None`` without one)."""
        aux = self._aux_head()
        return aux.classes if aux is not None else None

    def _aux_head(self) -> nn.Module | None:
        return self._modules.get("classification_head")

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for inputs the model cannot take (before any heavy work).

        Raises:
            TypeError: not a tensor, or not a floating-point tensor.
            ValueError: not 4-D (B, C, H, W), wrong channel count, empty, a batch of one image
                so small that BatchNorm sees one value per channel in training, or (strict mode)
                a size that is not a multiple of :attr:`size_multiple`.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor (B, C, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D input (B, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point input (normalized image), got dtype {x.dtype}; "
                            f"convert with x.float() and normalize first")
        expected = self.in_channels
        if expected is not None and x.shape[1] != expected:
            raise ValueError(f"expected {expected} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})")
        if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"empty input of shape {tuple(x.shape)}")
        m, deep = self.size_multiple, self._deepest_stride
        if self.training and x.shape[0] == 1 and self._has_bn \
                and -(-x.shape[2] // m) * m // deep * (-(-x.shape[3] // m) * m // deep) == 1:
            raise ValueError(f"input of shape {tuple(x.shape)} leaves one value per channel at stride {deep}, which "
                             f"BatchNorm cannot train on; use a batch of 2 or more, an input larger than "
                             f"{deep}x{deep}, or model.eval() for inference")
        if self.size_mode == "strict":
            h, w = x.shape[2], x.shape[3]
            if h % m or w % m:
                hb, ha = nearest_valid_sizes(h, m)
                wb, wa = nearest_valid_sizes(w, m)
                raise ValueError(f"input size H={h}, W={w} is not a multiple of {m} (size_mode='strict'); "
                                 f"nearest valid sizes: H in ({hb}, {ha}), W in ({wb}, {wa}); "
                                 f"or use size_mode='pad'")

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, num_classes, H, W) for an input (B, C_in, H, W); with ``aux_params``,
        ``(logits, labels (B, K))``."""
        self.check_input(x)
        h, w = x.shape[-2], x.shape[-1]
        m = self.size_multiple
        if self.size_mode == "pad" and m > 1:
            pad_h, pad_w = (m - h % m) % m, (m - w % m) % m
            # traced/exported graphs always pad (possibly by 0) so they work for every size;
            # eager skips the copy when the size already fits
            if torch.jit.is_tracing() or torch.compiler.is_compiling() or pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h))
        if self._choice(x.device).for_mode(self.training):
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.encoder(x)
        if self.bridge is not None:
            features = self.bridge(features)
        aux = self._aux_head()
        labels = aux(features[-1]) if aux is not None else None
        features = self.decoder(features)
        if self.head is None:
            return features if labels is None else (features, labels)
        logits = self.head(features)[..., :h, :w].contiguous()
        return logits if labels is None else (logits, labels)

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script(model)`` compiles: the model traced in its current mode (any batch and H, W:
        traced graphs always pad, and the crop follows the input's size), in a one-line scriptable wrapper.
        The input checks of :meth:`check_input` are not in the graph."""
        m, c = self.size_multiple, self.in_channels or 3
        side = max(2 * m, -(-int(getattr(self.decoder, "min_input_size", 1)) // m) * m)  # smp's PAN: >= 8 x stride
        example = torch.zeros(2, c, side, side, device=next(self.parameters()).device)
        buffers = {name: b.clone() for name, b in self.named_buffers()}  # a training-mode trace updates BN stats
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace")  # the caller's script warns already
            traced = torch.jit.trace(self, example, check_trace=False)
            for name, b in self.named_buffers():
                b.copy_(buffers[name])
        return _Traced(traced) if self._aux_head() is None else _TracedAux(traced)

    def freeze_encoder(self) -> None:
        """Stop training the encoder; its BatchNorm layers stay in eval mode."""
        self.encoder.freeze()

    def unfreeze_encoder(self) -> None:
        """Train the encoder again."""
        self.encoder.unfreeze()

