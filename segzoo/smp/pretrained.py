"""smp's ``smp.from_pretrained`` for the front door: folders segzoo wrote and folders smp 0.6 itself wrote.

A ``save_pretrained`` folder (or Hub id) of a front-door model is rebuilt from its ``config.json``. A folder
smp 0.6's own ``save_pretrained`` wrote (``config.json`` with ``_model_class``, ``model.safetensors``: smp's
Hub checkpoints have this layout) loads through :func:`segzoo.smp.from_smp` onto the ``structure="smp"`` twin,
with equal outputs, for the architectures and encoders that map; others are one
:class:`~segzoo.errors.CheckpointError` line naming the first smp key that does not map.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from segzoo.errors import CheckpointError
from segzoo.models.pretrained import CONFIG_NAME, read_config, read_weights, resolve_folder
from segzoo.smp.hub import read_smp_config
from segzoo.smp.models import MODEL_CLASSES, SmpModel
from segzoo.smp.statedict import from_smp

__all__ = ["from_pretrained", "smp_folder_model"]


def smp_folder_model(folder: Path, config: dict[str, Any], classes: int | None = None) -> SmpModel:
    """The ``structure="smp"`` twin of the smp model an smp-written folder holds, with its weights (eval mode).

    Raises:
        CheckpointError: an architecture, encoder or argument that does not map (one line), or ``classes``
            other than the saved number (smp's head then cannot load: load, then train a new head).
    """
    arch = config["_model_class"]
    if not isinstance(arch, str):
        raise CheckpointError(f"{folder / CONFIG_NAME}: '_model_class' must be an smp class name, got {arch!r}")
    arguments = {k: v for k, v in config.items() if not k.startswith("_") and k != "encoder_weights"}
    if classes is not None and classes != arguments.get("classes", 1):
        raise CheckpointError(f"{folder / CONFIG_NAME}: an smp folder of {arguments.get('classes', 1)} classes; "
                              f"classes={classes} is not available for smp's own folders (load it, then train a "
                              f"new head)")
    try:
        model = from_smp(read_weights(folder), arch=arch, **arguments)
    except KeyError as exc:
        raise CheckpointError(f"{folder / CONFIG_NAME}: {exc.args[0] if exc.args else exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:  # arguments of the wrong type in config.json
        raise CheckpointError(f"{folder / CONFIG_NAME}: smp's {arch} arguments do not build: {exc}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{folder}: smp's {arch} does not load into segzoo: {exc}") from None
    return model.eval()


def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, *, classes: int | None = None,
                    strict: bool = True, revision: str | None = None) -> SmpModel:
    """smp's ``smp.from_pretrained``: the front-door model a ``save_pretrained`` folder (or Hub id) holds,
    segzoo's or smp 0.6's own (:func:`smp_folder_model`; ``strict`` then has no effect: smp's weights load
    strictly). Returned in eval mode, as smp's.

    Raises:
        FileNotFoundError, NotADirectoryError: no such folder / file.
        CheckpointError: a foreign or malformed folder, weights that do not map or fit (one line).
    """
    folder = resolve_folder(pretrained_model_name_or_path, revision)
    smp_config = read_smp_config(folder)
    if smp_config is not None:
        return smp_folder_model(folder, smp_config, classes)
    name = read_config(folder).get("smp_class")
    cls = MODEL_CLASSES.get(name, SmpModel) if isinstance(name, str) else SmpModel
    return cls.from_pretrained(folder, classes=classes, strict=strict)
