"""Softmax and log-softmax over the last axis of a (rows, n) array, forward and backward, cache-blocked.

forward:   y = exp(x - c) / sum(exp(x - c))            log y = x - c - log(sum(exp(x - c)))
backward:  dx = y * (g - sum(g * y))                    dx = g - exp(log y) * sum(g)

Any shift c gives the same result, and a shift at or above the row's max
keeps exp from overflowing. The usual choice, each row's own max, is a slow
reduction in NumPy (many short rows: several times the cost of the exp).
So each block is shifted by the largest value in the whole block, a fast
contiguous reduction, and only rows whose values all lie far below it (their
exponentials would lose precision; the sum shows it) are redone with their
own max. Row sums are matrix-vector products with ones (BLAS).
"""

from __future__ import annotations

from nn.backend import xp_of
from nn.kernels.blocked import blocks, compute_dtype

TINY_ROW_SUM = 1e-9
"""Rows whose sum of exp(x - c) falls below this (their max is more than ~20 below the block's) are redone.

Then no row's entries underflow much earlier than with the row's own max would have them."""


def softmax_forward(x, log: bool = False):
    """Row-wise softmax (or log-softmax) of a 2-D array, in the compute dtype (float32 for float16)."""
    xp = xp_of(x)
    out = xp.empty(x.shape, dtype=compute_dtype(x.dtype))
    if out.size == 0:
        return out
    ones = xp.ones(x.shape[1], dtype=out.dtype)
    for s in blocks(xp, x.shape[0], x.shape[1] * out.itemsize):
        xb, o = x[s], out[s]
        xp.subtract(xb, xb.max(), out=o)
        exps = xp.exp(o) if log else xp.exp(o, out=o)
        sums = exps @ ones
        far = ~(sums >= TINY_ROW_SUM)  # also catches NaN: a NaN anywhere in the block spoils the shift c
        if far.any():  # rare: rows far below the block's max get their own shift
            own = xb[far] - xb[far].max(axis=1, keepdims=True)
            o[far] = own
            exps[far] = xp.exp(own)
            sums[far] = exps[far] @ ones
        if log:
            o -= xp.log(sums)[:, None]
        else:
            o *= (1 / sums)[:, None]
    return out


def softmax_backward(y, g, log: bool = False):
    """Gradient with respect to the softmax input, from the saved output ``y`` (log y if ``log``)."""
    xp = xp_of(y)
    out = xp.empty(y.shape, dtype=y.dtype)
    ones = xp.ones(y.shape[1], dtype=y.dtype)
    for s in blocks(xp, y.shape[0], y.shape[1] * out.itemsize):
        o, yb, gb = out[s], y[s], g[s]
        if log:
            xp.exp(yb, out=o)
            o *= -(gb @ ones)[:, None]
            o += gb
        else:
            xp.multiply(gb, yb, out=o)
            xp.subtract(gb, (o @ ones)[:, None], out=o)
            o *= yb
    return out
