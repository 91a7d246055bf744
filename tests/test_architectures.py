"""The architecture table (segzoo/architectures.py) is the one list of architectures (issue 20, point 2).

Every reader derives its names from it: the model registry and segzoo.models' classes, ``segzoo models``
and ``segzoo benchmark --archs`` (torch-free), ``segzoo``'s lazy names, the benchmark specs and scripts,
and the tests that iterate architectures. A new architecture is its part files plus one row.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segzoo.architectures import (
    ARCHITECTURES,
    CATALYST_MODELS,
    RESNET_ENCODERS,
    model_classes,
    model_names,
    resnet_architectures,
    smp_twins,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_table_module_imports_only_the_standard_library():
    """``segzoo --help`` / ``segzoo models`` read the table: it must not import torch or segzoo.models."""
    tree = ast.parse((ROOT / "segzoo" / "architectures.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "collections.abc", "dataclasses", "re", "typing"}, imported


def test_rows_name_registered_parts_and_distinct_classes():
    from segzoo.decoders import DECODERS
    from segzoo.encoders import RESNET_CHANNELS
    from segzoo.heads import HEADS

    for name, row in ARCHITECTURES.items():
        assert row.decoder in DECODERS and row.head in HEADS, name
        assert row.generic_class.isidentifier() and (row.resnet_class.isidentifier() or not row.resnet_class), name
    classes = model_classes()
    assert len(classes) == len(set(classes)), classes
    assert RESNET_ENCODERS == tuple(RESNET_CHANNELS)
    smp = pytest.importorskip("segmentation_models_pytorch")
    assert all(hasattr(smp, twin) for twin in smp_twins().values()), smp_twins()


def test_every_reader_derives_from_the_table():
    import segzoo
    import segzoo.benchmark as bench
    import segzoo.models
    from segzoo.cli import args as cli_args
    from segzoo.cli import build_parser
    from segzoo.models.named import GENERIC_MODELS, RESNET_MODELS

    archs = tuple(ARCHITECTURES)
    # the registry and the classes
    assert segzoo.list_models() == model_names() == list(cli_args.MODEL_NAMES)
    assert tuple(GENERIC_MODELS) == archs and list(RESNET_MODELS) == resnet_architectures()  # DPT: no ResNet
    for name, row in ARCHITECTURES.items():
        assert GENERIC_MODELS[name].__name__ == row.generic_class
        assert getattr(segzoo.models, row.generic_class) is GENERIC_MODELS[name]
        if row.resnet_class:
            assert RESNET_MODELS[name].__name__ == row.resnet_class
            assert getattr(segzoo, row.resnet_class) is RESNET_MODELS[name]
    for cls, registered in CATALYST_MODELS.items():
        assert registered is None or isinstance(segzoo.create_model(registered), getattr(segzoo, cls))
    # the lazy public names of segzoo and the exports of segzoo.models
    assert [n for n in segzoo.__all__ if segzoo._EXPORTS.get(n) == "segzoo.models" and n[0].isupper()
            and n != "UnetMetaSpec"] == model_classes()
    assert set(model_classes()) <= set(segzoo.models.__all__)
    # the CLI (torch-free copies) and the benchmarks
    assert cli_args.ARCHITECTURES == cli_args.BENCHMARK_ARCHS == bench.ARCHS == archs
    assert bench.SMP_ARCHS == smp_twins()
    parser = build_parser(["benchmark"])
    args = parser.parse_args(["benchmark"])
    assert tuple(args.archs) == archs


def test_benchmark_scripts_read_the_table():
    models = pytest.importorskip("benchmarks.models", reason="run from the repository root")
    profile_step = pytest.importorskip("benchmarks.profile_step", reason="run from the repository root")
    import segzoo.benchmark as bench

    # issue 15's speed targets are per architecture with an smp twin; profile_step profiles those by default
    assert set(models.SPEEDUP_TARGETS) == set(models.FORWARD_TARGETS) <= set(bench.SMP_ARCHS)
    assert set(models.CHANNELS_LAST_TARGETS) <= set(bench.SMP_ARCHS)
    assert models.speedup_target("manet", False, True) == 1.5 and models.speedup_target("unet", True, True) == 1.2
    with pytest.raises(SystemExit):
        profile_step.main(["--archs", "no_such_arch"])  # a one-line usage error naming the table's choices


def _type_checking_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    return {alias.asname or alias.name for node in ast.walk(block) if isinstance(node, ast.ImportFrom)
            for alias in node.names}


def _top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)} | \
        {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


def test_the_ide_import_blocks_equal_the_table():
    """The TYPE_CHECKING imports (for IDEs only: the runtime names come from the table) list exactly the table's
    classes that are written by hand (a row without one gets a class made at import, which no IDE can see)."""
    import segzoo

    models = ROOT / "segzoo" / "models"
    hand_written = set(model_classes()) & (_top_level_names(models / "named.py") | _top_level_names(models / "catalyst.py"))
    made = set(model_classes()) - hand_written
    assert _type_checking_names(models / "__init__.py") == hand_written
    assert _type_checking_names(ROOT / "segzoo" / "__init__.py") == set(segzoo._EXPORTS) - made


# Literals allowed to hold several architecture or model names: the table itself; Catalyst 19.x's own export
# list (segzoo.compat mirrors what Catalyst had, pinned on purpose); issue 15's per-architecture speed targets
# (a goal per measured architecture, 1.0 for the others: a new row needs no entry); the part registries' names
# (decoders named like some architectures; checked equal to the registries by tests/test_cli_startup.py);
# smp 0.6's signatures in the front door.
ALLOWED = {("segzoo/architectures.py", None), ("segzoo/compat.py", None),
           ("benchmarks/models.py", "SPEEDUP_TARGETS"), ("benchmarks/models.py", "FORWARD_TARGETS"),
           ("benchmarks/models.py", "CHANNELS_LAST_TARGETS"),
           ("segzoo/cli/args.py", "PART_NAMES"),
           # smp 0.6's own constructor signatures and argument mappings, keyed by smp's class names (smp's API,
           # pinned on purpose; the front door's classes themselves are made from the table's smp column)
           ("segzoo/smp/models.py", "SIGNATURES"), ("segzoo/smp/models.py", "MAPPINGS"),
           # smp 0.6's state-dict layouts, one mapping per smp class (smp's checkpoints, pinned on purpose): the
           # structure, key and argument tables of segzoo.smp's twin modules
           ("segzoo/smp/structure.py", "SMP_STRUCTURES"), ("segzoo/smp/statedict.py", "_KEYS"),
           *((f"segzoo/smp/twin_{name}.py", table) for name in ("linknet_fpn_psp", "deeplab_pan", "unetpp_manet_upernet", "segformer_dpt")
             for table in ("STRUCTURES", "KEYS", "GUESS", "INFER"))}


def _name_literals(path: Path, names: set[str]) -> list[tuple[int, str | None]]:
    """(line, assigned variable) of each list / tuple / set / dict literal holding two or more of ``names``."""
    tree = ast.parse(path.read_text())
    targets = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            for inner in ast.walk(node):
                targets[id(inner)] = target.id if isinstance(target, ast.Name) else None
    found = []
    for node in ast.walk(tree):
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)) and items is not None:
            hits = [k.value for k in items if isinstance(k, ast.Constant) and k.value in names]
            if len(hits) >= 2:
                found.append((node.lineno, targets.get(id(node))))
    return found


def test_no_architecture_list_outside_the_table():
    """No hand-kept list of architectures, model classes or model names in segzoo/ or benchmarks/."""
    names = set(ARCHITECTURES) | set(model_classes()) | set(model_names())
    found = []
    for path in sorted([*(ROOT / "segzoo").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]):
        rel = str(path.relative_to(ROOT))
        for line, variable in _name_literals(path, names):
            if (rel, None) not in ALLOWED and (rel, variable) not in ALLOWED:
                found.append(f"{rel}:{line} ({variable})")
    assert not found, f"architecture names kept by hand (read segzoo.architectures instead): {found}"


# adds one row, then imports the readers as if the row were written in segzoo/architectures.py
_NEW_ROW = r"""
import contextlib, importlib, io, json
import segzoo.architectures as table
table.ARCHITECTURES["toynet"] = table.Architecture(
    "unet", decoder_defaults={"block": "sum"}, title="ToyNet: a Linknet under another name",
    generic_class="ToyNet", resnet_class="ResnetToyNet", smp="Linknet")
