"""Elementwise ops: arithmetic with broadcasting, activations, clamp/where, casts.

Conventions for every op here: binary ops broadcast like NumPy and their
backward sums the gradient back to each input's shape (``sum_to``); constants
in formulas are Python numbers, so a float32 input gives a float32 output
(NumPy 2 treats Python scalars as "weak" and never promotes on them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nn import backend
from nn.backend import xp_of
from nn.function import Function, is_grad_enabled
from nn.kernels import gelu as gelu_kernels
from nn.ops.util import sum_to


class _Binary(Function):
    """Shared bookkeeping of broadcasting binary ops: remember both input shapes."""

    def remember_shapes(self, x: Any, y: Any) -> None:
        self.x_shape, self.y_shape = x.shape, y.shape

    def reduce_grads(self, gx: Any, gy: Any) -> tuple[Any, Any]:
        """Sum each gradient back to its input's shape; skip inputs that need none."""
        need_x, need_y = self.needs_input_grad
        return (sum_to(gx, self.x_shape) if need_x else None,
                sum_to(gy, self.y_shape) if need_y else None)


class Add(_Binary):
    """x + y; d/dx = d/dy = 1."""

    def forward(self, x, y):
        self.remember_shapes(x, y)
        return x + y

    def backward(self, g):
        return self.reduce_grads(g, g)


class Sub(_Binary):
    """x - y; d/dx = 1, d/dy = -1."""

    def forward(self, x, y):
        self.remember_shapes(x, y)
        return x - y

    def backward(self, g):
        return self.reduce_grads(g, -g if self.needs_input_grad[1] else None)


class Mul(_Binary):
    """x * y; d/dx = y, d/dy = x."""

    def forward(self, x, y):
        self.remember_shapes(x, y)
        self.save_for_backward(x, y)
        return x * y

    def backward(self, g):
        x, y = self.saved_arrays
        need_x, need_y = self.needs_input_grad
        return self.reduce_grads(g * y if need_x else None, g * x if need_y else None)


class Div(_Binary):
    """x / y; d/dx = 1/y, d/dy = -x/y^2."""

    def forward(self, x, y):
        self.remember_shapes(x, y)
        self.save_for_backward(x, y)
        return x / y

    def backward(self, g):
        x, y = self.saved_arrays
        need_x, need_y = self.needs_input_grad
        gx = g / y if need_x else None
        gy = -g * x / (y * y) if need_y else None
        return self.reduce_grads(gx, gy)


class Neg(Function):
    """-x."""

    def forward(self, x):
        return -x

    def backward(self, g):
        return -g


class Pow(_Binary):
    """x ** y with a tensor exponent; d/dx = y x^(y-1), d/dy = x^y ln x.

    As in PyTorch, d/dy is 0 where x == 0 and y >= 0 (the limit of x^y ln x).
    """

    def forward(self, x, y):
        self.remember_shapes(x, y)
        out = x ** y
        self.save_for_backward(x, y, out)
        return out

    def backward(self, g):
        x, y, out = self.saved_arrays
        xp = xp_of(g)
        need_x, need_y = self.needs_input_grad
        gx = None
        if need_x:  # y x^(y-1), which is 0 where y == 0 (not 0 * 0^-1)
            with backend.quiet_float_errors(xp):
                gx = xp.where(y == 0, 0, g * y * x ** (y - 1))
        gy = None
        if need_y:
            with backend.quiet_float_errors(xp):
                log_x = xp.log(x)
            gy = xp.where((x == 0) & (y >= 0), 0, g * out * log_x)
        return self.reduce_grads(gx, gy)


class PowScalar(Function):
    """x ** p for a Python number p; d/dx = p x^(p-1)."""

    def forward(self, x, exponent: float):
        self.exponent = exponent
        self.save_for_backward(x)
        return x ** exponent

    def backward(self, g):
        (x,) = self.saved_arrays
        p = self.exponent
        if p == 0:
            return g * 0
        return g * p * x ** (p - 1)


class Exp(Function):
    """exp(x); its derivative is its own output, so the output is what we save."""

    def forward(self, x):
        out = xp_of(x).exp(x)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        (out,) = self.saved_arrays
        return g * out


class Log(Function):
    """ln x; d/dx = 1/x."""

    def forward(self, x):
        self.save_for_backward(x)
        return xp_of(x).log(x)

    def backward(self, g):
        (x,) = self.saved_arrays
        return g / x


class Sqrt(Function):
    """sqrt(x); d/dx = 1 / (2 sqrt(x)), from the saved output."""

    def forward(self, x):
        out = xp_of(x).sqrt(x)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        (out,) = self.saved_arrays
        return g / (2 * out)


class Rsqrt(Function):
    """1 / sqrt(x); d/dx = -x^(-3/2) / 2 = -out^3 / 2."""

    def forward(self, x):
        xp = xp_of(x)
        out = xp.reciprocal(xp.sqrt(x))
        self.save_for_backward(out)
        return out

    def backward(self, g):
        (out,) = self.saved_arrays
        return g * (-0.5 * out * out * out)


class Abs(Function):
    """|x|; d/dx = sign(x) (0 at 0, as in PyTorch)."""

    def forward(self, x):
        self.save_for_backward(x)
        return xp_of(x).abs(x)

    def backward(self, g):
        (x,) = self.saved_arrays
        return g * xp_of(x).sign(x)


