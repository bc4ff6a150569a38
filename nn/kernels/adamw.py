"""The AdamW update, and the squared norm and scaling that gradient clipping needs, cache-blocked.

This is the one AdamW update of the engine: ``nn.optim.AdamW`` calls it once
per parameter, and an optimizer that keeps all parameters, gradients and
moments as views into a few flat buffers can update the whole model with one
call. Per element, at step t (``torch.optim.AdamW``):

    g  = grad * grad_scale                  (clipping folded into the update)
    p *= 1 - lr * weight_decay              (decoupled weight decay)
    m  = beta1 m + (1 - beta1) g
    v  = beta2 v + (1 - beta2) g^2
    p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

The CUDA version is ``adamw.cu`` (``cuda.adamw_step``); this one is its
reference and the CPU path. CuPy arrays of float32 go to the kernel.
"""

from __future__ import annotations

import math

import numpy as np

from nn.backend import quiet_float_errors, xp_of
from nn.kernels import cuda
from nn.kernels.blocked import blocks


def adamw_step(param, grad, exp_avg, exp_avg_sq, step: int, lr: float, beta1: float, beta2: float, eps: float,
               weight_decay: float, grad_scale: float = 1.0) -> None:
    """One AdamW step, in place on ``param``, ``exp_avg`` and ``exp_avg_sq`` (all of one shape); ``step`` >= 1.

    ``grad`` has the same shape, in any float dtype (float16 gradients of float32
    master weights, say); the moments have the parameter's dtype. CuPy arrays
    of float32, C-contiguous, go to the CUDA kernel; anything else runs the
    array code below, on NumPy or CuPy.
    """
    xp = xp_of(param)
    state = (param, exp_avg, exp_avg_sq)
    contiguous = all(a.flags.c_contiguous for a in state)
    if xp is not np and contiguous and cuda.supports(grad) and all(a.dtype == xp.float32 for a in state):
        cuda.adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, grad_scale)
        return
    decay, step_size, bias_correction2_sqrt = adamw_constants(step, lr, beta1, beta2, weight_decay)
    if contiguous:  # flat views, updated one cache-sized block at a time
        p, g, m, v = (a.reshape(-1) for a in (param, grad, exp_avg, exp_avg_sq))
        # 512 KB of each array per block (128K float32 elements): measured faster than smaller
        # blocks, whose extra NumPy calls cost more than the closer cache saves.
        pieces = list(blocks(xp, p.size, max(1, p.itemsize // 2)))
        scratch = xp.empty(pieces[0].stop - pieces[0].start, dtype=p.dtype)
    else:  # strided views cannot be flattened without a copy: the whole arrays are the one block
        p, g, m, v = param, grad, exp_avg, exp_avg_sq
        pieces = [...]
        scratch = xp.empty(p.shape, dtype=p.dtype)
    # grad_scale is folded into the constants: (1 - beta1) * (s g) and (1 - beta2) * (s g)^2.
    m_weight, v_weight = (1 - beta1) * grad_scale, (1 - beta2) * grad_scale * grad_scale
    for s in pieces:
        pb, gb, mb, vb = p[s], g[s], m[s], v[s]
        t = scratch[:len(pb)]  # the last block may be shorter
        mb *= beta1
        xp.multiply(gb, m_weight, out=t, dtype=p.dtype)
        mb += t
        xp.multiply(gb, gb, out=t, dtype=p.dtype)  # dtype: a float16 gradient is squared in float32
        t *= v_weight
        vb *= beta2
        vb += t
        denominator = xp.sqrt(vb, out=t)
        denominator /= bias_correction2_sqrt
        denominator += eps
        update = xp.divide(mb, denominator, out=t)
        update *= step_size
        pb *= decay
        pb -= update


def adamw_constants(step: int, lr: float, beta1: float, beta2: float, weight_decay: float) -> tuple[float, ...]:
    """(1 - lr * weight_decay, lr / (1 - beta1^t), sqrt(1 - beta2^t)): one step's constants, in double precision."""
    return 1 - lr * weight_decay, lr / (1 - beta1**step), math.sqrt(1 - beta2**step)


def sum_of_squares(x) -> float:
    """sum(x ** 2) over all elements, accumulated in float64 (the squared global gradient norm's share of x)."""
    if cuda.supports(x):
        return cuda.sum_of_squares(x)
    flat = x.reshape(-1).astype(xp_of(x).float64, copy=False)
    return float(flat @ flat)


def scale_(x, factor: float) -> None:
    """x *= factor in place (clipping's scale; inf * 0 = nan is allowed through, as torch does)."""
    if cuda.supports(x) and x.flags.c_contiguous:
        cuda.scale_(x, factor)
        return
    with quiet_float_errors(xp_of(x)):
        x *= factor
