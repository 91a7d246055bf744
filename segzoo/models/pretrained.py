"""``save_pretrained`` / ``from_pretrained`` on every segzoo model: Hugging Face's folder layout.

A folder holds ``config.json`` (how to rebuild the model: its registry spec, see
:mod:`segzoo.models.registry`) and ``model.safetensors`` (its ``state_dict``; safetensors holds tensors
only, nothing is unpickled). ``from_pretrained`` reads a local folder, or a Hugging Face Hub repository id
through ``huggingface_hub`` (the same two files; offline, its cache only). With ``classes=`` other than the
saved number the head is rebuilt; as in smp, ``strict=False`` then loads every other tensor (those of
another shape are left out, with one warning) and ``strict=True`` refuses in one line.

Folders written by segmentation_models_pytorch, or any other ``config.json``, are refused in one line
naming the file.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from segzoo.architectures import with_former_defaults
from segzoo.errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "segzoo-pretrained"
FORMAT_VERSION = 1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _config_error(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: {why}")


def read_config(folder: Path) -> dict[str, Any]:
    """The segzoo config of a ``save_pretrained`` folder.

    Raises:
        FileNotFoundError: no ``config.json`` there.
        CheckpointError: not JSON, or not a segzoo config (smp's, another library's), in one line.
    """
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a save_pretrained folder holds {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _config_error(path, f"not a readable JSON file ({type(exc).__name__}: {exc})") from None
    if not isinstance(config, dict):
        raise _config_error(path, f"expected a JSON object, got {type(config).__name__}")
    if config.get("segzoo_format") != FORMAT:
        if "_model_class" in config:
            raise _config_error(path, f"written by segmentation_models_pytorch ({config['_model_class']!r}), not "
                                      f"segzoo: load it with segzoo.smp.from_pretrained(folder) or segzoo.smp.from_smp")
        raise _config_error(path, "not a segzoo save_pretrained config (no 'segzoo_format' key)")
    if config.get("format_version") != FORMAT_VERSION:
        raise _config_error(path, f"format_version {config.get('format_version')!r} is not one this segzoo reads "
                                  f"({FORMAT_VERSION})")
    return config


def resolve_folder(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is; a Hub id (``owner/name``) downloaded (or found in the cache) by ``huggingface_hub``.

    Raises:
        FileNotFoundError: neither a folder nor a Hub id; the Hub could not be reached and the cache has nothing.
        NotADirectoryError: a file was given.
    """
    path = Path(os.fspath(name_or_path))
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path}: a file; from_pretrained takes the folder save_pretrained wrote")
    name = os.fspath(name_or_path)
    if not _HUB_ID.match(name) or ".." in name:
        raise FileNotFoundError(f"{name}: no such folder (and not a Hub repository id 'owner/name')")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    except Exception as exc:  # offline, unknown repo, auth: one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(f"{name}: no such folder, and the Hub repository could not be fetched "
                                f"({type(exc).__name__}: {reason})") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` (CPU).

    Raises:
        FileNotFoundError: the file is missing.
        CheckpointError: not a safetensors file (corrupt, truncated), in one line.
    """
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(path.read_bytes())
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _config_error(path, f"not a valid safetensors file ({reason})") from None


def saved_names(folder: Path) -> list[str]:
    """The tensor names in the header of ``model.safetensors``; ``[]`` when it cannot be read (the config is
    checked first, then :func:`read_weights` says what is wrong with the file)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return []


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], strict: bool, source: Path) -> None:
    """Load ``state`` into ``model``; ``strict=False`` as smp: tensors of other shapes and missing or unexpected
    names are left out (one warning lists the shapes); ``strict=True``: any difference is one-line error."""
    own = model.state_dict()
    other_shape = [k for k in state.keys() & own.keys() if state[k].shape != own[k].shape]
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if strict and (other_shape or missing or unexpected):
        parts = []
        if other_shape:
            k = sorted(other_shape)[0]
            parts.append(f"{len(other_shape)} of another shape (e.g. {k}: saved {tuple(state[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(f"{source}: does not match the model: tensors {'; '.join(parts)}; pass strict=False "
                              f"to load the others (the rest stays as built, to be trained)")
    if other_shape:
        warnings.warn(f"from_pretrained(strict=False): {len(other_shape)} tensor(s) of another shape not loaded, "
                      f"train them: {', '.join(sorted(other_shape))}", stacklevel=3)
    model.load_state_dict({k: v for k, v in state.items() if k not in other_shape}, strict=strict)


class PretrainedMixin:
    """``save_pretrained(folder)`` and ``from_pretrained(folder or Hub id, classes=, strict=)``.

    Subclasses that are not rebuilt from a registry spec override :meth:`pretrained_config` and
    :meth:`from_pretrained_config` (the smp front door does).
    """

    def pretrained_config(self) -> dict[str, Any]:
        """What ``config.json`` holds besides the format keys: the model's registry spec.

        Raises:
            ValueError: the model has no spec (built around an encoder instance).
        """
        from segzoo.models.registry import get_model_spec

        spec = get_model_spec(self)  # type: ignore[arg-type]
        if spec is None:
            raise ValueError(f"{type(self).__name__} was built around an encoder instance and has no spec to "
                             f"rebuild it from; save model.state_dict() and rebuild it with your own code")
        return {"builder": "segzoo.models", "spec": spec}

    @classmethod
    def from_pretrained_config(cls, config: dict[str, Any], classes: int | None, source: Path,
                               weight_names: Collection[str] = ()) -> nn.Module:
        """Build the (untrained) model ``config`` describes, with ``classes`` outputs if given (``weight_names``:
        the saved weights' names, which tell a default the folder's model was saved with before it changed)."""
        from segzoo.models.registry import model_from_spec

        if config.get("builder") != "segzoo.models":
            hint = "segzoo.smp.from_pretrained" if config.get("builder") == "segzoo.smp" else "its own loader"
            raise _config_error(source, f"saved by {config.get('builder')!r}; load it with {hint}")
        spec = config.get("spec")
        if not isinstance(spec, dict) or not isinstance(spec.get("kwargs", {}), dict):
            raise _config_error(source, f"malformed 'spec' {spec!r}")
        spec = {"name": spec.get("name"), "kwargs": dict(spec.get("kwargs", {}))}
        former = with_former_defaults(str(spec["name"]), spec["kwargs"], weight_names)
        spec["kwargs"] = spec["kwargs"] if former is None else former
        if classes is not None:
            spec["kwargs"]["num_classes"] = classes
        try:
            model = model_from_spec(spec)
        except (KeyError, TypeError, ValueError) as exc:
            raise _config_error(source, f"cannot rebuild the model: {str(exc).splitlines()[0]}") from None
        if not isinstance(model, cls):
            raise _config_error(source, f"describes {spec['name']!r} ({type(model).__name__}), not a {cls.__name__}; "
                                        f"load it with {type(model).__name__}.from_pretrained")
        return model

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``save_directory`` (created if missing).

        Both files are written atomically; a folder holding a ``config.json`` that is not segzoo's is refused.

        Returns:
            the folder.
        """
        from safetensors.torch import save

        from segzoo.fileio import make_folder, write_bytes_atomic, write_json_atomic

        folder = Path(os.fspath(save_directory))
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder}: a file; save_pretrained writes into a folder")
        config_path = folder / CONFIG_NAME
        if config_path.exists():
            read_config(folder)  # refuses to replace another library's config
        config = {"segzoo_format": FORMAT, "format_version": FORMAT_VERSION, **self.pretrained_config()}
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        make_folder(folder)
        write_bytes_atomic(folder / WEIGHTS_NAME, save(state, metadata={"format": "pt"}), overwrite=True)
        write_json_atomic(config, config_path, overwrite=True)
        return folder

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, classes: int | None = None,
                        strict: bool = True, revision: str | None = None) -> nn.Module:
        """The model saved by :meth:`save_pretrained` in a folder or a Hub repository.

        Args:
            pretrained_model_name_or_path: a local folder, or a Hub id ``owner/name``.
            classes: output classes; other than the saved number, the head is rebuilt (needs ``strict=False``).
            strict: every tensor must match (else one line); ``False``: as smp, those of other shapes are
                left out with a warning.
            revision: Hub revision (branch, tag or commit).

        Raises:
            FileNotFoundError, NotADirectoryError: no such folder / file.
            CheckpointError: a foreign or malformed ``config.json``, corrupt weights, a mismatch with ``strict``.
        """
        folder = resolve_folder(pretrained_model_name_or_path, revision)
        config = read_config(folder)
        model = cls.from_pretrained_config(config, classes, folder / CONFIG_NAME, saved_names(folder))
        load_matching(model, read_weights(folder), strict, folder / WEIGHTS_NAME)
        return model.eval()
