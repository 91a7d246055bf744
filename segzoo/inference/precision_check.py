"""Reduced-precision backends against float32: their Dice measured on a run's valid set, and ``--backend auto``.

:func:`check_precision` runs a checkpoint on the ``eager`` backend (float32), on ``torch-bf16`` and, when
onnxruntime is installed and the device is the CPU, on ``onnxruntime-int8`` (calibrated on the run's
*train* images, so it is not tuned on the images it is judged on), over the same images, and reports
per backend the mean per-image Dice of its masks against the ground-truth masks and against
float32's masks (:func:`segzoo.inference.quantize.mask_dice`: foreground for one class, else the mean
over the classes present). :func:`write_report` stores it next to the checkpoint,
``checkpoints/best.precision.json`` (with the int8 model it measured, ``best.int8.onnx``), and
``segzoo check-precision LOGDIR`` does both.

:func:`auto_backend` is what ``--backend auto`` (the default for checkpoints) decides from that file:
a reduced-precision backend only when its Dice against the ground truth is within :data:`TOLERANCE`
of float32's and, for ``torch-bf16``, when the device computes bf16 natively
(:func:`segzoo.hardware.precision.native_bf16`); of two that qualify, the higher Dice (bf16 on a tie).
The file is checked first: a report of another checkpoint (its SHA-256 differs), a file that is not
such a report, or values out of range are ignored with the reason, and float32 runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "TOLERANCE", "AutoChoice", "ValidSet", "auto_backend", "check_precision", "file_sha256",
           "int8_model_path", "read_report", "report_path", "write_report"]

#: the ``format`` entry of a report: a file without it is never read as one, nor replaced
FORMAT = "segzoo-precision-check"
#: largest Dice (against the ground truth) a reduced-precision backend may lose to float32 and be chosen
TOLERANCE = 0.005
REDUCED = ("torch-bf16", "onnxruntime-int8")
MAX_REPORT_BYTES = 1 << 20
CALIBRATION_IMAGES = 16


class ValidSet:
    """Images and their ground-truth masks: ``len(v)`` pairs, ``v.sample(i)`` -> (image (H, W, 3), mask (H, W)).

    ``dataset`` is anything with ``__len__`` and ``sample(i)`` (segzoo's :class:`~segzoo.data.ProceduralSegmentation`
    and :class:`~segzoo.data.SegmentationFolder` have it); ``description`` says where it comes from, and
    ``calibration`` (optional, the same kind) holds the images int8 is calibrated on.
    """

    def __init__(self, dataset: Any, description: str, calibration: Any | None = None,
                 calibration_description: str | None = None) -> None:
        self.dataset, self.description = dataset, description
        self.calibration, self.calibration_description = calibration, calibration_description

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``index``-th (image, mask)."""
        return self.dataset.sample(index)

    @classmethod
    def from_config(cls, data: dict[str, Any], seed: int, num_classes: int) -> ValidSet:
        """The valid set of a run's ``data`` config section (procedural or folder), its train set to calibrate on.

        Raises:
            FileNotFoundError, ValueError: a folder of the config is missing or unusable (named).
        """
        from segzoo.data import ProceduralSegmentation, SegmentationFolder

        params = {k: v for k, v in dict(data.get("params") or {}).items() if k not in ("transforms", "labels")}
        params.setdefault("num_classes", num_classes)
        if data.get("kind", "procedural") == "procedural":
            valid = ProceduralSegmentation(int(data.get("valid_size", 64)), seed=seed + 1, **params)
            train = ProceduralSegmentation(min(CALIBRATION_IMAGES, int(data.get("train_size", 256))), seed=seed,
                                           **params)
            return cls(valid, f"the run's procedural valid set ({len(valid)} images, seed {seed + 1})", train,
                       f"the run's procedural train set (seed {seed})")
        params.pop("image_size", None)
        valid = SegmentationFolder(data["valid_images"], data["valid_masks"], **params)
        train = None
        if data.get("train_images") and data.get("train_masks"):
            try:
                train = SegmentationFolder(data["train_images"], data["train_masks"], **params)
            except (OSError, ValueError):
                train = None
        return cls(valid, f"the run's valid folders {data['valid_images']} / {data['valid_masks']} "
                          f"({len(valid)} images)", train,
                   f"the run's train folder {data['train_images']}" if train is not None else None)

    @classmethod
    def from_folders(cls, images: str | os.PathLike, masks: str | os.PathLike, num_classes: int) -> ValidSet:
        """Images and masks paired by file stem, as :class:`~segzoo.data.SegmentationFolder` reads them."""
        from segzoo.data import SegmentationFolder

        valid = SegmentationFolder(images, masks, num_classes=num_classes)
        return cls(valid, f"{images} / {masks} ({len(valid)} images)")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def report_path(checkpoint: str | os.PathLike) -> Path:
    """Where the report of a checkpoint file lives: ``checkpoints/best.pth`` -> ``checkpoints/best.precision.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".precision.json")


def int8_model_path(checkpoint: str | os.PathLike) -> Path:
    """The int8 ONNX model a check measured: ``checkpoints/best.pth`` -> ``checkpoints/best.int8.onnx``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".int8.onnx")