class Tanh(Function):
    """tanh(x); d/dx = 1 - tanh(x)^2, from the saved output."""

    def forward(self, x):
        out = xp_of(x).tanh(x)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        (out,) = self.saved_arrays
        return g * (1 - out * out)


def sigmoid_array(x: Any) -> Any:
    """1 / (1 + e^-x) without overflow: with e = exp(-|x|), it is 1/(1+e) for x >= 0 and e/(1+e) below."""
    xp = xp_of(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1, e) / (1 + e)


class Sigmoid(Function):
    """sigmoid(x); d/dx = s (1 - s), from the saved output."""

    def forward(self, x):
        out = sigmoid_array(x)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        (out,) = self.saved_arrays
        return g * out * (1 - out)


class Relu(Function):
    """max(x, 0); d/dx = 1 where x > 0, else 0."""

    def forward(self, x):
        out = xp_of(x).maximum(x, 0)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        (out,) = self.saved_arrays
        return g * (out > 0)


class Gelu(Function):
    """GELU(x) = x Phi(x), exact (erf) or GPT-2's tanh approximation; math in ``nn/kernels/gelu.py``."""

    def forward(self, x, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu approximate must be 'none' or 'tanh', not {approximate!r}")
        self.approximate = approximate
        if approximate == "tanh" and xp_of(x) is np and is_grad_enabled() and self.needs_input_grad[0]:
            # keep s as well: backward then has no tanh to redo (nn/kernels/gelu.py)
            y, s = gelu_kernels.gelu_tanh_forward_keep(x)
            self.save_for_backward(x, s)
            return y
        self.save_for_backward(x, None)
        return gelu_kernels.gelu_forward(x, approximate)

    def backward(self, g):
        x, s = self.saved_arrays
        if s is not None:
            return gelu_kernels.gelu_tanh_backward_kept(x, s, g)
        return gelu_kernels.gelu_backward(x, g, self.approximate)


class Silu(Function):
    """SiLU(x) = x sigmoid(x); d/dx = s (1 + x (1 - s))."""

    def forward(self, x):
        self.save_for_backward(x)
        return x * sigmoid_array(x)

    def backward(self, g):
        (x,) = self.saved_arrays
        s = sigmoid_array(x)
        return g * s * (1 + x * (1 - s))


class _Extremum(_Binary):
    """Elementwise maximum / minimum; the gradient goes to the chosen input, half each on ties (as PyTorch)."""

    largest: bool

    def forward(self, x, y):
        self.remember_shapes(x, y)
        self.save_for_backward(x, y)
        xp = xp_of(x)
        return xp.maximum(x, y) if self.largest else xp.minimum(x, y)

    def backward(self, g):
        x, y = self.saved_arrays
        xp = xp_of(g)
        wins = (x > y) if self.largest else (x < y)
        share_x = xp.where(x == y, 0.5, wins.astype(g.dtype)).astype(g.dtype)
        need_x, need_y = self.needs_input_grad
        return self.reduce_grads(g * share_x if need_x else None, g * (1 - share_x) if need_y else None)


class Maximum(_Extremum):
    largest = True


class Minimum(_Extremum):
    largest = False


class Clamp(Function):
    """min(max(x, low), high); gradient 1 where low <= x <= high (bounds inclusive, as PyTorch)."""

    def forward(self, x, low: float | None = None, high: float | None = None):
        if low is None and high is None:
            raise ValueError("clamp needs at least one of min and max")
        self.save_for_backward(x)
        self.low, self.high = low, high
        return xp_of(x).clip(x, low, high)

    def backward(self, g):
        (x,) = self.saved_arrays
        inside = xp_of(x).ones(x.shape, dtype=bool)
        if self.low is not None:
            inside &= x >= self.low
        if self.high is not None:
            inside &= x <= self.high
        return g * inside


class Where(_Binary):
    """cond ? x : y (cond a boolean array, not differentiated)."""

    def forward(self, x, y, cond: Any = None):
        self.remember_shapes(x, y)
        self.save_for_backward(cond)
        return xp_of(x).where(cond, x, y)

    def backward(self, g):
        (cond,) = self.saved_arrays
        xp = xp_of(g)
        need_x, need_y = self.needs_input_grad
        gx = xp.where(cond, g, 0) if need_x else None
        gy = xp.where(cond, 0, g) if need_y else None
        return self.reduce_grads(gx, gy)


class MaskedFill(Function):
    """x with ``value`` wherever ``mask`` is True; no gradient flows through the filled places."""

    def forward(self, x, mask: Any = None, value: float = 0.0):
        self.save_for_backward(mask)
        return xp_of(x).where(mask, value, x)

    def backward(self, g):
        (mask,) = self.saved_arrays
        return xp_of(g).where(mask, 0, g)


class Cast(Function):
    """Change dtype (e.g. float32 -> float16); the gradient is cast back."""

    def forward(self, x, dtype: Any = None):
        self.input_dtype = x.dtype
        return x.astype(dtype)

    def backward(self, g):
        return g.astype(self.input_dtype)


class ToDevice(Function):
    """Copy to another device; the gradient is copied back."""

    def forward(self, x, device: str = "cpu"):
        self.input_device = backend.device_of(x)
        return backend.to_device(x, device)

    def backward(self, g):
        return backend.to_device(g, self.input_device)

