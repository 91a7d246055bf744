"""`segzoo --help`, usage errors and `segzoo models` answer without importing torch.

Each check runs in a fresh interpreter (this test process has torch loaded already) and asserts
on ``sys.modules``, not on a timing. The torch-free copies in ``segzoo.cli.args`` (model names,
export formats, benchmark choices) are compared with their torch-importing sources.
"""

from __future__ import annotations

import argparse
import fnmatch
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
    from segzoo.cli import COMMANDS

    commands = list(COMMANDS)
    assert {"models", "train", "trace", "export", "predict", "benchmark", "serve"} <= set(commands)
    res = _probe(["--help"], *[[c, "--help"] for c in commands], ["models"], ["models", "resnet18_*"],
                 ["models", "--parts"])
    assert res["heavy"] == [], res["heavy"]
    assert res["codes"] == [0] * (1 + len(commands)) + [0, 0, 0]
    for c in commands:  # each command's own help was printed
        assert f"usage: segzoo {c} " in res["out"]
    assert "torch.export" in res["out"]  # `segzoo export --help` names the .pt2 format
    assert "--max-pixels" in res["out"] and "--max-wait-ms" in res["out"]  # predict's and serve's options
    assert "resnet18_unet\n" in res["out"] and "resnet152_pspnet" in res["out"]
    assert "resnet50_upernet\n" in res["out"] and "decoder: deeplabv3plus\n" in res["out"]


def test_usage_errors_do_not_import_torch():
    res = _probe(["nosuchcommand"], ["train"], ["export", "logs/x", "--format", "zip", "--out", "m"],
                 ["predict", "logs/x"], ["models", "vgg*"], ["models", "--parts", "vgg*"],
                 ["serve", "logs/x", "--max-batch", "0"], ["predict", "logs/x", "--input", "i", "--output", "o",
                                                           "--backend", "tensorrt"])
    assert res["heavy"] == [], res["heavy"]
    assert res["codes"] == [2] * 8
    lines = res["err"].strip().splitlines()
    assert len(lines) == 8 and all(line.startswith("segzoo") and ": error: " in line for line in lines), lines


