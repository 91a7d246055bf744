"""One inference path for ``segzoo predict``, ``segzoo serve`` and Python users.

    >>> from segzoo.inference import load_predictor
    >>> predictor = load_predictor("logs/run1", backend="onnxruntime")   # or a .pth, .pt (TorchScript), .pt2, .onnx
    >>> mask = predictor.predict([image])[0]              # image (H, W, 3) uint8 -> mask (H, W)
    >>> probs = predictor.predict([image], output="probabilities")[0]  # (K, H, W) float32

A :class:`Predictor` holds a backend (see :mod:`segzoo.inference.backends`) and what the model
needs around it: the normalization (the checkpoint's, or the metadata segzoo stores in exported
files; otherwise ``normalization=`` or, with a warning, ImageNet's), the number of input channels
and classes. Images of any H x W are taken: the models pad to their size multiple and crop back;
``tile=`` runs overlapping, blended windows instead, as ``segzoo predict --tile`` does.

A model built with ``aux_params`` also gives labels (B, K'): :meth:`Predictor.logits_and_labels`,
``predict(..., labels=True)``; :attr:`Predictor.aux_classes` is K' (``None`` without).

Sources: a trainer log directory or a checkpoint (all four backends: TorchScript and ONNX are
made from the rebuilt model in memory and checked against it), a TorchScript file
(``torchscript``), a ``torch.export`` ``.pt2`` file (``eager``), an ONNX file (``onnxruntime`` or
``onnxruntime-int8``).
"""

from __future__ import annotations

import math
import os
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from segzoo.data.folder import show_path
from segzoo.device import resolve_device
from segzoo.errors import SegzooError
from segzoo.inference import backends as B
from segzoo.inference import metadata as M
from segzoo.inference.predictor import OUTPUTS, Predictor, _example
from segzoo.loading import LoadedModel, ModelFactoryLike, load_model_info

__all__ = ["BACKENDS", "OUTPUTS", "TOLERANCES", "Predictor", "load_predictor", "source_kind", "BackendMismatchError"]

BACKENDS = B.BACKENDS
# largest |backend - eager| logit difference accepted, relative to max(1, max |eager logit|)
TOLERANCES = {"eager": 1e-4, "torchscript": 1e-4, "onnxruntime": 1e-3}
_KIND_BACKENDS = {"checkpoint": BACKENDS, "torchscript": ("torchscript",), "program": ("eager",),
                  "onnx": ("onnxruntime", "onnxruntime-int8")}
_KIND_NAMES = {"checkpoint": "a checkpoint", "torchscript": "a TorchScript file", "program": "a .pt2 program",
               "onnx": "an ONNX file"}


