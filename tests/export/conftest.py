"""Fixtures of the export/predict tests: tiny checkpoints in temporary log directories."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _h4_helpers import NORM, USER_MODELS, tiny_model, write_checkpoint  # noqa: E402

from segzoo.cli import main  # noqa: E402


@pytest.fixture
def logdir(tmp_path):
    """A log directory with best.pth, last.pth and stage1.2.pth of a tiny 2-class unet."""
    model = tiny_model()
    root = tmp_path / "log"
    write_checkpoint(root, model, "best", normalization=NORM)
    write_checkpoint(root, model, "last", normalization=NORM)
    write_checkpoint(root, model, "stage1.2", normalization=NORM)
    return root


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """Make ``h4_user_models`` importable; returns its folder."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "h4_user_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop("h4_user_models", None)


@pytest.fixture
def cli(capsys):
    """Run ``segzoo`` with a list of arguments; returns (exit code, stdout, stderr)."""
    def run(*argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run
