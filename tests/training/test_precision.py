"""precision="auto" (issue 23, point 1): bf16 autocast where the device computes bf16 natively, fp32 elsewhere.

Nothing here times a step: the measurement is replaced (``precision._MEASURE``) or never reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from _helpers import TinyNet, make_loaders, train

from segzoo.errors import ConfigError
from segzoo.hardware import precision as prec
from segzoo.training import Callback, CallbackOrder, TrainSettings
from segzoo.training.run_choices import resolve_precision

CPU = torch.device("cpu")

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture
def auto_env(tmp_path, monkeypatch):
    """precision="auto" as users get it (no SEGZOO_PRECISION), a cache of the test's own, a counted fake measurement."""
    monkeypatch.delenv("SEGZOO_PRECISION", raising=False)
    monkeypatch.setenv("SEGZOO_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake(**_):
        calls.append(1)
        return {"fp32_ms": 10.0, "bf16_ms": 5.0, "other_cpus": 0.0}

    monkeypatch.setattr(prec, "_MEASURE", [fake])
    monkeypatch.setattr(prec, "native_bf16", lambda device="cpu": (True, "AVX512-BF16"))
    prec._cpu_choice.cache_clear()
    yield calls
    prec._cpu_choice.cache_clear()


class Dtypes(Callback):
    """Records the dtypes of the output, the loss and the metrics of the train batches."""

    def __init__(self):
        super().__init__(CallbackOrder.External)
        self.seen = set()

    def on_batch_end(self, state):
        if state.need_backward:
            self.seen.add(("output", state.output["logits"].dtype))
            self.seen.update(("loss", v.dtype) for v in state.loss.values() if isinstance(v, torch.Tensor))


def test_auto_is_the_default_and_picks_bf16_where_native(auto_env, tmp_path):
    """Old code: fp32 (amp=False) by default. Now auto: bf16 on a native-bf16 CPU, cached, in the checkpoints."""
    from segzoo.training import SupervisedRunner

    model = TinyNet()
    seen = Dtypes()
    state = SupervisedRunner().train(model, torch.nn.BCEWithLogitsLoss(), torch.optim.Adam(model.parameters()),
                                     make_loaders(), tmp_path / "run", callbacks=[seen])
    assert state.amp_dtype == torch.bfloat16
    record = state.checkpoint_data["precision"]
    assert record["precision"] == "bf16" and "AVX512-BF16" in record["source"]
    # the model computed in bf16, the loss stayed float32; the weights and the optimizer too
    assert ("output", torch.bfloat16) in seen.seen and ("loss", torch.float32) in seen.seen
    assert ("loss", torch.bfloat16) not in seen.seen
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last_full.pth", weights_only=True)
    assert ck["precision"]["precision"] == "bf16" and ck["threads"]["threads"] >= 1 and "compile" in ck
    moments = [v for s in ck["optimizer_state_dict"]["state"].values() for k, v in s.items() if k != "step"]
    assert moments and all(v.dtype == torch.float32 for v in moments)
    # measured once, cached in the layout cache file (its reader accepts it), not measured again
    cache = json.loads((tmp_path / "cache" / "layout.json").read_text())
    assert cache[prec.precision_key()]["precision"] == "bf16"
    prec._cpu_choice.cache_clear()
    assert prec.preferred_precision(CPU).precision == "bf16" and len(auto_env) == 1


def test_auto_measures_and_keeps_fp32_when_bf16_is_not_faster(auto_env, monkeypatch):
    monkeypatch.setattr(prec, "_MEASURE", [lambda **_: {"fp32_ms": 10.0, "bf16_ms": 9.8, "other_cpus": 3.0}])
    choice = prec.preferred_precision(CPU)
    assert choice.precision == "fp32" and "not cached: the machine was busy" in choice.source
    assert not (Path(os.environ["SEGZOO_CACHE_DIR"]) / "layout.json").exists()


def test_measurement_runs_and_is_cached(tmp_path, monkeypatch):
    """The real (short) measurement runs and returns both timings; nothing is asserted about them."""
    result = prec.measure_bf16_speedup(repeats=1, size=8, batch=2, channels=8)
    assert result["fp32_ms"] > 0 and result["bf16_ms"] > 0


def test_distributed_processes_take_the_rule_or_the_cache_without_measuring(auto_env):
    """Each process of a torchrun run resolves auto itself: a measurement could differ between them."""
    choice = resolve_precision("auto", None, CPU, measure=False)
    assert choice.precision == "bf16" and "not measured" in choice.source and auto_env == []


def test_an_unusable_cache_is_left_alone(auto_env, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "layout.json").write_text("[1, 2]")
    assert prec.preferred_precision(CPU).precision == "bf16"
    assert (cache / "layout.json").read_text() == "[1, 2]"
    assert "ignoring the layout cache" in capsys.readouterr().err


def test_rule_without_native_bf16_picks_fp32_without_measuring(monkeypatch, tmp_path):
    monkeypatch.delenv("SEGZOO_PRECISION", raising=False)
    monkeypatch.setenv("SEGZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(prec, "_cpu_flags", lambda: {"avx2", "avx512f"})

    def boom(**_):
        raise AssertionError("measured")

    monkeypatch.setattr(prec, "_MEASURE", [boom])
    prec._cpu_choice.cache_clear()
    try:
        choice = prec.preferred_precision(CPU)
    finally:
        prec._cpu_choice.cache_clear()
    assert choice.precision == "fp32" and "AVX512-BF16" in choice.source


@pytest.mark.slow
def test_auto_is_fp32_on_a_cpu_held_to_avx2():
    """ONEDNN_MAX_CPU_ISA=AVX2 / ATEN_CPU_CAPABILITY=avx2: no native bf16, so auto is fp32 (by the rule, untimed)."""
    code = ("import torch\nfrom segzoo.hardware import precision as p\n"
            "def boom(**_):\n    raise SystemExit('measured')\n"
            "p._MEASURE[0] = boom\n"
            "from segzoo.training.run_choices import resolve_precision\n"
            "c = resolve_precision('auto', None, torch.device('cpu'))\n"
            "print(c.precision, '|', c.source)\n")
    env = {k: v for k, v in os.environ.items() if k != "SEGZOO_PRECISION"}
    for extra in ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"ATEN_CPU_CAPABILITY": "avx2"},
                  {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}):
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra, "SEGZOO_CACHE_DIR": "/nonexistent"},
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("fp32 | rule:"), (extra, out.stdout)


