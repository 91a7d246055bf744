"""Benchmark code: counting, timing arithmetic, specs, reports, CLI; tiny models, no timed assertions."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn as nn

import segzoo.benchmark as bench
from segzoo.benchmark import BenchConfig
from segzoo.cli import main as cli_main

TINY = {"library": "segzoo", "name": "unet", "kwargs": {"num_channels": 4, "num_blocks": 2}}
TINY_SMP = {"library": "smp", "name": "Unet", "encoder": "resnet18", "pair": "tiny/unet",
            "kwargs": {"encoder_depth": 3, "decoder_channels": [8, 8, 8]}}


@pytest.fixture(autouse=True)
def _one_thread():
    # two intra-op threads on a loaded 2-core machine thrash (seconds per tiny step); one is enough here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeClock:
    """Each call returns the previous value plus ``step`` seconds."""

    def __init__(self, step: float) -> None:
        self.now, self.step, self.calls = 0.0, step, 0

    def __call__(self) -> float:
        self.calls += 1
        self.now += self.step
        return self.now


def tiny_cfg(**kw) -> BenchConfig:
    base = dict(batch_size=2, resolution=32, warmup=1, iterations=2, repeats=2, memory=False)
    return BenchConfig(**{**base, **kw})


def test_throughput_is_batch_times_iterations_over_time():
    assert bench.throughput(4, 3, 2.0) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="positive"):
        bench.throughput(4, 3, 0.0)


def test_time_block_calls_fn_iterations_times_between_two_clock_reads():
    calls = []
    clock = FakeClock(0.25)
    assert bench.time_block(lambda: calls.append(1), 5, "cpu", clock) == pytest.approx(0.25)
    assert len(calls) == 5 and clock.calls == 2


def test_count_gflops_and_params_of_a_known_conv():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert bench.count_params(conv) == 3 * 8 * 9
    assert bench.count_gflops(conv, torch.rand(1, 3, 8, 8)) * 1e9 == pytest.approx(2 * 3 * 8 * 9 * 64)


def test_run_benchmark_counts_img_per_second_with_a_fake_clock():
    cfg = tiny_cfg()
    seen = []
    results = bench.run_benchmark([TINY], cfg, clock=FakeClock(0.5), memory_fn=lambda s, c: seen.append(s) or {})
    (r,) = results
    # every timed block lasts exactly one clock step: 0.5 s for 2 iterations of batch 2
    assert r["forward_block_s"] == [0.5, 0.5] and r["train_block_s"] == [0.5, 0.5]
    assert r["forward_img_s"] == pytest.approx(2 * 2 / 0.5)
    assert r["forward_ms"] == pytest.approx(250.0) and r["train_ms"] == pytest.approx(250.0)
    assert r["achieved_gflop_s"] == pytest.approx(r["gflops"] * 2 / 0.5)
    assert r["params"] > 0 and r["gflops"] > 0 and seen == []


def test_runs_are_interleaved_between_models():
    order = []
    clock = FakeClock(1.0)
    specs = [TINY, {**TINY, "kwargs": {"num_channels": 8, "num_blocks": 2}}]
    orig = bench.measure._Runner.forward

    def spy(self):
        order.append(self.spec["kwargs"]["num_channels"])
        return orig(self)

    bench.measure._Runner.forward = spy
    try:
        bench.run_benchmark(specs, tiny_cfg(warmup=0, iterations=1, repeats=2), clock=clock)
    finally:
        bench.measure._Runner.forward = orig
    assert order == [4, 8, 4, 8]


def test_results_json_markdown_and_plot(tmp_path):
    results = []
    for res in (32, 64):
        results += bench.run_benchmark([TINY], tiny_cfg(resolution=res, repeats=1, memory=True),
                                       memory_fn=lambda s, c: {"train_peak_mib": 1.5})
    paths = bench.write_results(results, bench.environment(), tmp_path, "t", command="segzoo benchmark")
    data = json.loads(paths["json"].read_text())
    assert set(data) == {"environment", "command", "results", "ratios"}
    for key in ("torch", "cpu", "torch_threads", "cuda", "segzoo", "smp"):
        assert key in data["environment"]
    row = data["results"][1]
    for key in ("label", "params", "gflops", "forward_ms", "train_ms", "forward_img_s", "train_img_s",
                "achieved_gflop_s", "train_peak_mib", "config"):
        assert key in row
    assert row["config"]["resolution"] == 64
    assert "| segzoo unet | cpu | fp32 | off | 2 x 64 |" in paths["md"].read_text()
    if "png" in paths:
        assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_results_replace_their_files_atomically_and_never_write_through_them(tmp_path):
    results = bench.run_benchmark([TINY], tiny_cfg(repeats=1))
    out = tmp_path / "out"
    out.mkdir()
    keep = tmp_path / "keep.json"
    keep.write_text("someone else's file")
    os.link(keep, out / "t.json")  # the old result shares its inode with another file
    (out / "t.md").write_text("old table")
    paths = bench.write_results(results, bench.environment(), out, "t")
    assert keep.read_text() == "someone else's file"  # replaced, not written through
    assert json.loads(paths["json"].read_text())["results"][0]["label"] == results[0]["label"]
    assert "| segzoo unet |" in paths["md"].read_text()
    assert sorted(p.name for p in out.iterdir()) == ["t.json", "t.md"]  # no temporary file left
    paths = bench.write_results(results, bench.environment(), out, "t")  # a re-run replaces its own files
    assert paths["json"].stat().st_nlink == 1


def test_train_step_memory_in_process_is_positive():
    mem = bench.train_step_memory(TINY, tiny_cfg(resolution=64))
    assert mem["train_rss_delta_mib"] >= 0 and mem["peak_rss_mib"] > 0
    # at least the gradients and the SGD momentum buffers of the parameters are allocated
    params = bench.count_params(bench.build_model(TINY, 1)) * 4 / 2**20
    assert mem["train_peak_mib"] >= 2 * params


def test_allocated_peak_counts_live_tensors_not_freed_ones():
    from segzoo.benchmark.measure import _allocated_peak_bytes

    def step():
        a = torch.ones(2**20)  # 4 MiB
        b = torch.ones(2**20)  # 4 MiB more while a is alive
        del a, b
        c = torch.ones(2**19)  # 2 MiB after both were freed
        return c

    assert _allocated_peak_bytes(step) == pytest.approx(8 * 2**20, rel=0.01)


def test_config_and_spec_errors_are_clear():
    with pytest.raises(ValueError, match="dtype"):
        BenchConfig(dtype="fp8").validate()
    with pytest.raises(ValueError, match="batch_size"):
        BenchConfig(batch_size=0).validate()
    with pytest.raises(KeyError, match="benchmark library"):
        bench.build_model({"library": "keras", "name": "x"})
    with pytest.raises(KeyError, match="architecture"):
        bench.segzoo_spec("deeplab")


def test_cuda_is_skipped_cleanly_when_absent(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    messages = []
    assert bench.available_devices(["cpu", "cuda"], messages.append) == ["cpu"]
    assert "cuda" in messages[0]
    with pytest.raises(ValueError, match="none of the requested devices"):
        bench.available_devices(["cuda"], messages.append)
    with pytest.raises(ValueError, match="CUDA is not available"):
        BenchConfig(device="cuda").validate()


def test_suite_without_smp_has_no_smp_models(monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # import now fails
    assert not bench.smp_available()
    specs = bench.default_suite(["resnet18"], ["unet", "pspnet"])
    assert [s["library"] for s in specs] == ["torchvision", "segzoo", "segzoo"]


def test_smp_pair_gives_ratios():
    pytest.importorskip("segmentation_models_pytorch")
    ours = {**TINY, "pair": "tiny/unet"}
    results = bench.run_benchmark([ours, TINY_SMP], tiny_cfg(repeats=1, iterations=1), clock=FakeClock(1.0))
    assert results[1]["label"] == "smp Unet(resnet18)"
    (row,) = bench.ratios(results)
    assert row["pair"] == "tiny/unet" and row["forward_speedup"] == pytest.approx(1.0)
    assert "tiny/unet" in bench.ratio_table([row])


def test_cli_writes_results(tmp_path, capsys):
    code = cli_main(["benchmark", "--models", "unet", "--no-smp", "--resolutions", "32", "--batch-sizes", "2",
                     "--warmup", "0", "--iterations", "1", "--repeats", "1", "--no-memory",
                     "--out", str(tmp_path), "--name", "cli"])
    assert code == 0
    assert json.loads((tmp_path / "cli.json").read_text())["results"][0]["label"] == "segzoo unet"
    assert "segzoo unet" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["../escaped", "{tmp}/abs/path", "sub/x", "..", ".", "", " ", "a\\b", "a\nb", "x" * 300])
def test_name_cannot_write_outside_the_out_folder(tmp_path, capsys, name):
    """Issue 19 point 9: --name is the stem of files in --out, refused before any model is timed."""
    out = tmp_path / "deep" / "out"
    name = name.format(tmp=tmp_path)
    code = cli_main(["benchmark", "--models", "unet", "--no-smp", "--resolutions", "32", "--batch-sizes", "2",
                     "--warmup", "0", "--iterations", "1", "--repeats", "1", "--no-memory",
                     "--out", str(out), "--name", name])
    err = capsys.readouterr()
    assert code == 2 and "segzoo benchmark: error: --name " in err.err and "segzoo unet" not in err.out
    assert [p for p in tmp_path.rglob("*")] == []  # nothing written anywhere
    with pytest.raises(ValueError, match="--name"):
        bench.write_results([], bench.environment(), out, name)
    assert [p for p in tmp_path.rglob("*")] == []


def test_out_that_is_a_file_is_refused_before_timing(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    code = cli_main(["benchmark", "--models", "unet", "--no-smp", "--out", str(tmp_path / "f")])
    err = capsys.readouterr()
    assert code == 2 and "is a file" in err.err and "segzoo unet" not in err.out
    assert (tmp_path / "f").read_text() == "mine"


def test_cli_unknown_model_is_a_user_error(tmp_path, capsys):
    code = cli_main(["benchmark", "--models", "unett", "--out", str(tmp_path)])
    assert code == 2
    assert "unett" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_channels_last_path():
    cfg = tiny_cfg(device="cuda", dtype="fp16", channels_last=True, memory=True)
    (r,) = bench.run_benchmark([TINY], cfg, memory_fn=bench.train_step_memory)
    assert r["train_peak_mib"] > 0 and r["forward_img_s"] > 0


def test_target_report_checks_speedups_gflops_scaling_and_memory():
    models = pytest.importorskip("benchmarks.models", reason="run from the repository root")

    def res(spec, resolution, fwd, train, gflops, mem):
        cfg = {**vars(tiny_cfg(resolution=resolution, batch_size=4))}
        return {"spec": spec, "config": cfg, "forward_ms": fwd, "train_ms": train, "train_peak_mib": mem,
                "achieved_gflop_s": gflops}

    ours, peer, body = bench.segzoo_spec("unet"), bench.smp_spec("unet"), bench.body_spec("resnet34")
    results = [res(ours, 256, 100, 300, 95, 90), res(peer, 256, 140, 330, 80, 100), res(body, 256, 50, 150, 100, 50),
               res(ours, 512, 500, 1200, 95, 300)]
    report = models.target_report(results)
    assert "| resnet34/unet forward speed-up vs smp | cpu fp32 B=4 256px CL=off | 1.40 | >= 1.5 | NO |" in report
    assert "| resnet34/unet train-step speed-up vs smp | cpu fp32 B=4 256px CL=off | 1.10 | >= 1.3 | NO |" in report
    assert "GFLOP/s vs encoder body | cpu fp32 B=4 256px CL=off | 0.95 | >= 0.9 | yes |" in report
    assert "forward time 512^2 / 256^2 | cpu fp32 B=4 256px CL=off | 5.00 | <= 4.2 | NO |" in report
    assert "peak memory segzoo/smp | cpu fp32 B=4 256px CL=off | 0.90 | <= 1.0 | yes |" in report
    # issue 15's targets: per pass and architecture, and 1.2 for both when both libraries run channels_last
    assert (models.speedup_target("fpn_unet", False, False), models.speedup_target("pspnet", True, False),
            models.speedup_target("pspnet", True, True)) == (1.8, 1.1, 1.2)


def test_quality_training_is_seeded_and_scored():
    quality = pytest.importorskip("benchmarks.quality", reason="run from the repository root")
    train, valid = quality.make_data(8, 32, seed=0), quality.make_data(4, 32, seed=1)
    assert train[0].shape == (8, 3, 32, 32) and train[1].shape == (8, 1, 32, 32)
    a = quality.train_and_score(TINY, train, valid, steps=3, batch_size=4, lr=1e-3, seed=0)
    b = quality.train_and_score(TINY, train, valid, steps=3, batch_size=4, lr=1e-3, seed=0)
    assert 0.0 <= a["valid_dice"] <= 1.0
    assert a["valid_dice"] == b["valid_dice"] and a["final_loss"] == b["final_loss"]


def test_forward_only_skips_train_and_memory():
    (r,) = bench.run_benchmark([TINY], tiny_cfg(train=False, memory=True, repeats=1),
                               memory_fn=lambda s, c: pytest.fail("memory measured in forward-only mode"))
    assert "train_ms" not in r and r["forward_ms"] > 0
    assert "| - | - |" in bench.markdown_table([r])


def test_memory_is_the_median_of_interleaved_fresh_measurements():
    calls = []
    values = iter([300.0, 10.0, 100.0, 20.0, 200.0, 30.0])  # rounds of (TINY, OTHER)
    other = {**TINY, "label": "other"}

    def fake_memory(spec, cfg):
        calls.append(spec.get("label", "tiny"))
        return {"train_peak_mib": next(values)}

    results = bench.run_benchmark([TINY, other], tiny_cfg(repeats=1, memory=True, memory_repeats=3),
                                  memory_fn=fake_memory)
    assert calls == ["tiny", "other"] * 3  # interleaved between models, like the timings
    assert results[0]["train_peak_mib"] == 200.0 and results[0]["train_peak_mib_samples"] == [300.0, 100.0, 200.0]
    assert results[1]["train_peak_mib"] == 20.0
    with pytest.raises(ValueError, match="memory_repeats"):
        tiny_cfg(memory_repeats=0).validate()


def test_models_script_records_its_command_and_target_report(tmp_path):
    models = pytest.importorskip("benchmarks.models", reason="run from the repository root")
    args = ["--models", "unet", "--no-smp", "--resolutions", "32", "--batch-sizes", "2", "--warmup", "0",
            "--iterations", "1", "--repeats", "1", "--no-memory", "--out", str(tmp_path), "--name", "m"]
    assert models.main(args) == 0
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["command"] == "python -m benchmarks.models " + " ".join(args)
    assert (tmp_path / "m-targets.md").read_text().startswith("| check |")


def test_environment_records_allocator_and_openmp_settings(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("SEGZOO_UNRELATED", "x")
    env = bench.environment()["env_vars"]
    assert env["MALLOC_MMAP_MAX_"] == "0" and env["OMP_NUM_THREADS"] == "2"
    assert "SEGZOO_UNRELATED" not in env


def test_environment_records_the_isa_and_the_layout_segzoo_picked(monkeypatch, tmp_path):
    from segzoo import hardware

    monkeypatch.setenv("SEGZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(hardware, "cpu_capability", lambda: "AVX2")
    hardware._cpu_choice.cache_clear()
    try:
        env = bench.environment()
    finally:
        hardware._cpu_choice.cache_clear()
    assert env["cpu_capability"] == "AVX2" and env["cpu"] == hardware.cpu_model()
    assert env["segzoo_layout"] == {"forward_channels_last": True, "train_channels_last": False,
                                    "source": "rule AVX2"}
    assert env["env_vars"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert isinstance(env["cpu_isa_flags"], list)


def test_cli_records_the_load_at_start_and_end(tmp_path):
    code = cli_main(["benchmark", "--models", "unet", "--no-smp", "--resolutions", "32", "--batch-sizes", "2",
                     "--warmup", "0", "--iterations", "1", "--repeats", "1", "--no-memory", "--forward-only",
                     "--out", str(tmp_path), "--name", "load"])
    assert code == 0
    env = json.loads((tmp_path / "load.json").read_text())["environment"]
    assert len(env["load_average_start"]) == 3 and len(env["load_average"]) == 3
    assert "at the start" in (tmp_path / "load.md").read_text() and "ISA " in (tmp_path / "load.md").read_text()


def test_segzoo_layouts_are_timed_side_by_side_and_labelled():
    specs = bench.with_layouts([bench.segzoo_spec("unet"), bench.smp_spec("unet")], ["auto", "false", "true"])
    assert [s["library"] for s in specs] == ["segzoo", "segzoo", "segzoo", "smp"]
    assert "channels_last" not in specs[0]["kwargs"] and specs[1]["kwargs"]["channels_last"] is False
    assert bench.spec_label(specs[1]) == "segzoo resnet34_unet [channels_last=False]"
    results = [{"spec": s, "config": {"device": "cpu", "dtype": "fp32", "channels_last": False, "batch_size": 4,
                                      "resolution": 256, "memory": False}, "forward_ms": t, "train_ms": 2 * t}
               for s, t in zip(specs, (100.0, 120.0, 90.0, 150.0))]
    rows = bench.ratios(results)
    assert [(r["variant"], round(r["forward_speedup"], 2)) for r in rows] == [
        ("", 1.5), ("channels_last=False", 1.25), ("channels_last=True", 1.67)]
    assert "resnet34/unet [channels_last=False]" in bench.ratio_table(rows)
