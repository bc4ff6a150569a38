"""GELU forward and backward, exact (erf) or with GPT-2's tanh approximation, cache-blocked.

GELU(x) = x Phi(x), Phi the standard normal CDF, so GELU'(x) = Phi(x) + x phi(x).
- exact:  Phi(x) = (1 + erf(x / sqrt 2)) / 2,  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
- tanh:   Phi(x) ~ (1 + tanh u) / 2 with u = sqrt(2/pi) (x + 0.044715 x^3);
          its derivative is (1 + t)/2 + x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2, t = tanh u.
Only x is kept for backward; the rest is recomputed block by block. On the
CPU the tanh form also keeps s = (1 + tanh u) / 2, which forward computes
anyway (y = x s): since 1 - t^2 = 4 s (1 - s), the derivative is then
s + x s (1 - s) sqrt(2/pi) 2 (1 + 3 * 0.044715 x^2), with no tanh to redo
(``gelu_tanh_forward_keep`` / ``gelu_tanh_backward_kept``: half the
backward's time for one more saved array of x's shape, in the compute
dtype: float32, twice x's bytes, for float16 x).
"""

from __future__ import annotations

import math

import numpy as np

from nn import backend
from nn.backend import xp_of
from nn.kernels import cuda
from nn.kernels.blocked import blocks, compute_dtype, map_blocks

SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
CUBIC = 0.044715
INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)

# Abramowitz & Stegun 7.1.26: erfc(z) ~ t (a1 + t (a2 + ... + t a5)) exp(-z^2), t = 1 / (1 + p z), z >= 0,
# absolute error below 1.5e-7: float32 precision. float64 uses scipy's erf, exact to double precision.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _normal_cdf_and_density(x, density: bool = True):
    """Phi(x) and phi(x) (None unless ``density``) for one block.

    float64 uses scipy's erf; float32 uses A&S 7.1.26, whose exp(-x^2/2) is phi's too.
    """
    xp = xp_of(x)
    if x.dtype == np.float64:
        cdf = 0.5 * (1 + backend.special(xp).erf(x * math.sqrt(0.5)))
        if not density:
            return cdf, None
        gauss = xp.exp(-0.5 * x * x)
        gauss *= INV_SQRT_2PI
        return cdf, gauss
    z = xp.abs(x)
    z *= math.sqrt(0.5)
    t = z * _AS_P
    t += 1
    xp.reciprocal(t, out=t)
    poly = t * _AS_A[4]
    for a in reversed(_AS_A[:4]):
        poly += a
        poly *= t
    gauss = xp.multiply(z, z, out=z)
    gauss *= -1
    xp.exp(gauss, out=gauss)  # exp(-x^2 / 2)
    poly *= gauss
    poly *= -0.5
    poly += 0.5  # 0.5 - q with q = 1 - Phi(|x|), the upper tail
    cdf = xp.copysign(poly, x, out=poly)
    cdf += 0.5  # Phi(x) = 0.5 + sign(x) (0.5 - q): 1 - q for x >= 0, q below
    if not density:
        return cdf, None
    gauss *= INV_SQRT_2PI
    return cdf, gauss


def _tanh_of_u(x, out):
    """``out`` = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3), for one block; written in place, no temporary."""
    xp = xp_of(x)
    xp.multiply(x, x, out=out)
    out *= CUBIC
    out += 1
    out *= x
    out *= SQRT_2_OVER_PI
    return xp.tanh(out, out=out)


def _tanh_parts(x):
    """t = tanh(u) and x^2 for one block of the tanh approximation."""
    return _tanh_of_u(x, xp_of(x).empty_like(x)), x * x


def gelu_forward(x, approximate: str):
    """GELU(x) = x Phi(x). CuPy float32/float16 arrays run ``gelu.cu``."""
    if cuda.supports(x):
        return cuda.gelu_forward(x, approximate)

    def block(xb):
        if approximate == "tanh":
            phi = _tanh_of_u(xb, xp_of(xb).empty_like(xb))
            phi += 1
            phi *= 0.5
        else:
            phi, _ = _normal_cdf_and_density(xb, density=False)
        phi *= xb
        return phi

    return map_blocks(block, x)


def gelu_backward(x, g, approximate: str):
    """g * GELU'(x) = g * (Phi(x) + x phi(x)). CuPy float32/float16 arrays run ``gelu.cu``."""
    if cuda.supports(x):
        return cuda.gelu_backward(x, g, approximate)

    def block(xb, gb):
        if approximate == "tanh":
            t, x2 = _tanh_parts(xb)
            x2 *= 3 * CUBIC
            x2 += 1
            x2 *= xb
            x2 *= 0.5 * SQRT_2_OVER_PI  # x u'(x) / 2
            slope = t * t
            slope -= 1
            slope *= -x2  # x (1 - t^2) u'(x) / 2
            t += 1
            t *= 0.5
            grad = t + slope
        else:
            grad, density = _normal_cdf_and_density(xb)
            density *= xb
            grad += density
        grad *= gb
        return grad

    return map_blocks(block, x, g)


def gelu_tanh_forward_keep(x):
    """(y, s): the tanh GELU y = x s and s = (1 + tanh u) / 2 in the compute dtype, for the backward below."""
    xp = xp_of(x)
    flat = xp.ascontiguousarray(x).reshape(-1)
    s = xp.empty(flat.shape, dtype=compute_dtype(x.dtype))
    y = xp.empty(flat.shape, dtype=x.dtype)
    for b in blocks(xp, flat.size, s.itemsize):
        xb, sb = flat[b].astype(s.dtype, copy=False), s[b]
        _tanh_of_u(xb, sb)
        sb += 1
        sb *= 0.5
        xp.multiply(sb, xb, out=y[b], casting="unsafe")
    return y.reshape(x.shape), s.reshape(x.shape)


def gelu_tanh_backward_kept(x, s, g):
    """g * GELU'(x) from x and forward's s: g (s + x s (1 - s) 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2))."""
    xp = xp_of(x)
    flats = [xp.ascontiguousarray(a).reshape(-1) for a in (x, s, g)]
    out = xp.empty(flats[0].shape, dtype=s.dtype)
    spread = None  # one scratch block, the size of the first (largest) block
    for b in blocks(xp, out.size, s.itemsize):
        if spread is None:
            spread = xp.empty(b.stop - b.start, dtype=s.dtype)
        xb, sb, gb = (f[b].astype(s.dtype, copy=False) for f in flats)
        slope, sp = out[b], spread[:b.stop - b.start]
        xp.multiply(xb, xb, out=slope)
        slope *= 6 * SQRT_2_OVER_PI * CUBIC
        slope += 2 * SQRT_2_OVER_PI
        slope *= xb
        xp.multiply(sb, sb, out=sp)
        xp.subtract(sb, sp, out=sp)  # s (1 - s) = (1 - t^2) / 4
        slope *= sp
        slope += sb
        slope *= gb
    return out.astype(x.dtype, copy=False).reshape(x.shape)
