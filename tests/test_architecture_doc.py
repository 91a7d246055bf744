"""ARCHITECTURE.md stays true: every module path and every backticked name it cites exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "ARCHITECTURE.md").read_text()
SOURCE = "\n".join(p.read_text() for p in (ROOT / "segzoo").rglob("*.py"))


def test_cited_paths_exist():
    paths = set(re.findall(r"`(segzoo/[\w/]*(?:\.py)?)`", DOC)) | set(re.findall(r"`(tests/[\w/]+\.py)`", DOC))
    assert len(paths) > 20
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"ARCHITECTURE.md cites paths that do not exist: {missing}"


def test_cited_names_are_defined():
    names = {n for n in re.findall(r"`([A-Z][A-Za-z]+|[a-z]+_[a-z_]+)`", DOC) if n != "NAME"}  # `NAME`: a placeholder
    assert {"ARCHITECTURES", "BACKENDS", "UnetMetaSpec", "train_from_config", "CallbackOrder"} <= names
    undefined = sorted(n for n in names
                       if not re.search(rf"^\s*(?:class|def)\s+{n}\b|^\s*{n}\s*(?::[^=]*)?=", SOURCE, re.M))
    assert not undefined, f"ARCHITECTURE.md cites names defined nowhere in segzoo/: {undefined}"
