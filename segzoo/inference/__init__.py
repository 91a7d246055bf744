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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.data.folder import show_path
from segzoo.device import resolve_device
from segzoo.errors import SegzooError
from segzoo.inference import backends as B
from segzoo.inference import metadata as M
from segzoo.inference.processing import (
    check_normalization,
    logits_to_masks,
    logits_to_probabilities,
    tiled_logits_and_labels,
    to_input,
)
from segzoo.loading import LoadedModel, ModelFactoryLike, load_model_info

__all__ = ["BACKENDS", "OUTPUTS", "TOLERANCES", "Predictor", "load_predictor", "source_kind", "BackendMismatchError"]

BACKENDS = B.BACKENDS
OUTPUTS = ("mask", "probabilities", "logits")
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


class Predictor:
    """A model on one backend, with its pre- and post-processing.

    Attributes:
        backend: the :class:`~segzoo.inference.backends.Backend` (normalized (B, C, H, W) -> logits (B, K, H, W)).
        normalization: ``{"mean": [...], "std": [...]}``, one value per input channel.
        in_channels: 1 (grey: luminance of the RGB image) or 3.
        num_classes: K (1 = binary, thresholded sigmoid).
        size_multiple: the model pads H, W to a multiple of this (tiles must be at least this large).
        info: where it came from: ``source``, ``kind``, ``model_spec``, ``normalization_source``, ...
    """

    def __init__(self, backend: B.Backend, normalization: Mapping[str, Sequence[float]] | None,
                 in_channels: int, num_classes: int | None = None, size_multiple: int = 1,
                 info: Mapping[str, Any] | None = None) -> None:
        if in_channels not in (1, 3):
            raise ValueError(f"segzoo reads RGB images: the model must take 1 or 3 channels, not {in_channels}")
        self.backend = backend
        self.in_channels = int(in_channels)
        self.normalization = check_normalization(normalization, self.in_channels)
        self.size_multiple = int(size_multiple or 1)
        self.info = dict(info or {})
        self._num_classes = int(num_classes) if num_classes else None
        self._aux_classes: int | None = None
        self._probed = False

    @classmethod
    def from_module(cls, model: nn.Module, normalization: Mapping[str, Sequence[float]] | None = None,
                    fold: bool = False, info: Mapping[str, Any] | None = None) -> Predictor:
        """An ``eager`` predictor of a module (B, C, H, W) -> (B, K, H, W); ``fold=True`` folds its BatchNorms in place."""
        channels = int(getattr(model, "in_channels", None) or 3)
        if channels not in (1, 3):
            raise ValueError(f"segzoo reads RGB images: the model must take 1 or 3 channels, not {channels}")
        multiple = int(getattr(model, "size_multiple", 1) or 1)
        backend = B.prepare_eager(model, _example(channels, multiple), fold=fold)
        predictor = cls(backend, normalization, channels, getattr(model, "num_classes", None), multiple,
                        {"kind": "module", "architecture": type(model).__name__, **(info or {})})
        # a segzoo model says whether it has labels (aux_params); another module is taken to have none
        predictor._know_aux(getattr(model, "aux_classes", None))
        return predictor

    def _know_aux(self, aux: int | None) -> None:
        self._probed, self._aux_classes = True, int(aux) if aux is not None else None

    @property
    def num_classes(self) -> int:
        """K, the logits' channels (from the model or its metadata; else one small forward pass finds it)."""
        if self._num_classes is None:
            self._num_classes = self._probe_classes()
        return self._num_classes

    @property
    def aux_classes(self) -> int | None:
        """K', the image-level labels of a model built with ``aux_params`` (``None`` without; one small forward
        pass finds out)."""
        if not self._probed:
            self._probe_classes()
        return self._aux_classes

    @property
    def name(self) -> str:
        """The backend's name."""
        return self.backend.name

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` shows: architecture, classes, channels, normalization, backend, version."""
        from segzoo import __version__

        spec = self.info.get("model_spec")
        aux = {"aux_classes": self.aux_classes} if self.aux_classes is not None else {}  # aux_params models only
        return {**aux, "architecture": (spec or {}).get("name") or self.info.get("architecture"),
                "model_spec": spec, "num_classes": self.num_classes, "in_channels": self.in_channels,
                "normalization": {**self.normalization, "source": self.info.get("normalization_source")},
                "size_multiple": self.size_multiple, "backend": self.name, "source": self.info.get("source"),
                "source_kind": self.info.get("kind"), "segzoo_version": __version__}

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) image (uint8, or float in [0, 1] as :func:`segzoo.data.read_image` gives) -> (C, H, W) normalized."""
        return to_input(image, self.in_channels, self.normalization)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized (B, C, H, W) -> logits (B, K, H, W) float32 on the CPU (padded for the backend and cropped)."""
        return self._forward(x)[0]

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits (B, K, H, W), labels (B, K') or ``None`` without ``aux_params``)."""
        h, w = x.shape[-2:]
        m, least = self.backend.pad_multiple, self.backend.min_size
        ph, pw = max(least, -(-h // m) * m) - h, max(least, -(-w // m) * m) - w
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        out = self.backend(x)
        labels = None
        if isinstance(out, (tuple, list)):
            out, labels = out[0], out[1]
        if not self._probed:
            self._probed, self._aux_classes = True, int(labels.shape[1]) if labels is not None else None
        return (out[..., :h, :w] if ph or pw else out), labels

    def logits_and_labels(self, x: torch.Tensor, tile: int | None = None, tile_overlap: int | None = None,
                          tiles_per_pass: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`logits` and the image-level labels (B, K') of a model built with ``aux_params`` (``None``
        without); with ``tile``, the labels are the mean of the windows' labels."""
        if tile is None:
            return self._forward(x)
        overlap = tile // 4 if tile_overlap is None else tile_overlap
        align = math.lcm(self.size_multiple, self.backend.pad_multiple)
        return tiled_logits_and_labels(self._forward, x, tile, overlap, tiles_per_pass, align)

    def logits(self, x: torch.Tensor, tile: int | None = None, tile_overlap: int | None = None,
               tiles_per_pass: int = 1) -> torch.Tensor:
        """Logits (B, K, H, W) of normalized ``x`` (B, C, H, W), whole or from ``tile`` x ``tile`` windows.

        Windows overlap by at least ``tile_overlap`` pixels (default ``tile // 4``), start at multiples
        of the model's size multiple and are blended (:func:`~segzoo.inference.processing.tiled_logits`);
        an image no larger than the tile is run whole. ``tiles_per_pass`` windows run at once.
        """
        return self.logits_and_labels(x, tile, tile_overlap, tiles_per_pass)[0]

    def predict(self, images: Sequence[np.ndarray], output: str = "mask", threshold: float = 0.5,
                batch_size: int = 1, tile: int | None = None, tile_overlap: int | None = None,
                labels: bool = False) -> list[Any]:
        """Predict each (H, W, 3) image: a mask (H, W), or probabilities / logits (K, H, W), in input order.

        Images of the same size (consecutive or not) share a forward pass, up to ``batch_size``.
        Masks are 0/255 uint8 for one class (sigmoid > ``threshold``), else argmax class indices
        (uint8, uint16 beyond 256 classes). ``labels=True``: each result is a pair ``(value, labels)``,
        ``labels`` the model's image-level output (K',) float32 (``aux_params``; its activation applied
        as built), or ``None`` for a model without them.
        """
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        results: list[Any] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(tuple(np.shape(img)), []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), max(1, batch_size if tile is None else 1)):
                chunk = indices[start:start + max(1, batch_size if tile is None else 1)]
                x = torch.stack([self.preprocess(images[i]) for i in chunk])
                logits, found = self.logits_and_labels(x, tile, tile_overlap, max(1, batch_size))
                if output == "mask":
                    values = list(logits_to_masks(logits, threshold))
                elif output == "probabilities":
                    values = list(logits_to_probabilities(logits).numpy())
                else:
                    values = list(logits.numpy())
                for j, (i, value) in enumerate(zip(chunk, values)):
                    results[i] = (value, found[j].numpy() if found is not None else None) if labels else value
        return results

    def _probe_classes(self) -> int:
        m = max(self.size_multiple, self.backend.pad_multiple)
        h = w = -(-max(2 * m, self.backend.min_size) // m) * m
        dims = getattr(self.backend, "dims", None)  # a .pt2 program's accepted sizes: one exported for one size
        if dims is not None and len(dims) == 4 and dims[2].low == dims[2].high and dims[3].low == dims[3].high:
            h, w = dims[2].low, dims[3].low
        return int(self(torch.zeros(1, self.in_channels, h, w)).shape[1])  # also sets the aux classes


def _example(channels: int, multiple: int, batch: int = 1) -> torch.Tensor:
    side = max(2 * multiple, 64)
    side = -(-side // multiple) * multiple
    return torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(0))


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
    """
    model = loaded.model
    channels = int(getattr(model, "in_channels", None) or 3)
    norm, norm_source = _resolve_normalization(loaded.normalization, normalization, loaded.path, log)
    info = {"source": str(loaded.path), "kind": "checkpoint", "model_spec": loaded.info.get("model_spec"),
            "architecture": type(model).__name__, "normalization_source": norm_source}
    eager = Predictor.from_module(model, norm, fold=fold, info=info)
    if backend == "eager":
        return eager
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
    session = B.ort_session(Q.quantize_onnx(model_bytes, inputs), threads)
    int8 = Predictor(B.OnnxBackend(session, "onnxruntime-int8"), fp32.normalization, fp32.in_channels,
                     fp32._num_classes, fp32.size_multiple, {**fp32.info, "calibration": str(calibration)})
    if fp32._probed:
        int8._know_aux(fp32._aux_classes)
    report = Q.agreement(fp32, int8, inputs)
    int8.info["int8_agreement"] = report
    log(f"segzoo: int8 calibrated on {report['images']} image(s) of {show_path(calibration)}: masks agree with "
        f"float32 at Dice {report['mask_dice_vs_fp32']:.4f} (largest logit change {report['max_abs_logit_diff']:.3g})")
    return int8


def load_predictor(source: str | os.PathLike, backend: str | None = None, checkpoint: str = "best",
                   model_factory: ModelFactoryLike | None = None, device: str = "cpu",
                   normalization: Mapping[str, Sequence[float]] | None = None, threads: int | None = None,
                   calibration: str | os.PathLike | None = None, calibration_count: int | None = None,
                   fold: bool = True, log: Callable[[str], None] = _stderr) -> Predictor:
    """Load a log directory, checkpoint, TorchScript, ``.pt2`` or ONNX file as a :class:`Predictor`.

    Args:
        source: the model (see the module docstring).
        backend: one of :data:`BACKENDS` (``None``: ``eager`` for checkpoints and ``.pt2`` files,
            ``torchscript`` for TorchScript files, ``onnxruntime`` for ONNX files).
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
    backend = backend or {"checkpoint": "eager", "torchscript": "torchscript", "program": "eager",
                          "onnx": "onnxruntime"}[kind]
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend not in _KIND_BACKENDS[kind]:
        raise ValueError(f"{show_path(source)} is {_KIND_NAMES[kind]}, which runs on the "
                         f"{' or '.join(_KIND_BACKENDS[kind])} backend, not {backend}")
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    if backend.startswith("onnxruntime") and dev.type != "cpu":
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