def _masks(predictor: Any, images: Sequence[np.ndarray], threshold: float, batch_size: int) -> list[np.ndarray]:
    return predictor.predict(list(images), threshold=threshold, batch_size=batch_size)


def check_precision(loaded: Any, valid: ValidSet, backends: Sequence[str] | None = None, threshold: float = 0.5,
                    batch_size: int = 8, limit: int | None = None, calibration: str | os.PathLike | None = None,
                    threads: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure float32 (``eager``) and reduced-precision backends of a checkpoint on ``valid``.

    Args:
        loaded: a :class:`segzoo.loading.LoadedModel` (its model's BatchNorms get folded in place).
        valid: the images and ground-truth masks (:class:`ValidSet`).
        backends: of ``torch-bf16`` and ``onnxruntime-int8`` (default: both; int8 only when onnxruntime
            is installed and the model is on the CPU).
        threshold: probability threshold of one-class models.
        batch_size: images per forward pass.
        limit: measure the first ``limit`` images only.
        calibration: a folder of images int8 is calibrated on (default: ``valid.calibration``, else the
            first measured images).
        threads: onnxruntime's intra-op threads.
        log: where progress lines go.

    Returns:
        The report (see :func:`write_report`): ``backends[name]`` has ``dice`` (against the ground truth)
        and, for the reduced ones, ``dice_vs_fp32`` and ``delta`` (float32's Dice minus theirs); the int8
        model's bytes are under the key ``_int8_bytes`` (not written into the JSON).

    Raises:
        ValueError: an unknown backend, an empty valid set.
    """
    import torch

    from segzoo.hardware import cpu_model
    from segzoo.hardware.precision import native_bf16
    from segzoo.inference import backends as B
    from segzoo.inference import from_loaded
    from segzoo.inference.quantize import mask_dice

    device = next(loaded.model.parameters(), torch.empty(0)).device
    if backends is None:
        backends = ["torch-bf16"]
        try:
            B.require_onnxruntime()
            if device.type == "cpu":
                backends.append("onnxruntime-int8")
        except ModuleNotFoundError:
            log("segzoo: onnxruntime is not installed: int8 is not measured")
    unknown = [b for b in backends if b not in REDUCED]
    if unknown:
        raise ValueError(f"unknown reduced-precision backend {unknown[0]!r}; choose among {', '.join(REDUCED)}")
    count = len(valid) if limit is None else min(len(valid), int(limit))
    if count < 1:
        raise ValueError(f"no images to measure on in {valid.description}")
    quiet: Callable[[str], None] = lambda _line: None  # noqa: E731  (from_loaded's normalization warning: once)
    predictors = {"eager": from_loaded(loaded, "eager", fold=True, log=log)}
    if "torch-bf16" in backends:
        predictors["torch-bf16"] = from_loaded(loaded, "torch-bf16", log=log)
    int8_bytes = cal_text = None
    if "onnxruntime-int8" in backends:
        from segzoo.inference import quantize_inputs
        from segzoo.inference.predictor import _example

        onnx_fp32 = from_loaded(loaded, "onnxruntime", threads=threads, log=quiet)
        if calibration is not None:
            from segzoo.inference.quantize import calibration_inputs

            inputs = calibration_inputs(calibration, onnx_fp32.preprocess, CALIBRATION_IMAGES)
            cal_text = str(calibration)
        else:
            source = valid.calibration if valid.calibration is not None else valid.dataset
            n = min(CALIBRATION_IMAGES, len(source))
            inputs = [onnx_fp32.preprocess(source.sample(i)[0]).unsqueeze(0).numpy() for i in range(n)]
            cal_text = (valid.calibration_description if valid.calibration is not None
                        else f"the first {n} measured images")
        model_bytes = B.onnx_bytes(loaded.model, _example(onnx_fp32.in_channels, onnx_fp32.size_multiple))
        predictors["onnxruntime-int8"], int8_bytes = quantize_inputs(onnx_fp32, model_bytes, inputs, cal_text,
                                                                     threads, log)
    k = predictors["eager"].num_classes
    dice: dict[str, list[float]] = {name: [] for name in predictors}
    agree: dict[str, list[float]] = {name: [] for name in predictors if name != "eager"}
    chunk = max(16, batch_size)
    for start in range(0, count, chunk):
        pairs = [valid.sample(i) for i in range(start, min(count, start + chunk))]
        images, truths = [p[0] for p in pairs], [p[1] for p in pairs]
        reference = _masks(predictors["eager"], images, threshold, batch_size)
        for name, predictor in predictors.items():
            got = reference if name == "eager" else _masks(predictor, images, threshold, batch_size)
            dice[name] += [mask_dice(t, m, k) for t, m in zip(truths, got)]
            if name != "eager":
                agree[name] += [mask_dice(r, m, k) for r, m in zip(reference, got)]
    native, why = native_bf16(device)
    fp32 = float(np.mean(dice["eager"]))
    results: dict[str, Any] = {"eager": {"dice": fp32}}
    for name in agree:
        value = float(np.mean(dice[name]))
        results[name] = {"dice": value, "dice_vs_fp32": float(np.mean(agree[name])), "delta": fp32 - value}
    if "onnxruntime-int8" in results:
        results["onnxruntime-int8"]["calibration"] = cal_text
    report = {"format": FORMAT, "version": 1, "checkpoint": {"name": Path(loaded.path).name,
                                                             "sha256": file_sha256(loaded.path)},
              "valid_set": valid.description, "images": count, "threshold": threshold,
              "device": str(device), "cpu": cpu_model(), "native_bf16": {"native": native, "reason": why},
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "tolerance": TOLERANCE,
              "backends": results}
    if int8_bytes is not None:
        report["_int8_bytes"] = int8_bytes
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One line per backend: its Dice against the ground truth and against float32."""
    fp32 = report["backends"]["eager"]["dice"]
    lines = [f"{report['images']} images of {report['valid_set']}, on {report['device']} ({report['cpu']})",
             f"  eager (fp32)       Dice {fp32:.4f}"]
    for name in REDUCED:
        r = report["backends"].get(name)
        if r is None:
            continue
        ok = "within" if r["delta"] <= TOLERANCE else "NOT within"
        lines.append(f"  {name:<18} Dice {r['dice']:.4f} ({r['delta']:+.4f} below fp32, {ok} {TOLERANCE}); "
                     f"masks agree with fp32's at Dice {r['dice_vs_fp32']:.4f}")
    return lines


def _ours(path: Path) -> bool:
    """Whether ``path`` holds a report (so ``--force`` may replace it): never a user's file of that name."""
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            return False
        return json.loads(path.read_bytes()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_writable(checkpoint: str | os.PathLike, force: bool = False, int8: bool = True) -> None:
    """Refuse, before any measurement, outputs that exist (without ``force``) or are not segzoo's.

    Raises:
        FileExistsError: one line naming the file.
    """
    report = report_path(checkpoint)
    outputs = [report] + ([int8_model_path(checkpoint)] if int8 else [])
    for path in outputs:
        if not os.path.lexists(path):
            continue
        if not force:
            raise FileExistsError(f"{path} exists (a previous check?); pass --force to replace it")
        if path.is_symlink() or not path.is_file():
            raise FileExistsError(f"{path} exists and is not a regular file; it is never replaced")
    if os.path.lexists(report) and not _ours(report):
        raise FileExistsError(f"{report} exists and is not a segzoo precision report; it is never replaced")
    if int8 and os.path.lexists(outputs[-1]) and not os.path.lexists(report):
        raise FileExistsError(f"{outputs[-1]} exists without its report; it is never replaced")


def write_report(report: dict[str, Any], checkpoint: str | os.PathLike, force: bool = False) -> Path:
    """Write ``report`` next to ``checkpoint`` (and its int8 model), atomically; returns the JSON's path.

    Without ``force`` an existing file is refused; with it only a previous report (and its int8 model)
    is replaced, never another file.
    """
    from segzoo.fileio import write_bytes_atomic, write_json_atomic

    int8 = report.pop("_int8_bytes", None)
    check_writable(checkpoint, force, int8 is not None)
    if int8 is not None:
        model = int8_model_path(checkpoint)
        write_bytes_atomic(model, int8, overwrite=force)
        report["backends"]["onnxruntime-int8"].update(model=model.name, model_sha256=hashlib.sha256(int8).hexdigest())
    return write_json_atomic(report, report_path(checkpoint), overwrite=force)


def _dice(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0.0 <= value <= 1.0


def read_report(checkpoint: str | os.PathLike) -> tuple[dict[str, Any] | None, str]:
    """The report of ``checkpoint`` if it is one of this very checkpoint, else ``None`` and why not.

    Checked: a regular file under 1 MiB of JSON, the :data:`FORMAT` marker, the checkpoint's SHA-256,
    every Dice a number in [0, 1].
    """
    path = report_path(checkpoint)
    if not os.path.lexists(path):
        return None, "missing"
    try:
        if not path.is_file() or path.stat().st_size > MAX_REPORT_BYTES:
            return None, f"{path} is not a regular file under 1 MiB"
        report = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"{path} is not readable JSON ({type(exc).__name__})"
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        return None, f"{path} is not a segzoo precision report"
    ckpt, results = report.get("checkpoint"), report.get("backends")
    if not isinstance(ckpt, dict) or not isinstance(results, dict) or not isinstance(results.get("eager"), dict):
        return None, f"{path} is malformed"
    if ckpt.get("sha256") != file_sha256(checkpoint):
        return None, f"{path} was measured on another checkpoint than {Path(checkpoint).name}"
    for name, entry in results.items():
        if name not in ("eager", *REDUCED) or not isinstance(entry, dict) or not _dice(entry.get("dice")):
            return None, f"{path}: backend {str(name)[:40]!r} has no Dice in [0, 1]"
    return report, ""


class AutoChoice:
    """What ``--backend auto`` runs: ``backend``, the ``reason`` (one line), the int8 model file if chosen."""

    def __init__(self, backend: str, reason: str, int8_model: Path | None = None) -> None:
        self.backend, self.reason, self.int8_model = backend, reason, int8_model


def auto_backend(checkpoint: str | os.PathLike, device: Any = "cpu") -> AutoChoice:
    """The backend ``--backend auto`` picks for ``checkpoint`` on ``device`` (see the module docstring)."""
    from segzoo.hardware.precision import native_bf16

    report, why = read_report(checkpoint)
    name = Path(checkpoint).name
    if report is None:
        if why == "missing":
            return AutoChoice("eager", f"eager (fp32): no precision check of {name} (measure one: segzoo "
                                       f"check-precision LOGDIR)")
        return AutoChoice("eager", f"eager (fp32): ignoring {why}")
    fp32 = float(report["backends"]["eager"]["dice"])
    candidates, refused = [], []
    for backend in REDUCED:
        entry = report["backends"].get(backend)
        if entry is None:
            continue
        value = float(entry["dice"])
        if fp32 - value > TOLERANCE:
            refused.append(f"{backend} {value:.4f}")
            continue
        if backend == "torch-bf16":
            native, reason = native_bf16(device)
            if not native:
                refused.append(f"torch-bf16 (not native here: {reason})")
                continue
        else:
            model = int8_model_path(checkpoint)
            if str(device) != "cpu":
                refused.append("onnxruntime-int8 (CPU only)")
                continue
            if not model.is_file() or entry.get("model_sha256") != file_sha256(model):
                refused.append(f"onnxruntime-int8 ({model.name} is missing or not the one measured)")
                continue
            try:
                from segzoo.inference.backends import require_onnxruntime

                require_onnxruntime()
            except ModuleNotFoundError:
                refused.append("onnxruntime-int8 (onnxruntime is not installed)")
                continue
        candidates.append((value, backend == "torch-bf16", backend))
    measured = f"valid Dice fp32 {fp32:.4f}"
    if not candidates:
        return AutoChoice("eager", f"eager (fp32): {measured}; no reduced precision within {TOLERANCE}"
                                   + (f" ({', '.join(refused)})" if refused else ""))
    value, _, backend = max(candidates)
    return AutoChoice(backend, f"{backend}: valid Dice {value:.4f} against fp32's {fp32:.4f}, within {TOLERANCE} "
                               f"({report_path(checkpoint).name})",
                      int8_model_path(checkpoint) if backend == "onnxruntime-int8" else None)
