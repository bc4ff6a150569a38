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

from nn.backend import quiet_float_errors, xp_of
from nn.kernels.blocked import blocks, compute_dtype

TINY_ROW_SUM = 1e-9
"""Rows whose sum of exp(x - c) falls below this (their max is more than ~20 below the block's) are redone.

Then no row's entries underflow much earlier than with the row's own max would have them."""


def exp_shifted(xb, out, ones):
    """``out = exp(xb - shift)`` for one block of rows; returns (shift (rows,), sums (rows,) of out's rows).

    The shift is the block's largest value, except for the rows redone with
    their own max (see the module's docstring). ``ones`` is a vector of ones
    as long as a row: the row sums are one matrix-vector product.
    """
    xp = xp_of(xb)
    top = xb.max()
    xp.subtract(xb, top, out=out)
    xp.exp(out, out=out)
    sums = out @ ones
    shift = xp.empty(xb.shape[0], dtype=out.dtype)
    shift[...] = top  # (a 0-d array on the GPU)
    far = ~(sums >= TINY_ROW_SUM)  # also catches NaN: a NaN anywhere in the block spoils the shift
    if far.any():  # rare: rows far below the block's max get their own shift
        own = xb[far].max(axis=1)
        with quiet_float_errors(xp):  # a row all -inf (fully masked) gives NaN, as in torch
            out[far] = xp.exp(xb[far] - own[:, None])
        sums[far] = out[far] @ ones
        shift[far] = own
    return shift, sums


def softmax_forward(x, log: bool = False):
    """Row-wise softmax (or log-softmax) of a 2-D array, in the compute dtype (float32 for float16)."""
    xp = xp_of(x)
    out = xp.empty(x.shape, dtype=compute_dtype(x.dtype))
    if out.size == 0:
        return out
    ones = xp.ones(x.shape[1], dtype=out.dtype)
    for s in blocks(xp, x.shape[0], x.shape[1] * out.itemsize):
        xb, o = x[s], out[s]
        shift, sums = exp_shifted(xb, o, ones)
        if log:  # log y = (x - shift) - log(sums), the small terms subtracted last
            xp.subtract(xb, shift[:, None], out=o)
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
