"""How the C allocator treats the engine's arrays: freed memory is kept for the next array.

NumPy takes every array's buffer from the C library's ``malloc``. glibc
serves a request above its mmap threshold (128 KiB at first, then raised to
the largest block freed so far) with fresh pages from the kernel, and gives
the top of its heap back once more than the trim threshold lies free there.
A training step allocates and frees hundreds of arrays of 0.5 to 32 MB
(activations, their gradients, temporaries), so under those defaults much of
each step's memory is new to the process: each 4 KiB page faults on its
first write and the kernel zeroes it. On the ``small`` preset (batch 16 x
128, one thread) a step took 21,149 page faults; with the two thresholds
below, 1,589, and the step 292 ms instead of 344 (``benchmarks/train_step.py``
gives the paired ratios against PyTorch).

:func:`keep_freed_memory` (called when ``nn`` is imported) raises the mmap
threshold to glibc's largest, 32 MiB, and the trim threshold to 1 GiB, so that
the memory a step frees serves the next step. The price is that the process
keeps its peak heap after the peak has passed; :func:`release_freed_memory`
returns what lies free when that matters (loading an int8 model, which frees
the float32 weights it started from). A user who sets glibc's own
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` keeps their setting;
on a C library without ``mallopt`` (macOS, musl's stub) nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory", "release_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20                      # the largest value glibc accepts on 64-bit systems
TRIM_THRESHOLD = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _libc():
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True where they were set."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if not sys.platform.startswith("linux") or mallopt is None or any(v in os.environ for v in USER_SETTINGS):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_freed_memory() -> None:
    """Give the memory that lies free back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    Loading an int8 model builds the float32 GPT first (its constructor
    allocates the weights) and drops its matrices for the int8 ones; the freed
    float32 matrices stay with the process (see the module docstring) until
    this call. Measured on the 4.2M-parameter model (``benchmarks/int8.py``):
    loading the int8 model grew the process by 29 MB without this call and by
    6.3 MB with it, so that resident memory shows the saving, not just the
    array sizes.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


KEEPING_FREED_MEMORY = keep_freed_memory()
"""Whether the thresholds were set when ``nn`` was imported (benchmarks record it)."""
