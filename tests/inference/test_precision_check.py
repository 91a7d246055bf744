"""bf16 and int8 inference against float32: the torch-bf16 backend, segzoo check-precision, --backend auto."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from _serving import random_image, write_logdir
from PIL import Image

import segzoo.hardware.precision as hw_precision
from segzoo.cli import main
from segzoo.inference import load_predictor
from segzoo.inference.precision_report import FORMAT, file_sha256, int8_model_path, report_path

IMAGES = [random_image(64, 64, s) for s in range(3)]
RUN = {
    "seed": 3, "logdir": "LOGDIR",
    "model": {"name": "unet", "params": {"num_classes": 1, "num_channels": 8, "num_blocks": 2}},
    "data": {"kind": "procedural", "params": {"image_size": 64, "num_classes": 1},
             "train_size": 16, "valid_size": 6, "batch_size": 8},
    "loss": {"name": "BCEDiceLoss"}, "optimizer": {"name": "Adam", "params": {"lr": 0.01}},
    "callbacks": [{"name": "DiceCallback", "params": {"threshold": 0.5}}],
    "num_epochs": 2, "runner": {"main_metric": "dice", "minimize_metric": False, "device": "cpu"},
}


def _native(value: bool):
    return lambda device="cpu": (value, "injected for the test")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model trained two epochs on the procedural dataset by ``segzoo train`` (with its config.yml)."""
    root = tmp_path_factory.mktemp("precision")
    path = root / "cfg.yml"
    path.write_text(yaml.safe_dump(RUN, sort_keys=False).replace("LOGDIR", str(root / "run")))
    assert main(["train", "--config", str(path)]) == 0
    return root / "run"


@pytest.fixture
def logdir(tmp_path):
    """A checkpoint without a config.yml (fast: nothing trained)."""
    return write_logdir(tmp_path / "log", num_classes=3)


def _report(logdir, fp32: float, bf16: float, **changes) -> dict:
    ckpt = logdir / "checkpoints" / "best.pth"
    report = {"format": FORMAT, "version": 1, "checkpoint": {"name": "best.pth", "sha256": file_sha256(ckpt)},
              "images": 8, "backends": {"eager": {"dice": fp32},
                                        "torch-bf16": {"dice": bf16, "dice_vs_fp32": 0.99, "delta": fp32 - bf16}}}
    report.update(changes)
    report_path(ckpt).write_text(json.dumps(report))
    return report


def _auto(logdir, monkeypatch, native=True):
    monkeypatch.setattr(hw_precision, "native_bf16", _native(native))
    lines: list[str] = []
    predictor = load_predictor(logdir, backend="auto", log=lines.append)
    return predictor.name, [line for line in lines if "--backend auto" in line]


# ---- the torch-bf16 backend ----------------------------------------------------------------------------

def test_bf16_backend_gives_float32_logits_close_to_eager(logdir, monkeypatch):
    monkeypatch.setattr(hw_precision, "native_bf16", _native(True))
    eager = load_predictor(logdir, "eager").predict(IMAGES, output="logits")
    lines: list[str] = []
    bf16 = load_predictor(logdir, "torch-bf16", log=lines.append)
    got = bf16.predict(IMAGES, output="logits")
    assert bf16.name == "torch-bf16" and all(g.dtype == np.float32 for g in got)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(eager, got))
    scale = max(float(np.abs(a).max()) for a in eager)
    assert 0 < worst < 0.05 * max(1.0, scale)  # bf16 really ran (not eager), and stays close
    assert lines == []  # native: nothing to warn about


def test_explicit_bf16_on_a_cpu_without_native_bf16_runs_and_warns_in_one_line(logdir, monkeypatch):
    monkeypatch.setattr(hw_precision, "native_bf16", _native(False))
    lines: list[str] = []
    predictor = load_predictor(logdir, "torch-bf16", log=lines.append)
    assert predictor.predict(IMAGES[:1])[0].shape == (64, 64)
    assert len(lines) == 1 and "emulated" in lines[0] and "auto never picks it" in lines[0]


