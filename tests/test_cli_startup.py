"""`segzoo --help`, usage errors and `segzoo models` answer without importing torch.

Each check runs in a fresh interpreter (this test process has torch loaded already) and asserts
on ``sys.modules``, not on a timing. The torch-free copies in ``segzoo.cli_args`` (model names,
export formats, benchmark choices) are compared with their torch-importing sources.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# runs `main(argv)` for each argv, swallowing SystemExit from --help/usage errors, then reports
# the exit codes, whether torch (or the model zoo) got imported, and what was printed
_PROBE = r"""
import contextlib, io, json, sys
from segzoo.cli import main
codes, out, err = [], io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    for argv in json.loads(sys.argv[1]):
        try:
            codes.append(main(argv))
        except SystemExit as exc:
            codes.append(exc.code)
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "segzoo.models", "numpy")))
print(json.dumps({"codes": codes, "heavy": heavy, "out": out.getvalue(), "err": err.getvalue()}))
"""


def _probe(*argvs: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argvs)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_help_and_models_do_not_import_torch():
    commands = ["models", "train", "trace", "export", "predict", "benchmark"]
    res = _probe(["--help"], *[[c, "--help"] for c in commands], ["models"], ["models", "resnet18_*"])
    assert res["heavy"] == [], res["heavy"]
    assert res["codes"] == [0] * (1 + len(commands)) + [0, 0]
    for c in commands:  # each command's own help was printed
        assert f"usage: segzoo {c} " in res["out"]
    assert "torch.export" in res["out"]  # `segzoo export --help` names the .pt2 format
    assert "resnet18_unet\n" in res["out"] and "resnet152_pspnet" in res["out"]


def test_usage_errors_do_not_import_torch():
    res = _probe(["nosuchcommand"], ["train"], ["export", "logs/x", "--format", "zip", "--out", "m"],
                 ["predict", "logs/x"], ["models", "vgg*"])
    assert res["heavy"] == [], res["heavy"]
    assert res["codes"] == [2] * 5
    lines = res["err"].strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("segzoo") and ": error: " in line for line in lines), lines


def test_import_segzoo_is_lazy_but_complete():
    """`import segzoo` alone imports no torch; the public names load on first use and are listed."""
    code = ("import sys, segzoo; assert 'torch' not in sys.modules; "
            "names = set(dir(segzoo)); assert set(segzoo.__all__) <= names, set(segzoo.__all__) - names; "
            "from segzoo import ResnetUnet, load_model; from segzoo import *; "
            "assert ResnetUnet is segzoo.models.ResnetUnet and 'torch' in sys.modules; "
            "assert segzoo.encoders.EncoderSpec and segzoo.training.SupervisedRunner; print('ok')")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_missing_attribute_is_attribute_error():
    import segzoo

    with pytest.raises(AttributeError, match="no_such_thing"):
        segzoo.no_such_thing  # noqa: B018
    assert not hasattr(segzoo, "_private")


def test_public_import_paths_of_design_md():
    """Every import path DESIGN.md promises still works with the lazy package."""
    from segzoo import (  # noqa: F401
        FPNUnet,
        Linknet,
        PSPnet,
        ResnetFPNUnet,
        ResnetLinknet,
        ResnetPSPnet,
        ResnetUnet,
        Unet,
        UnetMetaSpec,
        create_model,
        list_models,
    )
    from segzoo.blocks import get_block  # noqa: F401
    from segzoo.bridges import BridgeSpec, UnetBridge  # noqa: F401
    from segzoo.decoders import DecoderSpec, FPNDecoder, PSPDecoder, UNetDecoder  # noqa: F401
    from segzoo.encoders import EncoderSpec, ResnetEncoder, TimmEncoder, UnetEncoder  # noqa: F401
    from segzoo.heads import FPNHead, HeadSpec, UnetHead  # noqa: F401
    from segzoo.losses import BCEDiceLoss, DiceLoss, FocalLoss, IoULoss, LovaszLoss  # noqa: F401
    from segzoo.metrics import dice, iou  # noqa: F401
    from segzoo.training import CALLBACKS, Callback, CallbackOrder, SupervisedRunner  # noqa: F401
    from segzoo.training.callbacks import (  # noqa: F401
        CheckpointCallback,
        ConsoleLogger,
        CriterionCallback,
        DiceCallback,
        EarlyStoppingCallback,
        IouCallback,
        MetricCallback,
        OptimizerCallback,
        SchedulerCallback,
        TensorboardLogger,
    )


def test_static_model_names_equal_the_registry():
    """`segzoo models` answers from a table; it must list exactly the registered names."""
    from segzoo import list_models
    from segzoo.cli_args import MODEL_NAMES, list_model_names

    assert list(MODEL_NAMES) == list_models()
    for pattern in ("*", "resnet34_*", "*unet", "unet", "vgg*"):
        assert list_model_names(pattern) == list_models(pattern)


def test_torch_free_choices_equal_their_sources():
    import segzoo.benchmark as bench
    import segzoo.export as export
    from segzoo import cli_args
    from segzoo.benchmark.measure import DTYPES

    assert cli_args.EXPORT_FORMATS == export.FORMATS
    assert cli_args.TRACE_MODES == export.TRACE_MODES
    assert cli_args.DEFAULT_INPUT_SIZE == export.DEFAULT_INPUT_SIZE
    assert cli_args.BENCHMARK_ARCHS == bench.ARCHS
    assert cli_args.BENCHMARK_DTYPES == tuple(DTYPES)
    assert bench.add_arguments is cli_args.add_benchmark_arguments  # python -m benchmarks.models uses it


def test_every_command_has_torch_free_arguments():
    from segzoo.cli import COMMANDS
    from segzoo.cli_args import ARGUMENTS

    assert set(COMMANDS) <= set(ARGUMENTS)
    for name, add in ARGUMENTS.items():  # each builds a parser without error
        add(argparse.ArgumentParser(prog=f"segzoo {name}"), name)