def test_import_segzoo_is_lazy_but_complete():
    """`import segzoo` alone imports no torch; the public names load on first use and are listed."""
    code = ("import sys, segzoo; assert 'torch' not in sys.modules; "
            "names = set(dir(segzoo)); assert set(segzoo.__all__) <= names, set(segzoo.__all__) - names; "
            "from segzoo import ResnetUnet, load_model; from segzoo import *; "
            "assert UPerNet is segzoo.models.UPerNet and ResnetDeepLabV3Plus is segzoo.models.ResnetDeepLabV3Plus; "
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


def test_legacy_names_raise_import_error_without_importing_torch():
    """A Catalyst 19.x name is an ImportError naming the replacement, answered before any lazy import."""
    code = ("import sys, segzoo\n"
            "try:\n    from segzoo import UnetSpec\nexcept ImportError as e:\n    msg = str(e)\n"
            "assert 'UnetMetaSpec(' in msg and 'torch' not in sys.modules, msg\n"
            "try:\n    segzoo.ResnetUnetSpec\nexcept ImportError as e:\n    assert 'ResnetUnet/' in str(e)\n"
            "print('ok')")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_public_import_paths_of_design_md():
    """Every import path DESIGN.md promises still works with the lazy package."""
    from segzoo import (  # noqa: F401
        DeepLabV3Plus,
        FPNUnet,
        Linknet,
        PSPnet,
        ResnetDeepLabV3Plus,
        ResnetFPNUnet,
        ResnetLinknet,
        ResnetPSPnet,
        ResnetUnet,
        ResnetUPerNet,
        Unet,
        UnetMetaSpec,
        UPerNet,
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
    from segzoo.cli.args import MODEL_NAMES
    from segzoo.cli.models import list_model_names

    assert list(MODEL_NAMES) == list_models()
    for pattern in ("*", "resnet34_*", "*unet", "unet", "vgg*"):
        assert list_model_names(pattern) == list_models(pattern)


def test_static_part_names_equal_the_registries(capsys):
    """`segzoo models --parts` answers from a table too; it prints what the part registries hold."""
    from segzoo.bridges import BRIDGES
    from segzoo.cli.args import PART_NAMES
    from segzoo.cli.models import list_part_lines
    from segzoo.decoders import DECODERS
    from segzoo.encoders import ENCODERS
    from segzoo.heads import HEADS

    registries = (ENCODERS, BRIDGES, DECODERS, HEADS)
    assert PART_NAMES == {reg.kind: tuple(reg.names()) for reg in registries}
    for pattern in ("*", "*net*", "u*", "vgg*"):
        assert list_part_lines(pattern) == [f"{reg.kind}: {n}" for reg in registries for n in reg.names(pattern)]


def test_torch_free_choices_equal_their_sources():
    import segzoo.benchmark as bench
    import segzoo.data.folder as folder
    import segzoo.export as export
    import segzoo.inference as inference
    import segzoo.predict as predict
    import segzoo.serve as serve
    from segzoo.benchmark.measure import DTYPES
    from segzoo.cli import args as cli_args
    from segzoo.encoders.resnet import RESNET_CHANNELS

    # the architectures and model names come from segzoo.architectures (tests/test_architectures.py); the
    # ResNets of the table must be the ones the encoder knows
    assert tuple(f"resnet{d}" for d in cli_args.RESNET_DEPTHS) == tuple(RESNET_CHANNELS)
    assert cli_args.INFERENCE_BACKENDS == inference.BACKENDS == serve.BACKENDS
    assert cli_args.DEFAULT_PORT == serve.DEFAULT_PORT
    assert cli_args.IMAGE_SUFFIXES == folder.IMAGE_SUFFIXES
    assert cli_args.PREDICT_MAX_PIXELS == folder.MAX_PIXELS
    assert cli_args.PREDICT_MIN_TILE == predict.MIN_TILE
    assert cli_args.PREDICT_MAX_BATCH_SIZE == predict.MAX_BATCH_SIZE
    assert cli_args.EXPORT_FORMATS == export.FORMATS
    assert cli_args.TRACE_MODES == export.TRACE_MODES
    assert cli_args.DEFAULT_INPUT_SIZE == export.DEFAULT_INPUT_SIZE
    assert cli_args.BENCHMARK_ARCHS == bench.ARCHS
    assert cli_args.BENCHMARK_DTYPES == tuple(DTYPES)
    from segzoo.tuning.space import PRUNERS

    assert cli_args.TUNE_PRUNERS == tuple(PRUNERS)


def test_every_command_has_torch_free_arguments():
    from segzoo.cli import COMMANDS
    from segzoo.cli.args import ARGUMENTS

    assert set(COMMANDS) <= set(ARGUMENTS)
    for name, add in ARGUMENTS.items():  # each builds a parser without error
        add(argparse.ArgumentParser(prog=f"segzoo {name}"), name)


def test_command_modules_import_the_library_only_when_they_run():
    """Every ``segzoo.cli.<command>`` module (and ``python -m segzoo.cli``) imports without torch; each has run()."""
    from segzoo.cli import COMMANDS

    modules = sorted({module for module, _ in COMMANDS.values()})
    assert modules == sorted(f"segzoo.cli.{c}" for c in ("models", "train", "tune", "export", "predict",
                                                          "benchmark", "serve", "hardware", "check_precision"))
    code = ("import importlib, json, sys\n"
            f"mods = [importlib.import_module(m) for m in {modules!r}]\n"
            "assert all(callable(m.run) for m in mods)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'numpy', "
            "'segzoo.models', 'segzoo.export', 'segzoo.training', 'segzoo.predict', 'segzoo.inference')))))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    proc = subprocess.run([sys.executable, "-m", "segzoo.cli", "--help"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "usage: segzoo" in proc.stdout, proc.stderr


def test_the_commands_live_in_the_cli_only():
    """``run`` of export and benchmark is the CLI's (issue 20: the library never imports segzoo.cli), and so
    is ``python -m segzoo.hardware``'s ``main``; calibrating moved above the models. An old script's import
    of those names says where they went; the console script is ``segzoo.cli:main``."""
    import configparser
    import importlib

    for module, name, where in [("segzoo.export", "run", "segzoo.cli.export"),
                                ("segzoo.benchmark", "run", "segzoo.cli.benchmark.run"),
                                ("segzoo.benchmark", "add_arguments", "segzoo.cli.args.add_benchmark_arguments"),
                                ("segzoo.hardware", "calibrate", "segzoo.benchmark.calibration.calibrate"),
                                ("segzoo.hardware", "main", "segzoo.cli.hardware.main")]:
        with pytest.raises(ImportError, match=where.replace(".", r"\.")):
            exec(f"from {module} import {name}", {})
        with pytest.raises(ImportError, match=where.replace(".", r"\.")):
            getattr(importlib.import_module(module), name)
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["options.entry_points"]["console_scripts"].split() == ["segzoo", "=", "segzoo.cli:main"]


@pytest.mark.parametrize("module", ["segzoo", "segzoo.cli"])
def test_python_dash_m_runs_the_cli(module):
    """``python -m segzoo`` and ``python -m segzoo.cli`` are the console script: same output, same exit codes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ok = subprocess.run([sys.executable, "-m", module, "models", "resnet18_u*"], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=120)
    from segzoo.architectures import model_names

    listed = [n for n in model_names() if fnmatch.fnmatchcase(n, "resnet18_u*")]  # the table's, sorted
    assert "resnet18_unet" in listed
    assert ok.returncode == 0 and ok.stdout.split() == listed, ok.stderr
    bad = subprocess.run([sys.executable, "-m", module, "nosuchcommand"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "nosuchcommand" in bad.stderr


@pytest.mark.slow
def test_help_texts_show_no_rest_markup():
    """Every command's --help is plain text (issue 19: `segzoo --help` showed ``segzoo``)."""
    from segzoo.cli import COMMANDS, build_parser

    texts = {"segzoo": build_parser([]).format_help()}
    for name in COMMANDS:
        parser = build_parser([name])
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        texts[name] = sub.choices[name].format_help()
    from segzoo.cli import hardware

    parser_help = subprocess.run([sys.executable, "-m", "segzoo", "hardware", "--help"], capture_output=True,
                                 text=True, cwd=ROOT, timeout=120,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    texts["segzoo hardware"] = parser_help
    assert hardware.main.__doc__ and "calibrate" in parser_help
    for name, text in texts.items():
        for markup in ("``", ":func:", ":class:", ":mod:", ":data:", ":meth:"):
            assert markup not in text, f"{name} --help shows {markup}: {text}"
    assert "The segzoo command: segzoo models | train" in " ".join(texts["segzoo"].split())