class BackendMismatchError(SegzooError, RuntimeError):
    """A backend built from a checkpoint does not reproduce the eager model's outputs."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def source_kind(source: str | os.PathLike) -> str:
    """``checkpoint`` (log directory or ``.pth`` checkpoint), ``torchscript``, ``program`` (``.pt2``) or ``onnx``."""
    path = Path(source)
    if path.is_dir():
        return "checkpoint"
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".pt2":
        return "program"
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
            return "torchscript"
    return "checkpoint"


def _resolve_normalization(stored: Mapping[str, Any] | None, given: Mapping[str, Any] | None, source: Any,
                           log: Callable[[str], None]) -> tuple[dict | None, str]:
    if given is not None:
        return dict(given), "given"
    if stored:
        return dict(stored), "stored"
    log(f"segzoo: warning: {show_path(source)} stores no normalization; using ImageNet's mean/std "
        f"(pass --mean/--std, or normalization=, if the model was trained with others)")
    return None, "default"


def _check_against(reference: torch.Tensor, got: torch.Tensor, backend: str, tolerance: float) -> float:
    worst = float((reference - got).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    if worst > tolerance * scale:
        raise BackendMismatchError(f"the {backend} backend differs from the eager model by {worst:.3g} "
                                   f"(tolerance {tolerance * scale:.3g}); use --backend eager")
    return worst


def from_loaded(loaded: LoadedModel, backend: str = "eager", normalization: Mapping[str, Any] | None = None,
                threads: int | None = None, calibration: str | os.PathLike | None = None,
                calibration_count: int | None = None, fold: bool = True,
                log: Callable[[str], None] = _stderr) -> Predictor:
    """A :class:`Predictor` on ``backend`` for a model rebuilt from a checkpoint (:func:`segzoo.loading.load_model_info`).

    The TorchScript and ONNX backends are built from the model in memory and checked against it
    on a random input (:data:`TOLERANCES`); int8 reports its mask agreement on the calibration images.
    ``backend="auto"`` (one line on ``log`` says what and why) or ``None`` (the same, said only when a
    precision report exists): what the checkpoint's precision report allows
    (:func:`segzoo.inference.precision_report.auto_backend`), else ``eager``.
    """
    if backend in ("auto", None):
        return _auto(loaded, normalization, threads, fold, log, announce=backend == "auto")
    model = loaded.model
    channels = int(getattr(model, "in_channels", None) or 3)
    norm, norm_source = _resolve_normalization(loaded.normalization, normalization, loaded.path, log)
    info = {"source": str(loaded.path), "kind": "checkpoint", "model_spec": loaded.info.get("model_spec"),
            "architecture": type(model).__name__, "normalization_source": norm_source}
    eager = Predictor.from_module(model, norm, fold=fold, info=info)
    if backend == "eager":
        return eager
    if backend == "torch-bf16":
        return _bf16(eager, log)
    example = _example(channels, eager.size_multiple)
    reference, ref_labels = eager._forward(example)
    if backend == "torchscript":
        built = B.trace_backend(model, example)
    else:
        if any(p.device.type != "cpu" for p in model.parameters()):
            raise ValueError(f"the {backend} backend runs on the CPU; use --device cpu")
        session = B.ort_session(B.onnx_bytes(model, example), threads)
        built = B.OnnxBackend(session)
    predictor = Predictor(built, eager.normalization, channels, eager._num_classes, eager.size_multiple, info)
    if eager._probed:
        predictor._know_aux(eager._aux_classes)
    got, labels = predictor._forward(example)
    _check_against(reference, got, built.name, TOLERANCES[built.name])
    if ref_labels is not None:  # aux_params: the labels too
        _check_against(ref_labels, labels if labels is not None else torch.full_like(ref_labels, math.inf),
                       built.name, TOLERANCES[built.name])
    if backend == "onnxruntime-int8":
        return _quantized(predictor, B.onnx_bytes(model, example), calibration, calibration_count, threads, log)
    return predictor


def _quantized(fp32: Predictor, model_bytes: bytes, calibration: Any, count: int | None, threads: int | None,
               log: Callable[[str], None]) -> Predictor:
    from segzoo.inference import quantize as Q

    if calibration is None:
        raise ValueError("the onnxruntime-int8 backend needs calibration images: pass --calibration FOLDER "
                         "(some of your own images, e.g. 16)")
    inputs = Q.calibration_inputs(calibration, fp32.preprocess, count or Q.DEFAULT_CALIBRATION_COUNT)
    return quantize_inputs(fp32, model_bytes, inputs, show_path(calibration), threads, log)[0]


def quantize_inputs(fp32: Predictor, model_bytes: bytes, inputs: Sequence[Any], where: str, threads: int | None,
                    log: Callable[[str], None] = _stderr) -> tuple[Predictor, bytes]:
    """An ``onnxruntime-int8`` predictor of ``fp32`` (an onnxruntime predictor of ``model_bytes``), statically
    quantized on ``inputs`` (normalized (1, C, H, W) float32 arrays; ``where`` names them), and its model bytes.

    Logs the int8 masks' Dice agreement with float32 on ``inputs``.
    """
    from segzoo.inference import quantize as Q

    int8_bytes = Q.quantize_onnx(model_bytes, inputs)
    int8 = _int8_predictor(fp32, B.ort_session(int8_bytes, threads), where)
    report = Q.agreement(fp32, int8, inputs)
    int8.info["int8_agreement"] = report
    log(f"segzoo: int8 calibrated on {report['images']} image(s) of {where}: masks agree with "
        f"float32 at Dice {report['mask_dice_vs_fp32']:.4f} (largest logit change {report['max_abs_logit_diff']:.3g})")
    return int8, int8_bytes


def _int8_predictor(fp32: Predictor, session: Any, calibration: str) -> Predictor:
    int8 = Predictor(B.OnnxBackend(session, "onnxruntime-int8"), fp32.normalization, fp32.in_channels,
                     fp32._num_classes, fp32.size_multiple, {**fp32.info, "calibration": calibration})
    if fp32._probed:
        int8._know_aux(fp32._aux_classes)
    return int8


def _bf16(eager: Predictor, log: Callable[[str], None]) -> Predictor:
    """``torch-bf16``: the eager predictor's (folded) module under bf16 autocast; a warning where bf16 is emulated."""
    from segzoo.hardware.precision import native_bf16

    backend = eager.backend
    native, why = native_bf16(backend.device)
    if not native:
        log(f"segzoo: warning: torch-bf16 on {backend.device}: {why}, so bf16 is emulated here (slower than eager); "
            f"--backend auto never picks it")
    built = B.TorchBackend(backend.module, "torch-bf16", backend.device, backend.channels_last_input,
                           autocast=torch.bfloat16)
    bf16 = Predictor(built, eager.normalization, eager.in_channels, eager._num_classes, eager.size_multiple,
                     {**eager.info, "native_bf16": native, "bf16_reason": why})
    if eager._probed:
        bf16._know_aux(eager._aux_classes)
    example = _example(eager.in_channels, eager.size_multiple)
    if not all(bool(torch.isfinite(t).all()) for t in bf16._forward(example) if t is not None):
        raise BackendMismatchError("the torch-bf16 backend gives non-finite logits (bf16 overflow); use --backend eager")
    return bf16


