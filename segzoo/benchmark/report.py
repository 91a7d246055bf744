"""Reports of benchmark results: speed-up ratios, markdown table, JSON file and throughput plot."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segzoo.errors import short_repr
from segzoo.fileio import atomic_write, make_folder, write_bytes_atomic

__all__ = ["ratios", "markdown_table", "ratio_table", "check_result_name", "write_results", "plot_throughput"]


def variant(spec: dict[str, Any]) -> str:
    """How a segzoo spec differs from the model users get by default (``""``, or e.g. ``"channels_last=False"``)."""
    layout = (spec.get("kwargs") or {}).get("channels_last")
    return f"channels_last={layout}" if layout is not None else ""


def ratios(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """smp time / segzoo time for every segzoo result with a matching smp result in the same setting."""
    out = []
    for res in results:
        spec = res["spec"]
        if spec.get("library") != "segzoo" or "pair" not in spec:
            continue
        key = {k: v for k, v in res["config"].items() if k != "memory"}
        peer = next((p for p in results if p["spec"].get("library") == "smp" and p["spec"].get("pair") == spec["pair"]
                     and {k: v for k, v in p["config"].items() if k != "memory"} == key), None)
        if peer is None:
            continue
        row = {"pair": spec["pair"], "variant": variant(spec), "resolution": key["resolution"], "batch_size": key["batch_size"],
               "channels_last": key["channels_last"], "dtype": key["dtype"], "device": key["device"],
               "forward_speedup": peer["forward_ms"] / res["forward_ms"],
               "train_speedup": peer["train_ms"] / res["train_ms"] if "train_ms" in res else None}
        if "train_peak_mib" in res and "train_peak_mib" in peer:
            row["memory_ratio"] = res["train_peak_mib"] / peer["train_peak_mib"]
        out.append(row)
    return out


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """A markdown table of the results (one row per model and setting)."""
    head = ("| model | device | dtype | CL | B x res | params (M) | GFLOP | fwd ms | fwd img/s | train ms "
            "| train img/s | GFLOP/s | train peak MiB |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in results:
        c = r["config"]
        mem = f"{r['train_peak_mib']:.0f}" if "train_peak_mib" in r else "-"
        train_ms = f"{r['train_ms']:.0f}" if "train_ms" in r else "-"
        train_img_s = f"{r['train_img_s']:.1f}" if "train_img_s" in r else "-"
        lines.append(f"| {r['label']} | {c['device']} | {c['dtype']} | {'on' if c['channels_last'] else 'off'} "
                     f"| {c['batch_size']} x {c['resolution']} | {r['params'] / 1e6:.2f} | {r['gflops']:.1f} "
                     f"| {r['forward_ms']:.0f} | {r['forward_img_s']:.1f} | {train_ms} "
                     f"| {train_img_s} | {r['achieved_gflop_s']:.0f} | {mem} |")
    return "\n".join(lines)


def _load(env: dict[str, Any]) -> str:
    def fmt(load: Any) -> str:
        return "/".join(f"{v:.2f}" for v in load) if load else "n/a"

    if env.get("load_average_start"):
        return f"{fmt(env['load_average_start'])} at the start, {fmt(env.get('load_average'))} at the end"
    return fmt(env.get("load_average"))


def check_result_name(name: object) -> str:
    """``name`` if it can name the result files inside the output folder (``--name``), else one ValueError line.

    Refused: anything but a non-empty string, a path (``/``, ``\\``, ``.``, ``..``: the files
    would land outside the output folder), a control character, a name too long for a file name.
    """
    if (not isinstance(name, str) or not name.strip() or name in (".", "..") or "/" in name or "\\" in name
            or any(ord(c) < 32 for c in name)):
        raise ValueError(f"--name must be a plain file name (the stem of NAME.json / NAME.md / NAME.png in the "
                         f"--out folder), without folders; got {short_repr(name)}")
    if len(os.fsencode(f"{name}.json")) > 255:
        raise ValueError(f"--name is too long for a file name ({short_repr(name)}); use at most 250 bytes")
    return name


def write_results(results: Sequence[dict[str, Any]], env: dict[str, Any], out_dir: str | Path,
                  name: str = "benchmark", command: str | None = None) -> dict[str, Path]:
    """Write ``<name>.json`` (environment, command, results, ratios), ``<name>.md`` (tables) and,
    when matplotlib is installed and several resolutions were run, ``<name>.png``.

    Each file is written atomically through :mod:`segzoo.fileio` and replaces the previous result
    of the same name (a benchmark re-run updates its own files; readers never see half a file).

    Returns:
        The written paths by kind (``"json"``, ``"md"``, optionally ``"png"``).

    Raises:
        ValueError: ``name`` is not a plain file name (:func:`check_result_name`).
    """
    check_result_name(name)
    out = make_folder(out_dir)
    pairs = ratios(results)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    payload = {"environment": env, "command": command, "results": list(results), "ratios": pairs}
    write_bytes_atomic(paths["json"], (json.dumps(payload, indent=1) + "\n").encode(), overwrite=True)
    text = [f"# {name}", "", f"Command: `{command}`" if command else "", "",
            f"Environment: torch {env.get('torch')}, CUDA {env.get('cuda')}, {env.get('cpu')} "
            f"(ISA {env.get('cpu_capability')}, {env.get('cpu_count')} CPUs, {env.get('torch_threads')} threads), "
            f"load average {_load(env)}, GPU {env.get('gpu')}, "
            f"smp {env.get('smp')}", "", markdown_table(results), ""]
    if pairs:
        text += [ratio_table(pairs), ""]
    write_bytes_atomic(paths["md"], "\n".join(text).encode(), overwrite=True)
    png = plot_throughput(results, out / f"{name}.png")
    if png is not None:
        paths["png"] = png
    return paths


def ratio_table(pairs: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`ratios` rows (speed-up > 1: segzoo is faster)."""
    lines = ["| pair | device | dtype | CL | B x res | forward speed-up | train speed-up | memory segzoo/smp |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in pairs:
        mem = f"{p['memory_ratio']:.2f}" if "memory_ratio" in p else "-"
        train = f"{p['train_speedup']:.2f}x" if p["train_speedup"] is not None else "-"
        pair = f"{p['pair']} [{p['variant']}]" if p.get("variant") else p["pair"]
        lines.append(f"| {pair} | {p['device']} | {p['dtype']} | {'on' if p['channels_last'] else 'off'} "
                     f"| {p['batch_size']} x {p['resolution']} | {p['forward_speedup']:.2f}x "
                     f"| {train} | {mem} |")
    return "\n".join(lines)


def plot_throughput(results: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Forward img/s against resolution, one line per model (segzoo solid, smp dashed).

    Returns the PNG path, or ``None`` when matplotlib is missing or fewer than two
    resolutions were measured. The file is written atomically and replaces an earlier plot.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    lines: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        c = r["config"]
        key = f"{r['label']} [{c['device']} {c['dtype']} B={c['batch_size']}{' CL' if c['channels_last'] else ''}]"
        lines.setdefault(key, []).append((c["resolution"], r["forward_img_s"]))
    if len({res for pts in lines.values() for res, _ in pts}) < 2:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for key, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if key.startswith("smp") else "-", marker="o",
                label=key)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("input resolution (H = W)")
    ax.set_ylabel("forward throughput (img/s)")
    ax.set_title("segzoo (solid) vs smp (dashed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), overwrite=True)
    finally:
        plt.close(fig)
    return Path(path)
