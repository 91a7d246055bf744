import subprocess
import sys

import pytest

from segzoo.cli import main


def test_models_lists_registry(capsys):
    from segzoo.models import ARCHITECTURES

    assert main(["models", "resnet18_*"]) == 0
    assert capsys.readouterr().out.split() == sorted(f"resnet18_{arch}" for arch in ARCHITECTURES)
    assert main(["models", "--parts", "*net*"]) == 0
    assert {"decoder: upernet", "encoder: resnet", "head: unet"} <= set(capsys.readouterr().out.splitlines())


def test_models_unknown_pattern_is_one_line_error(capsys):
    assert main(["models", "vgg*"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segzoo models: error:") and "\n" not in err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "segzoo.cli", "models", "unet"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "unet"


def test_usage_errors_are_one_line(capsys):
    # an unknown --format value: tests/export/test_export.py
    for argv in (["nosuchcommand"], ["trace"], ["train", "--no-such-flag"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("segzoo") and ": error: " in err and "\n" not in err, err
