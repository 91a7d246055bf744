"""Static int8 quantization for the ``onnxruntime-int8`` backend, calibrated on the user's own images.

``onnxruntime.quantization.quantize_static`` (QDQ format, int8 weights per output channel, uint8
activations, MinMax ranges) reads the calibration inputs through a ``CalibrationDataReader``:
each calibration image is read like a prediction input (:func:`segzoo.data.read_image`) and
normalized like one. How much the masks change is measured on those images and reported as the
Dice agreement between the int8 and the float32 masks (1.0 = identical).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_CALIBRATION_COUNT = 16


def _reader_class() -> type:
    from onnxruntime.quantization import CalibrationDataReader

    class ImageCalibrationReader(CalibrationDataReader):
        """Yields ``{input_name: (1, C, H, W) float32}`` for each calibration input, then ``None``."""

        def __init__(self, inputs: Sequence[np.ndarray], input_name: str) -> None:
            self.inputs = list(inputs)
            self.input_name = input_name
            self._it: Iterator[np.ndarray] = iter(self.inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            arr = next(self._it, None)
            return None if arr is None else {self.input_name: arr}

        def rewind(self) -> None:
            self._it = iter(self.inputs)

    return ImageCalibrationReader


def calibration_inputs(source: str | os.PathLike, preprocess: Callable[[np.ndarray], torch.Tensor],
                       count: int = DEFAULT_CALIBRATION_COUNT, max_pixels: int | None = None) -> list[np.ndarray]:
    """The first ``count`` images (by name) of a folder (or one image), each (1, C, H, W) float32, normalized.

    Raises:
        FileNotFoundError, ValueError: no folder / no images / an unreadable image (named).
    """
    from segzoo.data.folder import MAX_PIXELS, read_image
    from segzoo.data.listing import list_images

    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"calibration count must be a positive integer, got {count!r}")
    images = list_images(source)[:count]
    limit = max_pixels or MAX_PIXELS
    return [preprocess(read_image(p, max_pixels=limit)).unsqueeze(0).numpy() for p in images]


def quantize_onnx(model: bytes, inputs: Sequence[np.ndarray], input_name: str = "input") -> bytes:
    """Statically quantize an ONNX model (bytes) with ``inputs`` as calibration data; returns the int8 model.

    Args:
        model: a float32 ONNX model.
        inputs: normalized calibration inputs, each (1, C, H, W) float32 (sizes may differ).
        input_name: the graph input fed with them.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not inputs:
        raise ValueError("int8 quantization needs at least one calibration image")
    with tempfile.TemporaryDirectory(prefix="segzoo-int8-") as tmp:
        fp32, pre, int8 = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        fp32.write_bytes(model)
        try:  # shape inference + graph clean-up recommended before quantization; optional
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            source = pre
        except Exception:  # an unusual graph: quantize it as it is
            source = fp32
        reader = _reader_class()(inputs, input_name)
        quantize_static(str(source), str(int8), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return int8.read_bytes()


def mask_dice(reference: np.ndarray, other: np.ndarray, num_classes: int) -> float:
    """Dice agreement of two masks (same shape): foreground for one class, else the mean over classes 1..K-1 present.

    1.0 when both masks have no foreground at all.
    """
    if num_classes == 1:
        classes = [None]
    else:
        classes = [c for c in range(1, num_classes) if (reference == c).any() or (other == c).any()]
    if not classes:
        return 1.0
    scores = []
    for c in classes:
        a = reference > 0 if c is None else reference == c
        b = other > 0 if c is None else other == c
        scores.append(2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))
    return float(np.mean(scores))


def agreement(reference: Callable[[torch.Tensor], torch.Tensor], quantized: Callable[[torch.Tensor], torch.Tensor],
              inputs: Sequence[np.ndarray], threshold: float = 0.5) -> dict[str, Any]:
    """Compare two backends on ``inputs``: mean mask Dice (int8 vs fp32) and the largest logit difference."""
    from segzoo.inference.processing import logits_to_masks

    dices, worst = [], 0.0
    for arr in inputs:
        x = torch.from_numpy(arr)
        ref, got = reference(x), quantized(x)
        worst = max(worst, float((ref - got).abs().max()))
        k = ref.shape[1]
        dices.append(mask_dice(logits_to_masks(ref, threshold)[0], logits_to_masks(got, threshold)[0], k))
    return {"images": len(inputs), "mask_dice_vs_fp32": float(np.mean(dices)) if dices else 1.0,
            "max_abs_logit_diff": worst}