def test_amp_and_fp16_spellings_keep_working(auto_env, tmp_path):
    assert resolve_precision("auto", False, CPU).precision == "fp32"      # amp=False: fp32, as before
    assert resolve_precision("auto", True, CPU).precision == "bf16"       # amp=True: bf16 on CPU
    assert resolve_precision("auto", True, torch.device("cuda")).precision == "fp16"
    assert resolve_precision("bf16", "bf16", CPU).precision == "bf16"
    assert resolve_precision("fp32", None, CPU).source == "precision='fp32'"
    with pytest.raises(ValueError, match="amp='bf16' means bf16, but precision='fp32'"):
        resolve_precision("fp32", "bf16", CPU)
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp8", None, CPU)
    state = train(TinyNet(), make_loaders(), tmp_path / "a", amp=False)
    assert state.amp_dtype is None and state.checkpoint_data["precision"]["source"] == "amp=False"
    with pytest.warns(UserWarning, match="native torch.autocast"):
        state = train(TinyNet(), make_loaders(), tmp_path / "b", fp16=dict(opt_level="O1"))
    assert state.amp_dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = train(TinyNet(), make_loaders(), tmp_path / "c", fp16=dict(opt_level="O0"),
                      normalization=IMAGENET)  # given: no "assumed ImageNet's" warning
    assert state.amp_dtype is None  # O0 is float32, also where auto would pick bf16
    with pytest.raises(ValueError, match="but precision='fp32'"), pytest.warns(UserWarning, match="autocast"):
        train(TinyNet(), make_loaders(), tmp_path / "d", precision="fp32", fp16=True)
    assert TrainSettings().precision == "auto" and TrainSettings().amp is None


def test_env_override_and_its_errors(monkeypatch):
    monkeypatch.setenv("SEGZOO_PRECISION", "bf16")
    assert prec.preferred_precision(CPU) == prec.PrecisionChoice("bf16", "SEGZOO_PRECISION=bf16")
    monkeypatch.setenv("SEGZOO_PRECISION", "half")
    with pytest.raises(ValueError, match="SEGZOO_PRECISION='half'"):
        prec.preferred_precision(CPU)


def test_precision_may_change_on_resume(tmp_path):
    """auto picks per machine: a run started in fp32 resumes in bf16 (old code refused a changed amp)."""
    train(TinyNet(), make_loaders(), tmp_path / "run", amp=False, num_epochs=1)
    state = train(TinyNet(), make_loaders(), tmp_path / "run", amp="bf16", num_epochs=2, resume=tmp_path / "run")
    assert state.global_epoch == 2 and state.checkpoint_data["precision"]["precision"] == "bf16"


def test_config_keys(tmp_path):
    from segzoo.training.config import RESUME_MAY_CHANGE, validate

    def cfg(**runner):
        return {"logdir": str(tmp_path), "model": {"name": "resnet18_unet"}, "data": {"kind": "procedural"},
                "runner": runner}

    for runner in ({"precision": "bf16"}, {"precision": "auto"}, {"compile": "auto"}, {"amp": "bf16"}):
        validate(cfg(**runner))
    for runner, message in (({"precision": "fp8"}, "runner.precision must be auto, fp32, bf16, fp16, got 'fp8'"),
                            ({"compile": "yes"}, "runner.compile must be true, false or auto"),
                            ({"precision": True}, "runner.precision must be str"),
                            ({"amp": False, "precision": "bf16"}, "runner.amp=False means fp32, but runner.precision"),
                            ({"amp": True, "precision": "fp32"}, "means fp16 or bf16, but runner.precision='fp32'")):
        with pytest.raises(ConfigError, match=message):
            validate(cfg(**runner))
    assert "runner.precision" in RESUME_MAY_CHANGE and "runner.amp" in RESUME_MAY_CHANGE


def test_a_bad_segzoo_precision_is_a_config_error(tmp_path, monkeypatch):
    """Refused when the config is validated, before the run's folder or config.yml exist."""
    from segzoo.training.config import validate

    monkeypatch.setenv("SEGZOO_PRECISION", "half")
    with pytest.raises(ConfigError, match="SEGZOO_PRECISION='half'"):
        validate({"logdir": str(tmp_path / "run"), "model": {"name": "resnet18_unet"}, "data": {"kind": "procedural"}})
    assert not (tmp_path / "run").exists()


def test_first_log_line_says_what_was_chosen(tmp_path, capsys):
    train(TinyNet(), make_loaders(), tmp_path / "run", precision="fp32")
    first = capsys.readouterr().out.splitlines()[0]
    for word in ("threads", "precision fp32", "layout", "compile off"):
        assert word in first, first
    assert (tmp_path / "run" / "log.txt").read_text().splitlines()[0] == first
