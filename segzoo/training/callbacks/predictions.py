"""Prediction pictures: image | target | prediction grids of the first valid samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segzoo.data.visual import IMAGENET_MEAN, IMAGENET_STD, colorize_mask, denormalize
from segzoo.fileio import atomic_path
from segzoo.training.callback import Callback, CallbackOrder, register_callback
from segzoo.training.state import RunnerState


def _to_mask(t: torch.Tensor, logits: bool) -> np.ndarray:
    """(C, H, W) targets/logits or (H, W) indices -> (H, W) class indices."""
    if t.dim() == 2:
        return t.long().numpy()
    if t.shape[0] == 1:
        return ((t[0] > 0) if logits else (t[0] > 0.5)).long().numpy()
    return t.argmax(0).long().numpy()


#: rows of the TensorBoard grid when no PredictionSaverCallback sets them
DEFAULT_NUM_IMAGES = 4


class SampleGrid:
    """The first ``n`` samples of each epoch's first valid batch, drawn as an image | target | prediction grid.

    Each callback that draws pictures owns one (the runner's state carries no samples).

    Args:
        n: samples (rows) to keep.
        input_key: batch key of the images (B, C, H, W).
        target_key: batch key of the targets ((B, K, H, W) or (B, H, W) indices).
        output_key: model output key (B, K, H, W) logits.
    """

    def __init__(self, n: int, input_key: str = "features", target_key: str = "targets",
                 output_key: str = "logits") -> None:
        self.n, self.keys = n, (input_key, target_key, output_key)
        self.samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def reset(self) -> None:
        """Forget the samples (at each epoch start)."""
        self.samples = None

    def capture(self, state: RunnerState) -> None:
        """Keep CPU copies of the first ``n`` samples when the batch is the valid loader's first."""
        if state.batch_index != 0 or state.loader_name != state.valid_loader:
            return
        input_key, target_key, output_key = self.keys
        x, y, o = (state.input.get(input_key), state.input.get(target_key), state.output.get(output_key))
        if all(isinstance(t, torch.Tensor) for t in (x, y, o)):
            n = self.n
            self.samples = (x[:n].detach().float().cpu(), y[:n].detach().cpu(), o[:n].detach().float().cpu())

    def grid(self, state: RunnerState) -> np.ndarray | None:
        """uint8 (n*H, 3*W, 3) picture: one row per sample, columns image | target | prediction.

        Images are denormalized with the run's ``normalization`` (ImageNet statistics when unset).
        """
        if self.samples is None:
            return None
        x, y, o = self.samples
        norm = state.checkpoint_data.get("normalization") or {}
        mean, std = norm.get("mean", IMAGENET_MEAN), norm.get("std", IMAGENET_STD)
        rows = []
        for i in range(min(self.n, x.shape[0])):
            image = (denormalize(x[i][:3], mean[:3], std[:3]).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            if image.shape[2] == 1:
                image = np.repeat(image, 3, axis=2)
            rows.append(np.concatenate([image, colorize_mask(_to_mask(y[i], False)),
                                        colorize_mask(_to_mask(o[i], True))], axis=1))
        return np.concatenate(rows, axis=0) if rows else None


@register_callback("PredictionSaverCallback")
class PredictionSaverCallback(Callback):
    """Write ``logdir/predictions/{stage}.{epoch}.png`` (image | target | prediction) each epoch (rank 0).

    Images are denormalized with the run's ``normalization`` (ImageNet statistics when unset).

    Args:
        num_images: samples (rows) per picture; also the rows of a :class:`TensorboardLogger`'s
            grid in the same run unless that logger sets its own ``num_images``.
        input_key: batch key of the images (B, C, H, W).
        target_key: batch key of the targets ((B, K, H, W) or (B, H, W) indices).
        output_key: model output key (B, K, H, W) logits.
    """

    def __init__(self, num_images: int = 4, input_key: str = "features", target_key: str = "targets",
                 output_key: str = "logits") -> None:
        super().__init__(CallbackOrder.External)
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be an int >= 1, got {num_images!r}")
        self.num_images = num_images
        self.samples = SampleGrid(num_images, input_key, target_key, output_key)

    def on_epoch_start(self, state: RunnerState) -> None:
        self.samples.reset()

    def on_batch_end(self, state: RunnerState) -> None:
        self.samples.capture(state)

    def on_epoch_end(self, state: RunnerState) -> None:
        if not state.is_main_process or state.logdir is None:
            return
        grid = self.samples.grid(state)
        if grid is None:
            return
        path = Path(state.logdir) / "predictions" / f"{state.stage}.{state.epoch}.png"
        with atomic_path(path, overwrite=True) as tmp:  # a resumed run re-writes its own epoch's picture
            Image.fromarray(grid).save(tmp, format="PNG")
