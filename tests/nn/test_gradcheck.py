"""nn.gradcheck must catch wrong backward passes, in both modes, and say where."""

from __future__ import annotations

import numpy as np
import pytest

import nn


class SquareWithBug(nn.Function):
    """x^2 whose backward is wrong in one element only (or by a factor, when scale != 1)."""

    def forward(self, x, bad_index=None, scale=1.0):
        self.bad_index, self.scale = bad_index, scale
        self.save_for_backward(x)
        return x * x

    def backward(self, g):
        (x,) = self.saved_arrays
        gx = 2 * x * g * self.scale
        if self.bad_index is not None:
            gx.reshape(-1)[self.bad_index] += 0.1 * g.reshape(-1)[self.bad_index]  # wrong diagonal entry
        return gx


def _x(*shape):
    return nn.tensor(np.random.default_rng(0).standard_normal(shape), requires_grad=True)


def test_correct_backward_passes_in_both_modes():
    assert nn.gradcheck(lambda x: SquareWithBug.apply(x), [_x(3, 2)])  # full Jacobian
    assert nn.gradcheck(lambda x: SquareWithBug.apply(x), [_x(20, 20)])  # random direction


def test_full_jacobian_mode_names_the_wrong_element():
    with pytest.raises(nn.GradcheckError, match=r"d output\[4\] / d input 0\[2, 0\]"):
        nn.gradcheck(lambda x: SquareWithBug.apply(x, bad_index=4), [_x(3, 2)])


def test_random_direction_mode_catches_a_scaled_gradient():
    with pytest.raises(nn.GradcheckError, match="directional derivative"):
        nn.gradcheck(lambda x: SquareWithBug.apply(x, scale=1.01), [_x(20, 20)])


def test_a_zero_backward_of_softmax_does_not_pass_thanks_to_a_random_upstream_gradient():
    class LazySoftmax(nn.Function):
        def forward(self, x):
            e = np.exp(x - x.max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)

        def backward(self, g):
            return np.zeros_like(g)  # right for an all-ones upstream gradient, wrong in general

    assert not nn.gradcheck(lambda x: LazySoftmax.apply(x), [_x(2, 3)], raise_exception=False)


def test_inputs_are_checked_in_float64_even_when_given_in_float32():
    x = nn.randn(3, requires_grad=True)
    seen = []
    nn.gradcheck(lambda t: seen.append(t.dtype) or t.tanh(), [x])
    assert set(seen) == {np.dtype(np.float64)}


def test_constant_inputs_are_passed_through_and_at_least_one_input_must_require_grad():
    c = nn.tensor([1.0, 2.0], dtype=nn.float64)
    assert nn.gradcheck(lambda x, c: x * c, [_x(2), c])
    with pytest.raises(ValueError, match="requires_grad"):
        nn.gradcheck(lambda c: c * 2, [c])
