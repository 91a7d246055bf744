"""The :class:`Predictor`: a model on one backend with its pre- and post-processing (see :mod:`segzoo.inference`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from segzoo.inference import backends as B
from segzoo.inference.processing import (
    check_normalization,
    logits_to_masks,
    logits_to_probabilities,
    tiled_logits_and_labels,
    to_input,
)

__all__ = ["OUTPUTS", "Predictor"]

OUTPUTS = ("mask", "probabilities", "logits")

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
