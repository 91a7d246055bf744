"""The precision report of a checkpoint (``checkpoints/best.precision.json``) and what ``--backend auto`` makes of it.

The report (:func:`segzoo.inference.precision_check.check_precision` measures it, :func:`write_report` stores
it next to the checkpoint with the int8 model it measured, ``best.int8.onnx``) gives per backend the
mean Dice of its masks against the ground truth and against float32's.

:func:`auto_backend` is what ``--backend auto`` (the default for checkpoints) decides from that file:
a reduced-precision backend only when its Dice against the ground truth is within :data:`TOLERANCE`
of float32's and, for ``torch-bf16``, when the device computes bf16 natively
(:func:`segzoo.hardware.precision.native_bf16`); of two that qualify, the higher Dice (bf16 on a tie).
The file is checked first: a report of another checkpoint (its SHA-256 differs), a file that is not
such a report, or values out of range are ignored with the reason, and float32 runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "TOLERANCE", "AutoChoice", "auto_backend", "check_writable", "file_sha256", "int8_model_path",
           "read_report", "report_path", "summary_lines", "write_report"]

#: the ``format`` entry of a report: a file without it is never read as one, nor replaced
FORMAT = "segzoo-precision-check"
#: largest Dice (against the ground truth) a reduced-precision backend may lose to float32 and be chosen
TOLERANCE = 0.005
REDUCED = ("torch-bf16", "onnxruntime-int8")
MAX_REPORT_BYTES = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def report_path(checkpoint: str | os.PathLike) -> Path:
    """Where the report of a checkpoint file lives: ``checkpoints/best.pth`` -> ``checkpoints/best.precision.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".precision.json")


def int8_model_path(checkpoint: str | os.PathLike) -> Path:
    """The int8 ONNX model a check measured: ``checkpoints/best.pth`` -> ``checkpoints/best.int8.onnx``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".int8.onnx")


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One line per backend: its Dice against the ground truth and against float32."""
    fp32 = report["backends"]["eager"]["dice"]
    lines = [f"{report['images']} images of {report['valid_set']}, on {report['device']} ({report['cpu']}, "
             f"{report.get('isa', '?')})",
             f"  eager (fp32)       Dice {fp32:.4f}"]
    for name in REDUCED:
        r = report["backends"].get(name)
        if r is None:
            continue
        ok = "within" if r["delta"] <= TOLERANCE else "NOT within"
        side = "below" if r["delta"] >= 0 else "above"
        lines.append(f"  {name:<18} Dice {r['dice']:.4f} ({abs(r['delta']):.4f} {side} fp32, {ok} {TOLERANCE}); "
                     f"masks agree with fp32's at Dice {r['dice_vs_fp32']:.4f}")
    return lines


