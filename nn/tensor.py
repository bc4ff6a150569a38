"""Tensor: an array plus the graph that made it, and reverse-mode autodiff over it.

A Tensor wraps one array of the active array module (``.data``). A Tensor made
by an op remembers that op in ``._ctx`` (a :class:`nn.function.Function`), which
remembers its input Tensors; following ``_ctx.inputs`` from a loss walks the
whole computation backwards. :meth:`Tensor.backward` does that walk once, in
reverse topological order, with an explicit stack instead of recursion.

Every method that computes something is a call into an op class in ``nn/ops``
(a few, such as ``max`` with indices and ``split``, combine some); the op's
forward and backward live together there. The ops never see a Tensor, only
arrays: this module registers the Tensor class with ``nn.function`` so that
``Function.apply`` can wrap its results.
"""

from __future__ import annotations

import math
import sys
from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nn import backend
from nn.backend import as_dtype, is_float, xp_of
from nn.function import (
    Function,
    FunctionHook,
    active_hooks,
    enable_grad,
    is_grad_enabled,
    no_grad,
    register_tensor_class,
    set_grad_enabled,
)
from nn.ops import elementwise
from nn.ops import matmul as matmul_ops
from nn.ops import reduce as reduce_ops
from nn.ops import shape as shape_ops
from nn.ops.util import normalize_dims

__all__ = [
    "Tensor", "tensor", "zeros", "ones", "full", "arange", "randn", "rand", "zeros_like", "ones_like",
    "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled",
]

Scalar = int | float | bool
MaxResult = namedtuple("MaxResult", ["values", "indices"])


class RemovableHandle:
    """Returned by :meth:`Tensor.register_hook`; ``.remove()`` takes the hook off."""

    def __init__(self, hooks: list, hook: Callable) -> None:
        self._hooks, self._hook = hooks, hook

    def remove(self) -> None:
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)


