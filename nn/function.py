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

Tools that watch every op (the profiler, a NaN finder, a tracer) are
:class:`FunctionHook` objects: ``with hook:`` makes ``apply`` and
``Tensor.backward`` call them around each forward and backward.

This module sits below ``nn.tensor`` and never imports it: ``nn.tensor``
hands over its Tensor class with :func:`register_tensor_class` instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Self

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


# ---------------------------------------------------------------- the class of apply's results
# Function.apply wraps every result in a Tensor, but Tensor is built on Function: importing
# nn.tensor from here would be an import cycle. So nn.tensor registers its class once, as it
# is imported. That always happens before the first op runs, since an op's inputs are Tensors.
_tensor_class: type[Tensor] | None = None


def register_tensor_class(cls: type[Tensor]) -> None:
    """Make ``cls`` the class of the Tensors that :meth:`Function.apply` returns (``nn.tensor`` calls it)."""
    global _tensor_class
    _tensor_class = cls


# ---------------------------------------------------------------- hooks
_hooks: tuple[FunctionHook, ...] = ()  # the active hooks, in the order they were entered; replaced, never mutated


def active_hooks() -> tuple[FunctionHook, ...]:
    """The hooks now active, in the order they were entered (usually none: then an op pays one check)."""
    return _hooks


class FunctionHook:
    """Base class of objects called around every op's forward and backward while a ``with hook:`` block runs.

    Modelled on Chainer's ``FunctionHook``. A subclass overrides any of the four
    callbacks (the defaults do nothing); each gets the Function instance ``fn``
    and the arrays (never Tensors) flowing through that step::

        forward_preprocess(fn, inputs)               before fn.forward(*inputs)
        forward_postprocess(fn, inputs, output)      after it; fn.saved_arrays is set by then
        backward_preprocess(fn, grad)                before fn.backward(grad)
        backward_postprocess(fn, grad, input_grads)  after it

    ``inputs`` is the list of input arrays (None for an absent optional input),
    ``output`` the result, ``grad`` the gradient of the output and
    ``input_grads`` a tuple with one gradient (or None) per input. Callbacks
    look, they must not modify these arrays. During backward ``fn.inputs`` still
    holds the input Tensors.

    Entering the block makes the hook active for every op in the process (the
    forward ones in ``Function.apply``, the backward ones in ``Tensor.backward``);
    leaving it, by an exception too, removes it. Several hooks may be active at
    once. They are called as nested ``with`` blocks would be: the preprocess
    callbacks in the order the hooks were entered, the postprocess callbacks in
    the reverse order, so each hook brackets the hooks entered after it, and the
    innermost one times the op alone. (Chainer calls both in the order of
    entry, and keeps hooks per thread; here, as grad mode, they are global.)
    One hook object can be active only once at a time.
    """

    def __enter__(self) -> Self:
        global _hooks
        if any(h is self for h in _hooks):
            raise RuntimeError(f"this {type(self).__name__} is already active; a hook cannot be entered twice")
        _hooks = (*_hooks, self)
        return self

    def __exit__(self, *exc: Any) -> None:
        global _hooks
        _hooks = tuple(h for h in _hooks if h is not self)

    def forward_preprocess(self, fn: Function, inputs: list[Any]) -> None:
        """Called before ``fn.forward(*inputs)``."""

    def forward_postprocess(self, fn: Function, inputs: list[Any], output: Any) -> None:
        """Called after ``fn.forward(*inputs)`` returned ``output``."""

    def backward_preprocess(self, fn: Function, grad: Any) -> None:
        """Called before ``fn.backward(grad)``."""

    def backward_postprocess(self, fn: Function, grad: Any, input_grads: tuple[Any, ...]) -> None:
        """Called after ``fn.backward(grad)`` returned ``input_grads`` (as a tuple, one per input)."""


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
        fn = cls()
        fn.saved_arrays = ()
        fn.released = False
        fn.needs_input_grad = tuple(t is not None and t.requires_grad for t in inputs)
        arrays = [None if t is None else t.data for t in inputs]
        if _hooks:
            out = _forward_with_hooks(fn, arrays, params)
        else:
            out = _as_array(fn.forward(*arrays, **params), arrays)
        # Integer and boolean results (a cast to int64, say) have no gradient, as in PyTorch.
        requires_grad = _grad_enabled and any(fn.needs_input_grad) and out.dtype.kind == "f"
        result = _tensor_class(out, requires_grad=requires_grad)
        if requires_grad:
            fn.inputs = tuple(inputs)
            result._ctx = fn
        return result


def _forward_with_hooks(fn: Function, arrays: list[Any], params: dict[str, Any]) -> Any:
    """``fn.forward`` bracketed by the active hooks' forward callbacks."""
    hooks = _hooks
    for hook in hooks:
        hook.forward_preprocess(fn, arrays)
    out = _as_array(fn.forward(*arrays, **params), arrays)
    for hook in reversed(hooks):
        hook.forward_postprocess(fn, arrays, out)
    return out


def _as_array(out: Any, arrays: list[Any]) -> Any:
    """``forward``'s result as an array: NumPy reductions return scalars, which become 0-d arrays of their dtype."""
    if hasattr(out, "shape") and not isinstance(out, np.generic):
        return out
    like = next(a for a in arrays if a is not None)
    return xp_of(like).asarray(out)
