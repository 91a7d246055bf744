"""smp's extras around ``save_pretrained`` / ``from_pretrained`` for the front door's models.

- :func:`write_model_card`: the ``README.md`` model card smp writes beside the weights, with the ``dataset``
  name and ``metrics`` given to ``save_pretrained``.
- :func:`push_folder`: ``push_to_hub=True``, the saved folder uploaded with ``huggingface_hub`` (the repository
  is created if missing); a failure is one line and leaves the local folder in place.
- :func:`read_smp_config`: tells a folder written by smp 0.6's own ``save_pretrained`` (``config.json`` with
  ``_model_class``) from segzoo's (:mod:`segzoo.smp.pretrained` loads it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from segzoo.models.pretrained import CONFIG_NAME

__all__ = ["write_model_card", "push_folder", "read_smp_config"]

CARD_NAME = "README.md"
_CARD_MARK = "<!-- written by segzoo.smp save_pretrained -->"


def write_model_card(folder: Path, model_class: str, dataset: str | None = None, metrics: Any = None) -> Path | None:
    """Write ``folder/README.md`` (YAML header, the class, the ``metrics`` as JSON, the ``dataset`` name).

    A ``README.md`` that segzoo did not write is left as it is (returns ``None``).

    Raises:
        ValueError: ``metrics`` not storable as JSON.
    """
    from segzoo.fileio import write_bytes_atomic

    path = folder / CARD_NAME
    if path.exists() and _CARD_MARK not in path.read_text(encoding="utf-8", errors="replace"):
        return None
    try:
        metrics_text = "[More Information Needed]" if metrics is None else \
            f"```json\n{json.dumps(metrics, indent=4)}\n```"
    except (TypeError, ValueError) as exc:
        raise ValueError(f"save_pretrained: metrics must be JSON data (numbers, strings, lists, dicts): {exc}") from None
    text = (f"---\nlibrary_name: segzoo\npipeline_tag: image-segmentation\ntags:\n- semantic-segmentation\n"
            f"- pytorch\n- segmentation-models-pytorch\n---\n{_CARD_MARK}\n# {model_class} Model Card\n\n"
            f"Load it with `import segzoo.smp as smp; smp.from_pretrained(\"<folder or repo>\")`.\n\n"
            f"## Model metrics\n{metrics_text}\n\n## Dataset\nDataset name: "
            f"{dataset if dataset is not None else '[More Information Needed]'}\n")
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite=True)


def push_folder(folder: Path, repo_id: str | None = None, private: bool | None = None, token: str | None = None,
                commit_message: str = "Push model using segzoo.smp") -> Any:
    """Upload ``folder`` to the Hub repository ``repo_id`` (default: the folder's name, in the token's
    namespace, as huggingface_hub's mixin), creating it if missing; returns the commit info.

    Raises:
        ConnectionError: the Hub could not be reached or refused (one line; the folder stays saved).
    """
    from huggingface_hub import HfApi

    repo = repo_id or folder.name
    try:
        api = HfApi(token=token)
        repo = api.create_repo(repo, private=private, exist_ok=True).repo_id
        return api.upload_folder(repo_id=repo, folder_path=folder, commit_message=commit_message)
    except Exception as exc:  # offline, auth, permissions: one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConnectionError(f"push_to_hub {repo!r} failed ({type(exc).__name__}: {reason}); the model is saved "
                              f"in {folder}") from None


def read_smp_config(folder: Path) -> dict[str, Any] | None:
    """``config.json`` of ``folder`` when smp 0.6 wrote it (it has ``_model_class``), else ``None``."""
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # segzoo's reader gives the one-line error
    return config if isinstance(config, dict) and "_model_class" in config else None