class Tensor:
    """An n-dimensional array that can record the ops applied to it.

    ``data``: the array (``numpy.ndarray`` or ``cupy.ndarray``).
    ``grad``: a Tensor with the accumulated gradient (leaves only), or None.
    ``requires_grad``: whether ops on this tensor are recorded for backward.
    """

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_hooks", "_grad_hooks", "_retains_grad", "name",
                 "__weakref__")
    # Makes ``ndarray + Tensor`` call Tensor.__radd__ instead of NumPy's broadcasting.
    __array_priority__ = 200

    def __init__(self, data: Any, requires_grad: bool = False, name: str | None = None) -> None:
        if isinstance(data, Tensor):
            data = data.data
        elif isinstance(data, np.generic):
            data = np.asarray(data)  # NumPy scalars become 0-d arrays of their own dtype
        elif not hasattr(data, "shape"):
            data = np.asarray(data)  # Python numbers and lists; their floats become float32, as in PyTorch
            if data.dtype == np.float64:
                data = data.astype(backend.DEFAULT_DTYPE)
        if requires_grad and not is_float(data.dtype):
            raise TypeError(f"only floating-point tensors can require gradients, not {data.dtype}")
        self.data = data
        self.grad: Tensor | None = None
        self.requires_grad = requires_grad
        self._ctx = None
        self._hooks: list[Callable] = []
        self._grad_hooks: list[Callable] | None = None  # post-accumulate hooks; leaves only, rarely used
        self._retains_grad = False
        self.name = name

    # ------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        """True for tensors not made by a recorded op (parameters, inputs)."""
        return self._ctx is None

    @property
    def grad_fn(self):
        """The op that produced this tensor, or None for a leaf."""
        return self._ctx

    def size(self, dim: int | None = None) -> tuple[int, ...] | int:
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        fn = f", grad_fn={self._ctx.name}" if self._ctx is not None else ""
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}{grad}{fn})"

    __hash__ = object.__hash__  # == is elementwise, so hash by identity as PyTorch does

    # ------------------------------------------------------------ conversion
    def numpy(self) -> np.ndarray:
        """The values as a host NumPy array (shares memory on the CPU)."""
        return backend.to_numpy(self.data)

    def item(self) -> Scalar:
        """The single value of a one-element tensor as a Python number."""
        if self.numel() != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has shape {self.shape}")
        return self.numpy().reshape(()).item()

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def __bool__(self) -> bool:
        return bool(self.item())

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def detach(self) -> Tensor:
        """The same data, cut from the graph (shares memory)."""
        return Tensor(self.data)

    def clone(self) -> Tensor:
        """A copy of the data that stays in the graph."""
        return shape_ops.Contiguous.apply(self, copy=True)

    def requires_grad_(self, mode: bool = True) -> Tensor:
        if mode and not is_float(self.dtype):
            raise TypeError(f"only floating-point tensors can require gradients, not {self.dtype}")
        if not self.is_leaf:
            raise RuntimeError("requires_grad_ can only change leaf tensors")
        self.requires_grad = mode
        return self

    def to(self, target: Any) -> Tensor:
        """``t.to("cuda")`` / ``t.to("cpu")`` moves data; ``t.to(nn.float64)`` casts. Both differentiable."""
        if isinstance(target, str) and (target == "cpu" or target.startswith("cuda")):
            return self if self.device == target.split(":")[0] else elementwise.ToDevice.apply(self, device=target)
        dtype = as_dtype(target)
        return self if dtype == self.dtype else elementwise.Cast.apply(self, dtype=dtype)

    # ------------------------------------------------------------ in-place initialisation
    # These write into ``.data`` outside the graph (parameter initialisation, optimizer updates),
    # keeping the array object, so views and flat buffers that share it stay valid.
    def normal_(self, mean: float = 0.0, std: float = 1.0) -> Tensor:
        """Fill with samples of N(mean, std^2) from the engine's generator."""
        sample = backend.rng().normal(mean, std, self.shape).astype(self.dtype)
        self.data[...] = backend.to_device(sample, self.device)
        return self

    def uniform_(self, low: float = 0.0, high: float = 1.0) -> Tensor:
        """Fill with samples of U(low, high) from the engine's generator."""
        sample = backend.rng().uniform(low, high, self.shape).astype(self.dtype)
        self.data[...] = backend.to_device(sample, self.device)
        return self

    def fill_(self, value: Scalar) -> Tensor:
        self.data.fill(value)
        return self

    def zero_(self) -> Tensor:
        return self.fill_(0)

    def copy_(self, source: Tensor | Any) -> Tensor:
        """Copy values (any device, cast to this dtype) into this tensor's array."""
        array = source.data if isinstance(source, Tensor) else source
        if tuple(array.shape) != self.shape:
            raise ValueError(f"copy_ of shape {tuple(array.shape)} into a tensor of shape {self.shape}")
        self.data[...] = backend.to_device(array, self.device)
        return self

    def float(self) -> Tensor:
        return self.to(np.float32)

    def double(self) -> Tensor:
        return self.to(np.float64)

    def half(self) -> Tensor:
        return self.to(np.float16)

    def _lift(self, value: Any) -> Tensor:
        """A constant operand: Python numbers take this tensor's dtype (so float32 stays float32)."""
        if isinstance(value, Tensor):
            return value
        xp = xp_of(self.data)
        if isinstance(value, np.generic) and not isinstance(value, np.bool_ | np.complexfloating):
            value = value.item()  # a NumPy scalar counts as a plain number, as PyTorch treats it
        if isinstance(value, bool | int | float):
            dtype = self.dtype if is_float(self.dtype) or isinstance(value, bool | int) else np.float32
            return Tensor(xp.asarray(value, dtype=dtype))
        return Tensor(xp.asarray(value))

    def _floated(self, dtype: Any = None) -> Tensor:
        """This tensor if it is floating point, else cast to ``dtype`` (float32 by default)."""
        return self if is_float(self.dtype) else elementwise.Cast.apply(self, dtype=dtype or backend.DEFAULT_DTYPE)

    def _pair(self, other: Any, reflected: bool = False, divide: bool = False) -> tuple[Tensor, Tensor]:
        """The operands of a binary op, in order, promoted the way PyTorch promotes them.

        NumPy widens an integer array meeting a float32 one to float64; PyTorch gives the
        float's type (float32 for a Python float), and so do we. True division of two
        integer tensors gives float32.
        """
        other = self._lift(other)
        a, b = (other, self) if reflected else (self, other)
        a_float, b_float = is_float(a.dtype), is_float(b.dtype)
        if a_float and not b_float:
            b = b._floated(a.dtype)
        elif b_float and not a_float:
            a = a._floated(b.dtype)
        elif divide and not a_float:
            a, b = a._floated(), b._floated()
        return a, b

    # ------------------------------------------------------------ autodiff
    def register_hook(self, hook: Callable[[Tensor], Tensor | None]) -> RemovableHandle:
        """Call ``hook(grad)`` when this tensor's gradient is complete; a returned Tensor replaces it."""
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that does not require grad")
        self._hooks.append(hook)
        return RemovableHandle(self._hooks, hook)

    def register_post_accumulate_grad_hook(self, hook: Callable[[Tensor], None]) -> RemovableHandle:
        """Call ``hook(self)`` once a backward pass has added its whole contribution to this leaf's ``.grad``.

        Data parallelism uses it: a gradient may be sent to the other processes
        the moment it is final, while backward goes on with earlier layers.
        """
        if not self.requires_grad or self._ctx is not None:
            raise RuntimeError("post-accumulate hooks are for leaf tensors that require grad")
        if self._grad_hooks is None:
            self._grad_hooks = []
        self._grad_hooks.append(hook)
        return RemovableHandle(self._grad_hooks, hook)

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after backward (leaves always keep it)."""
        self._retains_grad = True

    def backward(self, grad: Tensor | Any | None = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        The graph is visited once in reverse topological order (every op's
        backward runs after all ops that consumed its output), so each op sees
        its output's gradient complete. Gradients of intermediate tensors live
        only in a local table and are dropped as soon as they are used.
        Without ``retain_graph`` each op releases its saved arrays right after
        its backward, so memory falls as the walk proceeds. Active function
        hooks (:class:`nn.FunctionHook`) are called around each op's backward.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (made under no_grad?)")
        xp = xp_of(self.data)
        if grad is None:
            if self.numel() != 1:
                raise RuntimeError(f"grad can be implicitly created only for one-element outputs, not {self.shape}")
            seed = xp.ones_like(self.data)
        else:
            seed = xp.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if seed.shape != self.data.shape:
                raise RuntimeError(f"grad of shape {seed.shape} given for a tensor of shape {self.shape}")

        global _backward_depth, _backward_passes
        if _backward_depth == 0:
            _backward_passes += 1
        _backward_depth += 1
        try:
            self._backward(seed, retain_graph)
        finally:
            _backward_depth -= 1
            if _backward_depth == 0:  # the outermost pass (checkpointing nests backward inside backward)
                callbacks, _backward_callbacks[:] = list(_backward_callbacks), []
                if sys.exc_info()[0] is None:
                    for callback in callbacks:
                        callback()

    def _backward(self, seed: Any, retain_graph: bool) -> None:
        function_hooks = active_hooks()  # read once per pass: usually empty
        grads: dict[int, Any] = {id(self): seed}
        # Arrays a leaf may not keep as its .grad without copying: those another tensor already kept
        # in this pass, and the caller's own gradient array (the seed), which is not ours to hand out.
        stored: set[int] = {id(seed)}
        order = _topological_order(self)
        with no_grad():
            while order:
                t = order.pop()  # popping (not iterating) drops our reference: activations free as we go
                g = grads.pop(id(t), None)
                if g is None:  # no path from the root carried a gradient here
                    continue
                for hook in t._hooks:
                    replaced = hook(Tensor(g))
                    if replaced is not None:
                        g = replaced.data if isinstance(replaced, Tensor) else replaced
                fn = t._ctx
                if fn is None or t._retains_grad:
                    _accumulate_grad(t, g, stored)
                if fn is None:
                    if t._grad_hooks:
                        for hook in list(t._grad_hooks):
                            hook(t)
                    continue
                if function_hooks:
                    input_grads = _backward_with_hooks(fn, g, function_hooks)
                else:
                    input_grads = _as_tuple(fn.backward(g))
                for parent, needs, pg in zip(fn.inputs, fn.needs_input_grad, input_grads, strict=True):
                    if not needs or pg is None:
                        continue
                    if pg.shape != parent.data.shape:
                        raise RuntimeError(
                            f"{fn.name}.backward returned a gradient of shape {pg.shape} "
                            f"for an input of shape {parent.shape}")
                    if pg.dtype != parent.data.dtype:  # e.g. float32 * float64 promoted the output
                        pg = pg.astype(parent.data.dtype)
                    key = id(parent)
                    grads[key] = pg if key not in grads else grads[key] + pg
                if not retain_graph:
                    fn.release()

    # ------------------------------------------------------------ arithmetic
    def __add__(self, other):
        return elementwise.Add.apply(*self._pair(other))

    def __radd__(self, other):
        return elementwise.Add.apply(*self._pair(other, reflected=True))

    def __sub__(self, other):
        return elementwise.Sub.apply(*self._pair(other))

    def __rsub__(self, other):
        return elementwise.Sub.apply(*self._pair(other, reflected=True))

    def __mul__(self, other):
        return elementwise.Mul.apply(*self._pair(other))

    def __rmul__(self, other):
        return elementwise.Mul.apply(*self._pair(other, reflected=True))

    def __truediv__(self, other):
        return elementwise.Div.apply(*self._pair(other, divide=True))

    def __rtruediv__(self, other):
        return elementwise.Div.apply(*self._pair(other, reflected=True, divide=True))

    def __pow__(self, exponent):
        if isinstance(exponent, int | float):
            base = self._floated() if isinstance(exponent, float) else self
            return elementwise.PowScalar.apply(base, exponent=exponent)
        return elementwise.Pow.apply(*self._pair(exponent))

    def __rpow__(self, base):
        return elementwise.Pow.apply(*self._pair(base, reflected=True))

    def __neg__(self):
        return elementwise.Neg.apply(self)

    def __matmul__(self, other):
        return matmul_ops.MatMul.apply(*self._pair(other))

    def __rmatmul__(self, other):
        return matmul_ops.MatMul.apply(*self._pair(other, reflected=True))

    # Comparisons give boolean tensors outside the graph, as in PyTorch.
    def _compare(self, other, op) -> Tensor:
        other = other.data if isinstance(other, Tensor) else other
        return Tensor(op(self.data, other))

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    def __eq__(self, other):  # type: ignore[override]
        return self._compare(other, lambda a, b: a == b)

    def __ne__(self, other):  # type: ignore[override]
        return self._compare(other, lambda a, b: a != b)

    def __invert__(self):
        return Tensor(~self.data)

    def __and__(self, other):
        return self._compare(other, lambda a, b: a & b)

    def __or__(self, other):
        return self._compare(other, lambda a, b: a | b)

    # ------------------------------------------------------------ elementwise math
    def exp(self):
        return elementwise.Exp.apply(self._floated())

    def log(self):
        return elementwise.Log.apply(self._floated())

    def sqrt(self):
        return elementwise.Sqrt.apply(self._floated())

    def rsqrt(self):
        return elementwise.Rsqrt.apply(self._floated())

    def abs(self):
        return elementwise.Abs.apply(self)

    def tanh(self):
        return elementwise.Tanh.apply(self._floated())

    def sigmoid(self):
        return elementwise.Sigmoid.apply(self._floated())

    def relu(self):
        return elementwise.Relu.apply(self)

    def gelu(self, approximate: str = "none"):
        return elementwise.Gelu.apply(self._floated(), approximate=approximate)

    def silu(self):
        return elementwise.Silu.apply(self._floated())

    def pow(self, exponent):
        return self ** exponent

    def maximum(self, other):
        return elementwise.Maximum.apply(self, self._lift(other))

    def minimum(self, other):
        return elementwise.Minimum.apply(self, self._lift(other))

    def clamp(self, min: float | Tensor | None = None, max: float | Tensor | None = None):  # noqa: A002
        """Limit values to [min, max]; tensor bounds are constants here (no gradient flows to them)."""
        low, high = (b.data if isinstance(b, Tensor) else b for b in (min, max))
        return elementwise.Clamp.apply(self, low=low, high=high)

    clip = clamp

    def masked_fill(self, mask, value: float):
        mask = mask.data if isinstance(mask, Tensor) else mask
        return elementwise.MaskedFill.apply(self, mask=mask, value=value)

    # ------------------------------------------------------------ reductions
    def sum(self, dim=None, keepdim: bool = False):
        return reduce_ops.Sum.apply(self, dim=dim, keepdim=keepdim)

    def mean(self, dim=None, keepdim: bool = False):
        return reduce_ops.Mean.apply(self._floated(), dim=dim, keepdim=keepdim)

    def max(self, dim: int | None = None, keepdim: bool = False):
        """Largest value; with an int ``dim``, ``(values, indices)`` as in PyTorch."""
        return self._extremum(dim, keepdim, largest=True)

    def min(self, dim: int | None = None, keepdim: bool = False):
        """Smallest value; with an int ``dim``, ``(values, indices)`` as in PyTorch."""
        return self._extremum(dim, keepdim, largest=False)

    def _extremum(self, dim: int | None, keepdim: bool, largest: bool):
        """``max``/``min``: the values gather at the argmax, so the gradient goes to the chosen element only."""
        if dim is None:
            return reduce_ops.Amax.apply(self, dim=None, keepdim=False, largest=largest)
        if not isinstance(dim, int):
            raise TypeError("max/min take an int dim (use amax/amin to reduce several dims)")
        indices = self._arg_extremum(dim, keepdim=True, largest=largest)
        values = reduce_ops.TakeAlongDim.apply(self, index=indices.data, dim=dim)
        if not keepdim:
            values, indices = values.squeeze(dim), indices.squeeze(dim)
        return MaxResult(values, indices)

    def amax(self, dim=None, keepdim: bool = False):
        return reduce_ops.Amax.apply(self, dim=dim, keepdim=keepdim, largest=True)

    def amin(self, dim=None, keepdim: bool = False):
        return reduce_ops.Amax.apply(self, dim=dim, keepdim=keepdim, largest=False)

    def argmax(self, dim: int | None = None, keepdim: bool = False):
        return self._arg_extremum(dim, keepdim, largest=True)

    def argmin(self, dim: int | None = None, keepdim: bool = False):
        return self._arg_extremum(dim, keepdim, largest=False)

    def _arg_extremum(self, dim: int | None, keepdim: bool, largest: bool) -> Tensor:
        """Index of the largest/smallest value (the first one on ties); an int64 tensor outside the graph."""
        xp = xp_of(self.data)
        pick = xp.argmax if largest else xp.argmin
        if dim is None:
            return Tensor(xp.asarray(pick(self.data)))
        return Tensor(pick(self.data, axis=dim, keepdims=keepdim))

    def var(self, dim=None, correction: int = 1, keepdim: bool = False):
        return reduce_ops.Var.apply(self, dim=dim, correction=correction, keepdim=keepdim)

    def std(self, dim=None, correction: int = 1, keepdim: bool = False):
        return reduce_ops.Var.apply(self, dim=dim, correction=correction, keepdim=keepdim, root=True)

    def logsumexp(self, dim, keepdim: bool = False):
        return reduce_ops.LogSumExp.apply(self, dim=dim, keepdim=keepdim)

    # ------------------------------------------------------------ shape
    def reshape(self, *shape):
        return shape_ops.Reshape.apply(self, shape=_shape_arg(shape))

    view = reshape

    def permute(self, *dims):
        return shape_ops.Permute.apply(self, dims=_shape_arg(dims))

    def transpose(self, dim0: int, dim1: int):
        dims = list(range(self.ndim))
        dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
        return self.permute(dims)

    @property
    def T(self):
        """All dimensions reversed (the matrix transpose for 2-D)."""
        return self.permute(tuple(reversed(range(self.ndim))))

    def expand(self, *sizes):
        return shape_ops.Expand.apply(self, sizes=_shape_arg(sizes))

    def squeeze(self, dim=None):
        return shape_ops.Reshape.apply(self, shape=shape_ops.squeezed_shape(self.shape, dim))

    def unsqueeze(self, dim: int):
        if not -self.ndim - 1 <= dim <= self.ndim:
            raise IndexError(f"unsqueeze dim {dim} out of range for a tensor with {self.ndim} dimensions")
        shape = list(self.shape)
        shape.insert(dim if dim >= 0 else self.ndim + dim + 1, 1)
        return shape_ops.Reshape.apply(self, shape=tuple(shape))

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        if self.ndim == 0:
            return self.reshape(1)
        start, end = normalize_dims(start_dim, self.ndim)[0], normalize_dims(end_dim, self.ndim)[0]
        if start > end:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
        shape = self.shape[:start] + (-1,) + self.shape[end + 1:]
        return self.reshape(shape)

    def contiguous(self):
        return shape_ops.Contiguous.apply(self)

    def __getitem__(self, index):
        return shape_ops.GetItem.apply(self, index=_unwrap_index(index))

    def split(self, split_size_or_sections, dim: int = 0):
        """Pieces of ``split_size`` along ``dim`` (the last may be smaller), or of the listed sizes (slices)."""
        n = self.shape[dim]
        if isinstance(split_size_or_sections, int):
            step = split_size_or_sections
            if step <= 0:
                raise ValueError("split size must be positive")
            sizes = [min(step, n - start) for start in range(0, n, step)]
        else:
            sizes = list(split_size_or_sections)
            if sum(sizes) != n:
                raise ValueError(f"split sizes {sizes} do not add up to {n} (dim {dim})")
        pieces, start = [], 0
        lead = (slice(None),) * (dim % self.ndim)
        for size in sizes:
            pieces.append(self[lead + (slice(start, start + size),)])
            start += size
        return tuple(pieces)

    def chunk(self, chunks: int, dim: int = 0):
        """Split into ``chunks`` pieces of equal size (the last may be smaller), as torch.chunk."""
        return self.split(max(1, math.ceil(self.shape[dim] / chunks)), dim)

    def tril(self, diagonal: int = 0):
        return shape_ops.Triangle.apply(self, diagonal=diagonal, lower=True)

    def triu(self, diagonal: int = 0):
        return shape_ops.Triangle.apply(self, diagonal=diagonal, lower=False)

    def matmul(self, other):
        return self @ other


register_tensor_class(Tensor)  # Function.apply wraps its results in this class


def _shape_arg(args: tuple) -> tuple:
    """Accept both ``f(2, 3)`` and ``f((2, 3))``, as PyTorch does."""
    if len(args) == 1 and isinstance(args[0], Sequence):
        return tuple(args[0])
    return tuple(args)


def _unwrap_index(index: Any) -> Any:
    """Replace Tensors inside an index by their arrays, so NumPy indexing rules apply unchanged."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(_unwrap_index(i) for i in index)
    if isinstance(index, list):
        return [_unwrap_index(i) for i in index]
    return index


