"""Layer norm and RMS norm over the last axis of a (rows, n) array, forward and backward, cache-blocked.

forward:  xhat = (x - mean) * rstd  (layer norm)  or  x * rstd  (RMS norm),
          rstd = 1 / sqrt(var + eps) with var the biased variance (or the mean square);
          y = xhat * weight + bias
backward: with gh = g * weight,
          dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))   (RMS norm drops mean(gh)),
          d weight = sum over rows of g * xhat,  d bias = sum over rows of g.
The two subtracted means are what differentiating through mean and rstd
leaves; they follow from d xhat_j / d x_i = rstd (delta_ij - 1/n - xhat_i xhat_j / n).
Statistics are kept in float32 at least (``compute_dtype``).
"""

from __future__ import annotations

from nn.backend import xp_of
from nn.kernels import cuda
from nn.kernels.blocked import blocks, compute_dtype


def norm_forward(x, weight, bias, eps: float, centre: bool):
    """Returns (y in x's dtype, xhat, rstd (rows, 1)); xhat and rstd are what backward needs.

    Row sums are matrix-vector products with a vector of ones: BLAS streams
    the rows faster than NumPy's pairwise ``sum(axis=1)``. CuPy float32/float16
    arrays run ``norm.cu`` instead.
    """
    if cuda.supports(x):
        return cuda.norm_forward(x, weight, bias, eps, centre)
    xp = xp_of(x)
    rows, n = x.shape
    xhat = xp.empty(x.shape, dtype=compute_dtype(x.dtype))
    ones = xp.ones(n, dtype=xhat.dtype)
    rstd = xp.empty((rows, 1), dtype=xhat.dtype)
    y = xp.empty(x.shape, dtype=xhat.dtype)
    for s in blocks(xp, rows, n * xhat.itemsize):
        h, yb, r = xhat[s], y[s], rstd[s]
        if centre:
            xp.subtract(x[s], ((x[s] @ ones) * (1 / n))[:, None], out=h)
        else:
            h[...] = x[s]
        xp.multiply(h, h, out=yb)
        r[:, 0] = (yb @ ones) * (1 / n) + eps
        xp.sqrt(r, out=r)
        xp.reciprocal(r, out=r)
        h *= r
        if weight is None:
            yb[...] = h
        else:
            xp.multiply(h, weight, out=yb)
        if bias is not None:
            yb += bias
    return y.astype(x.dtype, copy=False), xhat, rstd


def norm_backward(g, xhat, rstd, weight, centre: bool, want_weight: bool, want_bias: bool):
    """Returns (dx, d weight or None, d bias or None), all in xhat's dtype. CuPy float32 xhat runs ``norm.cu``."""
    if cuda.supports(g) and xhat.dtype == "float32":
        return cuda.norm_backward(g, xhat, rstd, weight, centre, want_weight, want_bias)
    xp = xp_of(xhat)
    rows, n = xhat.shape
    ones = xp.ones(n, dtype=xhat.dtype)
    dx = xp.empty(xhat.shape, dtype=xhat.dtype)
    dweight = xp.zeros(n, dtype=xhat.dtype) if want_weight else None
    dbias = xp.zeros(n, dtype=xhat.dtype) if want_bias else None
    for s in blocks(xp, rows, n * dx.itemsize):
        gb, h, o = g[s].astype(dx.dtype, copy=False), xhat[s], dx[s]
        column_ones = xp.ones(gb.shape[0], dtype=dx.dtype)
        if want_bias:
            dbias += column_ones @ gb
        if want_weight:
            xp.multiply(gb, h, out=o)
            dweight += column_ones @ o
        gh = gb * weight if weight is not None else gb
        xp.multiply(gh, h, out=o)
        xp.multiply(h, ((o @ ones) * (1 / n))[:, None], out=o)
        if centre:
            o += ((gh @ ones) * (1 / n))[:, None]
        xp.subtract(gh, o, out=o)
        o *= rstd[s]
    return dx, dweight, dbias
