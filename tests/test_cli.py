import subprocess
import sys

import pytest

from segzoo.cli import main


def test_models_lists_registry(capsys):
    from segzoo.architectures import resnet_architectures

    assert main(["models", "resnet18_*"]) == 0
    assert capsys.readouterr().out.split() == sorted(f"resnet18_{arch}" for arch in resnet_architectures())
    assert main(["models", "--parts", "*net*"]) == 0
    assert {"decoder: upernet", "encoder: resnet", "head: unet"} <= set(capsys.readouterr().out.splitlines())


def test_models_parts_filters_by_kind_too(capsys):
    from segzoo.cli.args import PART_NAMES

    for pattern in ("decoder", "decoders", "dec*"):
        assert main(["models", "--parts", pattern]) == 0
        assert capsys.readouterr().out.splitlines() == [f"decoder: {n}" for n in PART_NAMES["decoder"]]
    assert main(["models", "--parts", "head"]) == 0
    assert capsys.readouterr().out.splitlines() == ["head: fpn", "head: unet"]
    assert main(["models", "--parts", "unet"]) == 0  # a name still matches in every kind
    assert capsys.readouterr().out.splitlines() == ["encoder: unet", "bridge: unet", "decoder: unet", "head: unet"]
    assert main(["models", "--parts", "decodr"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'decodr'" in err and "decoder" in err


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


@pytest.mark.parametrize("flag", ["--max-wait-ms", "--read-timeout", "--header-timeout", "--shutdown-timeout"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_serve_numbers_must_be_finite(capsys, tmp_path, flag, value):
    """nan passed the lower-bound check and inf waited forever: both are one usage line, before any model loads."""
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(tmp_path / "no-such-run"), f"{flag}={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"must be a finite number, got {value}" in err, err
