"""The op registry the per-op tests run over: every op once, with its PyTorch twin.

An ``OpSpec`` says how to call the op in our engine and in PyTorch, and how
hypothesis draws its inputs: shapes (with size-1 and broadcast dimensions),
``dim``/``keepdim`` choices, and values kept away from the op's kinks (relu
at 0, ties of max, clamp bounds) so finite differences are meaningful. Float
inputs are differentiated; integer and boolean inputs (targets, indices,
masks) are passed along as constants.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nn
import nn.functional as F
from nn.attention import apply_rope

MAX_SIDE = 4
MAX_DIMS = 4


@dataclass(frozen=True)
class OpSpec:
    name: str
    ours: Callable[..., Any]
    theirs: Callable[..., Any]
    draw: Callable[[Any, Any], tuple[list[np.ndarray], dict]]
    tolerance_f32: float = 1e-5

    def __repr__(self) -> str:
        return self.name


# ------------------------------------------------------------------ value strategies
def values(low: float = -2.0, high: float = 2.0, gap: float = 0.0) -> st.SearchStrategy[float]:
    """Floats in [low, high]; with ``gap`` > 0, never within ``gap`` of zero (kinks at 0)."""
    if gap:
        return st.floats(gap, high) | st.floats(low, -gap)
    return st.floats(low, high)


def grid(offset: float = 0.0) -> st.SearchStrategy[float]:
    """Values on a grid of step 0.04 (shifted by ``offset``): with unique=True, no two are closer than 0.04."""
    return st.integers(-50, 50).map(lambda i: i * 0.04 + offset)


def array(data, shape, dtype, elements=None, unique: bool = False, layout: str | None = None,
          offset: np.ndarray | float = 0.0) -> np.ndarray:
    """Draw an array (plus ``offset``) in one of three memory layouts: C-contiguous, strided view, transposed."""
    elements = values() if elements is None else elements
    a = np.asarray(data.draw(hnp.arrays(np.float64, shape, elements=elements, unique=unique)) + offset, dtype=dtype)
    if layout is None:
        layout = data.draw(st.sampled_from(["contiguous", "strided", "transposed"]), label="layout")
    if layout == "strided" and a.size > 1:
        padded = np.zeros(a.shape + (2,), dtype=dtype)
        padded[..., 0] = a
        return padded[..., 0]
    if layout == "transposed" and a.ndim > 1:
        return np.asfortranarray(a)
    return a


def shape(data, min_dims: int = 0, max_dims: int = MAX_DIMS, min_side: int = 1) -> tuple[int, ...]:
    return data.draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=MAX_SIDE),
                     label="shape")


def two_shapes(data) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=MAX_DIMS,
                                                         max_side=MAX_SIDE), label="shapes")
    return shapes.input_shapes


def dims(data, ndim: int, allow_none: bool = True, allow_tuple: bool = True) -> Any:
    """A ``dim`` argument: None, an int (maybe negative), or a tuple of distinct axes."""
    options = [st.integers(-ndim, ndim - 1)] if ndim else []
    if allow_none:
        options.append(st.none())
    if allow_tuple and ndim:
        options.append(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple))
    return data.draw(st.one_of(*options), label="dim")


# ------------------------------------------------------------------ draws
def unary(low=-2.0, high=2.0, gap=0.0):
    def draw(data, dtype):
        return [array(data, shape(data), dtype, values(low, high, gap))], {}
    return draw


def binary(y_low=-2.0, y_high=2.0, y_gap=0.0, x_low=-2.0, x_high=2.0):
    def draw(data, dtype):
        sx, sy = two_shapes(data)
        return [array(data, sx, dtype, values(x_low, x_high)), array(data, sy, dtype, values(y_low, y_high, y_gap))], {}
    return draw


def draw_extremum_pair(data, dtype):
    """Two arrays on interleaved grids (x even, y odd steps): never equal, so no ties."""
    sx, sy = two_shapes(data)
    return [array(data, sx, dtype, grid(0.0)), array(data, sy, dtype, grid(0.02))], {}


def draw_reduction(data, dtype):
    s = shape(data)
    return [array(data, s, dtype)], {"dim": dims(data, len(s)), "keepdim": data.draw(st.booleans())}


def draw_var(data, dtype):
    s = shape(data, min_dims=1, max_dims=3)
    dim = dims(data, len(s), allow_none=True)
    axes = range(len(s)) if dim is None else ([dim] if isinstance(dim, int) else dim)
    count = int(np.prod([s[a] for a in axes]))
    correction = data.draw(st.sampled_from([0, 1] if count > 1 else [0]))
    # Distinct values: std is sqrt(var), not differentiable where var is 0.
    x = array(data, s, dtype, grid(), unique=True)
    return [x], {"dim": dim, "keepdim": data.draw(st.booleans()), "correction": correction}


def draw_std(data, dtype):
    """As draw_var, but never a single element per output: std = sqrt(0) has no derivative there."""
    arrays, kwargs = draw_var(data, dtype)
    dim, shape_ = kwargs["dim"], arrays[0].shape
    axes = range(len(shape_)) if dim is None else ([dim] if isinstance(dim, int) else dim)
    assume(int(np.prod([shape_[a] for a in axes])) > 1)
    return arrays, kwargs


def draw_extremum_dim(data, dtype):
    s = shape(data, min_dims=1, max_dims=3)  # at most 64 elements: the unique grid has 101 values
    return [array(data, s, dtype, grid(), unique=True)], {"dim": data.draw(st.integers(-len(s), len(s) - 1)),
                                                          "keepdim": data.draw(st.booleans())}


def draw_amax(data, dtype):
    s = shape(data, max_dims=3)
    return [array(data, s, dtype, grid(), unique=True)], {"dim": dims(data, len(s)),
                                                          "keepdim": data.draw(st.booleans())}


def draw_logsumexp(data, dtype):
    s = shape(data, min_dims=1)
    return [array(data, s, dtype, values(-4, 4))], {"dim": dims(data, len(s), allow_none=False),
                                                    "keepdim": data.draw(st.booleans())}


def draw_clamp(data, dtype):
    low = data.draw(st.sampled_from([None, -0.5]))
    high = data.draw(st.sampled_from([None, 0.5] if low is not None else [0.5]))
    return [array(data, shape(data), dtype, grid(0.01))], {"min": low, "max": high}


def draw_where(data, dtype):
    sx, sy = two_shapes(data)
    scond = data.draw(hnp.broadcastable_shapes(np.broadcast_shapes(sx, sy), max_side=MAX_SIDE, max_dims=MAX_DIMS))
    cond = data.draw(hnp.arrays(np.bool_, scond))
    return [cond, array(data, sx, dtype), array(data, sy, dtype)], {}


def draw_masked_fill(data, dtype):
    s = shape(data)
    # A mask that broadcasts *to* x: each dim is x's or 1, and leading dims may be dropped.
    smask = tuple(n if data.draw(st.booleans()) else 1 for n in s)[data.draw(st.integers(0, len(s))):]
    return [array(data, s, dtype), data.draw(hnp.arrays(np.bool_, smask))], {"value": -1.5}


def draw_reshape(data, dtype):
    s = shape(data)
    size = int(np.prod(s))
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    first = data.draw(st.sampled_from(divisors))
    return [array(data, s, dtype)], {"shape": data.draw(st.sampled_from([(first, -1), (-1,), (size // first, first)]))}


def draw_permute(data, dtype):
    s = shape(data)
    return [array(data, s, dtype)], {"dims": tuple(data.draw(st.permutations(range(len(s)))))}


def draw_transpose(data, dtype):
    s = shape(data, min_dims=1)
    return [array(data, s, dtype)], {"dim0": data.draw(st.integers(-len(s), len(s) - 1)),
                                     "dim1": data.draw(st.integers(-len(s), len(s) - 1))}


def draw_expand(data, dtype):
    s = shape(data, max_dims=3)
    target = data.draw(hnp.broadcastable_shapes(s, min_dims=len(s), max_dims=len(s) + 1, max_side=MAX_SIDE))
    target = tuple(np.broadcast_shapes(s, target))
    # Use -1 ("keep") for some of the existing dims, as PyTorch allows.
    lead = len(target) - len(s)
    sizes = tuple(-1 if i >= lead and data.draw(st.booleans()) else n for i, n in enumerate(target))
    return [array(data, s, dtype)], {"sizes": sizes}


def draw_squeeze(data, dtype):
    s = data.draw(hnp.array_shapes(min_dims=0, max_dims=MAX_DIMS, min_side=1, max_side=2))
    return [array(data, s, dtype)], {"dim": dims(data, len(s), allow_tuple=True)}


def draw_unsqueeze(data, dtype):
    s = shape(data)
    return [array(data, s, dtype)], {"dim": data.draw(st.integers(-len(s) - 1, len(s)))}


def draw_flatten(data, dtype):
    s = shape(data, min_dims=1)
    start = data.draw(st.integers(0, len(s) - 1))
    return [array(data, s, dtype)], {"start_dim": start, "end_dim": data.draw(st.integers(start, len(s) - 1))}


def draw_basic_index(data, dtype):
    s = shape(data, min_dims=1)
    parts = []
    for n in s:
        parts.append(data.draw(st.one_of(
            st.integers(-n, n - 1),
            st.builds(slice, st.integers(-n, n) | st.none(), st.integers(-n, n) | st.none(),
                      st.integers(1, 3) | st.integers(-2, -1) | st.none()),
        )))
    if data.draw(st.booleans()):
        parts.insert(data.draw(st.integers(0, len(parts))), None)
    if len(parts) > 1 and data.draw(st.booleans()):
        parts = [Ellipsis] + parts[1:]
    return [array(data, s, dtype)], {"index": tuple(parts)}


def draw_int_array_index(data, dtype):
    s = shape(data, min_dims=1)
    index = data.draw(hnp.arrays(np.int64, data.draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=5)),
                                 elements=st.integers(-s[0], s[0] - 1)))
    return [array(data, s, dtype), index], {}


def draw_bool_mask_index(data, dtype):
    s = shape(data, min_dims=1)
    k = data.draw(st.integers(1, len(s)))
    return [array(data, s, dtype), data.draw(hnp.arrays(np.bool_, s[:k]))], {}


def draw_cat(data, dtype):
    s = shape(data, min_dims=1)
    dim = data.draw(st.integers(-len(s), len(s) - 1))
    count = data.draw(st.integers(1, 3))
    arrays = []
    for _ in range(count):
        piece = list(s)
        piece[dim] = data.draw(st.integers(1, MAX_SIDE))
        arrays.append(array(data, tuple(piece), dtype))
    return arrays, {"dim": dim}


def draw_stack(data, dtype):
    s = shape(data)
    count = data.draw(st.integers(1, 3))
    return [array(data, s, dtype) for _ in range(count)], {"dim": data.draw(st.integers(-len(s) - 1, len(s)))}


def draw_split(data, dtype):
    s = shape(data, min_dims=1)
    dim = data.draw(st.integers(0, len(s) - 1))
    n = s[dim]
    if data.draw(st.booleans()):
        sizes = data.draw(st.integers(1, n))
    else:
        cut = sorted(data.draw(st.lists(st.integers(0, n), max_size=3)))
        bounds = [0] + cut + [n]
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return [array(data, s, dtype)], {"split": sizes, "dim": dim}


def draw_chunk(data, dtype):
    s = shape(data, min_dims=1)
    return [array(data, s, dtype)], {"chunks": data.draw(st.integers(1, 4)),
                                     "dim": data.draw(st.integers(0, len(s) - 1))}


def draw_triangle(data, dtype):
    s = shape(data, min_dims=2)
    return [array(data, s, dtype)], {"diagonal": data.draw(st.integers(-2, 2))}


def draw_matmul(data, dtype):
    signature = data.draw(st.sampled_from(["(n),(n)->()", "(m,n),(n)->(m)", "(n),(n,p)->(p)",
                                           "(m,n),(n,p)->(m,p)"]))
    shapes = data.draw(hnp.mutually_broadcastable_shapes(signature=signature, max_dims=MAX_DIMS - 2,
                                                         max_side=MAX_SIDE))
    a_shape, b_shape = shapes.input_shapes
    # A 1-D operand of matmul is a plain vector: it has no batch dimensions of its own.
    if signature.startswith("(n),"):
        a_shape = a_shape[-1:]
    if signature.split(",")[-1].startswith("(n)->"):
        b_shape = b_shape[-1:]
    return [array(data, a_shape, dtype), array(data, b_shape, dtype)], {}


def draw_linear(data, dtype, bias: bool = True):
    batch = shape(data, min_dims=0, max_dims=2)
    k, n = data.draw(st.integers(1, MAX_SIDE)), data.draw(st.integers(1, MAX_SIDE))
    arrays = [array(data, batch + (k,), dtype), array(data, (n, k), dtype)]
    return arrays + ([array(data, (n,), dtype)] if bias else []), {}


def draw_softmax(data, dtype):
    s = shape(data, min_dims=1)
    return [array(data, s, dtype, values(-3, 3))], {"dim": data.draw(st.integers(-len(s), len(s) - 1))}


def draw_cross_entropy(data, dtype):
    n, c = data.draw(st.integers(1, 5)), data.draw(st.integers(2, 6))
    extra = data.draw(st.sampled_from([(), (), (3,)]))
    logits = array(data, (n, c) + extra, dtype, values(-3, 3))
    targets = data.draw(hnp.arrays(np.int64, (n,) + extra, elements=st.integers(0, c - 1)))
    if data.draw(st.booleans()) and targets.size > 1:
        targets.reshape(-1)[0] = -100  # at least one ignored row; never all of them
    return [logits, targets], {"reduction": data.draw(st.sampled_from(["mean", "sum", "none"])),
                               "label_smoothing": data.draw(st.sampled_from([0.0, 0.1]))}


def draw_layer_norm(data, dtype):
    s = shape(data, min_dims=1)
    k = data.draw(st.integers(1, min(2, len(s))))
    normalized = s[len(s) - k:]
    affine = data.draw(st.booleans())
    # A constant row has variance 0, where 1/sqrt(eps) magnifies float32 rounding of the mean ~300-fold:
    # a fixed ramp keeps every row's spread well away from 0 (rows of one element still normalise to 0).
    ramp = np.linspace(-0.5, 0.5, int(np.prod(normalized))).reshape(normalized)
    x = array(data, s, dtype, values(-3, 3), offset=ramp)
    inputs = [x]
    if affine:
        inputs += [array(data, normalized, dtype, values(0.5, 1.5)), array(data, normalized, dtype)]
    return inputs, {"normalized_shape": normalized}


def draw_rms_norm(data, dtype):
    s = shape(data, min_dims=1)
    normalized = s[-1:]
    x = array(data, s, dtype, values(-3, 3, gap=0.2))
    return [x, array(data, normalized, dtype, values(0.5, 1.5))], {"normalized_shape": normalized, "eps": 1e-6}


def draw_embedding(data, dtype):
    vocab, width = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 4))
    ids = data.draw(hnp.arrays(np.int64, data.draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=5)),
                               elements=st.integers(0, vocab - 1)))
    return [array(data, (vocab, width), dtype), ids], {}


def draw_attention(data, dtype):
    batch = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=2))
    length, source = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    e, ev = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    q = array(data, batch + (length, e), dtype)
    k = array(data, batch + (source, e), dtype)
    v = array(data, batch + (source, ev), dtype)
    kind = data.draw(st.sampled_from(["none", "causal", "bool", "float"]))
    kwargs: dict = {"scale": data.draw(st.sampled_from([None, 0.7]))}
    if kind == "causal":
        kwargs["is_causal"] = True
        if source < length:  # top-left causal rows past the keys would have nothing to attend to
            kwargs["is_causal"] = False
    elif kind == "bool":
        mask = data.draw(hnp.arrays(np.bool_, (length, source)))
        mask[:, 0] = True  # every query attends to something
        kwargs["attn_mask"] = mask
    elif kind == "float":
        kwargs["attn_mask"] = data.draw(hnp.arrays(np.float64, (length, source), elements=values(-1, 1))).astype(dtype)
    return [q, k, v], kwargs


def draw_rotary(data, dtype):
    """x (..., T, d) with d even, and cos, sin broadcasting against it (a table (T, d), or per row (B, 1, T, d))."""
    lead = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=2))
    t, d = data.draw(st.integers(1, 3)), 2 * data.draw(st.integers(1, 3))
    x = array(data, lead + (t, d), dtype)
    table = data.draw(st.sampled_from(["table", "per_row"]))
    table_shape = (t, d) if table == "table" or not lead else lead[:1] + (1,) * (len(lead) - 1) + (t, d)
    return [x, array(data, table_shape, dtype), array(data, table_shape, dtype)], {}


def _rotary_theirs(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


# ------------------------------------------------------------------ the registry
def _split_ours(x, split, dim):
    return nn.cat(list(x.split(split, dim)), dim=dim) * nn.tensor(2.0, dtype=x.dtype)


def _split_theirs(x, split, dim):
    return torch.cat(list(torch.split(x, split, dim)), dim=dim) * 2.0


def _chunk_ours(x, chunks, dim):
    pieces = x.chunk(chunks, dim)
    return nn.cat([p * float(i + 1) for i, p in enumerate(pieces)], dim=dim)


def _chunk_theirs(x, chunks, dim):
    pieces = torch.chunk(x, chunks, dim)
    return torch.cat([p * float(i + 1) for i, p in enumerate(pieces)], dim=dim)


def _basic_index_theirs(x, index):
    """PyTorch has no negative slice steps, so gather the same elements by their flat positions instead."""
    positions = np.arange(x.numel()).reshape(tuple(x.shape))[index]
    return x.reshape(-1)[torch.from_numpy(np.array(positions))]


def _masked_fill_theirs(x, mask, value):
    return x.masked_fill(mask, value)


def _attention_theirs(q, k, v, attn_mask=None, is_causal=False, scale=None):
    return TF.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)


def _cross_entropy_theirs(logits, targets, reduction, label_smoothing):
    return TF.cross_entropy(logits, targets, reduction=reduction, label_smoothing=label_smoothing)


def _layer_norm_ours(x, w=None, b=None, normalized_shape=()):
    return F.layer_norm(x, normalized_shape, w, b)


def _layer_norm_theirs(x, w=None, b=None, normalized_shape=()):
    return TF.layer_norm(x, normalized_shape, w, b)


SPECS: list[OpSpec] = [
    # elementwise
    OpSpec("add", lambda x, y: x + y, lambda x, y: x + y, binary()),
    OpSpec("sub", lambda x, y: x - y, lambda x, y: x - y, binary()),
    OpSpec("mul", lambda x, y: x * y, lambda x, y: x * y, binary()),
    OpSpec("div", lambda x, y: x / y, lambda x, y: x / y, binary(y_low=-2, y_high=2, y_gap=0.5)),
    OpSpec("neg", lambda x: -x, lambda x: -x, unary()),
    OpSpec("pow", lambda x, y: x ** y, lambda x, y: x ** y, binary(x_low=0.5, x_high=2.0)),
    OpSpec("pow_scalar", lambda x: x ** 3 + x ** -1.5 * 0.1 + x ** 0.5,
           lambda x: x ** 3 + x ** -1.5 * 0.1 + x ** 0.5, unary(0.3, 2.0)),
    OpSpec("rpow", lambda x: 2.0 ** x, lambda x: 2.0 ** x, unary()),
    OpSpec("scalar_arith", lambda x: (3 - x) * 2 / (x + 5) + 1 / (x - 4),
           lambda x: (3 - x) * 2 / (x + 5) + 1 / (x - 4), unary()),
    OpSpec("exp", lambda x: x.exp(), torch.exp, unary(-3, 3)),
    OpSpec("log", lambda x: x.log(), torch.log, unary(0.2, 3)),
    OpSpec("sqrt", lambda x: x.sqrt(), torch.sqrt, unary(0.2, 3)),
    OpSpec("rsqrt", lambda x: x.rsqrt(), torch.rsqrt, unary(0.2, 3)),
    OpSpec("abs", lambda x: x.abs(), torch.abs, unary(gap=0.05)),
    OpSpec("tanh", lambda x: x.tanh(), torch.tanh, unary(-3, 3)),
    OpSpec("sigmoid", lambda x: x.sigmoid(), torch.sigmoid, unary(-6, 6)),
    OpSpec("relu", lambda x: x.relu(), torch.relu, unary(gap=0.05)),
    OpSpec("gelu", lambda x: F.gelu(x), lambda x: TF.gelu(x), unary(-4, 4)),
    OpSpec("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), lambda x: TF.gelu(x, approximate="tanh"),
           unary(-4, 4)),
    OpSpec("silu", lambda x: F.silu(x), TF.silu, unary(-4, 4)),
    OpSpec("maximum", lambda x, y: x.maximum(y), torch.maximum, draw_extremum_pair),
    OpSpec("minimum", lambda x, y: x.minimum(y), torch.minimum, draw_extremum_pair),
    OpSpec("clamp", lambda x, min, max: x.clamp(min, max), lambda x, min, max: x.clamp(min, max), draw_clamp),
    OpSpec("where", lambda c, x, y: nn.where(c, x, y), torch.where, draw_where),
    OpSpec("masked_fill", lambda x, m, value: x.masked_fill(m, value), _masked_fill_theirs, draw_masked_fill),
    OpSpec("cast_f64", lambda x: x.double() * 2, lambda x: x.double() * 2, unary()),
    # reductions
    OpSpec("sum", lambda x, dim, keepdim: x.sum(dim, keepdim), lambda x, dim, keepdim: x.sum(dim, keepdim),
           draw_reduction),
    OpSpec("mean", lambda x, dim, keepdim: x.mean(dim, keepdim), lambda x, dim, keepdim: x.mean(dim, keepdim),
           draw_reduction),
    OpSpec("max_dim", lambda x, dim, keepdim: x.max(dim, keepdim).values,
           lambda x, dim, keepdim: x.max(dim, keepdim).values, draw_extremum_dim),
    OpSpec("min_dim", lambda x, dim, keepdim: x.min(dim, keepdim).values,
           lambda x, dim, keepdim: x.min(dim, keepdim).values, draw_extremum_dim),
    OpSpec("max_all", lambda x: x.max() * x.min(), lambda x: x.max() * x.min(),
           lambda data, dtype: ([array(data, shape(data, max_dims=3), dtype, grid(), unique=True)], {})),
    OpSpec("amax", lambda x, dim, keepdim: x.amax(dim, keepdim),
           lambda x, dim, keepdim: x.amax(() if dim is None else dim, keepdim), draw_amax),
    OpSpec("amin", lambda x, dim, keepdim: x.amin(dim, keepdim),
           lambda x, dim, keepdim: x.amin(() if dim is None else dim, keepdim), draw_amax),
    OpSpec("var", lambda x, dim, keepdim, correction: x.var(dim, correction=correction, keepdim=keepdim),
           lambda x, dim, keepdim, correction: x.var(dim, correction=correction, keepdim=keepdim), draw_var),
    OpSpec("std", lambda x, dim, keepdim, correction: x.std(dim, correction=correction, keepdim=keepdim) * 1.0,
           lambda x, dim, keepdim, correction: x.std(dim, correction=correction, keepdim=keepdim), draw_std),
    OpSpec("logsumexp", lambda x, dim, keepdim: x.logsumexp(dim, keepdim),
           lambda x, dim, keepdim: torch.logsumexp(x, dim, keepdim), draw_logsumexp),
    # shape
    OpSpec("reshape", lambda x, shape: x.reshape(shape), lambda x, shape: x.reshape(shape), draw_reshape),
    OpSpec("view", lambda x, shape: x.contiguous().view(*shape), lambda x, shape: x.contiguous().view(*shape),
           draw_reshape),
    OpSpec("permute", lambda x, dims: x.permute(dims), lambda x, dims: x.permute(dims), draw_permute),
    OpSpec("transpose", lambda x, dim0, dim1: x.transpose(dim0, dim1),
           lambda x, dim0, dim1: x.transpose(dim0, dim1), draw_transpose),
    OpSpec("T", lambda x: x.T, lambda x: x.permute(tuple(reversed(range(x.ndim)))), unary()),
    OpSpec("expand", lambda x, sizes: x.expand(sizes), lambda x, sizes: x.expand(sizes), draw_expand),
    OpSpec("squeeze", lambda x, dim: x.squeeze(dim), lambda x, dim: x.squeeze() if dim is None else x.squeeze(dim),
           draw_squeeze),
    OpSpec("unsqueeze", lambda x, dim: x.unsqueeze(dim), lambda x, dim: x.unsqueeze(dim), draw_unsqueeze),
    OpSpec("flatten", lambda x, start_dim, end_dim: x.flatten(start_dim, end_dim),
           lambda x, start_dim, end_dim: x.flatten(start_dim, end_dim), draw_flatten),
    OpSpec("contiguous", lambda x: x.contiguous() * 1.0, lambda x: x.contiguous() * 1.0, unary()),
    OpSpec("getitem_basic", lambda x, index: x[index], _basic_index_theirs, draw_basic_index),
    OpSpec("getitem_int_array", lambda x, i: x[i], lambda x, i: x[i], draw_int_array_index),
    OpSpec("getitem_bool_mask", lambda x, m: x[m], lambda x, m: x[m], draw_bool_mask_index),
    OpSpec("cat", lambda *xs, dim: nn.cat(xs, dim), lambda *xs, dim: torch.cat(xs, dim), draw_cat),
    OpSpec("stack", lambda *xs, dim: nn.stack(xs, dim), lambda *xs, dim: torch.stack(xs, dim), draw_stack),
    OpSpec("split", _split_ours, _split_theirs, draw_split),
    OpSpec("chunk", _chunk_ours, _chunk_theirs, draw_chunk),
    OpSpec("tril", lambda x, diagonal: x.tril(diagonal), lambda x, diagonal: x.tril(diagonal), draw_triangle),
    OpSpec("triu", lambda x, diagonal: x.triu(diagonal), lambda x, diagonal: x.triu(diagonal), draw_triangle),
    # matmul
    OpSpec("matmul", lambda a, b: a @ b, lambda a, b: a @ b, draw_matmul),
    OpSpec("linear", F.linear, TF.linear, draw_linear),
    OpSpec("linear_no_bias", F.linear, TF.linear, lambda data, dtype: draw_linear(data, dtype, bias=False)),
    # fused nn ops
    OpSpec("softmax", lambda x, dim: F.softmax(x, dim), lambda x, dim: TF.softmax(x, dim), draw_softmax),
    OpSpec("log_softmax", lambda x, dim: F.log_softmax(x, dim), lambda x, dim: TF.log_softmax(x, dim),
           draw_softmax),
    OpSpec("cross_entropy", lambda x, t, reduction, label_smoothing: F.cross_entropy(
        x, t, reduction=reduction, label_smoothing=label_smoothing), _cross_entropy_theirs, draw_cross_entropy),
    OpSpec("layer_norm", _layer_norm_ours, _layer_norm_theirs, draw_layer_norm, tolerance_f32=1e-4),
    OpSpec("rms_norm", lambda x, w, normalized_shape, eps: F.rms_norm(x, normalized_shape, w, eps),
           lambda x, w, normalized_shape, eps: TF.rms_norm(x, normalized_shape, w, eps), draw_rms_norm,
           tolerance_f32=1e-4),
    OpSpec("rotary", lambda x, cos, sin: apply_rope(x, cos, sin), _rotary_theirs, draw_rotary),
    OpSpec("embedding", lambda w, ids: F.embedding(ids, w), lambda w, ids: TF.embedding(ids, w), draw_embedding),
    OpSpec("scaled_dot_product_attention", lambda q, k, v, **kw: F.scaled_dot_product_attention(q, k, v, **kw),
           _attention_theirs, draw_attention),
]

SPECS_BY_NAME = {spec.name: spec for spec in SPECS}
