"""Load generator for ``segzoo serve`` on 127.0.0.1: concurrent clients, latency, throughput, memory.

Starts ``segzoo serve`` in a subprocess on a free port of 127.0.0.1 (never another host), once per
setting (batching on: ``--max-batch B --max-wait-ms T``; off: ``--max-batch 1``), and runs
``clients`` threads that each send ``requests`` PNG images (``size`` x ``size``, procedural) and
wait for the mask; the run stops early after ``max_seconds``. Reported per setting: requests
answered (by status), p50 / p99 latency, throughput (answered requests / wall time), and the
server's resident memory (RSS, from /proc) before, at peak and after the run.

    python -m benchmarks.serve_load --clients 16 --requests 8 --size 512            # resnet34 Unet
    python -m benchmarks.serve_load --model unet --size 128 --requests 2 --under-load  # smoke run
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
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


def run_setting(source: Path, serve_args: list[str], images: list[bytes], clients: int, requests: int,
                max_seconds: float, threads: int | None) -> dict[str, Any]:
    """Start a server with ``serve_args``, load it, stop it with SIGTERM; returns the measurements."""
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "segzoo.cli", "serve", str(source), "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--queue-size", str(4 * clients), *serve_args]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"segzoo serve exited: {proc.stdout.read().decode()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("segzoo serve did not start in 300 s")
            time.sleep(0.2)
        httpx.post(url + "/v1/predict", content=images[0], headers={"Content-Type": "image/png"}, timeout=600)
        rss = {"before": _rss_mib(proc.pid), "peak": _rss_mib(proc.pid)}
        done = threading.Event()

        def sample():
            while not done.wait(0.1):
                rss["peak"] = max(rss["peak"], _rss_mib(proc.pid))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stop_at = time.monotonic() + max_seconds
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        lock = threading.Lock()

        def client(k: int) -> None:
            with httpx.Client(timeout=600) as http:
                for r in range(requests):
                    if time.monotonic() > stop_at:
                        return
                    t = time.perf_counter()
                    reply = http.post(url + "/v1/predict", content=images[(k * requests + r) % len(images)],
                                      headers={"Content-Type": "image/png"})
                    with lock:
                        statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
                        if reply.status_code == 200:
                            latencies.append(time.perf_counter() - t)
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        health = httpx.get(url + "/health", timeout=10).json()
        rss["after"] = _rss_mib(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
    lat = np.array(latencies) * 1000
    return {"serve_args": serve_args, "statuses": statuses, "answered": len(latencies), "wall_s": wall,
            "throughput_rps": len(latencies) / wall if wall else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "rss_mib": rss, "batches_run": health.get("batches_run"), "images_run": health.get("images_run"),
            "exit_code": proc.returncode}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=None, help="model to serve (default: a random --model checkpoint)")
    p.add_argument("--model", default="resnet34_unet")
    p.add_argument("--backend", default="eager")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=8, help="requests per client")
    p.add_argument("--max-seconds", type=float, default=300, help="stop sending after this long")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--under-load", action="store_true", help="label the figures as taken on a busy machine")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="serve_load")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="segzoo-load-") as tmp:
        source = Path(args.source) if args.source else make_checkpoint(Path(tmp), args.model)
        images = make_images(min(32, args.clients * args.requests), args.size)
        common = ["--backend", args.backend]
        settings = {"batching on": common + ["--max-batch", str(args.max_batch), "--max-wait-ms",
                                             str(args.max_wait_ms)],
                    "batching off": common + ["--max-batch", "1"]}
        results = {}
        for label, serve_args in settings.items():
            print(f"{label}: {' '.join(serve_args)}", file=sys.stderr)
            results[label] = run_setting(source, serve_args, images, args.clients, args.requests, args.max_seconds,
                                         args.threads)
            print(json.dumps(results[label]), file=sys.stderr)
    lines = ["_Taken under load (other jobs on the machine); re-run on an idle machine._\n" if args.under_load else "",
             f"{args.clients} clients x {args.requests} requests, {args.size}x{args.size} PNG, "
             f"{args.source or args.model} on {args.backend}\n",
             "| setting | answered | p50 ms | p99 ms | req/s | batches | RSS before / peak / after MiB | exit |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in results.items():
        rss = r["rss_mib"]
        lines.append(f"| {label} | {r['answered']} ({r['statuses']}) | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                     f"{r['throughput_rps']:.2f} | {r['batches_run']} for {r['images_run']} images | "
                     f"{rss['before']:.0f} / {rss['peak']:.0f} / {rss['after']:.0f} | {r['exit_code']} |")
    text = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from segzoo.benchmark import environment
    (out / f"{args.name}.json").write_text(json.dumps({"env": environment(), "args": vars(args),
                                                       "results": results}, indent=2))
    (out / f"{args.name}.md").write_text(f"# segzoo serve under load\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
