"""The optimizer's step kernel: torch's fused step for Adam, AdamW and SGD when the user left it to torch.

torch's ``Adam`` / ``AdamW`` / ``SGD`` take ``foreach=`` and ``fused=``; left at ``None`` (their default),
a CPU run takes the per-tensor loop (``_single_tensor_adam``): a dozen small kernels per parameter tensor,
about a tenth of a resnet34 U-Net's train step on a 2-core CPU. The fused kernel computes the same update
(the same formula, in one pass per tensor; float rounding may differ in the last bits) and is what a user
tuning by hand passes (``torch.optim.Adam(params, fused=True)``). :func:`choose_optimizer_kernel` turns it
on for a run when every parameter group left both ``foreach`` and ``fused`` at ``None``, ``differentiable``
is off and every parameter is a floating tensor on a device torch has the fused kernel for. A user who
passed ``foreach=`` or ``fused=`` (``False`` included) keeps their choice. The choice is recorded in the
run's checkpoints (``"optimizer_kernel"``) and said in the run's first line.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

__all__ = ["FUSED_TYPES", "choose_optimizer_kernel", "choose_run_kernels", "switched_by_segzoo"]

#: optimizer classes (exact types: a subclass may override ``step``) whose ``fused=True`` this sets
FUSED_TYPES: tuple[type, ...] = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_SWITCHED: weakref.WeakSet = weakref.WeakSet()  # optimizers whose ``fused`` this module set


def switched_by_segzoo(optimizer: Any) -> bool:
    """Whether :func:`choose_optimizer_kernel` set ``optimizer``'s ``fused`` (the user left it ``None``): the
    run's recorded settings keep the user's ``None``, so reusing the optimizer object to resume is the same run."""
    try:
        return optimizer in _SWITCHED
    except TypeError:
        return False


def _fused_devices() -> set[str]:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # an older or newer torch without the helper: CPU and CUDA have the kernels since 2.4
        return {"cpu", "cuda"}
    return set(_get_fused_kernels_supported_devices())


def choose_optimizer_kernel(optimizer: Any) -> dict[str, Any]:
    """Turn on ``fused`` in ``optimizer``'s parameter groups where the user left the kernel to torch.

    Args:
        optimizer: the run's optimizer (anything: only an exact ``Adam`` / ``AdamW`` / ``SGD`` is changed).

    Returns:
        What the run uses, for its checkpoints and first log line: ``{"kernel": "fused" | "foreach" |
        "per-tensor" | "torch's default" | "?", "source": why}``.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        return {"kernel": "?", "source": f"{type(optimizer).__name__}: not a torch optimizer"}
    name = type(optimizer).__name__
    groups = optimizer.param_groups
    if type(optimizer) not in FUSED_TYPES:
        return {"kernel": "torch's default", "source": f"{name}: only Adam, AdamW and SGD are switched"}
    given = [(g.get("foreach"), g.get("fused")) for g in groups]
    if any(f is not None or u is not None for f, u in given):
        foreach, fused = given[0]
        kernel = "fused" if fused else "foreach" if foreach else "per-tensor"
        return {"kernel": kernel, "source": f"{name}(foreach={foreach!r}, fused={fused!r}) as given"}
    if any(g.get("differentiable") for g in groups):
        return {"kernel": "torch's default", "source": f"{name}(differentiable=True) has no fused kernel"}
    devices = _fused_devices()
    params = [p for g in groups for p in g["params"]]
    odd = next((p for p in params if p.device.type not in devices or p.dtype not in _FUSED_DTYPES), None)
    if odd is not None or not params:
        why = "no parameters" if odd is None else f"a {odd.dtype} parameter on {odd.device.type}"
        return {"kernel": "torch's default", "source": f"{name}: {why}, which the fused kernel does not take"}
    if optimizer.state:  # a step already ran with torch's default: its state's "step" counters may not fit
        return {"kernel": "torch's default", "source": f"{name} has stepped already (its state is kept as is)"}
    for group in groups:
        group["fused"] = True
    _SWITCHED.add(optimizer)
    return {"kernel": "fused", "source": f"{name} left foreach/fused to torch: fused step (same update)"}


def choose_run_kernels(optimizers: Any) -> dict[str, Any] | list[dict[str, Any]] | None:
    """:func:`choose_optimizer_kernel` on each optimizer of a run, once each.

    Args:
        optimizers: an iterable of optimizers, ``None`` or dicts of them (the run's and its stages').

    Returns:
        The one optimizer's choice, a list of them (several optimizers), or ``None`` (none).
    """
    seen: dict[int, Any] = {}
    for item in optimizers:
        for opt in (item.values() if isinstance(item, dict) else [item]):
            if opt is not None and id(opt) not in seen:
                seen[id(opt)] = opt
    kernels = [choose_optimizer_kernel(opt) for opt in seen.values()]
    return kernels[0] if len(kernels) == 1 else kernels or None
