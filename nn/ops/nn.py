"""Fused neural-network ops, each one Function with a hand-derived backward.

A fused op does in one forward/backward what a chain of primitive ops would
do in many, keeping fewer arrays alive: softmax keeps only its output, the
loss keeps only the log-probabilities, layer norm keeps the normalised input
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
from nn.backend import xp_of
from nn.function import Function
from nn.ops.util import sum_to


def _compute_dtype(x: Any) -> Any:
    """float32 for float16 inputs, else the input's own dtype."""
    return np.float32 if x.dtype == np.float16 else x.dtype


def softmax_array(x: Any, axis: int) -> Any:
    """exp(x - max) / sum(exp(x - max)) along ``axis``, in a single new array."""
    xp = xp_of(x)
    y = x.astype(_compute_dtype(x), copy=True)
    y -= y.max(axis=axis, keepdims=True)
    xp.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y


def log_softmax_array(x: Any, axis: int) -> Any:
    """x - max - log(sum(exp(x - max))) along ``axis``, in a single new array."""
    xp = xp_of(x)
    y = x.astype(_compute_dtype(x), copy=True)
    y -= y.max(axis=axis, keepdims=True)
    y -= xp.log(xp.exp(y).sum(axis=axis, keepdims=True))
    return y


class Softmax(Function):
    """y = softmax(x). With J = diag(y) - y y^T, dx = J g = y * (g - sum(g * y))."""

    def forward(self, x, dim: int = -1):
        self.dim = dim
        y = softmax_array(x, dim)
        self.save_for_backward(y)
        return y.astype(x.dtype, copy=False)

    def backward(self, g):
        (y,) = self.saved_arrays
        gx = g * y
        gx -= y * gx.sum(axis=self.dim, keepdims=True)
        return gx.astype(g.dtype, copy=False)


class LogSoftmax(Function):
    """y = log softmax(x). dx = g - softmax(x) * sum(g), with softmax = exp(y)."""

    def forward(self, x, dim: int = -1):
        self.dim = dim
        y = log_softmax_array(x, dim)
        self.save_for_backward(y)
        return y.astype(x.dtype, copy=False)

    def backward(self, g):
        (y,) = self.saved_arrays
        gx = xp_of(y).exp(y)
        gx *= -g.sum(axis=self.dim, keepdims=True)
        gx += g
        return gx.astype(g.dtype, copy=False)


class CrossEntropy(Function):
    """Softmax cross-entropy between logits (N, C) and class indices (N,), fused.

    loss_i = -(1 - eps) log p_i[t_i] - (eps / C) sum_c log p_i[c]
    (eps = label smoothing), so d loss_i / d logits_i = p_i - (1 - eps) onehot(t_i) - eps / C.
    Rows whose target is ``ignore_index`` contribute neither loss nor gradient;
    "mean" divides by the number of the other rows, as PyTorch does.
    Only the log-probabilities are kept for backward; the probabilities are
    made from them once, in the gradient's own buffer.
    """

    def forward(self, logits, targets: Any = None, ignore_index: int = -100, reduction: str = "mean",
                label_smoothing: float = 0.0):
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
        xp = xp_of(logits)
        self.logits_shape, self.logits_dtype = logits.shape, logits.dtype
        rows, targets_flat = _class_last(logits), targets.reshape(-1)
        self.targets_shape = targets.shape
        num_classes = rows.shape[1]
        valid = targets_flat != ignore_index
        safe_targets = xp.where(valid, targets_flat, 0)
        if xp.any((safe_targets < 0) | (safe_targets >= num_classes)):
            raise IndexError(f"target out of range for {num_classes} classes")
        logp = log_softmax_array(rows, 1)
        picked = xp.arange(rows.shape[0])
        loss = -logp[picked, safe_targets]
        if label_smoothing:
            loss *= 1 - label_smoothing
            loss -= label_smoothing * logp.mean(axis=1)
        loss *= valid
        self.reduction, self.smoothing = reduction, label_smoothing
        self.count = int(valid.sum())
        self.save_for_backward(logp, safe_targets, valid)
        if reduction == "none":
            out = loss.reshape(targets.shape)
        elif reduction == "sum":
            out = loss.sum()
        else:
            out = loss.sum() / self.count if self.count else loss.sum() * math.nan
        return xp.asarray(out, dtype=logits.dtype)

    def backward(self, g):
        logp, targets, valid = self.saved_arrays
        xp = xp_of(logp)
        grad = xp.exp(logp)  # the probabilities, made once, in the buffer we return
        rows, num_classes = grad.shape
        grad[xp.arange(rows), targets] -= 1 - self.smoothing
        if self.smoothing:
            grad -= self.smoothing / num_classes
        if self.reduction == "none":
            row_scale = g.reshape(-1).astype(grad.dtype) * valid
        else:
            total = g.astype(grad.dtype) / (self.count if self.reduction == "mean" and self.count else 1)
            row_scale = valid * total
        grad *= row_scale[:, None]
        return _undo_class_last(grad.astype(self.logits_dtype, copy=False), self.logits_shape)


def _class_last(logits: Any) -> Any:
    """(N, C, d1, ...) -> (N * d1 * ..., C); (C,) -> (1, C); (N, C) unchanged."""
    if logits.ndim == 1:
        return logits.reshape(1, -1)
    if logits.ndim == 2:
        return logits
    return xp_of(logits).moveaxis(logits, 1, -1).reshape(-1, logits.shape[1])


def _undo_class_last(rows: Any, shape: tuple[int, ...]) -> Any:
    if len(shape) <= 2:
        return rows.reshape(shape)
    moved = rows.reshape((shape[0],) + shape[2:] + (shape[1],))
    return xp_of(rows).moveaxis(moved, -1, 1)


