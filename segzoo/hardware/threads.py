"""How many intra-op threads a training run should use: the cores really free, not one per core.

torch starts with one thread per CPU the process may run on, whatever else runs there. On a
busy machine those threads wait for each other at every operation (the README's demo took
9 min 30 s with the default threads and 2 min with one thread at the same load). The run's
threads are therefore ``available - load``, at least 1, where

- *available* is the CPUs of the process's affinity mask (``os.sched_getaffinity``), capped by
  a cgroup CPU quota (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us / cpu.cfs_period_us`` of v1);
- *load* is the CPU time other processes take at start, sampled for :data:`LOAD_SAMPLE_SECONDS`
  (:class:`segzoo.hardware.load.LoadProbe`: the machine's busy time minus this process's own, so the
  run's own past work does not count), scaled to the share of the machine's CPUs the process may
  use; where ``/proc/stat`` is missing, the 1-minute load average.

A user who set ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` or called ``torch.set_num_threads`` keeps
their choice (:func:`user_set_threads`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["ThreadChoice", "available_cpus", "cgroup_cpu_limit", "choose_threads", "other_cpus_now",
           "user_set_threads"]

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: Seconds the other processes' CPU use is sampled when a run starts.
LOAD_SAMPLE_SECONDS = 0.3


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count of a run and why (``source``: what it was computed from)."""

    threads: int
    source: str


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """The CPUs a cgroup quota allows this process (e.g. ``1.5``), or ``None`` without a quota.

    Reads cgroup v2's ``cpu.max`` (``"max 100000"`` or ``"150000 100000"``) and else v1's
    ``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us`` under ``root``; unreadable files count as no quota.
    """
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and float(period) > 0:
            return float(quota) / float(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = float((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> tuple[int, str]:
    """``(CPUs this process may use, how that was found)``: the affinity mask capped by a cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
        how = f"affinity {cpus}"
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
        how = f"{cpus} CPUs"
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None and quota < cpus:
        cpus = max(1, math.floor(quota))
        how += f", cgroup quota {quota:g}"
    return cpus, how


def user_set_threads() -> str | None:
    """How the user chose the thread count (``"OMP_NUM_THREADS=1"``, ``"torch.set_num_threads(3)"``), or ``None``.

    ``torch.set_num_threads`` is seen as a count other than torch's default (one per CPU of the affinity mask).
    """
    for name in THREAD_ENV:
        if os.environ.get(name, "").strip():
            return f"{name}={os.environ[name].strip()}"
    try:
        default = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        default = os.cpu_count() or 1
    current = torch.get_num_threads()
    return None if current == default else f"torch.set_num_threads({current})"


def choose_threads(load: float | None = None, cpus: tuple[int, str] | None = None) -> ThreadChoice:
    """The intra-op threads for a run starting now: free CPUs = available - load, at least 1.

    Args:
        load: CPUs other processes use (default: sampled now, :func:`other_cpus_now`).
        cpus: ``(available CPUs, description)`` (default :func:`available_cpus`).
    """
    cpus = cpus or available_cpus()
    total = os.cpu_count() or cpus[0]
    how = "load"
    if load is None:
        load, how = other_cpus_now()
    share = load * min(1.0, cpus[0] / max(total, 1))  # the load that falls on the CPUs we may use
    threads = max(1, min(cpus[0], int(math.floor(cpus[0] - share + 0.5))))
    return ThreadChoice(threads, f"{cpus[1]}, {how} {load:.2f}")


def other_cpus_now(seconds: float = LOAD_SAMPLE_SECONDS) -> tuple[float, str]:
    """``(CPUs other processes used over the next seconds, what it is)``; the 1-minute load average off Linux."""
    import time

    from segzoo.hardware.load import LoadProbe

    probe = LoadProbe().start()
    time.sleep(seconds)
    others = probe.other_cpus()
    if others is not None:
        return others, "other processes' CPUs"
    return (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0), "load average"
