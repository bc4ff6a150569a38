"""nn: a small deep-learning engine with reverse-mode autograd, on NumPy (CPU) and CuPy (GPU).

    import nn
    x = nn.randn(3, 4, requires_grad=True)
    loss = (x.tanh() ** 2).sum()
    loss.backward()      # x.grad now holds d loss / d x
"""

import numpy as _np

from nn import allocator, functional, optim, state  # allocator: glibc keeps freed memory for the next array
from nn.backend import get_rng_state, manual_seed, set_rng_state
from nn.checkpoint import checkpoint
from nn.function import Function, FunctionHook
from nn.gradcheck import GradcheckError, gradcheck
from nn.graph import draw_graph
from nn.layers import GELU, Dropout, Embedding, LayerNorm, Linear, ModuleList, RMSNorm, Sequential
from nn.module import Module, Parameter
from nn.ops.shape import cat, stack
from nn.profiler import profile
from nn.tensor import (
    Tensor,
    arange,
    enable_grad,
    full,
    is_grad_enabled,
    no_grad,
    ones,
    ones_like,
    rand,
    randn,
    set_grad_enabled,
    tensor,
    zeros,
    zeros_like,
)

float16 = _np.float16
float32 = _np.float32
float64 = _np.float64
int32 = _np.int32
int64 = _np.int64
bool_ = _np.bool_


def where(condition, x, y):
    """Elementwise ``condition ? x : y`` (see ``nn.functional.where``)."""
    return functional.where(condition, x, y)


def tril(x, diagonal: int = 0):
    """Lower triangle of the last two dims (a causal mask when applied to ones)."""
    return x.tril(diagonal)


def triu(x, diagonal: int = 0):
    """Upper triangle of the last two dims."""
    return x.triu(diagonal)


__all__ = [
    "Module", "Parameter", "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "GELU", "Sequential",
    "ModuleList",
    "Tensor", "Function", "FunctionHook", "functional", "tensor", "zeros", "ones", "full", "arange", "randn", "rand",
    "zeros_like", "ones_like", "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled",
    "manual_seed", "get_rng_state", "set_rng_state", "gradcheck", "GradcheckError", "draw_graph", "profile",
    "cat", "stack", "where", "tril", "triu", "float16", "float32", "float64", "int32", "int64", "bool_",
    "optim", "state", "checkpoint", "allocator",
]
