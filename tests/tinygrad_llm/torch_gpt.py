"""A PyTorch reference for our GPT, written from the model's specification in plain ``torch``.

Nothing here imports our engine or model: the reference takes any object with
the fields of a ``GPTConfig`` (``vocab_size``, ``n_layer``, ``pos``, ...) and
derives everything else (the padded vocabulary, the SwiGLU width) itself, so a
mistake in our code cannot be copied into the reference. Its parameter names
and shapes are those of our model, which is what lets :func:`copy_weights`
move our weights across by name.

Rotary positions are written a second, independent way: Meta's complex-number
formulation (``torch.polar``, ``torch.view_as_complex``) instead of the
rotate-half formula our attention uses. See :func:`apply_rope_complex` for why a
permutation of the head dimension is needed to make the two pairings meet.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as TF

__all__ = ["TorchGPT", "TorchCausalSelfAttention", "apply_rope_complex", "copy_weights", "padded_vocab_size",
           "swiglu_hidden"]


def padded_vocab_size(vocab_size: int, multiple: int | None) -> int:
    """The vocabulary rounded up to a multiple (GPU-friendly matrix shapes); ``None`` or 1 means no padding."""
    multiple = multiple or 1
    return multiple * math.ceil(vocab_size / multiple)


def swiglu_hidden(n_embd: int) -> int:
    """SwiGLU's hidden width: 8C/3 (same parameter count as a 4C GELU MLP), rounded up to a multiple of 64."""
    return 64 * math.ceil(8 * n_embd / 3 / 64)


def _kv_heads(config: Any) -> int:
    return config.n_head if config.n_kv_head is None else config.n_kv_head


