"""Fused neural-network ops, each one Function with a hand-derived backward.

A fused op does in one forward/backward what a chain of primitive ops would
do in many, keeping fewer arrays alive: softmax keeps only its output, the
loss keeps only its gradient (made in forward), layer norm keeps the normalised input
and one scale per row. The CPU versions write into their own temporaries
(``out=``, in-place) rather than allocating a new array per formula term.

float16 inputs are computed in float32 (statistics, exponentials and sums
lose too much in half precision) and the result is cast back.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nn import backend
from nn.backend import quiet_float_errors, xp_of
from nn.function import Function, is_grad_enabled
from nn.kernels import cross_entropy as ce_kernels
from nn.kernels import norm as norm_kernels
from nn.kernels import softmax as softmax_kernels
from nn.kernels.blocked import as_rows
from nn.kernels.embedding import embedding_backward
from nn.ops.util import normalize_dims, sum_to


def softmax_array(x: Any, axis: int, log: bool = False) -> Any:
    """Softmax (or log-softmax) of any array along ``axis``, in the kernels' compute dtype."""
    rows, restore = as_rows(x, axis)
    return restore(softmax_kernels.softmax_forward(rows, log=log))


class Softmax(Function):
    """y = softmax(x) along ``dim``. With J = diag(y) - y y^T, dx = J g = y * (g - sum(g * y))."""

    log = False

    def forward(self, x, dim: int = -1):
        normalize_dims(dim, x.ndim)  # an out-of-range dim is an error, not a wrap-around
        self.dim = dim
        y = softmax_array(x, dim, log=self.log)
        self.save_for_backward(y)
        return y.astype(x.dtype, copy=False)

    def backward(self, g):
        (y,) = self.saved_arrays
        y_rows, restore = as_rows(y, self.dim)
        g_rows, _ = as_rows(g, self.dim)
        return restore(softmax_kernels.softmax_backward(y_rows, g_rows, log=self.log)).astype(g.dtype, copy=False)


class LogSoftmax(Softmax):
    """y = log softmax(x). dx = g - softmax(x) * sum(g), with softmax = exp(y)."""

    log = True


class CrossEntropy(Function):
    """Softmax cross-entropy between logits (N, C) (or (C,), (N, C, d...)) and class indices, fused.

    loss_i = -(1 - eps) log p_i[t_i] - (eps / C) sum_c log p_i[c]
    (eps = label smoothing), so d loss_i / d logits_i = p_i - (1 - eps) onehot(t_i) - eps / C.
    Rows whose target is ``ignore_index`` contribute neither loss nor gradient;
    "mean" divides by the number of the other rows, as PyTorch does.
    When a gradient will be wanted, forward makes it too, in the same pass
    over the logits (``nn/kernels/cross_entropy.py``), for an upstream
    gradient of 1 per row (or per mean); backward only scales it. Nothing of
    (N, C) size is kept otherwise.
    """

    def forward(self, logits, targets: Any = None, ignore_index: int = -100, reduction: str = "mean",
                label_smoothing: float = 0.0):
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
        xp = xp_of(logits)
        self.logits_dtype = logits.dtype
        rows, self.restore_logits_shape = as_rows(logits, 1)  # class dim last, one row per prediction
        expected = logits.shape[:1] + logits.shape[2:] if logits.ndim > 1 else ()
        if tuple(targets.shape) != tuple(expected):
            raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not match logits of shape "
                             f"{logits.shape} (expected {expected})")
        targets_flat = targets.reshape(-1)
        num_classes = rows.shape[1]
        valid = targets_flat != ignore_index
        safe_targets = xp.where(valid, targets_flat, 0)
        if xp.any((safe_targets < 0) | (safe_targets >= num_classes)):
            raise IndexError(f"target out of range for {num_classes} classes")
        count = int(valid.sum())
        per_row = 1 / count if reduction == "mean" and count else 1
        want_grad = is_grad_enabled() and self.needs_input_grad[0]
        loss, grad = ce_kernels.loss_and_grad(rows, safe_targets, valid * per_row, label_smoothing, want_grad)
        loss = xp.where(valid, loss, 0)  # not loss * valid: an ignored row may hold inf
        self.reduction, self.all_valid = reduction, count == rows.shape[0]
        if grad is not None and xp is np:
            grad.flags.writeable = False  # handed back as it is: nobody may write into it
        self.save_for_backward(grad, valid)
        if reduction == "none":
            out = loss.reshape(targets.shape)
        elif reduction == "sum":
            out = loss.sum()
        else:
            out = loss.sum() / count if count else loss.sum() * math.nan
        return xp.asarray(out, dtype=logits.dtype)

    def backward(self, g):
        grad, valid = self.saved_arrays  # grad: the gradient for an upstream gradient of 1
        xp = xp_of(grad)
        if self.reduction == "none":
            grad = grad * xp.where(valid, g.reshape(-1), 0).astype(grad.dtype)[:, None]
        elif float(g) != 1:
            with quiet_float_errors(xp):  # an infinite g meets the ignored rows' zeros: set right below
                grad = grad * g.astype(grad.dtype)
            if not self.all_valid:
                grad[~valid] = 0  # ignored rows stay 0 even for an infinite or NaN upstream gradient
        # Else the saved array goes back as it is (read-only: a gradient kept as .grad is a copy of it).
        return self.restore_logits_shape(grad.astype(self.logits_dtype, copy=False))


