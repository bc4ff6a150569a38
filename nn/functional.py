"""The user-facing functions, named and shaped as ``torch.nn.functional``.

Each is a thin wrapper that checks arguments and calls one Function from
``nn/ops``; the math and its derivative live there.
"""

from __future__ import annotations

from typing import Any

from nn.ops import elementwise, matmul
from nn.ops import nn as nn_ops
from nn.tensor import Tensor


def _array(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def _shape(normalized_shape: int | tuple[int, ...]) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


def relu(x: Tensor) -> Tensor:
    return x.relu()


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU, exact (``"none"``) or with GPT-2's tanh approximation (``"tanh"``)."""
    return x.gelu(approximate=approximate)


def silu(x: Tensor) -> Tensor:
    return x.silu()


def sigmoid(x: Tensor) -> Tensor:
    return x.sigmoid()


def tanh(x: Tensor) -> Tensor:
    return x.tanh()


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``dim``, computed stably (max subtracted first)."""
    return nn_ops.Softmax.apply(x, dim=dim)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    return nn_ops.LogSoftmax.apply(x, dim=dim)


def cross_entropy(logits: Tensor, targets: Tensor | Any, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of class-index ``targets`` under ``softmax(logits)``.

    logits: (N, C), (C,) or (N, C, d1, ...); targets: (N,), () or (N, d1, ...) integers.
    """
    return nn_ops.CrossEntropy.apply(logits, targets=_array(targets), ignore_index=ignore_index,
                                     reduction=reduction, label_smoothing=label_smoothing)


def layer_norm(x: Tensor, normalized_shape: int | tuple[int, ...], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise the last dims to zero mean and unit variance, then scale and shift."""
    return nn_ops.LayerNorm.apply(x, weight, bias, normalized_shape=_shape(normalized_shape), eps=eps)


def rms_norm(x: Tensor, normalized_shape: int | tuple[int, ...], weight: Tensor | None = None,
             eps: float | None = None) -> Tensor:
    """Divide the last dims by their root mean square, then scale (eps defaults to the dtype's epsilon)."""
    return nn_ops.RMSNorm.apply(x, weight, normalized_shape=_shape(normalized_shape), eps=eps)


def embedding(indices: Tensor | Any, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """``weight[indices]``: the rows of an embedding table for integer ids of any shape."""
    return nn_ops.Embedding.apply(weight, indices=_array(indices), padding_idx=padding_idx)


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout in training; the identity in evaluation or when p == 0."""
    if not training or p == 0:
        return x
    return nn_ops.Dropout.apply(x, p=p)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | Any = None,
                                 dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None) -> Tensor:
    """softmax(q k^T / sqrt(E) + mask) v, as ``torch.nn.functional.scaled_dot_product_attention``."""
    return nn_ops.ScaledDotProductAttention.apply(q, k, v, attn_mask=_array(attn_mask), dropout_p=dropout_p,
                                                  is_causal=is_causal, scale=scale)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight^T + bias, with weight (out_features, in_features) as in PyTorch (one op: ``ops.matmul.Linear``)."""
    if x.ndim == 0 or weight.ndim != 2 or (bias is not None and bias.ndim > 1):
        out = x @ weight.T  # the general rules of ``@`` and ``+``
        return out if bias is None else out + bias
    return matmul.Linear.apply(x, weight, bias)


def where(condition: Tensor | Any, x: Tensor | float, y: Tensor | float) -> Tensor:
    """Elementwise ``condition ? x : y``; differentiable in x and y."""
    like = x if isinstance(x, Tensor) else y if isinstance(y, Tensor) else Tensor(x)
    return elementwise.Where.apply(like._lift(x), like._lift(y), cond=_array(condition))
