"""segzoo trace: TorchScript files named like Catalyst's, matching eager at other sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from _h4_helpers import assert_user_error, tiny_model, write_checkpoint

from segzoo.export import ExportCheckError, trace_model, traced_filename

pytestmark = pytest.mark.export


def _check_traced(path, ref, sizes=((1, 64, 64), (2, 45, 71)), atol=1e-5):
    traced = torch.jit.load(str(path))
    for b, h, w in sizes:
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            assert torch.allclose(traced(x), ref(x), atol=atol), (b, h, w)


def test_default_output_loads_and_matches_eager(logdir, cli):
    code, out, err = cli("trace", logdir, "--input-size", 64, 64)
    path = logdir / "trace" / "traced-best-forward.pth"
    assert code == 0, err
    assert out.strip() == str(path)
    assert "deprecated" not in err
    _check_traced(path, tiny_model())


@pytest.mark.parametrize("flags, name", [
    (["-c", "last"], "traced-last-forward.pth"),
    pytest.param(["--checkpoint", "stage1.2"], "traced-stage1.2-forward.pth", marks=pytest.mark.slow),
    pytest.param(["--mode", "train"], "traced-best-forward-in_train.pth", marks=pytest.mark.slow),
    pytest.param(["--with-grad"], "traced-best-forward-with_grad.pth", marks=pytest.mark.slow),
    (["--mode", "train", "--with-grad"], "traced-best-forward-in_train-with_grad.pth"),
])
def test_flags_change_the_name(logdir, cli, flags, name):
    code, out, err = cli("trace", logdir, "--input-size", 32, 32, "--batch-size", 2, *flags)
    assert code == 0, err
    assert out.strip() == str(logdir / "trace" / name)
    assert name == traced_filename(*((["last"] if "last" in flags else ["stage1.2"] if "stage1.2" in flags
                                     else ["best"]) + ["forward", "train" if "train" in flags else "eval",
                                                       "--with-grad" in flags]))


def test_train_mode_and_grad(logdir, cli):
    cli("trace", logdir, "--input-size", 32, 32, "--batch-size", 2, "--mode", "train", "--with-grad")
    traced = torch.jit.load(str(logdir / "trace" / "traced-best-forward-in_train-with_grad.pth"))
    ref = tiny_model()
    # the running statistics were not changed by tracing and checking
    ref_buffers = dict(ref.named_buffers())
    for name, buf in traced.named_buffers():
        assert torch.equal(buf, ref_buffers[name]), name
    x = torch.randn(2, 3, 40, 24)
    out = traced(x)
    assert torch.allclose(out, ref.train()(x), atol=1e-5)
    out.sum().backward()  # gradients flow through the traced module
    assert all(p.grad is not None for p in traced.parameters())


def test_out_dir_out_model_and_checkpoint_file(logdir, tmp_path, cli):
    code, out, _ = cli("trace", logdir, "--input-size", 32, 32, "--out-dir", tmp_path / "elsewhere")
    assert code == 0 and out.strip() == str(tmp_path / "elsewhere" / "traced-best-forward.pth")
    target = tmp_path / "x" / "model.pt"
    code, out, _ = cli("trace", logdir, "--input-size", 32, 32, "--out-model", target)
    assert code == 0 and out.strip() == str(target)
    _check_traced(target, tiny_model())
    # with --out-dir, --out-model is a file name in it (neither silently ignored nor a way out of it)
    code, out, _ = cli("trace", logdir, "--input-size", 32, 32, "--out-dir", tmp_path / "dir", "--out-model", "m.pt")
    assert code == 0 and out.strip() == str(tmp_path / "dir" / "m.pt")
    for name in ("../escape.pt", "sub/m.pt", ".."):
        assert_user_error(cli("trace", logdir, "--out-dir", tmp_path / "dir", "--out-model", name),
                          "--out-model", "plain file name")
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["m.pt"] and not (tmp_path / "escape.pt").exists()
    code, out, _ = cli("trace", logdir / "checkpoints" / "last.pth", "--input-size", 32, 32)
    assert code == 0 and out.strip() == str(logdir / "trace" / "traced-last-forward.pth")


class _WithMethod(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x)

    def probabilities(self, x):
        return torch.softmax(self.conv(x), 1)


def test_other_method(tmp_path, cli):
    torch.manual_seed(0)
    model = _WithMethod()
    logdir = tmp_path / "log"
    write_checkpoint(logdir, model, spec=None)
    import sys
    import types

    mod = types.ModuleType("h4_method_models")
    mod.build = _WithMethod
    sys.modules["h4_method_models"] = mod
    try:
        code, out, err = cli("trace", logdir, "-m", "probabilities", "--model", "h4_method_models:build",
                             "--input-size", 16, 16)
    finally:
        del sys.modules["h4_method_models"]
    assert code == 0, err
    assert out.strip().endswith("traced-best-probabilities.pth")
    traced = torch.jit.load(out.strip())
    x = torch.randn(1, 3, 9, 11)
    assert torch.allclose(traced.probabilities(x), model.probabilities(x), atol=1e-6)


class _FrozenSize(nn.Module):
    """Uses the width as a Python number: tracing turns it into a constant."""

    def forward(self, x):
        return x * torch.arange(int(x.shape[-1]), dtype=x.dtype)


def test_frozen_size_is_caught():
    with pytest.raises(ExportCheckError, match="does not match.*tracing warned"):
        trace_model(_FrozenSize(), torch.randn(1, 3, 8, 8))
    with pytest.warns(torch.jit.TracerWarning):
        trace_model(_FrozenSize(), torch.randn(1, 3, 8, 8), verify=False)


def test_existing_output_is_refused_unless_force(logdir, cli):
    assert cli("trace", logdir, "--input-size", 32, 32)[0] == 0
    path = logdir / "trace" / "traced-best-forward.pth"
    before = path.read_bytes()
    assert_user_error(cli("trace", logdir, "--input-size", 32, 32), "exists", "--force")
    assert path.read_bytes() == before
    assert cli("trace", logdir, "--input-size", 32, 32, "--force")[0] == 0


def test_bad_inputs(tmp_path, logdir, cli):
    assert_user_error(cli("trace", tmp_path / "nowhere"), "no such log directory")
    assert_user_error(cli("trace", logdir, "-c", "bset"), "'bset' not found", "available: best, last, stage1.2")
    assert_user_error(cli("trace", logdir, "-m", "nope"), "no method 'nope'")
    assert_user_error(cli("trace", logdir, "--input-size", 0, 32), "input size")
    assert_user_error(cli("trace", logdir, "--device", "cuda:7" if not torch.cuda.is_available() else "nodev"),
                      "device")
    truncated = tmp_path / "t.pth"
    truncated.write_bytes((logdir / "checkpoints" / "best.pth").read_bytes()[:1000])
    assert_user_error(cli("trace", truncated), "truncated")
    foreign = tmp_path / "f.pth"
    foreign.write_text("hello")
    assert_user_error(cli("trace", foreign), "cannot read checkpoint")
    assert not (tmp_path / "trace").exists()
    no_spec = tmp_path / "nospec"
    write_checkpoint(no_spec, tiny_model(), spec=None)
    assert_user_error(cli("trace", no_spec), "no model_spec", "--model")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch h4_trace_pwned",))


def test_pickle_payload_is_refused(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model_state_dict": {}, "x": _Evil()}, tmp_path / "evil.pth")
    assert_user_error(cli("trace", tmp_path / "evil.pth"), "refusing to load")
    assert not (tmp_path / "h4_trace_pwned").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trace_on_gpu(logdir, cli):
    code, out, err = cli("trace", logdir, "--device", "cuda", "--input-size", 64, 64)
    assert code == 0, err
    traced = torch.jit.load(out.strip(), map_location="cuda")
    x = torch.randn(2, 3, 48, 80, device="cuda")
    assert torch.allclose(traced(x).cpu(), tiny_model()(x.cpu()), atol=1e-4)