# ---------------------------------------------------------------- rotary positions
def rope_frequencies(head_dim: int, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """e^(i t w_j) as complex128, (T, head_dim/2), with w_j = theta^(-2j/head_dim): Meta's ``precompute_freqs_cis``."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(positions.to(torch.float64), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope_complex(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotate x (..., T, d) by the rotary angles of ``positions`` (T,), pairing dim j with dim j + d/2.

    Meta's Llama code views consecutive dims (2j, 2j+1) as one complex number
    and multiplies it by e^(i t w_j). Our model (like Hugging Face's Llama) uses
    the rotate-half convention instead, where dim j pairs with dim j + d/2:
    out_j = x_j cos - x_{j+d/2} sin and out_{j+d/2} = x_{j+d/2} cos + x_j sin.
    Both are the same complex rotation, only of different pairs. So the head
    dimension is permuted to (0, d/2, 1, d/2+1, ...), which puts each
    rotate-half pair next to each other, Meta's complex product is applied,
    and the permutation is undone. (Hugging Face's Llama conversion script
    permutes the q/k projection weights for exactly this reason.)
    The product is computed in complex128 and rounded to x's dtype once.
    """
    d = x.shape[-1]
    interleave = torch.arange(d).reshape(2, d // 2).T.reshape(-1)  # (0, d/2, 1, d/2+1, ...)
    pairs = x[..., interleave].to(torch.float64).reshape(*x.shape[:-1], d // 2, 2)
    rotated = torch.view_as_complex(pairs.contiguous()) * rope_frequencies(d, positions, theta)
    out = torch.view_as_real(rotated).reshape(x.shape)
    return out[..., torch.argsort(interleave)].to(x.dtype)


# ---------------------------------------------------------------- the model
class TorchCausalSelfAttention(tnn.Module):
    """Causal multi-head attention with grouped-query heads and optional rotary positions, spelled out."""

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int | None = None, pos: str = "learned",
                 dropout: float = 0.0, bias: bool = True, rope_theta: float = 10000.0) -> None:
        super().__init__()
        self.n_head = n_head
        self.n_kv_head = n_head if n_kv_head is None else n_kv_head
        self.head_dim = n_embd // n_head
        self.pos, self.rope_theta = pos, rope_theta
        self.c_attn = tnn.Linear(n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=bias)
        self.c_proj = tnn.Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = tnn.Dropout(dropout)
        self.resid_dropout = tnn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        batch, length, width = x.shape
        h, g, d = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([h * d, g * d, g * d], dim=-1)
        q = q.view(batch, length, h, d).transpose(1, 2)
        k = k.view(batch, length, g, d).transpose(1, 2)
        v = v.view(batch, length, g, d).transpose(1, 2)
        if self.pos == "rope":
            positions = torch.arange(length)
            q = apply_rope_complex(q, positions, self.rope_theta)
            k = apply_rope_complex(k, positions, self.rope_theta)
        k = k.repeat_interleave(h // g, dim=1)
        v = v.repeat_interleave(h // g, dim=1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        future = torch.ones(length, length, dtype=torch.bool).triu(diagonal=1)
        probs = self.attn_dropout(scores.masked_fill(future, float("-inf")).softmax(dim=-1))
        y = (probs @ v).transpose(1, 2).reshape(batch, length, width)
        return self.resid_dropout(self.c_proj(y))


class TorchMLP(tnn.Module):
    """GELU MLP (C -> 4C -> C) or SwiGLU (C -> [gate; up] -> silu(gate) * up -> C)."""

    def __init__(self, n_embd: int, kind: str, bias: bool, gelu_approximate: str, dropout: float) -> None:
        super().__init__()
        self.kind = kind
        hidden = 4 * n_embd if kind == "gelu" else swiglu_hidden(n_embd)
        self.c_fc = tnn.Linear(n_embd, hidden * (1 if kind == "gelu" else 2), bias=bias)
        self.c_proj = tnn.Linear(hidden, n_embd, bias=bias)
        self.gelu = tnn.GELU(approximate=gelu_approximate)
        self.dropout = tnn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.kind == "gelu":
            h = self.gelu(h)
        else:
            gate, up = h.chunk(2, dim=-1)
            h = TF.silu(gate) * up
        return self.dropout(self.c_proj(h))


def _norm(config: Any) -> tnn.Module:
    if config.norm == "layernorm":
        return tnn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
    return tnn.RMSNorm(config.n_embd, eps=config.norm_eps)


class TorchBlock(tnn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = TorchCausalSelfAttention(config.n_embd, config.n_head, _kv_heads(config), config.pos,
                                             config.dropout, config.bias, config.rope_theta)
        self.ln_2 = _norm(config)
        self.mlp = TorchMLP(config.n_embd, config.mlp, config.bias, config.gelu_approximate, config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TorchGPT(tnn.Module):
    """The GPT of the specification, with our parameter names: ``wte``, ``wpe``, ``h.{i}...``, ``ln_f``, ``lm_head``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        padded = padded_vocab_size(config.vocab_size, config.vocab_multiple)
        self.wte = tnn.Embedding(padded, config.n_embd)
        if config.pos == "learned":
            self.wpe = tnn.Embedding(config.block_size, config.n_embd)
        self.drop = tnn.Dropout(config.dropout)
        self.h = tnn.ModuleList(TorchBlock(config) for _ in range(config.n_layer))
        self.ln_f = _norm(config)
        self.lm_head = tnn.Linear(config.n_embd, padded, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, vocab_size) and the mean cross-entropy against targets (B, T), if given."""
        x = self.wte(idx)
        if self.config.pos == "learned":
            x = x + self.wpe(torch.arange(idx.shape[1]))
        x = self.drop(x)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))[..., :self.vocab_size]
        if targets is None:
            return logits, None
        loss = TF.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1), ignore_index=-100)
        return logits, loss


def copy_weights(ours: Any, theirs: tnn.Module) -> tnn.Module:
    """Load our module's ``state_dict`` into the torch module ``theirs`` by name, casting it to our dtype.

    Strict: a name present on one side only, or a shape that differs, raises
    (torch's error lists them), so this also checks that our parameter names
    and shapes follow the specification. Tied weights appear under both names
    on both sides and load twice into the one shared tensor.
    """
    state = {name: torch.from_numpy(np.array(t.numpy(), copy=True)) for name, t in ours.state_dict().items()}
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) != 1:
        raise TypeError(f"expected one floating dtype in our state_dict, found {sorted(map(str, dtypes))}")
    theirs.to(dtypes.pop())
    theirs.load_state_dict(state, strict=True)
    return theirs