# Backward passes nest (activation checkpointing runs one inside another); callbacks queued
# during a pass run when the outermost one ends, and each outermost pass has a number.
_backward_depth = 0
_backward_passes = 0
_backward_callbacks: list[Callable[[], None]] = []


def queue_backward_callback(callback: Callable[[], None]) -> None:
    """Run ``callback()`` when the backward pass now running (the outermost one) has finished.

    Called from a hook; e.g. data parallelism waits there for its last gradient
    all-reduce. If backward raises, queued callbacks are dropped.
    """
    if _backward_depth == 0:
        raise RuntimeError("queue_backward_callback() outside a backward pass")
    _backward_callbacks.append(callback)


def backward_pass_id() -> int:
    """A number that changes with every outermost backward pass (hooks use it to see a new pass)."""
    return _backward_passes


def _as_tuple(input_grads: Any) -> tuple[Any, ...]:
    """A backward's result as a tuple (an op with one input may return its gradient bare)."""
    return input_grads if isinstance(input_grads, tuple) else (input_grads,)


def _backward_with_hooks(fn: Function, g: Any, hooks: tuple[FunctionHook, ...]) -> tuple[Any, ...]:
    """``fn.backward(g)`` bracketed by the hooks' backward callbacks, in nested order (see FunctionHook)."""
    for hook in hooks:
        hook.backward_preprocess(fn, g)
    input_grads = _as_tuple(fn.backward(g))
    for hook in reversed(hooks):
        hook.backward_postprocess(fn, g, input_grads)
    return input_grads


