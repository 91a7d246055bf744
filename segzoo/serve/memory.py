"""Keep freed memory in the server process instead of handing it back to the kernel after every batch.

glibc ``malloc`` returns the free top of each thread's heap to the kernel (``madvise``) once it
exceeds a trim threshold, and its threshold for serving a block by a fresh ``mmap`` moves with
the sizes freed. A forward pass frees all its activations at the end, so with the defaults the
next request faults in and zeroes the same pages again: in ``segzoo serve`` this cost more CPU
than the convolutions of a small model (see BENCHMARKS.md, "Inference backends and serving").
:func:`keep_freed_memory` fixes both thresholds: freed blocks up to 32 MiB stay in the process
for the next request (the resident memory stays at its peak instead of going up and down);
larger blocks are still mapped and unmapped each time.

This module imports neither torch nor FastAPI.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks up to this size are served from (and freed to) the process heap; glibc's largest
MMAP_THRESHOLD = 32 * 1024 * 1024
#: free heap memory kept before any is returned to the kernel (the largest value mallopt takes)
TRIM_THRESHOLD = 2**31 - 1
#: set by the user, these variables win (nothing is changed)
GLIBC_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds (see the module docstring); returns whether they were set.

    Does nothing (returns ``False``) on a C library without ``mallopt`` (not glibc) or when one
    of :data:`GLIBC_VARIABLES` is set in the environment.
    """
    if any(name in os.environ for name in GLIBC_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
