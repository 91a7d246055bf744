"""Load generator for ``segzoo serve`` on 127.0.0.1: concurrent clients, latency, throughput, memory.

Starts ``segzoo serve`` in a subprocess on a free port of 127.0.0.1 (never another host), once per
setting (batching on: ``--max-batch B --max-wait-ms T``; off: ``--max-batch 1``; the same
``--threads`` / ``--workers`` for both), warms it up with one round of concurrent requests, then
runs ``clients`` threads that each send ``requests`` PNG images (``size`` x ``size``, procedural)
one after the other and check each answer is a PNG mask of that size. Reported per setting:
answers by status (and transport errors by type, wrong answers as ``bad-mask``), p50 / p90 / p99
latency, throughput (good answers / wall time), the batches the server ran (mean size), the share
of the wall time its model threads were busy, its CPU time per request (and the clients' CPU time,
which shares the machine), and its resident memory
(RSS, from /proc): after warm-up, when 10 %, 50 % and 100 % of the requests are answered, at peak
(sampled every 0.1 s), its range after 10 % (sampled every second) and after the run; then SIGTERM and the exit status. Results go to
``OUT/NAME.json`` (with an RSS trace) and ``OUT/NAME.md``.

    python -m benchmarks.serve_load --requests 1000                        # the issue's run (resnet34 Unet, 256²)
    python -m benchmarks.serve_load --requests 20 --under-load --name serve_load-under-load   # a short check
    python -m benchmarks.serve_load --model unet --size 128 --requests 2 --name smoke      # smoke run
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MARKS = (0.1, 0.5, 1.0)  # RSS is read when these shares of the requests are answered


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, None if ``data`` is not a PNG."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def make_checkpoint(folder: Path, model: str) -> Path:
    """A checkpoint of ``model`` (registry name, random weights, one class) with ImageNet normalization."""
    import segzoo
    from segzoo.checkpoint import save_checkpoint
    from segzoo.models.registry import get_model_spec

    kwargs = {"pretrained": False} if model.startswith("resnet") else {}
    net = segzoo.create_model(model, num_classes=1, **kwargs)
    return save_checkpoint({"model_state_dict": net.state_dict(), "model_spec": get_model_spec(net),
                            "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
                           folder / "model.pth")


def make_images(count: int, size: int) -> list[bytes]:
    """``count`` procedural PNG images."""
    from PIL import Image

    from segzoo.data import ProceduralSegmentation

    data = ProceduralSegmentation(count, image_size=size, seed=5)
    out = []
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(data.sample(i)[0]).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _start(source: Path, serve_args: list[str], clients: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "segzoo.cli", "serve", str(source), "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--queue-size", str(4 * clients), *serve_args]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"segzoo serve exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("segzoo serve did not start in 300 s")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def run_setting(source: Path, serve_args: list[str], images: list[bytes], size: int, clients: int, requests: int,
                max_seconds: float | None) -> dict[str, Any]:
    """Start a server with ``serve_args``, load it, stop it with SIGTERM; returns the measurements."""
    import httpx

    proc, url = _start(source, serve_args, clients)
    headers = {"Content-Type": "image/png"}
    total = clients * requests
    marks = {m: max(1, math.ceil(m * total)) for m in MARKS}
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    rss: dict[str, float] = {}
    trace: list[tuple[float, int, float]] = []
    done = [0]
    lock = threading.Lock()
    try:
        with ThreadPoolExecutor(clients) as pool:  # warm-up: one concurrent round (fills a batch)
            list(pool.map(lambda k: httpx.post(url + "/v1/predict", content=images[k % len(images)],
                                               headers=headers, timeout=600), range(clients)))
        before = httpx.get(url + "/health", timeout=10).json()
        rss["start"] = rss["peak"] = _rss_mib(proc.pid)
        cpu_start = _cpu_seconds(proc.pid)
        client_start = time.process_time()
        finished = threading.Event()
        t0 = time.perf_counter()

        def sample() -> None:
            last = -1.0
            while not finished.wait(0.1):
                now, value = time.perf_counter() - t0, _rss_mib(proc.pid)
                rss["peak"] = max(rss["peak"], value)
                if now - last >= 1.0:
                    trace.append((round(now, 1), done[0], value))
                    last = now
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stop_at = time.monotonic() + max_seconds if max_seconds else math.inf
        step = max(1, total // 10)

        def client(k: int) -> None:
            with httpx.Client(timeout=600) as http:
                for r in range(requests):
                    if time.monotonic() > stop_at:
                        return
                    t = time.perf_counter()
                    try:
                        reply = http.post(url + "/v1/predict", content=images[(k * requests + r) % len(images)],
                                          headers=headers)
                        ok = reply.status_code == 200 and _png_size(reply.content) == (size, size)
                        outcome = str(reply.status_code) if reply.status_code != 200 or ok else "bad-mask"
                    except httpx.HTTPError as exc:
                        ok, outcome = False, f"error:{type(exc).__name__}"
                    elapsed = time.perf_counter() - t
                    with lock:
                        outcomes[outcome] = outcomes.get(outcome, 0) + 1
                        if ok:
                            latencies.append(elapsed)
                        done[0] += 1
                        for m, count in marks.items():
                            if done[0] == count:
                                rss[f"at_{round(m * 100)}pct"] = _rss_mib(proc.pid)
                        if done[0] % step == 0:
                            print(f"  {done[0]}/{total} answered, {time.perf_counter() - t0:.0f} s, "
                                  f"RSS {_rss_mib(proc.pid):.0f} MiB", file=sys.stderr, flush=True)
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        wall = time.perf_counter() - t0
        finished.set()
        sampler.join()
        cpu = _cpu_seconds(proc.pid) - cpu_start
        client_cpu = time.process_time() - client_start
        after = httpx.get(url + "/health", timeout=10).json()
        rss["end"] = _rss_mib(proc.pid)
    finally:
        code = _stop(proc)
    lat = np.array(latencies) * 1000
    batches = after["batches_run"] - before["batches_run"]
    run = after["images_run"] - before["images_run"]
    busy = after.get("model_busy_s", math.nan) - before.get("model_busy_s", math.nan)
    good = len(latencies)
    settled = [v for _, n, v in trace if n >= marks[0.1]]  # sampled after 10 % of the requests

    def pct(q: float) -> float | None:
        return float(np.percentile(lat, q)) if lat.size else None
    return {"serve_args": serve_args, "sent": done[0], "answered_ok": good, "outcomes": outcomes,
            "errors": done[0] - good, "wall_s": wall, "throughput_rps": good / wall if wall else 0.0,
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": float(lat.max()) if lat.size else None,
            "batches_run": batches, "images_run": run, "mean_batch": run / batches if batches else None,
            "model_busy_s": busy, "model_busy_share": busy / wall if wall else None,
            "model_ms_per_image": 1000 * busy / run if run else None,
            "server_cpu_s": cpu, "server_cpu_ms_per_request": 1000 * cpu / good if good else None,
            "client_cpu_s": client_cpu,
            "rss_mib": rss, "rss_growth_10_to_100pct_mib": rss.get("at_100pct", math.nan) - rss.get("at_10pct", math.nan),
            "rss_range_after_10pct_mib": [min(settled), max(settled)] if settled else None,
            "rss_trace": trace, "exit_code": code}


def _f(value: float | None, fmt: str = ".0f") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]], load: dict[str, list[float]]) -> str:
    """The markdown table of one invocation."""
    lines = ["_Taken under load (other jobs on the machine); re-run on an idle machine._\n" if args.under_load else "",
             f"{args.clients} clients x {args.requests} requests, {args.size}x{args.size} PNG, "
             f"{args.source or args.model} on {args.backend}, threads {args.threads or 'default'}, "
             f"workers {args.workers}{', --release-memory' if args.release_memory else ''}; load average (1/5/15 min) before "
             f"{' / '.join(f'{v:.2f}' for v in load['before'])}, after {' / '.join(f'{v:.2f}' for v in load['after'])}\n",
             "| setting | OK / sent | other outcomes | p50 ms | p99 ms | req/s | batches (mean size) | model busy | "
             "server CPU ms/req | RSS MiB start / 10% / 50% / 100% / peak / end | exit |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in results.items():
        m = r["rss_mib"]
        others = {k: v for k, v in r["outcomes"].items() if k != "200"} or "none"
        rss = " / ".join(_f(m.get(k)) for k in ("start", "at_10pct", "at_50pct", "at_100pct", "peak", "end"))
        lines.append(f"| {label} | {r['answered_ok']} / {r['sent']} | {others} | {_f(r['p50_ms'])} | "
                     f"{_f(r['p99_ms'])} | {_f(r['throughput_rps'], '.2f')} | {r['batches_run']} "
                     f"({_f(r['mean_batch'], '.1f')}) | {_f(100 * (r['model_busy_share'] or math.nan))}% | "
                     f"{_f(r['server_cpu_ms_per_request'])} | {rss} | {r['exit_code']} |")
    ranges = [f"{label} {r['rss_range_after_10pct_mib'][0]:.0f}–{r['rss_range_after_10pct_mib'][1]:.0f}"
              for label, r in results.items() if r.get("rss_range_after_10pct_mib")]
    if ranges:
        lines.append(f"\nRSS sampled every second after 10 % of the requests (MiB): {'; '.join(ranges)}.")
    if {"batching on", "batching off"} <= results.keys() and results["batching off"]["throughput_rps"]:
        ratio = results["batching on"]["throughput_rps"] / results["batching off"]["throughput_rps"]
        lines.append(f"\nBatching on / off throughput: {ratio:.2f}x (target >= 1.2x).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=None, help="model to serve (default: a random --model checkpoint)")
    p.add_argument("--model", default="resnet34_unet", help="registry name (default resnet34_unet)")
    p.add_argument("--backend", default="eager")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=1000, help="requests per client (default 1000)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop sending after this long (default: never)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=5)
    p.add_argument("--threads", type=int, default=None, help="segzoo serve --threads (default: torch's)")
    p.add_argument("--workers", type=int, default=1, help="segzoo serve --workers")
    p.add_argument("--release-memory", action="store_true", help="segzoo serve --release-memory (both settings)")
    p.add_argument("--settings", nargs="+", choices=("on", "off"), default=["on", "off"],
                   help="batching settings to run, in order (default: on off)")
    p.add_argument("--under-load", action="store_true", help="label the figures as taken on a busy machine")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="serve_load")
    args = p.parse_args(argv)
    common = ["--backend", args.backend, "--workers", str(args.workers)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    if args.release_memory:
        common += ["--release-memory"]
    serve_args = {"on": common + ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)],
                  "off": common + ["--max-batch", "1"]}
    load = {"before": list(os.getloadavg())}
    results = {}
    with tempfile.TemporaryDirectory(prefix="segzoo-load-") as tmp:
        source = Path(args.source) if args.source else make_checkpoint(Path(tmp), args.model)
        images = make_images(min(32, args.clients * args.requests), args.size)
        for setting in args.settings:
            label = f"batching {setting}"
            print(f"{label}: segzoo serve {' '.join(serve_args[setting])}", file=sys.stderr, flush=True)
            results[label] = run_setting(source, serve_args[setting], images, args.size, args.clients,
                                         args.requests, args.max_seconds)
            summary = {k: v for k, v in results[label].items() if k != "rss_trace"}
            print(json.dumps(summary), file=sys.stderr, flush=True)
    load["after"] = list(os.getloadavg())
    text = report(args, results, load)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from segzoo.benchmark import environment
    (out / f"{args.name}.json").write_text(json.dumps({"env": environment(), "args": vars(args), "load_average": load,
                                                       "results": results}, indent=2))
    (out / f"{args.name}.md").write_text(f"# segzoo serve load test\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
