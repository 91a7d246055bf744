"""trace / export / load_model against a careless or hostile user: full disk, inputs as outputs, races, bad files."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from _h4_helpers import TINY, assert_user_error, tiny_model

import segzoo.export.common as export_common
import segzoo.fileio as fileio
from segzoo.errors import CheckpointError
from segzoo.loading import load_model

pytestmark = pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")

ROOT = Path(__file__).resolve().parents[2]
SPEC = {"name": "unet", "kwargs": {**TINY, "num_classes": 2}}


def _segzoo(*argv, cwd=None):
    """Run the ``segzoo`` command in a new process (a C++ abort must not take pytest down)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEGZOO_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "segzoo.cli", *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _one_line_exit_2(res, *fragments):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(lines) == 1, res.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---- disk full ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    pytest.param(("export", "--format", "torchscript", "--out", "{out}/m.pt"), id="torchscript"),
    pytest.param(("export", "--format", "onnx", "--out", "{out}/m.onnx"), id="onnx", marks=pytest.mark.slow),
    pytest.param(("export", "--format", "export", "--out", "{out}/m.pt2"), id="pt2", marks=pytest.mark.slow),
    pytest.param(("trace", "--out-dir", "{out}"), id="trace", marks=pytest.mark.slow),
])
def test_disk_full_is_one_line_and_leaves_nothing(logdir, tiny_fs, argv):
    if "onnx" in argv:
        pytest.importorskip("onnx")
    command, *rest = argv
    res = _segzoo(command, logdir, "--input-size", 32, 32, *[a.format(out=tiny_fs) for a in rest])
    _one_line_exit_2(res, f"cannot write {tiny_fs}/", "no space left on device")
    assert os.listdir(tiny_fs) == []  # no temporary file, no half-written artifact


def test_read_only_folder_parent_file_and_long_name(logdir, cli, make_tmpfs, tmp_path):
    ro = make_tmpfs("64k", name="ro")
    assert subprocess.run(["mount", "-o", "remount,ro", str(ro)], capture_output=True).returncode == 0
    assert_user_error(cli("export", logdir, "--format", "torchscript", "--out", ro / "m.pt", "--input-size", 32, 32),
                      f"cannot write {ro}/m.pt", "read-only file system")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_user_error(cli("export", logdir, "--format", "torchscript", "--out", a_file / "sub" / "m.pt"),
                      "a parent is not a folder")
    assert a_file.read_text() == "x"
    assert_user_error(cli("trace", logdir, "--out-model", tmp_path / ("x" * 300 + ".pt")), "file name too long")
    assert_user_error(cli("export", logdir, "--format", "onnx", "--out", tmp_path), "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "log", "ro"]


# ---- inputs are never outputs -------------------------------------------------------------

def test_the_checkpoint_is_never_an_output(logdir, cli, tmp_path):
    best = logdir / "checkpoints" / "best.pth"
    before = best.read_bytes()
    link = tmp_path / "link.pth"
    link.symlink_to(best)
    for argv in (("export", logdir, "--format", "torchscript", "--out", best, "--force"),
                 ("export", best, "--format", "onnx", "--out", link, "--force"),
                 ("trace", logdir, "--out-model", best, "--force"),
                 ("trace", logdir, "-c", "last", "--out-model", logdir / "checkpoints" / "last.pth", "--force")):
        assert_user_error(cli(*argv), "is the input", "never overwritten")
    # a .pth in the checkpoints folder would be listed (and tried) as a checkpoint
    assert_user_error(cli("trace", logdir, "--out-dir", logdir / "checkpoints", "--input-size", 32, 32),
                      "in the checkpoints folder")
    assert best.read_bytes() == before and link.is_symlink()
    assert sorted(p.name for p in (logdir / "checkpoints").iterdir()) == ["best.pth", "last.pth", "stage1.2.pth"]


@pytest.mark.parametrize("fmt, name", [("torchscript", "model.pt"), ("onnx", "model.onnx"), ("export", "model.pt2")])
def test_nothing_is_exported_into_the_checkpoints_folder(logdir, cli, fmt, name):
    """Issue 19 point 1: a file there is not the run's, so segzoo train --force would refuse to replace the run."""
    assert_user_error(cli("export", logdir, "--format", fmt, "--out", logdir / "checkpoints" / name),
                      "in the checkpoints folder", "trace/")
    assert sorted(p.name for p in (logdir / "checkpoints").iterdir()) == ["best.pth", "last.pth", "stage1.2.pth"]


# ---- two writers of one output ------------------------------------------------------------

@pytest.mark.parametrize("force", [False, True])
def test_a_file_written_meanwhile_by_another_process_is_kept(logdir, cli, tmp_path, monkeypatch, force):
    out = tmp_path / "m.pt"
    if force:
        out.write_bytes(b"old")  # --force replaces this file, not one that replaced it meanwhile

    def slow_write(path, data, **kwargs):  # the other process publishes while our bytes are being written
        def write(f):
            f.write(data)
            if force:
                os.replace(_other(tmp_path), out)
            else:
                out.write_bytes(b"the other process")
        return fileio.atomic_write(path, write, **kwargs)

    monkeypatch.setattr(export_common, "write_bytes_atomic", slow_write)
    argv = ["export", logdir, "--format", "torchscript", "--out", out, "--input-size", 32, 32]
    assert_user_error(cli(*argv, *(["--force"] if force else [])), str(out), "another process meanwhile")
    assert out.read_bytes() == b"the other process"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "m.pt"]