class _Norm(Function):
    """Shared parts of LayerNorm and RMSNorm: the normalised axes are the last ``len(normalized_shape)``."""

    def axes(self, x: Any, normalized_shape: tuple[int, ...]) -> tuple[int, ...]:
        k = len(normalized_shape)
        if tuple(x.shape[x.ndim - k:]) != tuple(normalized_shape):
            raise ValueError(f"normalized_shape {normalized_shape} does not match the end of {x.shape}")
        self.norm_axes = tuple(range(x.ndim - k, x.ndim))
        self.batch_axes = tuple(range(x.ndim - k))
        return self.norm_axes

    def param_grads(self, g: Any, xhat: Any, with_bias: bool) -> tuple[Any, Any]:
        """d weight = sum over rows of g * xhat; d bias = sum over rows of g."""
        gw = (g * xhat).sum(axis=self.batch_axes) if self.needs_input_grad[1] else None
        gb = g.sum(axis=self.batch_axes) if with_bias and self.needs_input_grad[2] else None
        return gw, gb

    def input_grad(self, g: Any, weight: Any, xhat: Any, rstd: Any, centre: bool) -> Any:
        """dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)) with gh = g * weight.

        Derivation: xhat = (x - mu) * rstd. Differentiating through mu and rstd
        gives the two subtracted means; RMS norm has no mu, so it drops the
        first one.
        """
        gh = g * weight if weight is not None else g.copy()
        correction = xhat * (gh * xhat).mean(axis=self.norm_axes, keepdims=True)
        if centre:
            correction += gh.mean(axis=self.norm_axes, keepdims=True)
        gh -= correction
        gh *= rstd
        return gh


class LayerNorm(_Norm):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dims (biased variance)."""

    def forward(self, x, weight, bias, normalized_shape: tuple = (), eps: float = 1e-5):
        xp = xp_of(x)
        axes = self.axes(x, normalized_shape)
        xf = x.astype(_compute_dtype(x), copy=True)
        xf -= xf.mean(axis=axes, keepdims=True)
        rstd = xp.reciprocal(xp.sqrt((xf * xf).mean(axis=axes, keepdims=True) + eps))
        xf *= rstd  # now xhat
        self.save_for_backward(xf, rstd, weight)
        self.has_bias = bias is not None
        y = xf * weight if weight is not None else xf.copy()
        if bias is not None:
            y += bias
        return y.astype(x.dtype, copy=False)

    def backward(self, g):
        xhat, rstd, weight = self.saved_arrays
        gf = g.astype(xhat.dtype, copy=False)
        gx = self.input_grad(gf, weight, xhat, rstd, centre=True) if self.needs_input_grad[0] else None
        gw, gb = self.param_grads(gf, xhat, self.has_bias)
        return _cast(gx, g.dtype), _cast(gw, g.dtype), _cast(gb, g.dtype)


class RMSNorm(_Norm):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dims (no centring, no bias)."""

    def forward(self, x, weight, normalized_shape: tuple = (), eps: float | None = None):
        xp = xp_of(x)
        axes = self.axes(x, normalized_shape)
        if eps is None:
            eps = float(np.finfo(x.dtype).eps)
        xf = x.astype(_compute_dtype(x), copy=True)
        rstd = xp.reciprocal(xp.sqrt((xf * xf).mean(axis=axes, keepdims=True) + eps))
        xf *= rstd
        self.save_for_backward(xf, rstd, weight)
        y = xf * weight if weight is not None else xf
        return y.astype(x.dtype, copy=False)

    def backward(self, g):
        xhat, rstd, weight = self.saved_arrays
        gf = g.astype(xhat.dtype, copy=False)
        gx = self.input_grad(gf, weight, xhat, rstd, centre=False) if self.needs_input_grad[0] else None
        gw, _ = self.param_grads(gf, xhat, with_bias=False)
        return _cast(gx, g.dtype), _cast(gw, g.dtype)


def _cast(a: Any, dtype: Any) -> Any:
    return None if a is None else a.astype(dtype, copy=False)


class Embedding(Function):
    """Rows of ``weight`` (V, C) picked by integer ``indices``: out = weight[indices].

    Backward adds each output row's gradient into the row it came from. The
    same id can appear many times, so this is a scatter-add. NumPy's
    ``add.at`` is slow for 2-D rows, so the rows are sorted by id and each run
    of equal ids is summed with one ``add.reduceat``.
    """

    def forward(self, weight, indices: Any = None, padding_idx: int | None = None):
        self.indices, self.padding_idx, self.weight_shape = indices, padding_idx, weight.shape
        return weight[indices]

    def backward(self, g):
        xp = xp_of(g)
        ids = self.indices.reshape(-1)
        rows = g.reshape(ids.size, -1)
        grad = xp.zeros(self.weight_shape, dtype=g.dtype)
        if ids.size:
            order = xp.argsort(ids, kind="stable")
            sorted_ids = ids[order]
            starts = xp.flatnonzero(xp.concatenate([xp.ones(1, dtype=bool), sorted_ids[1:] != sorted_ids[:-1]]))
            grad[sorted_ids[starts]] = xp.add.reduceat(rows[order], starts, axis=0)
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
        gp -= (gp * probs).sum(axis=-1, keepdims=True)
        gp *= probs
        gp *= self.scale  # now dS
        gq = sum_to(gp @ k, q.shape) if need_q else None
        gk = sum_to(gp.swapaxes(-1, -2) @ q, k.shape) if need_k else None
        return gq, gk, gv

