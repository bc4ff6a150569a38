"""AdamW over flat buffers, and the squared norm and scaling that gradient clipping needs, cache-blocked.

The optimizer can keep all parameters, gradients and moments as views into
a few flat buffers; then one call updates the whole model. Per element, at
step t (``torch.optim.AdamW``):

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
    """One AdamW step, in place on ``param``, ``exp_avg`` and ``exp_avg_sq`` (all of one shape); ``step`` >= 1."""
    xp = xp_of(param)
    if xp is not np and cuda.supports(grad) and param.dtype == exp_avg.dtype == exp_avg_sq.dtype == xp.float32:
        cuda.adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, grad_scale)
        return
    if not (param.flags.c_contiguous and exp_avg.flags.c_contiguous and exp_avg_sq.flags.c_contiguous):
        raise ValueError("adamw_step works in place: param, exp_avg and exp_avg_sq must be C-contiguous")
    decay, step_size, bias_correction2_sqrt = adamw_constants(step, lr, beta1, beta2, weight_decay)
    p, m, v = (a.reshape(-1) for a in (param, exp_avg, exp_avg_sq))
    g_flat = grad.reshape(-1)
    for s in blocks(xp, p.size, 4 * p.itemsize):
        g = g_flat[s].astype(p.dtype)  # a copy: scaled in place below
        if grad_scale != 1.0:
            g *= grad_scale
        m[s] *= beta1
        m[s] += (1 - beta1) * g
        v[s] *= beta2
        g *= g
        g *= 1 - beta2
        v[s] += g
        denominator = xp.sqrt(v[s], out=g)
        denominator /= bias_correction2_sqrt
        denominator += eps
        update = xp.divide(m[s], denominator, out=denominator)
        update *= step_size
        p[s] *= decay
        p[s] -= update


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