class _Norm(Function):
    """Layer norm (``centre=True``) and RMS norm over the last ``len(normalized_shape)`` dims.

    The math and its derivation are in ``nn/kernels/norm.py``; here the input
    is viewed as (rows, n) with the normalised dims flattened into n.
    """

    centre: bool

    def forward(self, x, weight, bias=None, normalized_shape: tuple = (), eps: float | None = None):
        k = len(normalized_shape)
        if tuple(x.shape[x.ndim - k:]) != tuple(normalized_shape):
            raise ValueError(f"normalized_shape {normalized_shape} does not match the end of {x.shape}")
        if eps is None:  # RMS norm's default, as PyTorch: the dtype's machine epsilon
            eps = float(np.finfo(x.dtype).eps)
        n = math.prod(normalized_shape)
        self.x_shape, self.param_shape, self.has_bias = x.shape, tuple(normalized_shape), bias is not None
        w = None if weight is None else weight.reshape(-1)
        b = None if bias is None else bias.reshape(-1)
        y, xhat, rstd = norm_kernels.norm_forward(x.reshape(-1, n), w, b, eps, self.centre)
        self.save_for_backward(xhat, rstd, w)
        return y.reshape(x.shape)

    def backward(self, g):
        xhat, rstd, w = self.saved_arrays
        needs = self.needs_input_grad
        dx, dw, db = norm_kernels.norm_backward(g.reshape(xhat.shape), xhat, rstd, w, self.centre,
                                                want_weight=needs[1], want_bias=self.has_bias and needs[2])
        grads = (_cast(dx.reshape(self.x_shape), g.dtype),
                 None if dw is None else _cast(dw.reshape(self.param_shape), g.dtype),
                 None if db is None else _cast(db.reshape(self.param_shape), g.dtype))
        return grads[:len(needs)]  # RMS norm has no bias input


class LayerNorm(_Norm):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dims (biased variance)."""

    centre = True


class RMSNorm(_Norm):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dims (no centring, no bias)."""

    centre = False


def _cast(a: Any, dtype: Any) -> Any:
    return None if a is None else a.astype(dtype, copy=False)


class Embedding(Function):
    """Rows of ``weight`` (V, C) picked by integer ``indices``: out = weight[indices].

    Backward scatter-adds each output row's gradient into the row it came
    from (``nn/kernels/embedding.py``); ``padding_idx``'s row gets none.
    """

    def forward(self, weight, indices: Any = None, padding_idx: int | None = None):
        self.padding_idx, self.weight_shape = padding_idx, weight.shape
        if indices.size and (indices.min() < 0 or indices.max() >= weight.shape[0]):
            raise IndexError(f"embedding index out of range [0, {weight.shape[0]})")
        self.save_for_backward(indices)
        return weight[indices]

    def backward(self, g):
        (indices,) = self.saved_arrays
        grad = embedding_backward(indices, g, self.weight_shape[0])
        if self.padding_idx is not None:
            grad[self.padding_idx] = 0
        return grad


