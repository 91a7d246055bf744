"""Reduced-precision backends against float32: their Dice measured on a run's valid set.

:func:`check_precision` runs a checkpoint on the ``eager`` backend (float32), on ``torch-bf16`` and, when
onnxruntime is installed and the device is the CPU, on ``onnxruntime-int8`` (calibrated on the run's
*train* images, so it is not tuned on the images it is judged on), over the same images, and reports
per backend the mean per-image Dice of its masks against the ground-truth masks and against
float32's masks (:func:`segzoo.inference.quantize.mask_dice`: foreground for one class, else the mean
over the classes present). :func:`segzoo.inference.precision_report.write_report` stores it next to the
checkpoint, and ``segzoo check-precision LOGDIR`` does both; ``--backend auto`` reads it
(:func:`segzoo.inference.precision_report.auto_backend`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.inference.precision_report import FORMAT, REDUCED, TOLERANCE, file_sha256

__all__ = ["CALIBRATION_IMAGES", "ValidSet", "check_precision"]

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


def _masks(predictor: Any, images: Sequence[np.ndarray], threshold: float, batch_size: int) -> list[np.ndarray]:
    return predictor.predict(list(images), threshold=threshold, batch_size=batch_size)


def check_precision(loaded: Any, valid: ValidSet, backends: Sequence[str] | None = None, threshold: float = 0.5,
                    batch_size: int = 8, limit: int | None = None, calibration: str | os.PathLike | None = None,
                    threads: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
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
        log: where warnings and the int8 calibration line go (default: stderr).

    Returns:
        The report (see :func:`segzoo.inference.precision_report.write_report`): ``backends[name]`` has ``dice`` (against the ground truth)
        and, for the reduced ones, ``dice_vs_fp32`` and ``delta`` (float32's Dice minus theirs); the int8
        model's bytes are under the key ``_int8_bytes`` (not written into the JSON).

    Raises:
        ValueError: an unknown backend, an empty valid set, int8 asked for without onnxruntime.
    """
    import torch

    from segzoo.hardware import cpu_capability, cpu_model
    from segzoo.hardware.precision import native_bf16
    from segzoo.inference import backends as B
    from segzoo.inference import from_loaded
    from segzoo.inference.quantize import mask_dice

    if log is None:
        def log(line: str) -> None:
            print(line, file=sys.stderr)
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
    if "onnxruntime-int8" in backends:
        try:
            B.require_onnxruntime()
        except ModuleNotFoundError as exc:  # asked for by name: one line naming the extra, before any work
            raise ValueError(str(exc)) from None
    count = len(valid) if limit is None else min(len(valid), int(limit))
    if count < 1:
        raise ValueError(f"no images to measure on in {valid.description}")
    predictors = {"eager": from_loaded(loaded, "eager", fold=True, log=log)}
    norm = predictors["eager"].normalization  # given to the others: a missing one is warned about once
    if "torch-bf16" in backends:
        predictors["torch-bf16"] = from_loaded(loaded, "torch-bf16", norm, log=log)
    int8_bytes = cal_text = None
    if "onnxruntime-int8" in backends:
        from segzoo.inference import quantize_inputs
        from segzoo.inference.predictor import _example

        onnx_fp32 = from_loaded(loaded, "onnxruntime", norm, threads=threads, log=log)
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
              "device": str(device), "cpu": cpu_model(), "isa": cpu_capability(), "native_bf16": {"native": native, "reason": why},
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "tolerance": TOLERANCE,
              "backends": results}
    if int8_bytes is not None:
        report["_int8_bytes"] = int8_bytes
    return report
