"""Shape ops: they move or select values without arithmetic.

Their backward passes move the gradient back the same way: reshape undoes
reshape, the inverse permutation undoes a permute, indexing scatters into
zeros, concatenation splits. (``split`` and ``chunk`` are slicing, in
``Tensor``.)
"""

from __future__ import annotations

from typing import Any

from nn.backend import xp_of
from nn.function import Function
from nn.ops.util import normalize_dims, sum_to


class Reshape(Function):
    """Same values, new shape (``view`` is the same op: there are no strides to share here)."""

    def forward(self, x, shape: tuple = ()):
        self.input_shape = x.shape
        return x.reshape(shape)

    def backward(self, g):
        return g.reshape(self.input_shape)


class Permute(Function):
    """Reorder dimensions; the backward applies the inverse permutation."""

    def forward(self, x, dims: tuple = ()):
        if len(dims) != x.ndim or sorted(d % x.ndim for d in dims) != list(range(x.ndim)):
            raise ValueError(f"permute dims {dims} are not a permutation of {x.ndim} dimensions")
        self.dims = tuple(d % x.ndim for d in dims)
        return x.transpose(self.dims)

    def backward(self, g):
        inverse = [0] * len(self.dims)
        for i, d in enumerate(self.dims):
            inverse[d] = i
        return g.transpose(inverse)


class Expand(Function):
    """Broadcast to a larger shape (-1 keeps a size); the backward sums over the copies."""

    def forward(self, x, sizes: tuple = ()):
        lead = len(sizes) - x.ndim
        if lead < 0:
            raise ValueError(f"expand to {sizes} has fewer dimensions than the tensor {x.shape}")
        if any(s == -1 for s in sizes[:lead]):
            raise ValueError(f"expand to {sizes}: -1 is only allowed for existing dimensions")
        shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
        self.input_shape = x.shape
        return xp_of(x).broadcast_to(x, shape)

    def backward(self, g):
        return sum_to(g, self.input_shape)


class Contiguous(Function):
    """A C-contiguous array with the same values (a copy if asked, or if the input is a strided view)."""

    def forward(self, x, copy: bool = False):
        return x.copy() if copy or not x.flags.c_contiguous else x

    def backward(self, g):
        return g


def _is_basic(index: Any) -> bool:
    """True if the index uses only ints, slices, None and Ellipsis (no element can be picked twice)."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, int | slice) or p is None or p is Ellipsis for p in parts)


class GetItem(Function):
    """``x[index]`` with NumPy semantics: ints, slices with steps, None, Ellipsis, integer and boolean arrays.

    Backward scatters the gradient into zeros. With integer arrays an element
    may be picked more than once, so it must add (``add.at``), not assign.
    """

    def forward(self, x, index: Any = None):
        self.input_shape = x.shape
        self.save_for_backward(index)  # may hold integer or boolean index arrays
        return x[index]

    def backward(self, g):
        xp = xp_of(g)
        gx = xp.zeros(self.input_shape, dtype=g.dtype)
        (index,) = self.saved_arrays
        if _is_basic(index):
            gx[index] = g
        else:
            xp.add.at(gx, index, g)
        return gx


class Cat(Function):
    """Concatenate along ``dim``; the backward splits the gradient at the same offsets."""

    def forward(self, *xs, dim: int = 0):
        if xs[0].ndim == 0:
            raise ValueError("zero-dimensional tensors cannot be concatenated (use stack)")
        (self.dim,) = normalize_dims(dim, xs[0].ndim)
        self.sizes = [x.shape[self.dim] for x in xs]
        return xp_of(xs[0]).concatenate(xs, axis=self.dim)

    def backward(self, g):
        grads, start = [], 0
        for size, needs in zip(self.sizes, self.needs_input_grad, strict=True):
            index = (slice(None),) * self.dim + (slice(start, start + size),)
            grads.append(g[index] if needs else None)
            start += size
        return tuple(grads)


class Stack(Function):
    """Join arrays of one shape along a new dimension ``dim``; the backward takes each one's slice back."""

    def forward(self, *xs, dim: int = 0):
        (self.dim,) = normalize_dims(dim, xs[0].ndim + 1)
        return xp_of(xs[0]).stack(xs, axis=self.dim)

    def backward(self, g):
        lead = (slice(None),) * self.dim
        return tuple(g[lead + (i,)] if needs else None for i, needs in enumerate(self.needs_input_grad))


class Triangle(Function):
    """Lower (tril) or upper (triu) triangle of the last two dims; zeros elsewhere, in value and gradient."""

    def forward(self, x, diagonal: int = 0, lower: bool = True):
        if x.ndim < 2:
            raise ValueError(f"tril/triu need at least 2 dimensions, got shape {x.shape}")
        xp = xp_of(x)
        self.keep = xp.tril if lower else xp.triu
        self.diagonal = diagonal
        return self.keep(x, diagonal)

    def backward(self, g):
        return self.keep(g, self.diagonal)


def squeezed_shape(shape: tuple[int, ...], dim: Any) -> tuple[int, ...]:
    """``shape`` without the size-1 dims in ``dim`` (all size-1 dims if None); others are left alone."""
    if dim == ():
        return shape
    dims = normalize_dims(dim, len(shape)) if dim is not None else tuple(range(len(shape)))
    return tuple(s for i, s in enumerate(shape) if not (i in dims and s == 1))


def cat(tensors, dim: int = 0):
    """Concatenate tensors along an existing dimension."""
    return Cat.apply(*tensors, dim=dim)


def stack(tensors, dim: int = 0):
    """Join tensors of one shape along a new dimension."""
    return Stack.apply(*tensors, dim=dim)
