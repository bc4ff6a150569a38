"""Array helpers shared by the ops' backward passes."""

from __future__ import annotations

from typing import Any


def sum_to(grad: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``grad`` down to ``shape``, undoing NumPy broadcasting.

    Broadcasting copies an input along new leading axes and along axes of
    size 1; the gradient of a copy is the sum of the gradients of its copies.
    """
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, size in enumerate(shape) if size == 1 and grad.shape[lead + i] != 1
    )
    out = grad.sum(axis=axes, keepdims=True) if axes else grad
    if lead:
        out = out.reshape(out.shape[lead:])
    return out


def normalize_dims(dim: int | tuple[int, ...] | list[int] | None, ndim: int) -> tuple[int, ...]:
    """``dim`` as a sorted tuple of non-negative axes; ``None`` means all axes."""
    if dim is None or (not isinstance(dim, int) and len(dim) == 0):  # an empty dim list means all, as in PyTorch
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if ndim == 0:
        if any(d not in (0, -1) for d in dims):
            raise IndexError(f"dim {dim} out of range for a 0-d tensor")
        return ()
    for d in dims:
        if not -ndim <= d < ndim:
            raise IndexError(f"dim {d} out of range for a tensor with {ndim} dimensions")
    normalized = tuple(sorted({d % ndim for d in dims}))
    if len(normalized) != len(dims):
        raise ValueError(f"dim {dim} repeats an axis")
    return normalized


def keepdim_shape(shape: tuple[int, ...], dims: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` with the reduced ``dims`` set to 1 (the keepdim=True result shape)."""
    return tuple(1 if i in dims else s for i, s in enumerate(shape))
