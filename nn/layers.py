"""The standard layers, each a Module around one function of ``nn.functional``.

Initialisation follows PyTorch's defaults so a layer built here and one built
with ``torch.nn`` have the same distributions; a model that wants another
scheme (the GPT's std 0.02) re-initialises its parameters afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from nn import functional as F
from nn.module import Module, Parameter
from nn.tensor import Tensor, ones, zeros

__all__ = ["Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "GELU", "Sequential", "ModuleList",
           "column_major_weights"]


class Linear(Module):
    """y = x W^T + b, with W (out_features, in_features).

    Both W and b start uniform in +-1/sqrt(in_features), PyTorch's default.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features) if in_features else 0.0
        self.weight = Parameter(zeros(out_features, in_features, dtype=dtype).uniform_(-bound, bound))
        self.bias = Parameter(zeros(out_features, dtype=dtype).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def column_major_weights(module: Module) -> Module:
    """Store ``module``'s 2-D parameters column-major (Fortran order) on the CPU, for fast small-batch inference.

    ``Linear`` computes ``x @ W.T`` with W (out, in) stored row-major, so W.T
    is a transposed view and OpenBLAS runs a "no-trans, trans" product. For a
    few rows (decoding, a short prompt) that path costs far more than the
    plain one: on the project's machine a (16, 256) x (256, 768) product took
    157 us as ``x @ W.T`` and 84 us with W.T row-major; with 2 rows, 111 us
    against 13 us (one row is fast either way: OpenBLAS uses its matrix-vector
    routine). Stored column-major, W.T *is* a row-major matrix, so the plain
    product runs. Values, shapes and results are unchanged; only the layout is.
    Training does not need this (with thousands of rows per product the
    difference is 1-2%, and backward's ``g @ W`` would take the slow path
    instead), so the server and the decoders call it, not the layers.
    Returns ``module``.
    """
    import numpy as np

    for parameter in module.parameters():
        if parameter.data.ndim == 2 and isinstance(parameter.data, np.ndarray):
            parameter.data = np.asfortranarray(parameter.data)
    return module


class Embedding(Module):
    """A lookup table: integer ids (any shape) -> rows of ``weight`` (num_embeddings, embedding_dim), init N(0, 1)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: Any = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(zeros(num_embeddings, embedding_dim, dtype=dtype).normal_())

    def forward(self, indices: Tensor | Any) -> Tensor:
        return F.embedding(indices, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


def _shape(normalized_shape: int | tuple[int, ...]) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


class LayerNorm(Module):
    """Normalise the last dims to zero mean, unit variance; then scale by ``weight`` (1s) and add ``bias`` (0s)."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5, bias: bool = True,
                 dtype: Any = None) -> None:
        super().__init__()
        self.normalized_shape, self.eps = _shape(normalized_shape), eps
        self.weight = Parameter(ones(self.normalized_shape, dtype=dtype))
        self.bias = Parameter(zeros(self.normalized_shape, dtype=dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class RMSNorm(Module):
    """Divide the last dims by their root mean square, then scale by ``weight`` (Llama's norm, no centring)."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float | None = None, dtype: Any = None) -> None:
        super().__init__()
        self.normalized_shape, self.eps = _shape(normalized_shape), eps
        self.weight = Parameter(ones(self.normalized_shape, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class Dropout(Module):
    """Zero each element with probability p in training (scaling the rest by 1/(1-p)); identity in eval."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability must be in [0, 1], not {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GELU(Module):
    """x * Phi(x), exact (``"none"``) or with the tanh approximation GPT-2 used (``"tanh"``)."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class ModuleList(Module):
    """A list of sub-modules registered under the names ``0``, ``1``, ...; iterable and indexable."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module: Module) -> ModuleList:
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied one after another: ``Sequential(a, b)(x) == b(a(x))``."""

    def __init__(self, *modules: Module) -> None:
        super().__init__(modules)

    def forward(self, x: Any) -> Any:
        for module in self:
            x = module(x)
        return x
