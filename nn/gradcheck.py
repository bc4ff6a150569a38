"""Finite-difference gradient checking: is an op's backward the derivative of its forward?

The numerical derivative uses central differences in float64,
``(f(x + eps e) - f(x - eps e)) / (2 eps)``, whose error is O(eps^2).

Two modes:
- *full Jacobian* for small problems: every input element is perturbed, giving
  the numeric Jacobian column by column; the analytic Jacobian is built row by
  row from one backward pass per output element (one-hot upstream
  gradients). Every entry is compared.
- *random direction* for large ones: one random unit direction u over all
  inputs and one random upstream gradient v; compare v . (f(x + eps u) -
  f(x - eps u)) / (2 eps) with the analytic sum of grad . u.

The upstream gradient is random, never all ones: with ones, an op whose
outputs always sum to a constant (softmax) has a true gradient of zero and a
broken backward that returns zeros would pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from nn import backend
from nn.function import no_grad
from nn.tensor import Tensor


class GradcheckError(AssertionError):
    """Raised when analytic and numeric gradients disagree; the message names the worst element."""


def _as_float64_leaves(inputs: Sequence[Tensor]) -> list[Tensor]:
    leaves = []
    for t in inputs:
        if isinstance(t, Tensor) and t.requires_grad:
            # C order, so that reshape(-1) below is a view: perturbing it perturbs the leaf
            leaves.append(Tensor(np.array(backend.to_numpy(t.data), dtype=np.float64, order="C"), requires_grad=True))
        else:
            leaves.append(t)
    return leaves


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Tensor], *, eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, full_jacobian_max: int = 64, seed: int = 0,
              raise_exception: bool = True) -> bool:
    """Check ``fn(*inputs)``'s gradients against central differences, in float64.

    Inputs with ``requires_grad`` are checked (as float64 copies). ``seed``
    also reseeds the engine before every evaluation, so ops that draw random
    numbers (dropout) see the same numbers each time. An element passes when
    ``|analytic - numeric| <= atol + rtol * |numeric|``. Returns True, or
    raises :class:`GradcheckError` naming the worst element (or returns False
    when ``raise_exception=False``).
    """
    leaves = _as_float64_leaves(inputs)
    checked = [i for i, t in enumerate(leaves) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck needs at least one input with requires_grad=True")
    sample = np.random.default_rng(seed)

    def evaluate() -> Tensor:
        backend.manual_seed(seed)
        out = fn(*leaves)
        if not isinstance(out, Tensor):
            raise TypeError(f"gradcheck: fn must return a Tensor, not {type(out).__name__}")
        return out

    def values() -> np.ndarray:
        with no_grad():
            return evaluate().numpy().astype(np.float64).reshape(-1)

    def analytic(upstream: np.ndarray) -> list[np.ndarray]:
        for i in checked:
            leaves[i].grad = None
        out = evaluate()
        out.backward(upstream.reshape(out.shape))
        return [np.zeros(leaves[i].shape) if leaves[i].grad is None else leaves[i].grad.numpy().copy()
                for i in checked]

    out_size = values().size
    in_size = sum(leaves[i].numel() for i in checked)

    if in_size <= full_jacobian_max and out_size <= full_jacobian_max:
        numeric = np.empty((out_size, in_size))
        column = 0
        for i in checked:
            flat = leaves[i].data.reshape(-1)
            for j in range(flat.size):
                original = flat[j]
                flat[j] = original + eps
                plus = values()
                flat[j] = original - eps
                minus = values()
                flat[j] = original
                numeric[:, column] = (plus - minus) / (2 * eps)
                column += 1
        exact = np.empty_like(numeric)
        for row in range(out_size):
            onehot = np.zeros(out_size)
            onehot[row] = 1
            exact[row] = np.concatenate([g.reshape(-1) for g in analytic(onehot)])
        return _compare(exact, numeric, atol, rtol, raise_exception, _element_namer(leaves, checked, out_size))

    upstream = sample.standard_normal(out_size)
    grads = analytic(upstream)
    direction = [sample.standard_normal(leaves[i].shape) for i in checked]
    norm = np.sqrt(sum(float((d * d).sum()) for d in direction))
    direction = [d / norm for d in direction]
    originals = [leaves[i].data.copy() for i in checked]

    def shifted(sign: float) -> np.ndarray:
        for i, d, x0 in zip(checked, direction, originals, strict=True):
            leaves[i].data[...] = x0 + sign * eps * d
        return values()

    numeric_dir = float(upstream @ (shifted(+1) - shifted(-1))) / (2 * eps)
    for i, x0 in zip(checked, originals, strict=True):
        leaves[i].data[...] = x0
    analytic_dir = sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=True))
    return _compare(np.array([analytic_dir]), np.array([numeric_dir]), atol, rtol, raise_exception,
                    lambda _: "the directional derivative along a random unit direction")


def _element_namer(leaves: list[Tensor], checked: list[int], out_size: int) -> Callable[[int], str]:
    """Turn a flat (output row, input column) position into 'output k, input i at index (..)'."""
    offsets, start = [], 0
    for i in checked:
        offsets.append((start, i))
        start += leaves[i].numel()

    def name(flat_position: int) -> str:
        row, column = divmod(flat_position, start)
        for begin, i in reversed(offsets):
            if column >= begin:
                index = np.unravel_index(column - begin, leaves[i].shape)
                return f"d output[{row}] / d input {i}{list(int(k) for k in index)}"
        raise AssertionError("unreachable")

    return name


def _compare(analytic: np.ndarray, numeric: np.ndarray, atol: float, rtol: float, raise_exception: bool,
             name: Callable[[int], str]) -> bool:
    if analytic.size == 0:  # an empty output or input: nothing to differentiate
        return True
    error = np.abs(analytic - numeric)
    excess = error - (atol + rtol * np.abs(numeric))
    worst = int(np.argmax(excess))
    if excess.reshape(-1)[worst] <= 0 and np.all(np.isfinite(analytic)):
        return True
    if not raise_exception:
        return False
    a, n = analytic.reshape(-1)[worst], numeric.reshape(-1)[worst]
    failing = int((excess > 0).sum())
    raise GradcheckError(
        f"gradient mismatch at {name(worst)}: analytic {a:.10g}, numeric {n:.10g}, "
        f"|difference| {abs(a - n):.3g} > atol {atol:g} + rtol {rtol:g} * |numeric| "
        f"({failing} of {excess.size} entries fail)")
