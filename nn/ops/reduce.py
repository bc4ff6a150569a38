"""Reductions over one or more dimensions: sum, mean, max/min, var/std, logsumexp.

Each takes ``dim`` (an int, a tuple, or None for all) and ``keepdim`` with
PyTorch's meaning. The common backward step is to put the reduced axes back
(as size 1) and broadcast the gradient over them. ``Tensor.max(dim)`` finds
the argmax outside the graph and gathers the values with ``TakeAlongDim``.
"""

from __future__ import annotations

import math
from typing import Any

from nn.backend import quiet_float_errors, xp_of
from nn.function import Function
from nn.kernels.blocked import compute_dtype
from nn.ops.util import keepdim_shape, normalize_dims


class _Reduction(Function):
    """Bookkeeping shared by reductions: the reduced axes and how to undo them in backward."""

    def setup(self, x: Any, dim: Any, keepdim: bool) -> tuple[int, ...]:
        self.dims = normalize_dims(dim, x.ndim)
        self.keepdim = keepdim
        self.input_shape, self.input_dtype = x.shape, x.dtype
        return self.dims

    def count(self) -> int:
        """How many input elements fold into each output element."""
        n = 1
        for d in self.dims:
            n *= self.input_shape[d]
        return n

    def with_kept_dims(self, g: Any) -> Any:
        """``g`` reshaped so the reduced axes are present with size 1 (broadcastable to the input)."""
        return g.reshape(keepdim_shape(self.input_shape, self.dims))

    def spread(self, g: Any) -> Any:
        """``g`` broadcast back over the reduced axes (a read-only view, no copy)."""
        return xp_of(g).broadcast_to(self.with_kept_dims(g), self.input_shape)


class Sum(_Reduction):
    """Sum; every input element gets the gradient of its sum."""

    def forward(self, x, dim=None, keepdim: bool = False):
        return x.sum(axis=self.setup(x, dim, keepdim), keepdims=keepdim)

    def backward(self, g):
        return self.spread(g)


class Mean(_Reduction):
    """Mean; every input element gets 1/n of its mean's gradient."""

    def forward(self, x, dim=None, keepdim: bool = False):
        return x.mean(axis=self.setup(x, dim, keepdim), keepdims=keepdim)

    def backward(self, g):
        return self.spread(g * (1.0 / self.count()))  # 1/n as a float: n itself may not fit in float16


class Amax(_Reduction):
    """Largest (or smallest) value over ``dim``; the gradient is shared evenly among ties (torch.amax)."""

    def forward(self, x, dim=None, keepdim: bool = False, largest: bool = True):
        dims = self.setup(x, dim, keepdim)
        out = x.max(axis=dims, keepdims=True) if largest else x.min(axis=dims, keepdims=True)
        self.save_for_backward(x, out)
        return out if keepdim else out.reshape(_drop(x.shape, dims))

    def backward(self, g):
        x, out = self.saved_arrays
        hit = x == out
        share = hit / hit.sum(axis=self.dims, keepdims=True)
        return (share * self.with_kept_dims(g)).astype(g.dtype)


def _drop(shape: tuple[int, ...], dims: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s for i, s in enumerate(shape) if i not in dims)


class TakeAlongDim(Function):
    """``x`` gathered at integer ``index`` along ``dim`` (torch.take_along_dim); scatter in backward."""

    def forward(self, x, index: Any = None, dim: int = 0):
        self.dim, self.input_shape = dim, x.shape
        self.save_for_backward(index)
        return xp_of(x).take_along_axis(x, index, axis=dim)

    def backward(self, g):
        xp = xp_of(g)
        gx = xp.zeros(self.input_shape, dtype=g.dtype)
        (index,) = self.saved_arrays
        xp.add.at(gx, _full_index(index, self.dim), g)  # add, not assign: an index may repeat
        return gx


def _full_index(index: Any, dim: int) -> tuple:
    """Turn a take_along_axis index into a tuple usable by ``add.at`` (open mesh on the other axes)."""
    xp = xp_of(index)
    grids = list(xp.ix_(*[xp.arange(n) for n in index.shape]))
    grids[dim] = index
    return tuple(grids)


class Var(_Reduction):
    """Variance with ``correction`` (1 = unbiased, PyTorch's default), or its square root (std).

    var = sum(d^2) / (n - correction) with d = x - mean, so
    d var / dx = 2 d / (n - correction) (the mean's own dependence on x cancels
    because sum(d) = 0); d std / dx = d var / dx / (2 std).
    """

    def forward(self, x, dim=None, correction: int = 1, keepdim: bool = False, root: bool = False):
        xp = xp_of(x)
        dims = self.setup(x, dim, keepdim)
        self.root = root
        self.denominator = max(self.count() - correction, 0)
        wide = x.astype(compute_dtype(x.dtype), copy=False)  # float16 sums of squares overflow
        d = wide - wide.mean(axis=dims, keepdims=True)
        with quiet_float_errors(xp):  # n <= correction gives NaN, as in PyTorch
            out = (d * d).sum(axis=dims, keepdims=True) * (1.0 / self.denominator if self.denominator else math.nan)
        if root:
            out = xp.sqrt(out)
        self.save_for_backward(d, out)
        out = out.astype(x.dtype, copy=False)
        return out if keepdim else out.reshape(_drop(x.shape, dims))

    def backward(self, g):
        d, out = self.saved_arrays
        xp = xp_of(d)
        g = self.with_kept_dims(g).astype(d.dtype, copy=False)
        if self.root:  # d std = d var / (2 std); where std is 0 PyTorch gives 0, not 0/0
            with quiet_float_errors(xp):
                g = xp.where(out == 0, 0, g / (2 * out))
        scale = 2.0 / self.denominator if self.denominator else math.nan
        return (d * (g * scale)).astype(self.input_dtype, copy=False)


class LogSumExp(_Reduction):
    """log(sum(exp(x))) computed as m + log(sum(exp(x - m))) with m the max, so it never overflows.

    d/dx = exp(x - out), the softmax of x along the reduced dims.
    """

    def forward(self, x, dim=None, keepdim: bool = False):
        xp = xp_of(x)
        dims = self.setup(x, dim, keepdim)
        m = x.max(axis=dims, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        out = xp.log(xp.exp(x - m).sum(axis=dims, keepdims=True)) + m
        self.save_for_backward(x, out)
        return out if keepdim else out.reshape(_drop(x.shape, dims))

    def backward(self, g):
        x, out = self.saved_arrays
        return xp_of(x).exp(x - out) * self.with_kept_dims(g)
