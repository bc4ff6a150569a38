"""The Function contract: one differentiable op = one class with forward and backward.

``forward`` and ``backward`` work on raw arrays (NumPy or CuPy), never on
Tensors, so the backward pass builds no graph and costs no more than the math.
``Function.apply`` is the only place where Tensors and arrays meet:

1. it unwraps the input Tensors and calls ``forward`` on their arrays;
2. if any input requires a gradient (and grad mode is on) it makes the new
   Function instance the output's ``_ctx``, keeping strong references to the
   inputs only. Nothing points back from a Function to its output, so the graph
   has no reference cycles: when the last Tensor of a graph dies, CPython frees
   every activation at once, with no garbage-collector pass.

A Function keeps exactly what its backward needs, declared in forward with
``save_for_backward``; ``Tensor.backward`` releases it as soon as the op's
backward has run (unless ``retain_graph=True``).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from nn.backend import xp_of

if TYPE_CHECKING:
    from nn.tensor import Tensor

_grad_enabled = True


def is_grad_enabled() -> bool:
    """Whether new ops record a graph for backward."""
    return _grad_enabled


@contextmanager
def set_grad_enabled(mode: bool):
    """Turn graph recording on or off inside a ``with`` block."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, mode
    try:
        yield
    finally:
        _grad_enabled = previous


def no_grad():
    """``with nn.no_grad():`` runs ops without recording a graph (evaluation, updates)."""
    return set_grad_enabled(False)


def enable_grad():
    """``with nn.enable_grad():`` records a graph even inside ``no_grad``."""
    return set_grad_enabled(True)


# The profiler (nn.profiler) installs itself here while it is active.
_profiler = None


def _profiler_state():
    """The active profiler, or None (read by Tensor.backward)."""
    return _profiler


class Function:
    """Base class of every differentiable op.

    Subclasses implement::

        def forward(self, *arrays, **params) -> array
        def backward(self, grad) -> array | tuple[array | None, ...]

    ``backward`` receives the gradient of the loss with respect to the output
    and returns one gradient per input, in order, each with that input's shape
    and dtype (``None`` for inputs that need none: check
    ``self.needs_input_grad``). It must not modify ``grad`` in place.
    """

    inputs: tuple[Tensor, ...] | None
    needs_input_grad: tuple[bool, ...]
    saved_arrays: tuple[Any, ...]
    released: bool

    def save_for_backward(self, *arrays: Any) -> None:
        """Keep these arrays for backward (and nothing else)."""
        self.saved_arrays = arrays

    def forward(self, *arrays: Any, **params: Any) -> Any:
        raise NotImplementedError

    def backward(self, grad: Any) -> Any:
        raise NotImplementedError

    def release(self) -> None:
        """Drop saved arrays and input references once backward has used them."""
        self.saved_arrays = ()
        self.inputs = None
        self.released = True

    @property
    def name(self) -> str:
        return type(self).__name__

    @classmethod
    def apply(cls, *inputs: Tensor | None, **params: Any) -> Tensor:
        """Run the op on Tensors (``None`` allowed for optional inputs) and record it."""
        from nn.tensor import Tensor

        fn = cls()
        fn.saved_arrays = ()
        fn.released = False
        fn.needs_input_grad = tuple(t is not None and t.requires_grad for t in inputs)
        arrays = [None if t is None else t.data for t in inputs]
        if _profiler is None:
            out = fn.forward(*arrays, **params)
        else:
            start = time.perf_counter()
            out = fn.forward(*arrays, **params)
            _profiler.record_forward(fn, time.perf_counter() - start)
        if not hasattr(out, "shape") or isinstance(out, np.generic):
            # NumPy reductions return scalars; keep a 0-d array of the same dtype.
            like = next(a for a in arrays if a is not None)
            out = xp_of(like).asarray(out)
        # Integer and boolean results (a cast to int64, say) have no gradient, as in PyTorch.
        requires_grad = _grad_enabled and any(fn.needs_input_grad) and out.dtype.kind == "f"
        result = Tensor(out, requires_grad=requires_grad)
        if requires_grad:
            fn.inputs = tuple(inputs)
            result._ctx = fn
        return result
