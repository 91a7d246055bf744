"""segzoo export: ONNX / TorchScript / torch.export files that match the eager model at other sizes."""

from __future__ import annotations

import json
import sys
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from _h4_helpers import NORM, assert_user_error, tiny_model, write_checkpoint

from segzoo.architectures import CATALYST_MODELS
from segzoo.export import ONNX_OPSETS, export_checkpoint
from segzoo.models import ARCHITECTURES

pytestmark = [pytest.mark.export,
              # the TorchScript-based exporter segzoo uses on purpose (dynamo=False) says it is legacy
              pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")]

ARCHS = list(ARCHITECTURES)  # every architecture of the table
OTHER = [n for n in CATALYST_MODELS.values() if n]  # registered outside the two families (Catalyst 19.x's MobileUnet, width 0.5)


def _model(arch, seed=0):
    """A tiny 2-class ``arch``; ``seed`` > 0 gives other weights than tiny_model()'s, to tell files apart."""
    model = tiny_model(arch)
    if seed:
        torch.manual_seed(seed)
        for p in model.parameters():
            p.data.normal_(0, 0.2)
    return model


def _arch_log(tmp_path, arch):
    """A log directory with a tiny ``arch`` checkpoint; returns (logdir, eager model)."""
    model = _model(arch)
    root = tmp_path / f"log_{arch}"
    write_checkpoint(root, model, "best", normalization=NORM)
    return root, model


def _ort_session(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _assert_ort_matches(path, model, shapes, atol=1e-3):
    session = _ort_session(path)
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    gen = torch.Generator().manual_seed(5)
    for b, h, w in shapes:
        x = torch.randn(b, 3, h, w, generator=gen)
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        assert got.shape == ref.shape == (b, model.num_classes, h, w)
        np.testing.assert_allclose(got, ref, atol=atol, rtol=0, err_msg=f"input {(b, h, w)}")


def _export_ok(cli, logdir, fmt, out, size):
    """``segzoo export`` at a size x size example succeeds and prints the written file's path."""
    code, stdout, err = cli("export", logdir, "--format", fmt, "--out", out, "--input-size", size, size)
    assert code == 0, err
    assert stdout.strip() == str(out)


def _assert_same_logits(artifact, model, shapes, rtol):
    """A loaded TorchScript / torch.export module gives the eager model's logits (B, 2, H, W) at each shape."""
    for b, h, w in shapes:
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            ref = model(x)
            got = artifact(x)
        assert got.shape == (b, 2, h, w)
        assert torch.allclose(got, ref, atol=1e-5, rtol=rtol), (b, h, w)


def _no_temp_files(folder):
    return [p.name for p in folder.iterdir() if ".tmp" in p.name] == []


# ---- ONNX --------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS + OTHER)
def test_onnx_dynamic_batch_and_size_match_eager(tmp_path, cli, arch):
    """Exported at 1x32x32; run at other batches and odd, non-multiple H x W (PSP: uneven pooling bins)."""
    onnx = pytest.importorskip("onnx")
    logdir, model = _arch_log(tmp_path, arch)
    out = tmp_path / "model.onnx"
    _export_ok(cli, logdir, "onnx", out, 32)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    # batch, height and width are symbolic in the graph, channels fixed
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    assert dims[1].dim_value == 3
    _assert_ort_matches(out, model, [(2, 37, 53), (3, 64, 48)])
    assert _no_temp_files(tmp_path)


@pytest.mark.parametrize("arch, opset", [("pspnet", ONNX_OPSETS[0]), ("unet", 13)])
def test_onnx_opset(tmp_path, cli, arch, opset):
    onnx = pytest.importorskip("onnx")
    logdir, model = _arch_log(tmp_path, arch)
    out = tmp_path / "m.onnx"
    code, _, err = cli("export", logdir, "--format", "onnx", "--out", out, "--input-size", 32, 32,
                       "--opset", opset)
    assert code == 0, err
    versions = {o.domain: o.version for o in onnx.load(str(out)).opset_import}
    assert versions[""] == opset
    _assert_ort_matches(out, model, [(2, 37, 53)])


@pytest.mark.parametrize("opset", [8, 10, ONNX_OPSETS[1] + 1])
def test_onnx_opset_out_of_range(tmp_path, logdir, cli, opset):
    """Opsets 9 and 10 cannot express the input-dependent padding every segzoo model does."""
    out = tmp_path / "m.onnx"
    assert_user_error(cli("export", logdir, "--format", "onnx", "--out", out, "--opset", opset),
                      "opset", f"{ONNX_OPSETS[0]}..{ONNX_OPSETS[1]}", str(opset))
    assert not out.exists()


# ---- TorchScript -------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["unet", "mobilenetv2_unet",
                                  *(pytest.param(a, marks=pytest.mark.slow) for a in ARCHS if a != "unet")])
