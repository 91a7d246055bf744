"""Helpers of the export/predict tests (tests/export/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from _models import TINY, tiny_model  # noqa: F401  (re-exported for the export tests)

from segzoo.checkpoint import save_checkpoint
from segzoo.models.registry import get_model_spec

NORM = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}

# a user's own models, importable as "h4_user_models:<factory>" (module written per test)
USER_MODELS = textwrap.dedent('''
    import torch.nn as nn

    def pointwise(num_classes=3):
        """1x1 convolution: the logits of a pixel depend on that pixel only."""
        return nn.Sequential(nn.Conv2d(3, num_classes, 1))

    def wide(num_classes=3):
        return nn.Sequential(nn.Conv2d(3, num_classes, 3, padding=1))

    def not_a_module(num_classes=3):
        return "nope"

    NOT_CALLABLE = 3
''')


def write_checkpoint(logdir: Path, model: torch.nn.Module, name: str = "best", spec="auto",
                     normalization=None, **extra) -> Path:
    """Save ``model`` as the trainer would, in ``logdir/checkpoints/{name}.pth``."""
    data = {"model_state_dict": model.state_dict(),
            "model_spec": get_model_spec(model) if spec == "auto" else spec,
            "normalization": normalization, "epoch": 1, "stage": "stage1",
            "valid_metrics": {"loss": 0.5}, "epoch_metrics": {}, **extra}
    return save_checkpoint(data, logdir / "checkpoints" / f"{name}.pth")


def assert_user_error(result: tuple[int, str, str], *fragments: str) -> None:
    """Exit code 2, one line on stderr containing ``fragments``, no traceback."""
    code, _, err = result
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
