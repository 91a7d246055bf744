"""The summary of a ``segzoo tune`` study: a table of trials (printed, CSV, Markdown) and two pictures.

Files in the study's folder, rewritten at the end of each ``segzoo tune`` run (atomically, and only
when absent or written by ``segzoo tune`` before: a file of the same name that is not the study's is
refused before any trial starts):

- ``trials.csv`` / ``trials.md``: one row per trial: number, state, the best value of the main
  metric, the params, the trial's log directory and, for a failed trial, its one-line reason;
- ``history.png``: the optimisation history (Optuna's plot);
- ``importances.png``: the parameter importances (needs two completed trials that differ).
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from pathlib import Path
from typing import Any

from segzoo.errors import ConfigError
from segzoo.fileio import write_bytes_atomic

COLUMNS = ("number", "state", "best", "params", "logdir", "reason")
MARKDOWN_HEADER = "<!-- segzoo tune: the trials of a study (rewritten by segzoo tune) -->\n"
PNG_SOFTWARE = "segzoo tune"
TITLE = "# study "  # the Markdown table's title line: the study the folder's trials belong to
OUTPUTS = ("trials.csv", "trials.md", "history.png", "importances.png")


def _is_ours(path: Path) -> bool:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            return tuple(next(csv.reader(f), ())) == COLUMNS
    if path.suffix == ".md":
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline() == MARKDOWN_HEADER
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.info.get("Software") == PNG_SOFTWARE
    except OSError:
        return False


def _study_of(folder: Path) -> str | None:
    """The study whose summary ``folder/trials.md`` shows (None: no such file)."""
    path = folder / "trials.md"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [f.readline() for _ in range(3)]
    title = next((line for line in lines if line.startswith(TITLE)), "")
    return title[len(TITLE):].rstrip("\n") or None


def check_outputs(logdir: str | os.PathLike, study_name: str | None = None) -> None:
    """Refuse a study folder that is a training run's, holds a summary file ``segzoo tune`` did not write,
    or is another study's (its trial folders would collide with this one's).

    Raises:
        ConfigError: naming the folder or the file.
    """
    from segzoo.training.run_files import CONFIG_NAME, is_segzoo_config

    folder = Path(logdir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"logdir {folder} is a file; a study's logdir is a folder holding one folder per trial")
    if is_segzoo_config(folder / CONFIG_NAME) or (folder / "checkpoints").is_dir():
        raise ConfigError(f"logdir {folder} holds a training run; a study's logdir holds one folder per trial "
                          f"(trial-0000, ...): choose another logdir=...")
    for name in OUTPUTS:
        path = folder / name
        if os.path.lexists(path) and (not path.is_file() or path.is_symlink() or not _is_ours(path)):
            raise ConfigError(f"{path} exists and was not written by segzoo tune; move it away or choose "
                              f"another logdir=...")
    other = _study_of(folder)
    if study_name is not None and other is not None and other != study_name:
        raise ConfigError(f"logdir {folder} holds the trials of study {other!r}; choose another logdir=... for "
                          f"study {study_name!r} (or --study {other})")


def _best(trial: Any, minimize: bool) -> float | None:
    if trial.value is not None:
        return float(trial.value)
    if "best" in trial.user_attrs:
        return float(trial.user_attrs["best"])
    values = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
    return None if not values else (min(values) if minimize else max(values))


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial of ``study`` (columns :data:`COLUMNS`), by trial number."""
    minimize = study.direction.name == "MINIMIZE"
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        best = _best(t, minimize)
        rows.append({"number": t.number, "state": t.state.name, "best": "" if best is None else f"{best:.6g}",
                     "params": " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in t.params.items()),
                     "logdir": t.user_attrs.get("logdir", ""), "reason": t.user_attrs.get("reason", "")})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned plain text (the reason column cut at 60 characters)."""
    shown = [{k: (str(r[k])[:57] + "..." if k == "reason" and len(str(r[k])) > 60 else str(r[k])) for k in COLUMNS}
             for r in rows]
    widths = {k: max([len(k), *(len(r[k]) for r in shown)]) for k in COLUMNS}
    lines = ["  ".join(k.ljust(widths[k]) for k in COLUMNS).rstrip()]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in COLUMNS).rstrip() for r in shown]
    return "\n".join(lines)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV with a header line."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def markdown_text(rows: list[dict[str, Any]], study_name: str) -> str:
    """The rows as a Markdown table under the title ``# study NAME``."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [MARKDOWN_HEADER + f"{TITLE}{study_name}\n", "| " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[k]) for k in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _png(axes: Any) -> bytes:
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": PNG_SOFTWARE})
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buf.getvalue()


def plots(study: Any) -> dict[str, bytes | str]:
    """``{"history.png": PNG bytes, "importances.png": PNG bytes or the reason there is none}``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from optuna.visualization import matplotlib as vis

    out: dict[str, bytes | str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning on its matplotlib plots
        out["history.png"] = _png(vis.plot_optimization_history(study))
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        try:
            if len(complete) < 2:
                raise ValueError("needs two completed trials")
            out["importances.png"] = _png(vis.plot_param_importances(study))
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            out["importances.png"] = f"no parameter importances: {str(exc).splitlines()[0] if str(exc) else exc}"
    return out


def write_report(study: Any, logdir: str | os.PathLike) -> tuple[str, list[Path]]:
    """Write the study's summary files into ``logdir``; returns the printed table and the files written.

    Raises:
        ConfigError: a summary file appeared meanwhile that ``segzoo tune`` did not write.
    """
    folder = Path(logdir)
    check_outputs(folder, study.study_name)
    folder.mkdir(parents=True, exist_ok=True)  # a study on another storage whose trials all failed early
    rows = trial_rows(study)
    files: dict[str, bytes | str] = {"trials.csv": csv_text(rows).encode(),
                                     "trials.md": markdown_text(rows, study.study_name).encode()}
    files.update(plots(study))
    written = []
    notes = []
    for name, data in files.items():
        if isinstance(data, str):
            notes.append(data)
            continue
        write_bytes_atomic(folder / name, data, overwrite=True)
        written.append(folder / name)
    table = format_table(rows) + "".join(f"\n{n}" for n in notes)
    return table, written