def _accumulate_grad(t: Tensor, g: Any, stored: set[int]) -> None:
    """Add ``g`` into ``t.grad``, making sure no two tensors ever share one gradient buffer.

    A backward may hand the same array to two inputs (Add does) or pass a
    view of its upstream gradient along (reshape does). Keeping such an array
    as ``.grad`` would let an in-place update of one gradient (accumulation,
    clipping, an optimizer) change another. So the first gradient is kept
    as it is only when it owns its memory, is writeable and was not already
    kept in this backward pass; otherwise it is copied.
    """
    if t.grad is None:
        private = g.flags.owndata and g.flags.writeable and id(g) not in stored
        t.grad = Tensor(g if private else g.copy())
        stored.add(id(t.grad.data))
    else:
        t.grad.data += g


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors that ``root`` depends on (through grad-requiring paths), inputs before outputs.

    An iterative depth-first search: a node is appended after all of its
    inputs, so the list is a topological order and its reverse is the order
    backward needs. No recursion, so a 10,000-op chain is fine.
    """
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        t, inputs_done = stack.pop()
        if inputs_done:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        fn = t._ctx
        if fn is None:
            continue
        if fn.released:
            raise RuntimeError(
                "trying to backward through the graph a second time (its saved arrays were freed); "
                "pass retain_graph=True to the first backward() if you need to")
        for parent in fn.inputs:
            if parent is not None and parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    return order


# ---------------------------------------------------------------- factories
def _float_dtype(dtype: Any) -> np.dtype:
    return backend.DEFAULT_DTYPE if dtype is None else as_dtype(dtype)


def tensor(data: Any, dtype: Any = None, requires_grad: bool = False, device: str = "cpu") -> Tensor:
    """A tensor from a list, scalar or array. Python floats become float32, as in PyTorch."""
    if isinstance(data, Tensor):
        data = data.data
    xp = backend.array_module(device)
    if dtype is not None:
        array = xp.asarray(data, dtype=as_dtype(dtype))
    else:
        array = xp.asarray(data)
        if array.dtype == np.float64 and not hasattr(data, "dtype"):
            array = array.astype(backend.DEFAULT_DTYPE)
    return Tensor(array, requires_grad=requires_grad)


def zeros(*shape, dtype: Any = None, requires_grad: bool = False, device: str = "cpu") -> Tensor:
    xp = backend.array_module(device)
    return Tensor(xp.zeros(_shape_arg(shape), dtype=_float_dtype(dtype)), requires_grad=requires_grad)


def ones(*shape, dtype: Any = None, requires_grad: bool = False, device: str = "cpu") -> Tensor:
    xp = backend.array_module(device)
    return Tensor(xp.ones(_shape_arg(shape), dtype=_float_dtype(dtype)), requires_grad=requires_grad)


def full(shape, fill_value: Scalar, dtype: Any = None, requires_grad: bool = False, device: str = "cpu") -> Tensor:
    xp = backend.array_module(device)
    return Tensor(xp.full(_shape_arg((shape,)), fill_value, dtype=_float_dtype(dtype)), requires_grad=requires_grad)


def zeros_like(t: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    dtype = t.dtype if dtype is None else as_dtype(dtype)
    return Tensor(xp_of(t.data).zeros(t.shape, dtype=dtype), requires_grad=requires_grad)


def ones_like(t: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    dtype = t.dtype if dtype is None else as_dtype(dtype)
    return Tensor(xp_of(t.data).ones(t.shape, dtype=dtype), requires_grad=requires_grad)


def arange(start: Scalar, end: Scalar | None = None, step: Scalar = 1, dtype: Any = None,
           requires_grad: bool = False, device: str = "cpu") -> Tensor:
    """``arange(5)`` or ``arange(2, 10, 2)``; integer arguments give int64, as in PyTorch."""
    if end is None:
        start, end = 0, start
    if dtype is None:
        all_ints = all(isinstance(v, int) for v in (start, end, step))
        dtype = np.int64 if all_ints else backend.DEFAULT_DTYPE
    xp = backend.array_module(device)
    return Tensor(xp.arange(start, end, step, dtype=as_dtype(dtype)), requires_grad=requires_grad)


def randn(*shape, dtype: Any = None, requires_grad: bool = False, device: str = "cpu") -> Tensor:
    """Standard normal samples from the engine's seedable generator (``nn.manual_seed``)."""
    dtype = _float_dtype(dtype)
    array = backend.rng().standard_normal(_shape_arg(shape)).astype(dtype)
    return Tensor(backend.to_device(array, device), requires_grad=requires_grad)


def rand(*shape, dtype: Any = None, requires_grad: bool = False, device: str = "cpu") -> Tensor:
    """Uniform samples in [0, 1) from the engine's seedable generator."""
    dtype = _float_dtype(dtype)
    array = backend.rng().random(_shape_arg(shape)).astype(dtype)
    return Tensor(backend.to_device(array, device), requires_grad=requires_grad)
