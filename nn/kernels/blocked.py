"""Cache blocking: split work into pieces whose working set fits in the L2 cache.

A NumPy expression such as ``a * b + c`` makes one full pass over memory per
operator and allocates a fresh temporary for each. When the arrays are many
megabytes, every pass goes to main memory and every new temporary costs page
faults. Running the same steps over one ~256 KB block at a time keeps the
block and its temporaries in cache; the Python loop costs a microsecond or
so per step and block, which is small against the saved memory traffic.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from nn.backend import xp_of

BLOCK_BYTES = 256 * 1024


def blocks(xp, count: int, bytes_per_item: int) -> Iterator[slice]:
    """Slices covering ``range(count)``, each about ``BLOCK_BYTES`` of data (one slice on the GPU)."""
    if xp is not np or count == 0:
        yield slice(0, count)
        return
    step = max(1, BLOCK_BYTES // max(1, bytes_per_item))
    for start in range(0, count, step):
        yield slice(start, min(start + step, count))


def map_blocks(fn, x, *others):
    """``fn(x_block, *other_blocks)`` over flat cache-sized blocks, in the compute dtype; returns x's shape and dtype.

    ``others`` have x's shape (e.g. the upstream gradient). ``fn`` may work in
    place on the blocks it gets: they are copies when x is not float32/float64
    contiguous, and views of the inputs never reach it otherwise, since the
    result is written to a fresh output.
    """
    xp = xp_of(x)
    dtype = compute_dtype(x.dtype)
    flats = [xp.ascontiguousarray(a).reshape(-1) for a in (x, *others)]
    out = xp.empty(flats[0].shape, dtype=x.dtype)
    for s in blocks(xp, out.size, dtype.itemsize):
        out[s] = fn(*(f[s].astype(dtype, copy=False) for f in flats))
    return out.reshape(x.shape)


def compute_dtype(dtype) -> np.dtype:
    """The dtype kernels compute in: float32 for float16 (too imprecise for sums and exponentials)."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def as_rows(x, axis: int):
    """``x`` as a C-contiguous 2-D (rows, n) array with ``axis`` last, and a function undoing that.

    (C,) gives (1, C); (N, C) with axis 1 is unchanged; (N, C, d) with axis 1 gives (N * d, C).
    The returned function holds only shapes, never the array.
    """
    xp = xp_of(x)
    ndim = x.ndim
    axis = axis % ndim if ndim else 0
    last = axis == ndim - 1 or ndim == 0
    moved = x if last else xp.moveaxis(x, axis, -1)
    moved_shape = moved.shape
    width = moved_shape[-1] if ndim else 1
    rows = xp.ascontiguousarray(moved).reshape(math.prod(moved_shape[:-1]), width)

    def restore(r):
        out = r.reshape(moved_shape)
        return out if last else xp.moveaxis(out, -1, axis)

    return rows, restore
