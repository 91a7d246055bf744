"""Inference backends: one callable each, normalized (B, C, H, W) float32 -> logits (B, K, H, W) float32.

A model built with ``aux_params`` gives ``(logits (B, K, H, W), labels (B, K'))`` on every backend.

- ``eager``: the PyTorch module in eval mode under ``torch.inference_mode``, channels_last, with
  every BatchNorm that directly follows a convolution folded into it (:func:`fold_conv_bn`).
- ``torch-bf16``: the same module under bf16 autocast (weights kept float32; logits float32). Autocast
  rather than bf16 weights: it runs the convolutions and matrix products in bf16, where the FLOPs
  are, and keeps the ops whose accuracy bf16 would cost (softmax, norms, interpolation, reductions)
  in float32, exactly as training's ``precision: bf16`` did, so the masks are those the run was
  validated with; casting the weights costs one pass over the parameters per forward, small
  beside the activations' work. Native (fast) on CPUs with AVX512-BF16 / AMX and CUDA sm80+
  (:func:`segzoo.hardware.precision.native_bf16`); elsewhere emulated, and slower than ``eager``.
- ``torchscript``: a TorchScript file, or the eager model traced and frozen.
- ``onnxruntime``: an ONNX file, or the model exported to ONNX in memory; all graph
  optimizations on, intra-op threads set, one inter-op thread.
- ``onnxruntime-int8``: the ONNX model statically quantized (see :mod:`segzoo.inference.quantize`).

A ``.pt2`` (``torch.export``) program runs on the ``eager`` backend. Its inputs must be
multiples of the model's size multiple and at least twice it: :attr:`Backend.pad_multiple` and
:attr:`Backend.min_size` tell :class:`segzoo.inference.Predictor` to pad (zeros, after
normalization, as the models do themselves) and crop back.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from segzoo.errors import install_hint

BACKENDS = ("eager", "torchscript", "onnxruntime", "onnxruntime-int8", "torch-bf16")
ONNX_OPSET = 17
_AXES = {0: "batch", 2: "height", 3: "width"}


class Backend:
    """A loaded model on one runtime: ``backend(x)`` maps (B, C, H, W) float32 to logits (B, K, H, W) float32.

    Attributes:
        name: one of :data:`BACKENDS`.
        pad_multiple: inputs must have H, W that are multiples of this (1: any size).
        min_size: smallest H, W the runtime takes.
    """

    name = "eager"
    pad_multiple = 1
    min_size = 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class TorchBackend(Backend):
    """Run a module (eager, a ``.pt2`` program's module or a TorchScript module) without autograd.

    ``autocast``: a dtype (``torch.bfloat16`` for ``torch-bf16``) the module runs under ``torch.autocast``
    in; the outputs are float32 whatever it is.
    """

    def __init__(self, module: Callable[[torch.Tensor], torch.Tensor], name: str = "eager",
                 device: torch.device | str = "cpu", channels_last_input: bool = False,
                 pad_multiple: int = 1, min_size: int = 1, autocast: torch.dtype | None = None) -> None:
        self.module = module
        self.name = name
        self.device = torch.device(device)
        self.channels_last_input = channels_last_input
        self.pad_multiple = pad_multiple
        self.min_size = min_size
        self.autocast = autocast

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        cast = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None \
            else contextlib.nullcontext()
        with torch.inference_mode(), cast:
            x = x.to(self.device)
            if self.channels_last_input:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.module(x)
            if isinstance(out, (tuple, list)):  # aux_params: (logits, labels)
                return tuple(o.float().cpu().contiguous() for o in out)
            return out.float().cpu().contiguous()


class OnnxBackend(Backend):
    """Run an onnxruntime ``InferenceSession`` (CPU execution provider)."""

    def __init__(self, session: Any, name: str = "onnxruntime") -> None:
        self.session = session
        self.name = name
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.session.run(None, {self.input_name: x.detach().float().cpu().contiguous().numpy()})
        if len(outs) > 1:  # aux_params: outputs mask and label
            return tuple(torch.from_numpy(o).float() for o in outs)
        return torch.from_numpy(outs[0]).float()


# ---- eager: Conv + BatchNorm folding ------------------------------------------------------

def fold_conv_bn(model: nn.Module, example: torch.Tensor, atol: float = 1e-4) -> int:
    """Fold every eval-mode BatchNorm2d whose input is the output of a Conv2d into that convolution, in place.

    Pairs are found by running ``model.forward(example)`` once with hooks (so any architecture
    works, not only known block layouts): a BatchNorm qualifies when its input tensor *is* a
    convolution's output and both modules run exactly once. The BatchNorm is replaced by
    ``nn.Identity`` and the convolution gets the folded weight and bias (in the weight's memory
    format). The folded model is checked against the original output on ``example``; if it
    differs by more than ``atol`` (relative to the output's scale) nothing is changed.

    Args:
        model: in eval mode; modified in place.
        example: an input (B, C, H, W) the model accepts.
        atol: accepted difference, relative to max(1, max |output|).

    Returns:
        The number of BatchNorm layers folded.
    """
    calls: dict[nn.Module, int] = {}
    conv_out: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    found: list[tuple[nn.Module, nn.Module]] = []

    def on_conv(mod, _inputs, out):
        calls[mod] = calls.get(mod, 0) + 1
        if isinstance(out, torch.Tensor):
            conv_out[id(out)] = (mod, out)

    def on_bn(mod, inputs):
        calls[mod] = calls.get(mod, 0) + 1
        hit = conv_out.get(id(inputs[0])) if inputs else None
        if hit is not None and hit[1] is inputs[0]:
            found.append((hit[0], mod))

    hooks = []
    for mod in model.modules():
        if type(mod) is nn.Conv2d:
            hooks.append(mod.register_forward_hook(on_conv))
        elif type(mod) is nn.BatchNorm2d:
            hooks.append(mod.register_forward_pre_hook(on_bn))
    try:
        with torch.no_grad():
            reference = model.forward(example)  # .forward: the caller's own hooks on the model do not fire
    finally:
        for h in hooks:
            h.remove()
        conv_out.clear()
    pairs = [(c, b) for c, b in found if calls.get(c) == 1 and calls.get(b) == 1 and not b.training
             and b.running_mean is not None and b.running_var is not None]
    if not pairs:
        return 0
    parents = {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}
    undo = []
    for conv, bn in pairs:
        fmt = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) and \
            not conv.weight.is_contiguous() else torch.contiguous_format
        undo.append((conv, conv.weight, conv.bias, bn))
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias)
        conv.weight = nn.Parameter(weight.detach().contiguous(memory_format=fmt), requires_grad=False)
        conv.bias = nn.Parameter(bias.detach(), requires_grad=False)
        parent, name = parents[id(bn)]
        setattr(parent, name, nn.Identity())
    with torch.no_grad():
        folded = model.forward(example)
    # a model built with aux_params returns (logits, labels): both must be kept
    pairs_out = list(zip(reference, folded)) if isinstance(reference, tuple) else [(reference, folded)]
    if not all(torch.allclose(f, r, atol=atol * max(1.0, float(r.detach().abs().max()) if r.numel() else 0.0),
                              rtol=0) for r, f in pairs_out):
        for conv, weight, bias, bn in undo:  # an unusual graph (a conv output used twice): leave it as it was
            conv.weight, conv.bias = weight, bias
            parent, name = parents[id(bn)]
            setattr(parent, name, bn)
        return 0
    return len(pairs)


def prepare_eager(model: nn.Module, example: torch.Tensor, fold: bool = True) -> TorchBackend:
    """The ``eager`` backend of a model: eval, no gradients, channels_last, Conv+BN folded (``fold``).

    segzoo models (``model.channels_last``) convert their input themselves; other modules get
    their weights and inputs converted to channels_last here. Folding changes ``model`` in place.
    """
    model.eval()
    own_layout = hasattr(model, "channels_last")
    if not own_layout:
        model.to(memory_format=torch.channels_last)
    if fold:
        fold_conv_bn(model, example.to(next(model.parameters(), example).device))
    device = next(model.parameters(), torch.empty(0)).device
    return TorchBackend(model, "eager", device, channels_last_input=not own_layout)


def trace_backend(model: nn.Module, example: torch.Tensor) -> TorchBackend:
    """The ``torchscript`` backend of a (folded) eager model: ``torch.jit.trace`` then ``torch.jit.freeze``.

    segzoo models pad by amounts computed from the runtime size, so the trace works at any H x W.
    """
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example.to(device), check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
    return TorchBackend(frozen, "torchscript", device, channels_last_input=not hasattr(model, "channels_last"))


def load_torchscript(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[TorchBackend, str]:
    """A TorchScript file as a backend, and the text of its ``segzoo.json`` extra file ('' if none)."""
    from segzoo.inference.metadata import EXTRA_FILE

    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(os.fspath(path), map_location=device, _extra_files=extra)
    module.eval()
    return TorchBackend(module, "torchscript", device), extra[EXTRA_FILE]


class ProgramDim:
    """What a ``torch.export`` program takes in one input dimension: multiples of ``multiple`` in ``low..high``."""

    def __init__(self, multiple: int = 1, low: int = 0, high: int | None = None) -> None:
        self.multiple, self.low, self.high = max(1, multiple), low, high

    def accepts(self, n: int) -> bool:
        """Whether the program takes size ``n`` here."""
        return n % self.multiple == 0 and n >= self.low and (self.high is None or n <= self.high)

    def __str__(self) -> str:
        if self.low == self.high:
            return f"exactly {self.low}"
        span = f"{self.low}..{self.high}" if self.high is not None else f">= {self.low}"
        return f"{span}" if self.multiple == 1 else f"a multiple of {self.multiple} in {span}"


def _bound(value: Any) -> int | None:
    """A range bound as an int; ``None`` for an infinite one."""
    return int(value) if isinstance(value, int) or getattr(value, "is_Integer", False) else None


def program_dims(program: Any) -> list[ProgramDim] | None:
    """Per dimension of a ``torch.export`` program's one input, the sizes it takes (``None``: not readable)."""
    try:
        inputs = [n for n in program.graph.nodes
                  if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
        shape = inputs[0].meta["val"].shape if len(inputs) == 1 else None
    except (AttributeError, KeyError, IndexError):
        return None
    if shape is None:
        return None
    dims = []
    for size in shape:
        if isinstance(size, int):
            dims.append(ProgramDim(1, size, size))
            continue
        expr = size.node.expr
        coeff, symbol = expr.as_coeff_Mul()
        if not getattr(symbol, "is_Symbol", False) or not getattr(coeff, "is_Integer", False):
            return None  # a size the program derives otherwise: its own guards judge it
        ranges = program.range_constraints
        if expr in ranges:
            low, high = _bound(ranges[expr].lower), _bound(ranges[expr].upper)
        elif symbol in ranges:
            low, high = _bound(ranges[symbol].lower), _bound(ranges[symbol].upper)
            low, high = (None if low is None else low * int(coeff)), (None if high is None else high * int(coeff))
        else:
            low, high = 0, None
        dims.append(ProgramDim(int(coeff), low or 0, high))
    return dims


class ProgramBackend(TorchBackend):
    """A ``torch.export`` program's module; an input shape the program does not take is one ``ValueError`` line.

    (Its own guards would fail with ``AssertionError: Guard failed: <symbolic expression>``.)
    """

    def __init__(self, module: Callable[[torch.Tensor], torch.Tensor], source: str, dims: list[ProgramDim] | None,
                 device: torch.device | str = "cpu", pad_multiple: int = 1, min_size: int = 1) -> None:
        if dims is not None and len(dims) == 4:  # the program's own H, W rules beat the stored metadata
            h, w = dims[2], dims[3]
            if h.low != h.high and w.low != w.high:
                pad_multiple = math.lcm(h.multiple, w.multiple)
                min_size = -(-max(h.low, w.low, 1) // pad_multiple) * pad_multiple
        super().__init__(module, "eager", device, pad_multiple=pad_multiple, min_size=min_size)
        self.source = source
        self.dims = dims

    def takes(self) -> str:
        """The input shapes the program takes, e.g. ``(B, 3, H, W) with B 1..4096, H, W a multiple of 4 in 8..65536``."""
        if self.dims is None:
            return "the shapes it was exported for"
        if len(self.dims) != 4:
            return f"{len(self.dims)}-d inputs " + ", ".join(f"dim {i} {d}" for i, d in enumerate(self.dims))
        b, c, h, w = self.dims
        hw = f"H, W {h}" if str(h) == str(w) else f"H {h}, W {w}"
        return f"(B, C, H, W) with B {b}, C {c}, {hw}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        message = f"the .pt2 program {self.source} takes {self.takes()}; got {shape}"
        if self.dims is not None and (len(shape) != len(self.dims)
                                      or not all(d.accepts(n) for d, n in zip(self.dims, shape))):
            raise ValueError(message)
        try:
            return super().__call__(x)
        except (AssertionError, RuntimeError) as exc:
            if "guard" in str(exc).lower():
                raise ValueError(message) from None
            raise


def load_program(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[TorchBackend, str]:
    """A ``torch.export`` ``.pt2`` file as an ``eager`` backend (:class:`ProgramBackend`), and its ``segzoo.json`` text.

    The text is '' if the file has none. The sizes the program takes are read from the program itself
    (falling back to the stored ``size_multiple``), so that :class:`segzoo.inference.Predictor` pads
    inputs to them and any other shape is refused with one line naming the sizes it takes.
    """
    from segzoo.inference.metadata import EXTRA_FILE, parse

    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.load(os.fspath(path), extra_files=extra)
        module = program.module().to(device)
    meta = parse(extra[EXTRA_FILE], path) or {}
    multiple = int(meta.get("size_multiple", 1) or 1)
    backend = ProgramBackend(module, os.fspath(path), program_dims(program), device, multiple, 2 * multiple)
    return backend, extra[EXTRA_FILE]


# ---- onnxruntime ------------------------------------------------------------------------------

def require_onnxruntime(module: str = "onnxruntime") -> Any:
    """Import onnxruntime (or ``module``: ``"onnx"``, which the export needs), or raise a one-line error naming the
    extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModuleNotFoundError(f"the onnxruntime backends need the {module} package: {install_hint('export')}") \
            from None


def onnx_bytes(model: nn.Module, example: torch.Tensor, opset: int = ONNX_OPSET) -> bytes:
    """Export ``model`` to ONNX in memory: input ``input`` (B, C, H, W), output ``logits``, dynamic B, H, W
    (with ``aux_params``: outputs ``mask`` and ``label``, as :func:`segzoo.export.onnx.export_onnx`).

    A CPU copy of the model in NCHW layout is exported (onnxruntime chooses its own layouts).
    """
    require_onnxruntime("onnx")  # torch's exporter needs it
    clone = copy.deepcopy(model).cpu().eval()
    if hasattr(clone, "channels_last"):
        clone.channels_last = False
    clone.to(memory_format=torch.contiguous_format)
    aux = getattr(model, "aux_classes", None) is not None
    names = ["mask", "label"] if aux else ["logits"]
    dynamic = {"input": _AXES, names[0]: _AXES, **({"label": {0: "batch"}} if aux else {})}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(clone, (example.cpu(),), buf, dynamo=False, input_names=["input"],
                          output_names=names, dynamic_axes=dynamic, opset_version=opset)
    return buf.getvalue()


def ort_session(model: bytes | str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with all graph optimizations, ``threads`` intra-op threads, 1 inter-op thread."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        where = "the exported model" if isinstance(model, bytes) else os.fspath(model)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"onnxruntime cannot load {where}: {first}") from None