def _auto(loaded: LoadedModel, normalization: Mapping[str, Any] | None, threads: int | None, fold: bool,
          log: Callable[[str], None], announce: bool) -> Predictor:
    """``--backend auto``: the backend the checkpoint's precision report allows (:mod:`segzoo.inference.precision_report`)."""
    from segzoo.inference.precision_report import auto_backend, report_path

    device = next(loaded.model.parameters(), torch.empty(0)).device
    if not announce and not os.path.lexists(report_path(loaded.path)):  # the default, and nothing measured: eager
        return from_loaded(loaded, "eager", normalization, threads, fold=fold, log=log)
    choice = auto_backend(loaded.path, device)
    log(f"segzoo: --backend auto: {choice.reason}")
    if choice.int8_model is None:
        return from_loaded(loaded, choice.backend, normalization, threads, fold=fold, log=log)
    eager = from_loaded(loaded, "eager", normalization, threads, fold=fold, log=log)
    return _int8_predictor(eager, B.ort_session(choice.int8_model, threads), "the precision check's")


def load_predictor(source: str | os.PathLike, backend: str | None = None, checkpoint: str = "best",
                   model_factory: ModelFactoryLike | None = None, device: str = "cpu",
                   normalization: Mapping[str, Sequence[float]] | None = None, threads: int | None = None,
                   calibration: str | os.PathLike | None = None, calibration_count: int | None = None,
                   fold: bool = True, log: Callable[[str], None] = _stderr) -> Predictor:
    """Load a log directory, checkpoint, TorchScript, ``.pt2`` or ONNX file as a :class:`Predictor`.

    Args:
        source: the model (see the module docstring).
        backend: one of :data:`BACKENDS` or ``auto`` (``None``: ``auto``, quietly when nothing was measured,
            for checkpoints: see :func:`from_loaded`; ``eager`` for ``.pt2`` files, ``torchscript`` for
            TorchScript files, ``onnxruntime`` for ONNX files).
        checkpoint: ``best`` | ``last`` | ``STAGE.EPOCH`` | a path, for log directories.
        model_factory: ``"package.module:factory"`` for checkpoints of models outside the registry.
        device: ``cpu`` | ``cuda[:N]`` (torch backends only).
        normalization: ``{"mean", "std"}`` overriding what the source stores.
        threads: intra-op threads (torch: process-wide ``torch.set_num_threads``; onnxruntime: per session).
        calibration: a folder of images for ``onnxruntime-int8``.
        calibration_count: how many of them (the first by name) calibrate it (default 16).
        fold: fold BatchNorms into convolutions on the eager backend.
        log: where warnings and the int8 report go (default: stderr).

    Raises:
        ValueError: an unknown backend, or one that cannot run this kind of source (the message
            names the ones that can); bad normalization; missing calibration images.
        FileNotFoundError, CheckpointError: as :func:`segzoo.loading.load_model_info`.
        BackendMismatchError: a backend made from a checkpoint does not match the eager model.
    """
    kind = source_kind(source)
    default = {"checkpoint": None, "torchscript": "torchscript", "program": "eager", "onnx": "onnxruntime"}[kind]
    if backend == "auto" and kind != "checkpoint":
        log(f"segzoo: --backend auto: {default}: a precision check needs a checkpoint or log directory")
        backend = default
    backend = backend or default
    if backend not in (*BACKENDS, "auto", None):
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} or auto")
    if backend not in (*_KIND_BACKENDS[kind], "auto", None):
        raise ValueError(f"{show_path(source)} is {_KIND_NAMES[kind]}, which runs on the "
                         f"{' or '.join(_KIND_BACKENDS[kind])} backend, not {backend}")
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    if (backend or "").startswith("onnxruntime") and dev.type != "cpu":
        raise ValueError(f"the {backend} backend runs on the CPU; use --device cpu")
    if kind == "checkpoint":
        loaded = load_model_info(source, checkpoint, model_factory, map_location=dev)
        return from_loaded(loaded, backend, normalization, threads, calibration, calibration_count, fold, log)
    if not Path(source).is_file():
        raise FileNotFoundError(f"no such model file: {show_path(source)}")
    if kind == "onnx":
        session = B.ort_session(source, threads)
        meta = M.read_onnx_metadata(session, source) or {}
        built: B.Backend = B.OnnxBackend(session)
        shape = session.get_inputs()[0].shape
        channels = meta.get("in_channels") or (shape[1] if len(shape) == 4 and isinstance(shape[1], int) else 3)
    else:
        built, text = (B.load_torchscript if kind == "torchscript" else B.load_program)(source, dev)
        meta = M.parse(text, source) or {}
        channels = meta.get("in_channels") or 3
    norm, norm_source = _resolve_normalization(meta.get("normalization"), normalization, source, log)
    info = {"source": str(source), "kind": kind, "model_spec": meta.get("model_spec"),
            "architecture": (meta.get("model_spec") or {}).get("name"), "normalization_source": norm_source}
    predictor = Predictor(built, norm, int(channels), meta.get("num_classes"), meta.get("size_multiple", 1), info)
    if "segzoo_version" in meta:  # segzoo's metadata names aux_classes when the model has labels
        predictor._know_aux(meta.get("aux_classes"))
    if backend == "onnxruntime-int8":
        return _quantized(predictor, Path(source).read_bytes(), calibration, calibration_count, threads, log)
    return predictor
