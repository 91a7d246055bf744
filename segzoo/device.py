"""The one device-name resolver of segzoo (trainer, export, predict, inference)."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``torch.device(device)``, with one clear error for a bad name or a missing GPU.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a ``torch.device``; ``None`` or ``"auto"``:
            CUDA when available, else CPU.

    Raises:
        ValueError: an invalid device name, or CUDA asked for on a machine without it.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for but CUDA is not available; use device 'cpu' "
                         f"(--device cpu)")
    return dev
