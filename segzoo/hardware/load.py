"""How much CPU other processes take: a calibration measured while they compete is not cached.

On Linux the machine's busy CPU time (``/proc/stat``: user, nice, system, irq, softirq and
steal, i.e. everything but idle and iowait) minus this process's own CPU time
(``time.process_time``, all its threads) over a wall-clock interval is what *other* processes
(or the hypervisor, through steal time) took while we measured, in CPUs: 0.0 on an idle
machine, ~1.8 when another job keeps two cores busy. Elsewhere the 1-minute load average is
the (coarser) fallback, before a calibration only (it would count the calibration itself).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

__all__ = ["LoadProbe", "busy_threshold", "cpu_counters"]


def cpu_counters() -> tuple[float, float] | None:
    """``(busy CPU seconds of the whole machine, CPU seconds of this process)`` now; ``None`` off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / ticks, time.process_time()


def busy_threshold(cpus: int | None = None) -> float:
    """CPUs other processes may use before timings count as skewed: 0.25, or 5 % of a large machine."""
    return max(0.25, 0.05 * (cpus or os.cpu_count() or 1))


@dataclass
class LoadProbe:
    """Measures the CPUs other processes used between :meth:`start` and :meth:`other_cpus`."""

    wall: float = 0.0
    counters: tuple[float, float] | None = None

    def start(self) -> LoadProbe:
        """Start (or restart) the interval; returns ``self``."""
        self.wall = time.perf_counter()
        self.counters = cpu_counters()
        return self

    def other_cpus(self) -> float | None:
        """Average CPUs used by other processes since :meth:`start` (``None``: not measurable here)."""
        elapsed = time.perf_counter() - self.wall
        now = cpu_counters()
        if self.counters is None or now is None or elapsed <= 0:
            return None
        machine, own = (b - a for a, b in zip(self.counters, now))
        return max(0.0, (machine - own) / elapsed)
