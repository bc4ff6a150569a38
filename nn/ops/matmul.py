"""Matrix product with NumPy/PyTorch semantics: 1-D, 2-D and batched N-D with broadcasting."""

from __future__ import annotations

import math

from nn.backend import xp_of
from nn.function import Function
from nn.ops.util import sum_to


def _swap(a):
    return a.swapaxes(-1, -2)


def _rows(a):
    """(..., K) as a 2-D (rows, K) matrix (spelled out, so zero-size dimensions reshape too)."""
    return a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


class MatMul(Function):
    """out = a @ b.

    For matrices, d/da = g @ b^T and d/db = a^T @ g. A 1-D operand is a row
    (a) or column (b) vector whose extra axis ``matmul`` removes; backward puts
    it back, then ``sum_to`` folds any broadcast batch dimensions.

    The common "activations (..., K) @ weight (K, N)" case is done as one 2-D
    product over all rows, in forward and backward: one large BLAS call
    instead of one per batch entry, and the weight gradient comes out summed.
    """

    def forward(self, a, b):
        self.save_for_backward(a, b)
        if a.ndim > 2 and b.ndim == 2:
            return (_rows(a) @ b).reshape(*a.shape[:-1], b.shape[-1])
        return a @ b

    def backward(self, g):
        a, b = self.saved_arrays
        need_a, need_b = self.needs_input_grad
        if a.ndim >= 2 and b.ndim == 2:
            rows_a, rows_g = _rows(a), _rows(g)
            ga = (rows_g @ b.T).reshape(a.shape) if need_a else None
            gb = rows_a.T @ rows_g if need_b else None
            return ga, gb
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        batch = xp_of(g).broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        g2 = g.reshape(batch + (a2.shape[-2], b2.shape[-1]))
        ga = sum_to(g2 @ _swap(b2), a2.shape).reshape(a.shape) if need_a else None
        gb = sum_to(_swap(a2) @ g2, b2.shape).reshape(b.shape) if need_b else None
        return ga, gb


class Linear(Function):
    """out = x @ w^T + b, with w (out_features, in_features) as in PyTorch: one op instead of three.

    Spelled with the other ops, ``x @ w.T + b`` records a transposed view, a
    product and an addition, and the addition allocates a second array the
    size of the output. Here x (..., K) is taken as one (rows, K) matrix, the
    product is one BLAS call, and the bias is added into its output in place
    (as PyTorch's ``addmm`` starts its product from the bias). Backward, with
    g (rows, N) the output's gradient: dx = g @ w, dw = g^T @ x, db = g summed
    over the rows.
    """

    def forward(self, x, w, b=None):
        rows = _rows(x)
        self.save_for_backward(rows, w)
        self.x_shape = x.shape
        out = rows @ w.T
        if b is not None:
            if xp_of(out).result_type(out, b) == out.dtype:
                out += b
            else:  # a wider bias widens the result, as ``+`` would
                out = out + b
        return out.reshape(*x.shape[:-1], w.shape[0])

    def backward(self, g):
        rows, w = self.saved_arrays
        need = self.needs_input_grad
        g = _rows(g)
        gx = (g @ w).reshape(self.x_shape) if need[0] else None
        gw = g.T @ rows if need[1] else None
        gb = g.sum(axis=0) if len(need) > 2 and need[2] else None
        return gx, gw, gb
