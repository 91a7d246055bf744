"""Conventions of the package layout (issue 12): short modules, one definition per helper, one file writer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segzoo"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 400


def test_modules_are_short():
    long = {str(p.relative_to(PACKAGE)): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


def _top_level_names(path: Path) -> list[str]:
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names


# helpers that once had two or three definitions meaning different things
@pytest.mark.parametrize("name", ["resolve_device", "check_normalization", "check_mean_std", "build_model",
                                  "rebuild_model", "model_from_config", "ModelFactory", "ModelFactoryLike",
                                  "check_output", "compare_with_eager", "check_opset", "normalization_from_args"])
def test_one_definition(name):
    where = [str(p.relative_to(PACKAGE)) for p in MODULES for n in _top_level_names(p) if n == name]
    assert len(where) == 1, f"{name} is defined in {where}"


def test_encoders_and_feature_parts_share_one_declaration():
    from segzoo.encoders import EncoderSpec
    from segzoo.parts import DeclaresFeatures, FeaturePart

    assert issubclass(EncoderSpec, DeclaresFeatures) and issubclass(FeaturePart, DeclaresFeatures)
    for cls in (EncoderSpec, FeaturePart):  # declared once, in DeclaresFeatures
        assert "out_channels" not in vars(cls) and "out_strides" not in vars(cls)
    assert DeclaresFeatures.__abstractmethods__ == {"out_channels", "out_strides"}


def test_files_are_published_only_by_fileio():
    """Temporary-file-and-rename writers live in segzoo/fileio.py alone; every other module calls it."""
    writer = re.compile(r"\bos\.(replace|rename|link)\(|\bmkstemp\(|NamedTemporaryFile\(|\.rename\(")
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in MODULES if p.name != "fileio.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if writer.search(line)]
    assert not found, found


def test_traced_file_names_come_from_one_helper():
    """TorchScript file names are built by segzoo.export.traced_filename alone (segzoo trace and runner.trace)."""
    from segzoo.export import traced_filename

    assert traced_filename(None, "forward", "train", True) == "traced-forward-in_train-with_grad.pth"
    assert traced_filename("best") == "traced-best-forward.pth"
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in MODULES if p.name != "torchscript.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"[\"']traced-", line)]
    assert not found, found


def test_imagenet_mean_and_std_are_defined_once():
    from segzoo.data.visual import IMAGENET_MEAN, IMAGENET_STD
    from segzoo.inference.processing import check_normalization

    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in MODULES
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"0\.485|0\.229", line)]
    assert found == ["data/visual.py:10", "data/visual.py:11"], found
    default = check_normalization(None, 3)
    assert default == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    default["mean"][0] = 99.0  # a caller changing its copy changes nothing else
    assert check_normalization(None, 3)["mean"][0] == IMAGENET_MEAN[0]