def _ours(path: Path) -> bool:
    """Whether ``path`` holds a report (so ``--force`` may replace it): never a user's file of that name."""
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            return False
        return json.loads(path.read_bytes()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_writable(checkpoint: str | os.PathLike, force: bool = False, int8: bool = True) -> None:
    """Refuse, before any measurement, outputs that exist (without ``force``) or are not segzoo's.

    Raises:
        FileExistsError: one line naming the file.
    """
    report = report_path(checkpoint)
    outputs = [report] + ([int8_model_path(checkpoint)] if int8 else [])
    for path in outputs:
        if not os.path.lexists(path):
            continue
        if not force:
            raise FileExistsError(f"{path} exists (a previous check?); pass --force to replace it")
        if path.is_symlink() or not path.is_file():
            raise FileExistsError(f"{path} exists and is not a regular file; it is never replaced")
    if os.path.lexists(report) and not _ours(report):
        raise FileExistsError(f"{report} exists and is not a segzoo precision report; it is never replaced")
    if int8 and os.path.lexists(outputs[-1]) and not os.path.lexists(report):
        raise FileExistsError(f"{outputs[-1]} exists without its report; it is never replaced")


def write_report(report: dict[str, Any], checkpoint: str | os.PathLike, force: bool = False) -> Path:
    """Write ``report`` next to ``checkpoint`` (and its int8 model), atomically; returns the JSON's path.

    Without ``force`` an existing file is refused; with it only a previous report (and its int8 model)
    is replaced, never another file.
    """
    from segzoo.fileio import write_bytes_atomic, write_json_atomic

    int8 = report.pop("_int8_bytes", None)
    check_writable(checkpoint, force, int8 is not None)
    if int8 is not None:
        model = int8_model_path(checkpoint)
        write_bytes_atomic(model, int8, overwrite=force)
        report["backends"]["onnxruntime-int8"].update(model=model.name, model_sha256=hashlib.sha256(int8).hexdigest())
    return write_json_atomic(report, report_path(checkpoint), overwrite=force)


def _dice(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0.0 <= value <= 1.0


def read_report(checkpoint: str | os.PathLike) -> tuple[dict[str, Any] | None, str]:
    """The report of ``checkpoint`` if it is one of this very checkpoint, else ``None`` and why not.

    Checked: a regular file under 1 MiB of JSON, the :data:`FORMAT` marker, the checkpoint's SHA-256,
    every Dice a number in [0, 1].
    """
    path = report_path(checkpoint)
    if not os.path.lexists(path):
        return None, "missing"
    try:
        if not path.is_file() or path.stat().st_size > MAX_REPORT_BYTES:
            return None, f"{path} is not a regular file under 1 MiB"
        report = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"{path} is not readable JSON ({type(exc).__name__})"
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        return None, f"{path} is not a segzoo precision report"
    ckpt, results = report.get("checkpoint"), report.get("backends")
    if not isinstance(ckpt, dict) or not isinstance(results, dict) or not isinstance(results.get("eager"), dict):
        return None, f"{path} is malformed"
    if ckpt.get("sha256") != file_sha256(checkpoint):
        return None, f"{path} was measured on another checkpoint than {Path(checkpoint).name}"
    for name, entry in results.items():
        if name not in ("eager", *REDUCED) or not isinstance(entry, dict) or not _dice(entry.get("dice")):
            return None, f"{path}: backend {str(name)[:40]!r} has no Dice in [0, 1]"
    return report, ""


class AutoChoice:
    """What ``--backend auto`` runs: ``backend``, the ``reason`` (one line), the int8 model file if chosen."""

    def __init__(self, backend: str, reason: str, int8_model: Path | None = None) -> None:
        self.backend, self.reason, self.int8_model = backend, reason, int8_model


def auto_backend(checkpoint: str | os.PathLike, device: Any = "cpu") -> AutoChoice:
    """The backend ``--backend auto`` picks for ``checkpoint`` on ``device`` (see the module docstring)."""
    from segzoo.hardware.precision import native_bf16

    report, why = read_report(checkpoint)
    name = Path(checkpoint).name
    if report is None:
        if why == "missing":
            return AutoChoice("eager", f"eager (fp32): no precision check of {name} (measure one: segzoo "
                                       f"check-precision LOGDIR)")
        return AutoChoice("eager", f"eager (fp32): ignoring {why}")
    fp32 = float(report["backends"]["eager"]["dice"])
    candidates, refused = [], []
    for backend in REDUCED:
        entry = report["backends"].get(backend)
        if entry is None:
            continue
        value = float(entry["dice"])
        if fp32 - value > TOLERANCE:
            refused.append(f"{backend} {value:.4f}")
            continue
        if backend == "torch-bf16":
            native, reason = native_bf16(device)
            if not native:
                refused.append(f"torch-bf16 (not native here: {reason})")
                continue
        else:
            model = int8_model_path(checkpoint)
            if str(device) != "cpu":
                refused.append("onnxruntime-int8 (CPU only)")
                continue
            if not model.is_file() or entry.get("model_sha256") != file_sha256(model):
                refused.append(f"onnxruntime-int8 ({model.name} is missing or not the one measured)")
                continue
            try:
                from segzoo.inference.backends import require_onnxruntime

                require_onnxruntime()
            except ModuleNotFoundError:
                refused.append("onnxruntime-int8 (onnxruntime is not installed)")
                continue
        candidates.append((value, backend == "torch-bf16", backend))
    measured = f"valid Dice fp32 {fp32:.4f}"
    if not candidates:
        return AutoChoice("eager", f"eager (fp32): {measured}; no reduced precision within {TOLERANCE}"
                                   + (f" ({', '.join(refused)})" if refused else ""))
    value, _, backend = max(candidates)
    return AutoChoice(backend, f"{backend}: its valid Dice {value:.4f} is within {TOLERANCE} of fp32's {fp32:.4f} "
                               f"({report.get('images', '?')} images, {report_path(checkpoint).name})"
                               + (f"; not {', '.join(refused)}" if refused else ""),
                      int8_model_path(checkpoint) if backend == "onnxruntime-int8" else None)