def _other(folder):
    path = folder / "other.tmp.pt"
    path.write_bytes(b"the other process")
    return path


@pytest.mark.slow
def test_two_concurrent_exports_one_wins(logdir, tmp_path):
    out = tmp_path / "m.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEGZOO_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "segzoo.cli", "export", str(logdir), "--format", "torchscript", "--out", str(out),
           "--input-size", "32", "32"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert len(loser.strip().splitlines()) == 1 and str(out) in loser
    torch.jit.load(str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "m.pt"]


# ---- corrupt and hostile checkpoints ------------------------------------------------------

def _bomb(path):
    """A zip with torch's layout whose data entry inflates from ~1 MB to 1 GiB."""
    buf = io.BytesIO()
    torch.save({"model_state_dict": {"w": torch.zeros(4)}}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w") as zf:
        for info in src.infolist():
            data = b"\0" * (1 << 30) if info.filename.endswith("data/0") else src.read(info)
            zf.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_checkpoint",))


def _hostile(tmp_path, kind):
    """Write the hostile input ``kind``; returns (path, expected message fragment)."""
    path = tmp_path / f"{kind}.pth"
    sd = tiny_model().state_dict()
    if kind == "empty":
        path.write_bytes(b"")
        return path, "is empty"
    if kind == "folder":
        path.mkdir()
        return path, "not a log directory"
    if kind == "symlink_loop":
        path.symlink_to(path)
        return path, "too many levels of symbolic links"
    if kind == "dangling_symlink":
        path.symlink_to(tmp_path / "gone.pth")
        return path, "symbolic link to a missing file"
    if kind == "fifo":
        os.mkfifo(path)
        return path, "not a regular file"
    if kind == "zip_bomb":
        _bomb(path)
        return path, "zip bomb"
    if kind == "pickle_payload":
        torch.save({"model_state_dict": {}, "x": _Evil()}, path)
        return path, "refusing to load"
    if kind == "int8_weights":
        sd = {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in sd.items()}
        torch.save({"model_state_dict": sd, "model_spec": SPEC}, path)
        return path, "is int8 in the checkpoint but float32 in the model"
    if kind == "nan_weights":
        sd["head.classifier.weight"][0, 0] = float("nan")
        torch.save({"model_state_dict": sd, "model_spec": SPEC}, path)
        return path, "'head.classifier.weight' has 1 of 16 non-finite"
    if kind == "huge_model_spec":  # would allocate ~150 GB if built before comparing with the weights
        torch.save({"model_state_dict": sd, "model_spec": {"name": "unet", "kwargs": {
            **SPEC["kwargs"], "num_channels": 1 << 16}}}, path)
        return path, "shape mismatches"
    if kind == "unknown_model":
        torch.save({"model_state_dict": sd, "model_spec": {"name": "nope", "kwargs": {}}}, path)
        return path, "unknown model 'nope'"
    if kind == "unexpected_kwargs":
        torch.save({"model_state_dict": sd, "model_spec": {"name": "unet", "kwargs": {"frobnicate": 1}}}, path)
        return path, "frobnicate"
    if kind == "torchscript_file":
        torch.jit.save(torch.jit.trace(torch.nn.Conv2d(3, 2, 1), torch.randn(1, 3, 4, 4)), str(path))
        return path, "is a TorchScript file, not a checkpoint"
    if kind == "state_dict_of_ints":
        torch.save({"model_state_dict": {"w": 3}, "model_spec": SPEC}, path)
        return path, "not name -> tensor"
    raise AssertionError(kind)


HOSTILE = ["empty", "folder", "symlink_loop", "dangling_symlink", "fifo", "zip_bomb", "pickle_payload",
           "int8_weights", "nan_weights", "huge_model_spec", "unknown_model", "unexpected_kwargs",
           "state_dict_of_ints", "torchscript_file"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_checkpoint_is_one_line_everywhere(tmp_path, cli, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    path, fragment = _hostile(tmp_path, kind)
    assert_user_error(cli("trace", path, "--input-size", 32, 32, "--out-dir", tmp_path / "t"), fragment)
    assert_user_error(cli("export", path, "--format", "torchscript", "--out", tmp_path / "m.pt",
                          "--input-size", 32, 32), fragment)
    with pytest.raises((ValueError, KeyError, TypeError, OSError)) as info:
        load_model(path)
    message = str(info.value.args[0]) if isinstance(info.value, KeyError) else str(info.value)
    assert fragment in message and "\n" not in message
    assert not (tmp_path / "t").exists() and not (tmp_path / "m.pt").exists()
    assert not (tmp_path / "pwned_by_checkpoint").exists()


def test_float16_weights_are_widened_losslessly(tmp_path):
    model = tiny_model()
    sd = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "half.pth"
    torch.save({"model_state_dict": sd, "model_spec": SPEC}, path)
    loaded = load_model(path)
    for k, v in loaded.state_dict().items():
        assert v.dtype == model.state_dict()[k].dtype
        assert torch.equal(v, sd[k].to(v.dtype))
    sd = {k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"model_state_dict": sd, "model_spec": SPEC}, path)
    with pytest.raises(CheckpointError, match="float64 in the checkpoint but float32 in the model"):
        load_model(path)



def test_example_input_too_large_to_allocate(logdir, cli):
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
        pytest.skip("with overcommit always on, the allocation would succeed and fill the memory")
    assert_user_error(cli("trace", logdir, "--input-size", 1_000_000, 1_000_000), "needs", "GiB", "smaller --input-size")