def test_torchscript_matches_eager(tmp_path, cli, arch):
    logdir, model = _arch_log(tmp_path, arch)
    out = tmp_path / "model.pt"
    _export_ok(cli, logdir, "torchscript", out, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated upstream
        traced = torch.jit.load(str(out))
    assert isinstance(traced, torch.jit.ScriptModule)
    _assert_same_logits(traced, model, [(2, 37, 53), (1, 64, 48)], rtol=0)


# ---- torch.export ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_export_program_dynamic_batch_and_size(tmp_path, cli, arch):
    """.pt2 promises dynamic batch and H, W that are multiples of model.size_multiple (>= 2 m)."""
    logdir, model = _arch_log(tmp_path, arch)
    out = tmp_path / "model.pt2"
    # 30 x 30 is not a multiple of 4 (unet): the example is rounded up, not refused
    _export_ok(cli, logdir, "export", out, 30)
    extra = {"segzoo.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    meta = json.loads(extra["segzoo.json"])
    m = model.size_multiple
    assert meta["size_multiple"] == m
    assert meta["normalization"] == NORM
    assert meta["model_spec"]["name"] == arch
    module = program.module()
    _assert_same_logits(module, model, [(1, 12 * m, 16 * m), (3, 16 * m, 10 * m)], rtol=1e-4)
    # sizes the program does not take are refused by its guards, never answered wrongly
    with pytest.raises(Exception, match="Guard failed|guard"), torch.no_grad():
        module(torch.randn(1, 3, 8 * m + 1, 8 * m))


# ---- overwriting -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "export"])
def test_existing_output_refused_and_left_intact(tmp_path, logdir, cli, fmt):
    out = tmp_path / f"model.{fmt}"
    out.write_bytes(b"previous artifact")
    assert_user_error(cli("export", logdir, "--format", fmt, "--out", out, "--input-size", 32, 32),
                      "exists", "--force")
    assert out.read_bytes() == b"previous artifact"
    assert _no_temp_files(tmp_path)


def test_force_overwrites_with_the_new_model(tmp_path, cli):
    logdir, first = _arch_log(tmp_path, "linknet")
    second = _model("linknet", seed=7)
    write_checkpoint(logdir, second, "last", normalization=NORM)
    out = tmp_path / "model.onnx"
    assert cli("export", logdir, "--format", "onnx", "--out", out, "--input-size", 32, 32)[0] == 0
    before = out.read_bytes()
    # another checkpoint, no --force: refused, the first model's file is untouched
    assert_user_error(cli("export", logdir, "-c", "last", "--format", "onnx", "--out", out), "exists")
    assert out.read_bytes() == before
    _assert_ort_matches(out, first, [(1, 33, 40)])
    code, _, err = cli("export", logdir, "-c", "last", "--format", "onnx", "--out", out, "--input-size", 32, 32,
                       "--force")
    assert code == 0, err
    assert out.read_bytes() != before
    _assert_ort_matches(out, second, [(1, 33, 40)])
    with pytest.raises(AssertionError):  # the two models are told apart by the check
        _assert_ort_matches(out, first, [(1, 33, 40)])
    assert _no_temp_files(tmp_path)


# ---- errors ------------------------------------------------------------------------------

def test_bad_inputs_are_one_line_errors(tmp_path, logdir, cli):
    out = tmp_path / "out" / "m.onnx"
    assert_user_error(cli("export", tmp_path / "nowhere", "--format", "onnx", "--out", out),
                      "no such log directory")
    assert_user_error(cli("export", logdir, "-c", "bset", "--format", "onnx", "--out", out),
                      "'bset' not found", "available: best, last, stage1.2")
    truncated = tmp_path / "t.pth"
    data = (logdir / "checkpoints" / "best.pth").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert_user_error(cli("export", truncated, "--format", "torchscript", "--out", out), "truncated")
    assert_user_error(cli("export", logdir, "--format", "export", "--out", out, "--input-size", 0, 32),
                      "input size")
    no_spec = tmp_path / "nospec"
    write_checkpoint(no_spec, tiny_model(), spec=None)
    assert_user_error(cli("export", no_spec, "--format", "onnx", "--out", out), "no model_spec", "--model")
    assert not out.parent.exists()


def test_unknown_format_is_an_argparse_error(tmp_path, logdir, capsys):
    from segzoo.cli import main

    out = tmp_path / "m.bin"
    with pytest.raises(SystemExit) as exc:
        main(["export", str(logdir), "--format", "tflite", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "Traceback" not in err
    # exactly one line: the error, without argparse's usage block
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "invalid choice: 'tflite'" in errors[0], err
    assert err.strip().splitlines() == errors
    assert not out.exists()
    with pytest.raises(ValueError, match="unknown export format 'tflite'.*onnx, torchscript, export"):
        export_checkpoint(logdir, "tflite", out)


class _WidthAsConstant(nn.Module):
    """Uses the width as a Python number: ONNX tracing freezes it, so other widths go wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.conv(x) * torch.arange(int(x.shape[-1]), dtype=x.dtype)


def test_failed_check_writes_nothing(tmp_path, cli, monkeypatch):
    module = types.ModuleType("h4_export_models")
    module.build = _WidthAsConstant
    monkeypatch.setitem(sys.modules, "h4_export_models", module)
    logdir = tmp_path / "log"
    write_checkpoint(logdir, _WidthAsConstant(), spec=None)
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    assert_user_error(cli("export", logdir, "--model", "h4_export_models:build", "--format", "onnx",
                          "--out", out, "--input-size", 16, 16), "ONNX model", "does not match")
    assert list(out.parent.iterdir()) == []