class Dropout(Function):
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout).

    The mask comes from the engine's seeded generator; backward applies the same mask.
    """

    def forward(self, x, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability must be in [0, 1], not {p}")
        keep = backend.to_device(backend.rng().random(x.shape) >= p, backend.device_of(x))
        self.scale = 0.0 if p == 1 else 1 / (1 - p)
        self.save_for_backward(keep)
        return x * keep * self.scale

    def backward(self, g):
        (keep,) = self.saved_arrays
        return g * keep * self.scale


class Rotary(Function):
    """Rotary positions: y = x cos + rotate_half(x) sin over the last dim, rotate_half(x) = (-x2, x1).

    x (..., d) with d even, split into halves x1, x2; cos and sin have x's
    last dimension and broadcast against x and each other. One op for what the formula spells as eight (two slices, a
    negation, a concatenation, two products and a sum), with no temporary of
    x's size but the output:

        y1 = x1 c1 - x2 s1          y2 = x2 c2 + x1 s2
        dx1 = g1 c1 + g2 s2         dx2 = g2 c2 - g1 s1
        dcos = g x                  dsin = g rotate_half(x)      (summed to their shapes)
    """

    def forward(self, x, cos, sin):
        d = x.shape[-1]
        if d % 2:
            raise ValueError(f"rotary positions need an even last dimension, not {d}")
        if cos.ndim == 0 or sin.ndim == 0 or cos.shape[-1] != d or sin.shape[-1] != d:
            raise ValueError(f"rotary positions: cos {cos.shape} and sin {sin.shape} need x's last dimension, {d}")
        half = d // 2
        xp = xp_of(x)
        y = xp.empty(xp.broadcast_shapes(x.shape, cos.shape, sin.shape), dtype=xp.result_type(x, cos, sin))
        xp.multiply(x, cos, out=y)
        y[..., :half] -= x[..., half:] * sin[..., :half]
        y[..., half:] += x[..., :half] * sin[..., half:]
        self.save_for_backward(x, cos, sin)
        return y

    def backward(self, g):
        x, cos, sin = self.saved_arrays
        need_x, need_cos, need_sin = self.needs_input_grad
        half = x.shape[-1] // 2
        gx = gcos = gsin = None
        if need_x:
            gx = g * cos
            gx[..., :half] += g[..., half:] * sin[..., half:]
            gx[..., half:] -= g[..., :half] * sin[..., :half]
            gx = sum_to(gx, x.shape)
        if need_cos:
            gcos = sum_to(g * x, cos.shape)
        if need_sin:
            xp = xp_of(g)
            gsin = xp.empty(g.shape, dtype=xp.result_type(g, x))
            xp.multiply(g[..., :half], x[..., half:], out=gsin[..., :half])
            xp.negative(gsin[..., :half], out=gsin[..., :half])
            xp.multiply(g[..., half:], x[..., :half], out=gsin[..., half:])
            gsin = sum_to(gsin, sin.shape)
        return gx, gcos, gsin


class ScaledDotProductAttention(Function):
    """softmax(q k^T * scale + mask) v over the last two dims, with PyTorch's signature and masks.

    q: (..., L, E), k: (..., S, E), v: (..., S, Ev) -> (..., L, Ev). ``is_causal``
    keeps key j <= query i (top-left aligned when L != S, as PyTorch).
    ``attn_mask`` is boolean (True = may attend) or additive.

    Forward keeps the attention probabilities P (..., L, S) in the input dtype
    (no float64 copy) and the dropout mask. Backward, with P' = P * dropout:
      dv = P'^T g,  dP = (g v^T) * dropout,  dS = P * (dP - sum_j dP * P) * scale,
      dq = dS k,    dk = dS^T q.
    """

    def forward(self, q, k, v, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
                scale: float | None = None):
        xp = xp_of(q)
        if is_causal and attn_mask is not None:
            raise ValueError("pass either attn_mask or is_causal=True, not both")
        self.scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
        scores = q @ k.swapaxes(-1, -2)
        scores *= self.scale
        length, source = q.shape[-2], k.shape[-2]
        if is_causal:
            attn_mask = xp.tril(xp.ones((length, source), dtype=bool))
        if attn_mask is not None and attn_mask.dtype == bool:
            xp.copyto(scores, -math.inf, where=~attn_mask)
        elif attn_mask is not None:
            scores += attn_mask
        probs = softmax_array(scores, -1).astype(q.dtype, copy=False)
        if attn_mask is not None and not is_causal:
            blocked = ~attn_mask.any(axis=-1) if attn_mask.dtype == bool else xp.isneginf(attn_mask).all(axis=-1)
            if blocked.any():  # a query with no key to attend to outputs zeros, as in PyTorch
                probs = xp.where(blocked[..., None], 0, probs).astype(probs.dtype, copy=False)
        keep = None
        if dropout_p > 0:
            keep = backend.to_device(backend.rng().random(probs.shape) >= dropout_p, backend.device_of(q))
            self.drop_scale = 1 / (1 - dropout_p)
        self.save_for_backward(q, k, v, probs, keep)
        weights = probs if keep is None else probs * keep * self.drop_scale
        return weights @ v

    def backward(self, g):
        q, k, v, probs, keep = self.saved_arrays
        need_q, need_k, need_v = self.needs_input_grad
        weights = probs if keep is None else probs * keep * self.drop_scale
        gv = sum_to(weights.swapaxes(-1, -2) @ g, v.shape) if need_v else None
        if not (need_q or need_k):
            return None, None, gv
        gp = g @ v.swapaxes(-1, -2)
        if keep is not None:
            gp *= keep * self.drop_scale
        gp -= xp_of(gp).einsum("...ij,...ij->...i", gp, probs)[..., None]  # row dot products, no temporary
        gp *= probs
        gp *= self.scale  # now dS
        gq = sum_to(gp @ k, q.shape) if need_q else None
        gk = sum_to(gp.swapaxes(-1, -2) @ q, k.shape) if need_k else None
        return gq, gk, gv

