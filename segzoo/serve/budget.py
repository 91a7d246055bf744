"""The memory budget of ``segzoo serve``: every request reserves what it will need before its image is decoded.

A request reserves, in the event loop and before the memory is used:

- its body, chunk by chunk as it arrives (twice for a multipart form, whose file is copied);
- from the image's header (width, height, mode; nothing decoded yet): the decoded image and
  the copies made around the model (:data:`REQUEST_BYTES_PER_PIXEL` per image pixel, more for
  16-bit and float images, JSON and overlay answers), and the model's working memory for it:
  the pixels the model runs (H and W padded to the model's size multiple, or the windows of
  ``--tile``) times the model's bytes per pixel, measured once at start-up
  (:func:`measure_bytes_per_pixel`) or given (``--bytes-per-pixel``).

The reservations of all requests in progress (read, queued, running, answering) never sum past
the budget (``--max-memory``; default half the memory available at start-up). A request whose
own reservation is over the whole budget is refused with 413 before its image is decoded; one
that does not fit now, beside the others, gets 503 + ``Retry-After``. Since each queued image
holds its working memory, any batch of queued images fits: batches need no further cut.

GPU memory is not counted: the budget is the server process's (host) memory.

This module imports neither torch nor FastAPI.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

MIB = 1024 * 1024
#: per image pixel, beyond the model's working memory: the decoded 8-bit image, its float copies
#: (unit range, normalized, stacked), the padded input, the argmax and the mask (estimate, rounded up)
REQUEST_BYTES_PER_PIXEL = 96
#: extra per pixel for 16-bit grey and float images (decoded as float32 RGB)
FLOAT_IMAGE_BYTES_PER_PIXEL = 12
#: extra per pixel for a JSON (run-length lists) or overlay (float blending) answer
RICH_ANSWER_BYTES_PER_PIXEL = 72
#: the fewest bytes per pixel assumed for a model (its input and logits alone take about this much)
MIN_BYTES_PER_PIXEL = 16
#: the measured working memory per pixel is raised by this factor (allocator slack, other shapes)
SAFETY = 1.25
#: side of the square input run once at start-up to measure the model's working memory
PROBE_SIDE = 512
#: the budget when the available memory cannot be read
FALLBACK_BUDGET = 2048 * MIB

_FLOAT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class BudgetFullError(RuntimeError):
    """The memory budget is taken by other requests right now; the client should retry later."""


class OverBudgetError(ValueError):
    """One request needs more than the whole memory budget: it can never be served (413)."""


def available_memory() -> int | None:
    """Bytes of memory available to new work (Linux ``MemAvailable``, else the physical memory); ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def default_budget(available: int | None = None) -> int:
    """The default ``--max-memory`` in bytes: half of ``available`` (default: :func:`available_memory`), at least 256 MiB."""
    available = available_memory() if available is None else available
    if not available:
        return FALLBACK_BUDGET
    return max(256 * MIB, available // 2)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def measure_bytes_per_pixel(run: Callable[[], object], pixels: int) -> float | None:
    """Peak memory per pixel that ``run()`` (one forward pass over ``pixels`` padded pixels) adds to the process.

    Linux only: the process's peak resident size is reset (``/proc/self/clear_refs``), ``run``
    is called, and the new peak less the resident size before is divided by ``pixels``.
    Returns ``None`` where that cannot be measured (``run`` is then not called), and when the peak did not grow
    (the run reused memory the process already held: no measurement, not a zero).
    """
    before = _status_kib("VmRSS")
    if before is None:
        return None
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
    except OSError:
        return None
    run()
    peak = _status_kib("VmHWM")
    if peak is None:
        return None
    return (peak - before) / max(1, pixels) if peak > before else None


def model_bytes_per_pixel(measured: float | None, in_channels: int, num_classes: int) -> int:
    """Working memory per padded pixel to budget: the measurement with :data:`SAFETY`, plus the padded input copy.

    Never below :data:`MIN_BYTES_PER_PIXEL` nor below the input and logits (4 bytes each per
    channel); without a measurement, 64 bytes per logit channel and input channel.
    """
    floor = max(MIN_BYTES_PER_PIXEL, 4 * (in_channels + num_classes))
    if measured is None:
        return max(floor, 64 * (in_channels + num_classes))
    return max(floor, int(measured * SAFETY) + 4 * in_channels)


def padded(size: int, multiple: int, least: int) -> int:
    """``size`` rounded up to a multiple of ``multiple``, at least ``least`` (what the model is run on)."""
    return max(least, -(-size // multiple) * multiple)


def model_pixels(height: int, width: int, multiple: int, least: int, tile: int | None = None,
                 tiles_per_pass: int = 1) -> int:
    """Pixels the model runs at once for one ``height`` x ``width`` image: padded whole, or its padded windows."""
    if tile is None:
        return padded(height, multiple, least) * padded(width, multiple, least)
    return tiles_per_pass * padded(min(tile, height), multiple, least) * padded(min(tile, width), multiple, least)


def request_bytes(height: int, width: int, mode: str, working_pixels: int, bytes_per_pixel: int,
                  num_classes: int, tiled: bool = False, rich_answer: bool = False) -> int:
    """What one image's request reserves (see the module docstring); ``mode`` is the image's Pillow mode."""
    per_pixel = REQUEST_BYTES_PER_PIXEL + (FLOAT_IMAGE_BYTES_PER_PIXEL if mode in _FLOAT_MODES else 0)
    per_pixel += RICH_ANSWER_BYTES_PER_PIXEL if rich_answer else 0
    per_pixel += 4 * (2 * num_classes + 2) if tiled else 0  # summed logits and counts at full size
    return height * width * per_pixel + working_pixels * bytes_per_pixel


class MemoryBudget:
    """Bytes that requests in progress may reserve, at most ``limit`` in all (see the module docstring).

    Used from the event loop only (no lock). ``used`` is what is reserved now.
    """

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.used = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[Holding]:
        """A :class:`Holding` for one request; everything it took is given back when the block ends."""
        holding = Holding(self)
        try:
            yield holding
        finally:
            self.used -= holding.amount
            holding.amount = 0


class Holding:
    """The reservations of one request (see :meth:`MemoryBudget.hold`)."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.amount = 0

    def take(self, size: int, what: str = "this request") -> None:
        """Reserve ``size`` more bytes.

        Raises:
            OverBudgetError: this request's reservations alone would be over the budget.
            BudgetFullError: they do not fit beside the other requests' reservations now.
        """
        budget = self.budget
        if self.amount + size > budget.limit:
            raise OverBudgetError(f"{what} needs {(self.amount + size) / MIB:.1f} MiB, over the server's memory "
                                  f"budget of {budget.limit / MIB:.0f} MiB (segzoo serve --max-memory)")
        if budget.used + size > budget.limit:
            raise BudgetFullError(f"the server's memory budget is in use ({budget.used / MIB:.0f} of "
                                  f"{budget.limit / MIB:.0f} MiB reserved; {what} needs {size / MIB:.1f} MiB "
                                  f"more); retry later")
        budget.used += size
        self.amount += size
