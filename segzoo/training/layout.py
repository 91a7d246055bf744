"""The runner's ``channels_last``: one layout setting that segzoo's models and the runner both honour.

``channels_last`` has the meaning of :class:`~segzoo.models.UnetMetaSpec`'s argument: ``"auto"``
(the layout measured fastest on this machine, per pass: :func:`segzoo.hardware.preferred_layout`),
``True`` / ``False`` (always / never channels_last); ``None`` (the runner's default) leaves the
model's own choice. On a segzoo model the runner *sets* the model's layout
(:meth:`~segzoo.models.UnetMetaSpec.set_layout`): the model keeps converting its inputs and moving
its weights at ``train()`` / ``eval()`` as that setting says. Any other ``nn.Module`` cannot choose a
layout per pass, so the runner converts it (and the 4-D float inputs) as before: ``True``, or
``"auto"`` when the machine's choice for the train step is channels_last.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from segzoo.errors import short_repr
from segzoo.hardware import resolve_layout
from segzoo.training.state import RunnerState

SETTINGS = (None, "auto", True, False)


def check_layout_setting(channels_last: Any) -> None:
    """Raise ValueError (one line) unless ``channels_last`` is ``None``, ``"auto"``, ``True`` or ``False``."""
    if not any(channels_last is v or (isinstance(v, str) and channels_last == v) for v in SETTINGS):
        raise ValueError(f"channels_last must be True, False, 'auto' or None (the model's own choice), "
                         f"got {short_repr(channels_last)}")


def _segzoo_model(model: nn.Module) -> nn.Module | None:
    """The :class:`~segzoo.models.UnetMetaSpec` ``model`` is (or wraps in DDP / torch.compile), else None."""
    from segzoo.models.meta import UnetMetaSpec

    for _ in range(3):
        if isinstance(model, UnetMetaSpec):
            return model
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's wrapper
            model = model._orig_mod
        else:
            return None
    return None


def apply_layout(model: nn.Module, state: RunnerState) -> bool:
    """Honour the setting ``state.channels_last`` (``None`` / ``"auto"`` / ``True`` / ``False``) on ``model``.

    A segzoo model gets the setting as its own layout (``None``: it keeps its choice); the layout
    the model then runs in is recorded in ``state.checkpoint_data["layout"]`` (``{"forward",
    "train", "source"}``, stored in checkpoints). ``state.channels_last`` becomes the bool "the runner
    converts the model and the 4-D float inputs" (only for other modules).

    Returns:
        Whether the runner converts ``model`` to channels_last (a module that is not segzoo's).

    Raises:
        ValueError: another value of ``channels_last``.
    """
    setting = state.channels_last
    check_layout_setting(setting)
    target = _segzoo_model(model)
    if target is not None:
        if setting is not None:
            target.set_layout(setting, source=f"runner channels_last={setting!r}")
        choice = target.layout_choice
        converts = False
        record = {"forward": choice.forward, "train": choice.train, "source": choice.source}
    else:
        converts = bool(setting) if setting != "auto" else resolve_layout("auto", state.device).train
        source = "model's own" if setting is None else f"runner channels_last={setting!r}"
        record = {"forward": converts, "train": converts, "source": source}
    state.channels_last = converts
    state.checkpoint_data["layout"] = record
    return converts

