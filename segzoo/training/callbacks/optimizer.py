"""The optimizer step: backward, gradient accumulation and clipping, AMP scaling, non-finite losses."""

from __future__ import annotations

import math
from typing import Any

import torch

from segzoo.training.callback import Callback, CallbackOrder, register_callback
from segzoo.training.distributed import all_reduce_sum
from segzoo.training.state import RunnerState


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


@register_callback("OptimizerCallback")
class OptimizerCallback(Callback):
    """Backward every train batch and step the optimizer every ``accumulation_steps`` batches.

    The loss is divided by ``accumulation_steps`` so accumulated gradients equal those of one
    large batch; the optimizer steps exactly after batches N, 2N, ... and after the last batch
    of the loader (Catalyst stepped off by one). A non-finite loss raises
    :class:`NonFiniteLossError` (``state.nonfinite == "raise"``, the default) or is skipped.

    Args:
        grad_clip_params: e.g. ``{"max_norm": 1.0, "norm_type": 2}`` for ``clip_grad_norm_``,
            or ``{"clip_value": 0.5}`` for ``clip_grad_value_``.
        accumulation_steps: batches per optimizer step (>= 1).
        optimizer_key: key when ``state.optimizer`` is a dict.
        loss_key: which ``state.loss`` entry to optimize.
    """

    def __init__(self, grad_clip_params: dict[str, Any] | None = None, accumulation_steps: int = 1,
                 optimizer_key: str | None = None, loss_key: str = "loss") -> None:
        super().__init__(CallbackOrder.Optimizer)
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be an int >= 1, got {accumulation_steps!r}")
        if grad_clip_params is not None and not ({"max_norm"} <= set(grad_clip_params)
                                                 or set(grad_clip_params) == {"clip_value"}):
            raise ValueError(f"grad_clip_params must hold 'max_norm' (and 'norm_type') or 'clip_value', "
                             f"got {grad_clip_params!r}")
        self.grad_clip_params = grad_clip_params
        self.accumulation_steps = accumulation_steps
        self.optimizer_key = optimizer_key
        self.loss_key = loss_key
        self._pending = 0

    def _optimizer(self, state: RunnerState):
        opt = state.optimizer
        return opt[self.optimizer_key] if isinstance(opt, dict) else opt

    def on_loader_start(self, state: RunnerState) -> None:
        self._pending = 0
        if state.need_backward:
            self._optimizer(state).zero_grad(set_to_none=True)

    def on_batch_end(self, state: RunnerState) -> None:
        if not state.need_backward:
            return
        if self.loss_key not in state.loss:
            raise KeyError(f"no loss {self.loss_key!r} to optimize; computed: {sorted(state.loss)}")
        loss = state.loss[self.loss_key]
        value = float(loss.item())
        last = state.batch_index + 1 == state.loader_len
        if not self._all_finite(value, state):
            if state.nonfinite == "skip":
                state.skipped_batches += 1
                if last and self._pending:
                    self.step(state)
                return
            where = "" if not math.isfinite(value) else " on another process"
            raise NonFiniteLossError(f"non-finite loss {value}{where} at stage {state.stage!r}, epoch {state.epoch}, "
                                     f"batch {state.batch_index} of loader {state.loader_name!r}; the last "
                                     f"checkpoint was kept (use nonfinite='skip' to skip such batches)")
        if self.accumulation_steps > 1:
            loss = loss / self.accumulation_steps
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
        else:
            loss.backward()
        self._pending += 1
        if (state.batch_index + 1) % self.accumulation_steps == 0 or last:
            self.step(state)

    @staticmethod
    def _all_finite(value: float, state: RunnerState) -> bool:
        """Whether the loss is finite on every process (all skip or raise together, so DDP never hangs)."""
        finite = math.isfinite(value)
        if state.distributed:
            flag = all_reduce_sum(torch.tensor([0.0 if finite else 1.0]), state)
            finite = flag.item() == 0
        return finite

    def step(self, state: RunnerState) -> None:
        """Clip, step and zero the gradients."""
        optimizer = self._optimizer(state)
        if self.grad_clip_params is not None:
            if state.scaler is not None:
                state.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if "clip_value" in self.grad_clip_params:
                torch.nn.utils.clip_grad_value_(params, self.grad_clip_params["clip_value"])
            else:
                torch.nn.utils.clip_grad_norm_(params, **self.grad_clip_params)
        if state.scaler is not None:
            state.scaler.step(optimizer)
            state.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self._pending = 0
