"""Softmax cross-entropy on raw (N, C) logits, forward and backward fused, cache-blocked.

For a row x with target t:

    lse  = log sum_j exp(x_j) = m + log sum_j exp(x_j - m),  m = max_j x_j  (no overflow)
    loss = lse - x_t
    d loss / d x_j = exp(x_j - lse) - [j == t]       (softmax minus one-hot)

Forward keeps only lse (N numbers); backward rebuilds the probabilities from
the logits and lse straight into the gradient buffer, so (N, C)
probabilities are made once, in backward, and never kept. Rows whose target
is ``ignore_index`` have loss 0 and gradient 0. The CUDA version is
``cross_entropy.cu``; CuPy arrays of float32/float16 (bfloat16 bits) go to it.

``loss_and_grad`` is what the ``CrossEntropy`` op runs when a gradient will be
wanted: it makes the loss and the gradient in the same pass over the logits,
block by block while each block is in cache, since the exponentials are the
same. Backward then only has to scale the gradient by the upstream one (and
for a mean loss whose upstream gradient is 1, the usual case, not even that).
"""

from __future__ import annotations

from nn.backend import quiet_float_errors, xp_of
from nn.kernels import cuda
from nn.kernels.blocked import blocks, compute_dtype
from nn.kernels.softmax import exp_shifted


def _check_targets(targets, classes: int, ignore_index: int) -> None:
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= classes))
    if bool(bad.any()):
        raise IndexError(f"target out of range for {classes} classes")


def cross_entropy_forward(logits, targets, ignore_index: int = -100):
    """(loss (N,), lse (N,)) in the compute dtype for logits (N, C) and integer targets (N,)."""
    if cuda.supports(logits):
        return cuda.cross_entropy_forward(logits, targets, ignore_index)
    xp = xp_of(logits)
    rows, classes = logits.shape
    _check_targets(targets, classes, ignore_index)
    dtype = compute_dtype(logits.dtype)
    loss = xp.zeros(rows, dtype=dtype)
    lse = xp.empty(rows, dtype=dtype)
    ones = xp.ones(classes, dtype=dtype)
    for s in blocks(xp, rows, classes * dtype.itemsize):
        x = logits[s].astype(dtype, copy=False)
        m = x.max(axis=1) if classes else xp.full(x.shape[0], -xp.inf, dtype=dtype)
        with quiet_float_errors(xp):  # a row holding +inf: inf - inf = nan, as torch gives
            shifted = xp.subtract(x, m[:, None])
            xp.exp(shifted, out=shifted)
            lse[s] = m + xp.log(shifted @ ones)
        t = targets[s]
        valid = t != ignore_index
        rows_here = xp.arange(x.shape[0])[valid]
        loss[s][valid] = lse[s][valid] - x[rows_here, t[valid]]
    return loss, lse


def cross_entropy_backward(logits, targets, lse, row_grad, ignore_index: int = -100):
    """d logits (N, C) in logits' dtype: (softmax - onehot) * row_grad, 0 on ignored rows.

    ``row_grad`` is a number (e.g. g / count for a mean) or an (N,) array (reduction "none").
    """
    if cuda.supports(logits):
        return cuda.cross_entropy_backward(logits, targets, lse, row_grad, ignore_index)
    xp = xp_of(logits)
    rows, classes = logits.shape
    _check_targets(targets, classes, ignore_index)
    dtype = compute_dtype(logits.dtype)
    per_row = xp.ndim(row_grad) > 0
    dlogits = xp.empty((rows, classes), dtype=dtype)
    for s in blocks(xp, rows, classes * dtype.itemsize):
        out = dlogits[s]
        xp.subtract(logits[s], lse[s][:, None], out=out, dtype=dtype)
        xp.exp(out, out=out)
        t = targets[s]
        valid = t != ignore_index
        out[xp.arange(out.shape[0])[valid], t[valid]] -= 1
        scale = xp.where(valid, row_grad[s] if per_row else row_grad, 0).astype(dtype)
        out *= scale[:, None]
        if not bool(valid.all()):
            out[~valid] = 0  # also where an ignored row's logits held inf (inf * 0 = nan)
    return dlogits.astype(logits.dtype, copy=False)


def loss_and_grad(logits, targets, row_scale, smoothing: float = 0.0, want_grad: bool = True):
    """Per-row loss (N,) and, if ``want_grad``, d(sum_i row_scale_i loss_i) / d logits (N, C), in one pass.

    With label smoothing eps the target distribution is (1 - eps) onehot + eps / C, so

        loss_i = lse_i - (1 - eps) x_it - eps mean_j x_ij
        d loss_i / d x_ij = softmax_ij - (1 - eps) [j == t_i] - eps / C.

    ``targets`` must all be valid class indices; a row to ignore gets
    ``row_scale`` 0 (its gradient row is 0, even where its logits hold inf)
    and its loss is the caller's to discard. Computed in the compute dtype.
    """
    xp = xp_of(logits)
    rows, classes = logits.shape
    dtype = compute_dtype(logits.dtype)
    loss = xp.empty(rows, dtype=dtype)
    grad = xp.empty((rows, classes), dtype=dtype) if want_grad else None
    if rows == 0 or classes == 0:
        return loss, grad
    ones = xp.ones(classes, dtype=dtype)
    scale = xp.broadcast_to(xp.asarray(row_scale, dtype=dtype), (rows,))
    for s in blocks(xp, rows, classes * dtype.itemsize):
        x = logits[s].astype(dtype, copy=False)
        o = grad[s] if want_grad else xp.empty(x.shape, dtype=dtype)
        shift, sums = exp_shifted(x, o, ones)
        picked = xp.arange(x.shape[0]), targets[s]
        with quiet_float_errors(xp):  # a row holding inf gives NaN, as torch does
            log_sums = xp.log(sums)
            loss[s] = (shift - x[picked]) + log_sums  # lse - x_t, the small terms added last
            if smoothing:
                loss[s] = (1 - smoothing) * loss[s] + smoothing * (shift + log_sums - (x @ ones) / classes)
            if not want_grad:
                continue
            sc = scale[s]
            o *= (sc / sums)[:, None]  # softmax, scaled
            o[picked] -= (1 - smoothing) * sc
            if smoothing:
                o -= (smoothing / classes * sc)[:, None]
            ignored = sc == 0
            if ignored.any():
                o[ignored] = 0
    return loss, grad
