"""Activation checkpointing: trade compute for memory by recomputing a block in backward.

    h = x
    for block in blocks:
        h = nn.checkpoint(block, h)     # keeps h, not the activations inside block
    loss = head(h)
    loss.backward()                      # re-runs each block once, just before its backward

Normally every op of the forward pass keeps what its backward needs (inputs,
softmax outputs, dropout masks), so a deep network holds all of its
activations at the top of the forward pass. ``checkpoint(fn, *args)`` replaces
the graph of ``fn`` by a single node that keeps only ``args``; in backward the
node runs ``fn`` again, with grad recording on, and backpropagates through
that fresh graph. Memory drops from "every block's activations" to "the block
boundaries plus one block's activations", at the price of a second forward of
each block (about a third more compute).

:func:`activation_bytes` measures the memory a graph holds, so the saving can
be seen (and tested) rather than assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nn.backend import get_rng_state, set_rng_state
from nn.function import Function, enable_grad, is_grad_enabled
from nn.tensor import Tensor

__all__ = ["checkpoint", "Checkpoint", "activation_bytes"]


def checkpoint(function: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """``function(*args)`` without keeping its activations; they are recomputed in backward.

    ``args`` are Tensors (some may not require grad, e.g. token ids);
    ``function`` returns one Tensor and may use parameters it closes over (a
    Module's weights). Random ops inside it (dropout) draw the same numbers in
    the recomputation, because the engine's random state is saved here and
    restored there, so gradients equal those of ``function(*args)`` exactly.

    How the parameters are found: ``function`` runs once here with grad
    recording on, on detached copies of ``args``; the leaves of the graph it
    builds that require grad, other than those copies, are the parameters it
    uses. They become inputs of the :class:`Checkpoint` node, so the node
    requires grad, and the backward pass reaches it, even when no argument does
    (a first block fed raw data). That graph is dropped before this function
    returns, so forward holds one block's activations at a time, no more than
    backward will. Tensors computed outside ``function`` that require grad
    must be passed as arguments, not closed over (as in PyTorch), because the
    recomputation backpropagates only as far as ``args``.

    Under ``no_grad`` nothing will be recomputed, so this is just ``function(*args)``.
    """
    if not is_grad_enabled():
        return function(*args)
    rng_state = get_rng_state()
    copies = [_detached(a) for a in args]
    output = function(*copies)
    parameters = _parameters_used(output, exclude=copies)
    return Checkpoint.apply(*args, *parameters, function=function, num_args=len(args), rng_state=rng_state,
                            output=output.data)


class Checkpoint(Function):
    """The graph node standing for a whole checkpointed ``function``; inputs: (*args, *parameters).

    Forward does not compute: :func:`checkpoint` has already run ``function``
    (it needed the graph to find the parameters), and forward only passes the
    result on and remembers how to redo it. Backward reruns ``function`` from
    the saved random state and backpropagates the incoming gradient through
    the new graph. As in PyTorch's reentrant checkpoint, the parameters'
    gradients are accumulated into their ``.grad`` by that inner backward, so
    this node returns gradients for ``args`` only (None for the parameters).
    """

    def forward(self, *arrays: Any, function: Callable[..., Tensor], num_args: int, rng_state: dict,
                output: Any) -> Any:
        self.function, self.num_args, self.rng_state = function, num_args, rng_state
        return output

    def backward(self, grad: Any) -> tuple[Any, ...]:
        copies = [_detached(a) for a in self.inputs[:self.num_args]]
        outer_rng_state = get_rng_state()
        set_rng_state(self.rng_state)
        try:
            with enable_grad():
                output = self.function(*copies)
        finally:
            set_rng_state(outer_rng_state)
        output.backward(grad)
        arg_grads = tuple(None if c.grad is None else c.grad.data for c in copies)
        return arg_grads + (None,) * (len(self.inputs) - self.num_args)


def _detached(t: Tensor) -> Tensor:
    """A new leaf sharing ``t``'s data and its ``requires_grad``: the start of a fresh graph."""
    return Tensor(t.data, requires_grad=t.requires_grad)


def _parameters_used(output: Tensor, exclude: list[Tensor]) -> list[Tensor]:
    """The leaves requiring grad in the graph behind ``output``, except the tensors in ``exclude``."""
    excluded = {id(t) for t in exclude}
    found: dict[int, Tensor] = {}
    stack, seen = [output], set()
    while stack:
        t = stack.pop()
        if id(t) in seen or not t.requires_grad:
            continue
        seen.add(id(t))
        if t.grad_fn is None:
            if id(t) not in excluded:
                found[id(t)] = t
        else:
            stack.extend(x for x in t.grad_fn.inputs if x is not None)
    return list(found.values())


def activation_bytes(output: Tensor) -> int:
    """Bytes of memory the graph behind ``output`` keeps alive until backward.

    That is every array an op saved for its backward plus the data of the
    intermediate (non-leaf) tensors the graph holds as op inputs. Each buffer
    counts once: a view is charged to the array that owns its memory.
    Parameters and other leaves are not activations (they live on without the
    graph), so their buffers, and views of them such as a transposed weight a
    matmul saved, are left out.
    """
    held: dict[int, Any] = {}
    leaves: set[int] = set()
    stack, seen = [output], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        fn = t.grad_fn
        if fn is None:
            leaves.add(id(_owner(t.data)))
            continue
        if t is not output:
            _hold(t.data, held)
        for array in fn.saved_arrays:
            _hold(array, held)
        stack.extend(x for x in (fn.inputs or ()) if x is not None)
    return sum(int(array.nbytes) for key, array in held.items() if key not in leaves)


def _hold(item: Any, held: dict[int, Any]) -> None:
    """Record the memory owner of an array, or of each array in a saved tuple (e.g. an index)."""
    if isinstance(item, tuple | list):
        for element in item:
            _hold(element, held)
    elif hasattr(item, "nbytes") and hasattr(item, "base"):
        owner = _owner(item)
        held[id(owner)] = owner


def _owner(array: Any) -> Any:
    """The array that owns the memory ``array`` looks at (itself unless it is a view)."""
    while getattr(array, "base", None) is not None and hasattr(array.base, "nbytes"):
        array = array.base
    return array