import segzoo
importlib.reload(segzoo)  # segzoo/__init__ read the table before the row was added
from segzoo.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(["models", "*toy*"])
from segzoo.cli import build_parser
archs = build_parser(["benchmark"]).parse_args(["benchmark", "--archs", "toynet"]).archs

import torch
import segzoo.benchmark as bench
from segzoo import *  # noqa: F403
tiny = segzoo.create_model("toynet", num_classes=2, num_channels=8, num_blocks=2)
resnet = segzoo.create_model("resnet18_toynet", num_classes=2, pretrained=False)
rebuilt = segzoo.model_from_spec(segzoo.get_model_spec(resnet))
import pickle
pickled = type(pickle.loads(pickle.dumps(tiny))).__name__  # spawned DataLoader / DDP workers pickle models
suite = bench.default_suite(["resnet18"], ["toynet"], with_smp=True, with_body=False)
print(json.dumps({
    "code": code, "listed": out.getvalue().split(), "archs": archs,
    "registered": segzoo.list_models() == sorted(table.model_names()),
    "all": [n for n in segzoo.__all__ if "Toy" in n],
    "classes": [type(tiny).__name__, type(resnet).__name__, type(rebuilt).__name__, pickled],
    "star": ToyNet is type(tiny) and ResnetToyNet is type(resnet),  # noqa: F405
    "shape": list(tiny(torch.rand(1, 3, 64, 64)).shape),
    "suite": [(s["library"], s["name"]) for s in suite],
}))
"""


@pytest.mark.slow
def test_a_new_row_is_enough():
    """One row: the registry, both classes, ``segzoo models``, ``from segzoo import *``, the benchmark's
    ``--archs`` and suite (with the row's smp twin) all pick it up, with no other file edited."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _NEW_ROW], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.splitlines()[-1])
    assert res["code"] == 0 and res["listed"] == sorted(["toynet", *(f"{e}_toynet" for e in RESNET_ENCODERS)])
    assert res["archs"] == ["toynet"] and res["registered"]
    assert res["all"] == ["ToyNet", "ResnetToyNet"] and res["star"]
    assert res["classes"] == ["ToyNet", "ResnetToyNet", "ResnetToyNet", "ToyNet"] and res["shape"] == [1, 2, 64, 64]
    assert res["suite"] == [["segzoo", "resnet18_toynet"], ["smp", "Linknet"]]
