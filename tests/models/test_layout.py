"""channels_last="auto": the per-ISA / calibrated layout choice, weights following the mode, equal results."""

import json
import os
import re
import sys
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from _models import tiny_model

from segzoo import hardware, model_from_spec
from segzoo.benchmark import calibration
from segzoo.cli import hardware as hardware_cli
from segzoo.hardware import load as hardware_load


class FakeCpu:
    """/proc/stat counters in which other processes use ``rate`` CPUs (0: an idle machine)."""

    def __init__(self, rate=0.0):
        self.rate, self.others, self.last = rate, 0.0, time.perf_counter()

    def __call__(self):
        now = time.perf_counter()
        self.others += self.rate * (now - self.last)
        self.last = now
        own = time.process_time()
        return own + self.others, own


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test reads (and writes) its own empty calibration cache, never the user's, on an 'idle' machine."""
    monkeypatch.setenv("SEGZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hardware_load, "cpu_counters", FakeCpu())  # other jobs may share this machine
    monkeypatch.setattr(calibration, "LOAD_SAMPLE_SECONDS", 0.01)
    hardware._cpu_choice.cache_clear()
    yield tmp_path / "cache" / hardware.CACHE_FILE
    hardware._cpu_choice.cache_clear()


def isa(monkeypatch, name):
    monkeypatch.setattr(hardware, "cpu_capability", lambda: name)
    hardware._cpu_choice.cache_clear()


def is_cl(t):
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def probe(model):
    return model._probe_weight()


@pytest.mark.parametrize("name, forward, train", [("AVX512", True, True), ("AVX2", True, False),
                                                   ("SVE256", True, True)])
def test_auto_follows_the_rule_of_the_isa(monkeypatch, name, forward, train):
    isa(monkeypatch, name)
    model = tiny_model("unet")
    assert (model.layout_choice.forward, model.layout_choice.train) == (forward, train)
    model.train()
    assert model.channels_last is train and is_cl(probe(model)) is train
    model.eval()
    assert model.channels_last is forward and is_cl(probe(model)) is forward
    model.train()
    assert is_cl(probe(model)) is train


def test_avx2_rule_gives_the_same_outputs_and_gradients_as_nchw(monkeypatch):
    isa(monkeypatch, "AVX2")
    auto = tiny_model("resnet18_unet").double()
    plain = tiny_model("resnet18_unet", channels_last=False).double()
    plain.load_state_dict(auto.state_dict())
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    y = (torch.rand(2, 2, 64, 64) > 0.5).double()
    with torch.no_grad():
        torch.testing.assert_close(auto.eval()(x), plain.eval()(x))
    assert auto.channels_last and is_cl(probe(auto))
    losses = []
    for model in (auto.train(), plain.train()):
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        losses.append(loss)
    assert not is_cl(probe(auto))
    torch.testing.assert_close(losses[0], losses[1])
    for (name, a), (_, b) in zip(auto.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_mode_switches_keep_parameters_and_optimizer_working(monkeypatch):
    isa(monkeypatch, "AVX2")
    model = tiny_model("unet")
    params = list(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.rand(2, 3, 32, 32)
    for _ in range(2):
        model.train()
        opt.zero_grad()
        model(x).mean().backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            assert torch.isfinite(model(x)).all()
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]


def test_a_layout_the_caller_chose_is_kept(monkeypatch):
    isa(monkeypatch, "AVX2")
    model = tiny_model("unet").train()
    model.to(memory_format=torch.channels_last)  # as a user (or the runner's channels_last) does
    model.train()
    assert is_cl(probe(model))
    model.eval()
    model.train()
    assert is_cl(probe(model))


@pytest.mark.parametrize("value", [True, False])
def test_explicit_flags_fix_both_modes(monkeypatch, value):
    isa(monkeypatch, "AVX2")
    model = tiny_model("unet", channels_last=value)
    for mode in (True, False, True):
        model.train(mode)
        assert model.channels_last is value and is_cl(probe(model)) is value
    assert model.layout_choice.source == "argument"


@pytest.mark.parametrize("value", ["yes", 1, None, "AUTO"])
def test_bad_channels_last_values_are_refused(value):
    with pytest.raises(ValueError, match="channels_last must be True, False or 'auto'"):
        tiny_model("unet", channels_last=value)


def test_spec_records_only_a_non_default_layout():
    assert "channels_last" not in tiny_model("unet").segzoo_spec["kwargs"]
    model = tiny_model("unet", channels_last=False)
    assert model.segzoo_spec["kwargs"]["channels_last"] is False
    rebuilt = model_from_spec(model.segzoo_spec)
    assert rebuilt.layout_choice.source == "argument" and not rebuilt.channels_last


def test_assigning_channels_last_fixes_the_layout(monkeypatch):
    isa(monkeypatch, "AVX2")
    model = tiny_model("unet").eval()
    model.channels_last = False  # what the ONNX export does on its copy
    for mode in (True, False):
        model.train(mode)
        assert model.channels_last is False


def test_a_cached_calibration_overrides_the_rule(monkeypatch, own_cache):
    isa(monkeypatch, "AVX512")
    own_cache.parent.mkdir(parents=True)
    own_cache.write_text(json.dumps({hardware.machine_key(): {"forward": False, "train": False}}))
    hardware._cpu_choice.cache_clear()
    choice = tiny_model("unet").layout_choice
    assert (choice.forward, choice.train, choice.source) == (False, False, "calibration")
    # another machine's entry, or a broken file, leaves the rules in charge
    own_cache.write_text(json.dumps({"another cpu | AVX2 | torch 0 | 2 threads": {"forward": False, "train": False}}))
    hardware._cpu_choice.cache_clear()
    assert tiny_model("unet").layout_choice.source == "rule AVX512"
    own_cache.write_text("{not json")
    hardware._cpu_choice.cache_clear()
    assert tiny_model("unet").layout_choice.source == "rule AVX512"


def test_building_models_never_calibrates_or_writes_the_cache(monkeypatch, own_cache):
    monkeypatch.setattr(calibration, "calibrate", lambda *a, **k: pytest.fail("calibrated implicitly"))
    tiny_model("unet").train().eval()
    assert not own_cache.parent.exists()


def test_calibrate_measures_both_layouts_and_caches_the_result(own_cache):
    def build(cl):
        return tiny_model("unet", channels_last=cl)

    result = calibration.calibrate(build, batch_size=2, size=32, repeats=1)
    assert set(result["times_ms"]) == {"forward cl", "forward nchw", "train cl", "train nchw"}
    assert all(t > 0 for t in result["times_ms"].values())
    cached = hardware.cached_layout()
    assert (cached.forward, cached.train) == (result["forward"], result["train"])
    assert json.loads(own_cache.read_text())[hardware.machine_key()]["size"] == 32
    assert hardware.preferred_layout().source == "calibration"


def test_cuda_gets_channels_last_and_the_cache_lives_outside_the_package(monkeypatch, tmp_path):
    assert hardware.preferred_layout("cuda").forward and hardware.preferred_layout("cuda").train
    monkeypatch.delenv("SEGZOO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hardware.cache_path() == tmp_path / "xdg" / "segzoo" / "layout.json"
    key = hardware.machine_key()
    assert torch.__version__ in key and hardware.cpu_capability() in key and hardware.cpu_model() in key


def test_command_line_shows_and_calibrates_into_the_user_cache(own_cache, capsys):
    assert hardware_cli.main([]) == 0
    assert hardware.machine_key() in capsys.readouterr().out and not own_cache.exists()
    assert hardware_cli.main(["--calibrate", "--size", "32", "--repeats", "1"]) == 0
    assert '"source": "calibration"' in capsys.readouterr().out
    assert hardware.machine_key() in json.loads(own_cache.read_text())


def test_calibration_into_an_unwritable_cache_is_one_error_line(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SEGZOO_CACHE_DIR", str(blocker / "sub"))  # a folder below a file
    assert hardware_cli.main(["--calibrate", "--size", "32", "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segzoo hardware: error:") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["resnet18_unet", "unet"])
@pytest.mark.parametrize("layout", [True, False])
def test_split_concat_of_the_finest_block_equals_the_concat(name, layout):
    """conv(cat(up, skip)) computed as two convolutions: same outputs and gradients (float64)."""
    split = tiny_model(name, channels_last=layout).double().train()
    concat = tiny_model(name, channels_last=layout).double().train()
    concat.load_state_dict(split.state_dict())
    assert split.decoder.blocks[-1].split_concat and not any(b.split_concat for b in split.decoder.blocks[:-1])
    concat.decoder.blocks[-1].split_concat = False
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    outs = []
    for model in (split, concat):
        out = model(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    for (n, a), (_, b) in zip(split.named_parameters(), concat.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=n)
    with torch.no_grad():
        torch.testing.assert_close(split.eval()(x), concat.eval()(x))


# ---- issue 19, point 8: a corrupt cache is ignored with one warning; no cache written under load ----------


def _ignored_with_one_warning(capsys, own_cache, reason):
    hardware._cpu_choice.cache_clear()
    assert hardware.preferred_layout().source.startswith(("rule", "unmeasured"))
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"ignoring the layout cache {own_cache}" in err and reason in err


@pytest.mark.parametrize("content, reason", [
    ("[" * 100_000 + "]" * 100_000, "nested deeper than"),
    ('{"k": ' * 5000 + "1" + "}" * 5000, "nested deeper than"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected an object"),
    ('{"k": [1]}', "not a layout cache"),
    ("x" * (256 * 1024 + 1), "bytes, more than"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_a_corrupt_cache_is_ignored_with_one_line_naming_it(own_cache, capsys, content, reason):
    own_cache.parent.mkdir(parents=True)
    (own_cache.write_bytes if isinstance(content, bytes) else own_cache.write_text)(content)
    _ignored_with_one_warning(capsys, own_cache, reason)
    hardware._cpu_choice.cache_clear()
    assert tiny_model("unet").layout_choice.source.startswith("rule")  # models build, on the rules


def _in_thread(fn, timeout=20):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    return thread.is_alive(), box.get("value")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_cache_never_blocks(own_cache, capsys):
    own_cache.parent.mkdir(parents=True)
    os.mkfifo(own_cache)
    try:
        hung, choice = _in_thread(lambda: (hardware._cpu_choice.cache_clear(), hardware.preferred_layout())[1])
    finally:  # unblock a reader stuck in open() (the bug), so that the thread ends
        try:
            os.close(os.open(own_cache, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert not hung, "reading a FIFO as the layout cache blocked"
    assert choice.source.startswith(("rule", "unmeasured"))
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(own_cache) in err and "not a regular file" in err


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_cache_linked_to_an_endless_device_is_not_read(own_cache, capsys):
    own_cache.parent.mkdir(parents=True)
    own_cache.symlink_to("/dev/zero")
    _ignored_with_one_warning(capsys, own_cache, "not a regular file")


def test_a_folder_or_an_unreadable_cache_is_ignored(own_cache, capsys):
    own_cache.mkdir(parents=True)
    _ignored_with_one_warning(capsys, own_cache, "it is a folder")
    own_cache.rmdir()
    own_cache.symlink_to(own_cache.parent / "missing")
    _ignored_with_one_warning(capsys, own_cache, "broken symbolic link")


@pytest.mark.slow
def test_the_command_line_with_a_fifo_cache_answers(own_cache):
    """The hardware command hung on a FIFO cache; now it prints the rule and one warning."""
    import subprocess

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    own_cache.parent.mkdir(parents=True)
    os.mkfifo(own_cache)
    env = {**os.environ, "SEGZOO_CACHE_DIR": str(own_cache.parent)}
    try:
        proc = subprocess.run([sys.executable, "-m", "segzoo", "hardware"], capture_output=True, text=True,
                              env=env, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("segzoo hardware blocked on a FIFO cache")
    assert proc.returncode == 0 and '"source": "rule' in proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a regular file" in proc.stderr


def _build(cl):
    return tiny_model("unet", channels_last=cl)


def test_a_calibration_is_not_run_nor_cached_when_the_machine_is_busy(monkeypatch, own_cache, capsys):
    monkeypatch.setattr(hardware_load, "cpu_counters", FakeCpu(rate=1.5))
    with pytest.raises(calibration.MachineBusyError, match=r"other processes used 1\.5\d of \d+ CPUs"):
        calibration.calibrate(lambda cl: pytest.fail("measured on a busy machine"), size=32, repeats=1)
    assert not os.path.lexists(own_cache)
    assert hardware_cli.main(["--calibrate", "--size", "32", "--repeats", "1"]) == 1
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "not calibrated: other processes used" in err
    assert not os.path.lexists(own_cache) and '"source": "rule' in out


def test_a_calibration_measured_under_load_is_not_cached(monkeypatch, own_cache, capsys):
    cpu = FakeCpu()
    monkeypatch.setattr(hardware_load, "cpu_counters", cpu)

    def build(cl):  # another job starts right after the idle check
        cpu(), setattr(cpu, "rate", 1.2)
        return _build(cl)

    result = calibration.calibrate(build, batch_size=2, size=32, repeats=1)
    assert result["cached"] is False and "during the measurement" in result["not_cached"]
    assert result["other_cpus"] == pytest.approx(1.2, abs=0.1)
    assert not os.path.lexists(own_cache) and hardware.cached_layout() is None
    monkeypatch.setattr(calibration, "calibrate", lambda **kw: {**result, "times_ms": {}})
    assert hardware_cli.main(["--calibrate", "--size", "32", "--repeats", "1"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and re.search(r"not cached: other processes used 1\.\d+ of", err)


def test_calibration_time_is_bounded(own_cache):
    result = calibration.calibrate(_build, batch_size=2, size=32, repeats=1000, max_seconds=0.001)
    assert result["repeats"] == 1 and result["cached"] and hardware.cached_layout() is not None


def test_calibration_keeps_other_machines_and_leaves_an_unusable_cache_alone(own_cache, capsys):
    own_cache.parent.mkdir(parents=True)
    other = {"another cpu | AVX2 | torch 0 | 2 threads": {"forward": True, "train": False}}
    own_cache.write_text(json.dumps(other))
    calibration.calibrate(_build, batch_size=2, size=32, repeats=1)
    data = json.loads(own_cache.read_text())
    assert set(data) == {*other, hardware.machine_key()}
    own_cache.write_text("[" * 50 + "]" * 50)
    with pytest.raises(OSError, match="cannot write the layout cache .*nested deeper.*left as it is"):
        calibration.calibrate(_build, batch_size=2, size=32, repeats=1)
    assert own_cache.read_text() == "[" * 50 + "]" * 50
    assert hardware_cli.main(["--calibrate", "--size", "32", "--repeats", "1"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
