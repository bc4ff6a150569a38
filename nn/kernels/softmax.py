"""Softmax and log-softmax over the last axis of a (rows, n) array, forward and backward, cache-blocked.

forward:   y = exp(x - max) / sum(exp(x - max))         log y = x - max - log(sum(exp(x - max)))
backward:  dx = y * (g - sum(g * y))                     dx = g - exp(log y) * sum(g)
Subtracting the row max first keeps exp from overflowing and changes nothing else.
"""

from __future__ import annotations

from nn.backend import xp_of
from nn.kernels.blocked import blocks, compute_dtype


def softmax_forward(x, log: bool = False):
    """Row-wise softmax (or log-softmax) of a 2-D array, in the compute dtype (float32 for float16)."""
    xp = xp_of(x)
    out = xp.empty(x.shape, dtype=compute_dtype(x.dtype))
    for s in blocks(xp, x.shape[0], x.shape[1] * out.itemsize):
        o = out[s]
        xp.subtract(x[s], x[s].max(axis=1, keepdims=True), out=o)
        if log:
            o -= xp.log(xp.exp(o).sum(axis=1, keepdims=True))
        else:
            xp.exp(o, out=o)
            o /= o.sum(axis=1, keepdims=True)
    return out


def softmax_backward(y, g, log: bool = False):
    """Gradient with respect to the softmax input, from the saved output ``y`` (log y if ``log``)."""
    xp = xp_of(y)
    out = xp.empty(y.shape, dtype=y.dtype)
    for s in blocks(xp, y.shape[0], y.shape[1] * out.itemsize):
        o, yb, gb = out[s], y[s], g[s]
        if log:
            xp.exp(yb, out=o)
            o *= -gb.sum(axis=1, keepdims=True)
            o += gb
        else:
            xp.multiply(gb, yb, out=o)
            row_dot = o.sum(axis=1, keepdims=True)
            xp.subtract(gb, row_dot, out=o)
            o *= yb
    return out