@pytest.mark.slow
def test_bf16_on_a_cpu_held_to_avx2_warns_in_a_subprocess(logdir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(IMAGES[0]).save(images / "a.png")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    proc = subprocess.run([sys.executable, "-m", "segzoo.cli", "predict", str(logdir), "--input", str(images),
                           "--output", str(tmp_path / "out"), "--backend", "torch-bf16", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "emulated" in proc.stderr and (tmp_path / "out" / "a.png").is_file()


# ---- --backend auto from a recorded check ---------------------------------------------------------------

def test_auto_without_a_check_is_eager_with_a_hint(logdir, monkeypatch):
    name, lines = _auto(logdir, monkeypatch)
    assert name == "eager" and len(lines) == 1 and "segzoo check-precision" in lines[0]


@pytest.mark.parametrize("bf16, expected", [(0.95 - 0.02, "eager"), (0.95 - 0.001, "torch-bf16"),
                                            (0.95 - 0.0049, "torch-bf16"), (0.96, "torch-bf16")])
def test_auto_picks_bf16_only_within_0005_of_fp32(logdir, monkeypatch, bf16, expected):
    _report(logdir, 0.95, bf16)
    name, lines = _auto(logdir, monkeypatch)
    assert name == expected and len(lines) == 1
    assert ("0.005" in lines[0]) and (expected in lines[0])


def test_auto_never_picks_bf16_where_it_is_not_native(logdir, monkeypatch):
    _report(logdir, 0.95, 0.949)
    name, lines = _auto(logdir, monkeypatch, native=False)
    assert name == "eager" and "not native" in lines[0]


def test_the_default_backend_of_a_checkpoint_follows_the_check_and_says_so(logdir, monkeypatch):
    monkeypatch.setattr(hw_precision, "native_bf16", _native(True))
    lines: list[str] = []
    assert load_predictor(logdir, log=lines.append).name == "eager" and lines == []  # nothing measured: as before
    _report(logdir, 0.95, 0.949)
    assert load_predictor(logdir, log=lines.append).name == "torch-bf16" and len(lines) == 1


@pytest.mark.parametrize("hostile", [
    "not json {", "[1, 2]", json.dumps({"backends": {"eager": {"dice": 0.9}}}),  # no format marker
    "WRONG_SHA", "NAN_DICE", "DICE_AS_TEXT", "BIG", "LINK_TO_FOLDER", "UNKNOWN_BACKEND",
])
def test_a_hostile_report_is_ignored_in_one_line_and_fp32_runs(logdir, monkeypatch, hostile):
    path = report_path(logdir / "checkpoints" / "best.pth")
    if hostile == "WRONG_SHA":
        _report(logdir, 0.95, 0.95, checkpoint={"name": "best.pth", "sha256": "0" * 64})
    elif hostile == "NAN_DICE":
        _report(logdir, 0.95, float("nan"))
    elif hostile == "DICE_AS_TEXT":
        _report(logdir, 0.95, 0.95)
        report = json.loads(path.read_text())
        report["backends"]["torch-bf16"]["dice"] = "0.95"
        path.write_text(json.dumps(report))
    elif hostile == "BIG":
        _report(logdir, 0.95, 0.95)
        path.write_text(path.read_text()[:-1] + ', "pad": "' + "x" * (2 << 20) + '"}')
    elif hostile == "LINK_TO_FOLDER":
        path.symlink_to(logdir)
    elif hostile == "UNKNOWN_BACKEND":
        report = _report(logdir, 0.95, 0.95)
        report["backends"]["../../etc"] = {"dice": 1.0}
        path.write_text(json.dumps(report))
    else:
        path.write_text(hostile)
    name, lines = _auto(logdir, monkeypatch)
    assert name == "eager" and len(lines) == 1 and "ignoring" in lines[0] and "\n" not in lines[0]


def test_auto_int8_needs_the_measured_model_file(logdir, monkeypatch):
    pytest.importorskip("onnxruntime")
    report = _report(logdir, 0.95, 0.90)
    report["backends"]["onnxruntime-int8"] = {"dice": 0.949, "dice_vs_fp32": 0.99, "delta": 0.001,
                                              "model_sha256": "0" * 64}
    report_path(logdir / "checkpoints" / "best.pth").write_text(json.dumps(report))
    name, lines = _auto(logdir, monkeypatch)
    assert name == "eager" and "best.int8.onnx is missing" in lines[0]


# ---- segzoo check-precision ------------------------------------------------------------------------------

@pytest.mark.slow
def test_check_precision_writes_both_dice_values_and_auto_reads_them(run, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    assert main(["check-precision", str(run)]) == 0
    out = capsys.readouterr().out
    ckpt = run / "checkpoints" / "best.pth"
    report = json.loads(report_path(ckpt).read_text())
    assert report["format"] == FORMAT and report["images"] == 6 and "procedural valid set" in report["valid_set"]
    assert report["checkpoint"]["sha256"] == file_sha256(ckpt)
    for name in ("eager", "torch-bf16", "onnxruntime-int8"):
        assert 0.0 <= report["backends"][name]["dice"] <= 1.0
    for name in ("torch-bf16", "onnxruntime-int8"):
        entry = report["backends"][name]
        assert 0.0 <= entry["dice_vs_fp32"] <= 1.0
        assert entry["delta"] == pytest.approx(report["backends"]["eager"]["dice"] - entry["dice"])
        assert f"{entry['dice']:.4f}" in out
    assert "train set" in report["backends"]["onnxruntime-int8"]["calibration"]
    assert int8_model_path(ckpt).is_file()
    # what auto then does follows the recorded numbers
    monkeypatch.setattr(hw_precision, "native_bf16", _native(True))
    lines: list[str] = []
    chosen = load_predictor(run, backend="auto", log=lines.append).name
    fp32 = report["backends"]["eager"]["dice"]
    close = [n for n in ("torch-bf16", "onnxruntime-int8") if fp32 - report["backends"][n]["dice"] <= 0.005]
    assert (chosen in close) if close else chosen == "eager"
    # a second run does not replace the report without --force; with it, it does
    before = report_path(ckpt).read_bytes()
    assert main(["check-precision", str(run), "--backends", "torch-bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0] and report_path(ckpt).read_bytes() == before
    assert main(["check-precision", str(run), "--backends", "torch-bf16", "--force", "--limit", "2"]) == 0
    assert json.loads(report_path(ckpt).read_text())["images"] == 2


def test_check_precision_never_replaces_a_users_file(logdir, tmp_path, capsys):
    users = report_path(logdir / "checkpoints" / "best.pth")
    users.write_text('{"mine": true}')
    assert main(["check-precision", str(logdir), "--force", "--backends", "torch-bf16"]) == 2
    assert "never replaced" in capsys.readouterr().err and users.read_text() == '{"mine": true}'


def test_a_run_without_a_recorded_valid_set_says_so_or_takes_folders(logdir, tmp_path, capsys, monkeypatch):
    assert main(["check-precision", str(logdir), "--backends", "torch-bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no valid set" in err[0] and "--images" in err[0]
    assert main(["check-precision", str(logdir), "--images", str(tmp_path)]) == 2
    assert "together" in capsys.readouterr().err
    images, masks = _folders(tmp_path)
    monkeypatch.setattr(hw_precision, "native_bf16", _native(True))
    assert main(["check-precision", str(logdir), "--images", str(images), "--masks", str(masks),
                 "--backends", "torch-bf16"]) == 0
    report = json.loads(report_path(logdir / "checkpoints" / "best.pth").read_text())
    assert report["images"] == 3 and set(report["backends"]) == {"eager", "torch-bf16"}
    assert not int8_model_path(logdir / "checkpoints" / "best.pth").exists()


def test_predict_cli_takes_torch_bf16_and_auto(logdir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(IMAGES[0]).save(images / "a.png")
    for backend in ("torch-bf16", "auto"):
        assert main(["predict", str(logdir), "--input", str(images), "--output", str(tmp_path / backend),
                     "--backend", backend, "--no-progress"]) == 0
        assert (tmp_path / backend / "a.png").is_file()
    assert "--backend auto: eager (fp32)" in capsys.readouterr().err


def _folders(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i, image in enumerate(IMAGES):
        Image.fromarray(image).save(images / f"{i}.png")
        Image.fromarray((image[..., 0] // 100).astype(np.uint8)).save(masks / f"{i}.png")  # classes 0..2
    return images, masks


def test_auto_runs_the_int8_model_the_check_measured_and_no_other(logdir, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    images, masks = _folders(tmp_path)
    assert main(["check-precision", str(logdir), "--images", str(images), "--masks", str(masks),
                 "--backends", "onnxruntime-int8"]) == 0
    ckpt = logdir / "checkpoints" / "best.pth"
    report = json.loads(report_path(ckpt).read_text())
    assert "first 3 measured images" in report["backends"]["onnxruntime-int8"]["calibration"]  # none recorded
    fp32 = report["backends"]["eager"]["dice"]
    report["backends"]["onnxruntime-int8"]["dice"] = fp32 - 0.001  # make it qualify whatever was measured
    report_path(ckpt).write_text(json.dumps(report))
    name, lines = _auto(logdir, monkeypatch)
    assert name == "onnxruntime-int8" and "within 0.005" in lines[0]
    model = int8_model_path(ckpt)
    model.write_bytes(model.read_bytes() + b"\0")  # another file in its place
    name, lines = _auto(logdir, monkeypatch)
    assert name == "eager" and "not the one measured" in lines[0]


@pytest.mark.slow
def test_serve_backend_auto_follows_the_report_and_says_so(logdir, tmp_path):
    pytest.importorskip("fastapi")
    import httpx
    from _serving import Server

    _report(logdir, 0.95, 0.949)
    server = Server(logdir, "--backend", "auto", tmp=tmp_path)
    try:
        backend = httpx.get(server.url + "/v1/model").json()["backend"]
    finally:
        assert server.stop() == 0
    native = hw_precision.native_bf16("cpu")[0]  # the subprocess asks the real detector
    assert backend == ("torch-bf16" if native else "eager")
    assert sum("--backend auto: " in line for line in server.log().splitlines()) == 1
