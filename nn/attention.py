"""Causal multi-head self-attention, with learned or rotary positions and a KV cache.

One module serves GPT-2 (learned absolute positions, added to the token
embeddings outside this module) and Llama-style models (rotary positions
applied to queries and keys here, grouped-query attention with fewer key/value
heads than query heads).

Shapes: B batch, T new tokens, S tokens attended to (T plus those cached),
C = n_head * head_dim model width, H query heads, G key/value heads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nn import backend
from nn import functional as F
from nn.layers import Dropout, Linear
from nn.module import Module
from nn.ops import nn as nn_ops
from nn.tensor import Tensor

__all__ = ["CausalSelfAttention", "KVCache", "RaggedKVCache", "PackedKVCache", "rope_tables", "apply_rope", "repeat_kv"]


def rope_tables(head_dim: int, max_positions: int, theta: float = 10000.0,
                dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the rotary angles, each (max_positions, head_dim).

    Dimension pair (i, i + head_dim/2) rotates at frequency theta^(-2i/head_dim),
    so position t turns it by the angle t * theta^(-2i/head_dim). The angles are
    computed in float64 and rounded once.
    """
    if head_dim % 2:
        raise ValueError(f"rotary positions need an even head dimension, not {head_dim}")
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(np.arange(max_positions, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) of x (..., T, d) by its angle: x cos + rotate_half(x) sin.

    rotate_half(x) = (-x_{d/2:}, x_{:d/2}), the pairing Llama uses. After the
    rotation a query at position m and a key at position n have a dot product
    that depends on m - n only: attention sees relative positions.
    """
    return nn_ops.Rotary.apply(x, cos, sin)


def repeat_kv(x: Tensor, repeats: int) -> Tensor:
    """(B, G, S, d) -> (B, G * repeats, S, d): key/value head j serves query heads j*repeats ... (j+1)*repeats-1."""
    if repeats == 1:
        return x
    b, g, s, d = x.shape
    return x.unsqueeze(2).expand(b, g, repeats, s, d).reshape(b, g * repeats, s, d)


class KVCache:
    """The keys and values of every token seen so far, for one attention layer.

    Generation feeds one new token at a time; without a cache every step would
    recompute keys and values of the whole prefix. Arrays are preallocated
    (B, G, max_length, head_dim) and filled left to right; ``length`` says how much is valid.
    """

    def __init__(self, batch_size: int, n_kv_head: int, max_length: int, head_dim: int,
                 dtype: Any = np.float32, device: str = "cpu") -> None:
        xp = backend.array_module(device)
        shape = (batch_size, n_kv_head, max_length, head_dim)
        self.k, self.v = xp.zeros(shape, dtype=dtype), xp.zeros(shape, dtype=dtype)
        self.max_length = max_length
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, G, T, d) after the cached tokens; return all of them, (B, G, S, d)."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} needed")
        self.k[:, :, self.length:end] = k.data
        self.v[:, :, self.length:end] = v.data
        self.length = end
        return Tensor(self.k[:, :, :end]), Tensor(self.v[:, :, :end])

    def reset(self) -> None:
        self.length = 0


class RaggedKVCache:
    """The keys and values of several sequences of different lengths, one row each: batched decoding.

    A server decodes many requests at once: each step feeds one new token per
    sequence through the model together, but the sequences started at
    different times, so row b has ``lengths[b]`` valid positions. New tokens go
    to each row's own next positions; :meth:`mask` lets each query see only its
    row's keys (the rest of a row is padding), and :meth:`positions` gives each
    new token its own absolute position (for learned or rotary positions).
    Sequences join (:meth:`extend`, with the rows their prompts were read
    into, :meth:`empty` then :meth:`set_lengths`) and leave (:meth:`keep`)
    between steps.
    """

    def __init__(self, k: Any, v: Any, lengths: Any, max_length: int) -> None:
        # The rows live in buffers with room for more (B_room, G, max_length, head_dim), the first B in use, so
        # that sequences joining and leaving between steps copy only the rows and positions that hold keys.
        self._k, self._v = k, v
        self.lengths = np.asarray(lengths, dtype=np.int64).copy()
        self.max_length = max_length

    @property
    def k(self) -> Any:
        """The keys of the rows in use, (B, G, max_length, head_dim)."""
        return self._k[:len(self.lengths)]

    @property
    def v(self) -> Any:
        """The values of the rows in use, (B, G, max_length, head_dim)."""
        return self._v[:len(self.lengths)]

    @classmethod
    def empty(cls, batch_size: int, n_kv_head: int, max_length: int, head_dim: int, dtype: Any = np.float32,
              device: str = "cpu") -> RaggedKVCache:
        """``batch_size`` empty rows: the prompts of several new sequences can then be read in one forward pass
        (right-padded to the longest; afterwards :meth:`set_lengths` drops each row's padding)."""
        xp = backend.array_module(device)
        shape = (batch_size, n_kv_head, max_length, head_dim)
        return cls(xp.zeros(shape, dtype=dtype), xp.zeros(shape, dtype=dtype), np.zeros(batch_size), max_length)

    def set_lengths(self, lengths: Any) -> None:
        """Declare row b to hold ``lengths[b]`` valid positions (no more than it holds): the keys and values
        after them are padding, hidden by :meth:`mask` and overwritten by the row's next tokens."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.shape != self.lengths.shape or (lengths > self.lengths).any() or (lengths < 0).any():
            raise ValueError(f"row lengths {lengths.tolist()} do not fit the rows held, {self.lengths.tolist()}")
        self.lengths = lengths.copy()

    @classmethod
    def from_caches(cls, caches: list[KVCache]) -> RaggedKVCache:
        """One row per single-sequence cache (each of batch size 1), with its length."""
        xp = backend.xp_of(caches[0].k)
        return cls(xp.concatenate([c.k for c in caches]), xp.concatenate([c.v for c in caches]),
                   [c.length for c in caches], caches[0].max_length)

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    def extend(self, other: RaggedKVCache) -> None:
        """Add ``other``'s rows after this cache's."""
        n, m = len(self.lengths), len(other.lengths)
        if n + m > len(self._k):  # no room: twice the rows (amortised, as a Python list grows)
            xp = backend.xp_of(self._k)
            room = (max(2 * len(self._k), n + m),) + self._k.shape[1:]
            k, v = xp.zeros(room, dtype=self._k.dtype), xp.zeros(room, dtype=self._v.dtype)
            k[:n], v[:n] = self.k, self.v
            self._k, self._v = k, v
        end = int(other.lengths.max(initial=0))
        self._k[n:n + m, :, :end] = other.k[:, :, :end]
        self._v[n:n + m, :, :end] = other.v[:, :, :end]
        self.lengths = np.concatenate([self.lengths, other.lengths])

    def keep(self, rows: Any) -> None:
        """Keep only ``rows`` (indices, in order): the other sequences have left the batch."""
        rows = np.asarray(rows, dtype=np.int64)
        end = int(self.lengths[rows].max(initial=0))
        index = backend.to_device(rows, backend.device_of(self._k))
        self._k[:len(rows), :, :end] = self._k[index, :, :end]  # (the right side is a copy: rows may overlap)
        self._v[:len(rows), :, :end] = self._v[index, :, :end]
        self.lengths = self.lengths[rows]

    def positions(self, t: int) -> np.ndarray:
        """The absolute positions (B, t) of ``t`` new tokens per row."""
        return self.lengths[:, None] + np.arange(t)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store each row's k, v (B, G, t, d) after that row's tokens; return keys and values (B, G, S, d),
        S the longest row (shorter rows are padded: :meth:`mask` hides the padding)."""
        t = k.shape[2]
        if int(self.lengths.max(initial=0)) + t > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {int(self.lengths.max()) + t} needed")
        n = len(self.lengths)
        if t == 1:  # a decode step: row b's token goes to position lengths[b], all rows in one assignment
            device = backend.device_of(self._k)
            rows, at = backend.to_device(np.arange(n), device), backend.to_device(self.lengths, device)
            self._k[rows, :, at] = k.data[:, :, 0]
            self._v[rows, :, at] = v.data[:, :, 0]
        elif (self.lengths == self.lengths[0]).all():  # rows side by side (prompts read together): one slice
            start = int(self.lengths[0])
            self._k[:n, :, start:start + t] = k.data
            self._v[:n, :, start:start + t] = v.data
        else:
            for b, start in enumerate(self.lengths.tolist()):
                self._k[b, :, start:start + t] = k.data[b]
                self._v[b, :, start:start + t] = v.data[b]
        self.lengths += t
        end = int(self.lengths.max())
        return Tensor(self._k[:n, :, :end]), Tensor(self._v[:n, :, :end])

    def mask(self, t: int) -> Any:
        """After :meth:`append`: (B, 1, t, S) booleans, True where new token i of row b may see key j.

        Token i of row b sits at position lengths[b] - t + i and sees the keys
        at positions 0 .. lengths[b] - t + i of its own row.
        """
        xp = backend.xp_of(self.k)
        end = int(self.lengths.max())
        last = backend.to_device(self.lengths[:, None] - t + np.arange(t), backend.device_of(self.k))  # (B, t)
        return (xp.arange(end)[None, None, :] <= last[:, :, None])[:, None]


class CausalSelfAttention(Module):
    """Multi-head attention where position t attends to positions <= t.

    One fused projection ``c_attn`` makes queries, keys and values
    ((H + 2G) * head_dim outputs, in that order); ``c_proj`` mixes the heads back.
    ``pos="rope"`` rotates queries and keys by their absolute position;
    ``pos="learned"`` leaves positions to the embedding outside.
    """

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int | None = None, block_size: int = 1024,
                 pos: str = "learned", dropout: float = 0.0, bias: bool = True, rope_theta: float = 10000.0,
                 dtype: Any = None) -> None:
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if n_head % n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
        if pos not in ("learned", "rope"):
            raise ValueError(f"pos must be 'learned' or 'rope', not {pos!r}")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, n_embd // n_head
        self.pos, self.dropout = pos, dropout
        self.c_attn = Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias, dtype=dtype)
        self.c_proj = Linear(n_embd, n_embd, bias=bias, dtype=dtype)
        self.resid_dropout = Dropout(dropout)
        if pos == "rope":
            # Kept in float64 and rounded once per (dtype, device) in use: casting a float32 table up
            # to float64 would carry float32's rounding into a float64 model.
            self._rope_exact = rope_tables(self.head_dim, block_size, rope_theta, np.float64)
            self._rope_cast: dict[tuple, tuple[Tensor, Tensor]] = {}

    def rope(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The cos and sin tables (block_size, head_dim) in ``like``'s dtype and device."""
        key = (like.dtype, like.device)
        if key not in self._rope_cast:
            self._rope_cast[key] = tuple(Tensor(backend.to_device(t.astype(like.dtype), like.device))
                                         for t in self._rope_exact)
        return self._rope_cast[key]

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """(B, T, C) -> (B, T, C). With ``cache``, x holds the tokens after the cached ones."""
        b, t, _ = x.shape
        h, g, d = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([h * d, g * d, g * d], dim=-1)
        q = q.reshape(b, t, h, d).transpose(1, 2)  # (B, H, T, d)
        k = k.reshape(b, t, g, d).transpose(1, 2)  # (B, G, T, d)
        v = v.reshape(b, t, g, d).transpose(1, 2)
        ragged = isinstance(cache, RaggedKVCache)  # batched decoding: each row at its own position
        start = cache.length if cache is not None and not ragged else 0
        if self.pos == "rope":
            if ragged:  # each row's own angles: (B, 1, t, d), broadcast over the heads
                positions = cache.positions(t)
                cos, sin = (Tensor(table.data[positions][:, None]) for table in self.rope(q))
            else:
                cos, sin = (table[start:start + t] for table in self.rope(q))
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, G, S, d)
        k, v = repeat_kv(k, h // g), repeat_kv(v, h // g)
        dropout = self.dropout if self.training else 0.0
        if ragged:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=cache.mask(t), dropout_p=dropout)
        elif start == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:  # new query i sits at absolute position start + i and may see keys 0 .. start + i
            xp = backend.xp_of(q.data)
            mask = xp.tril(xp.ones((t, start + t), dtype=bool), k=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(b, t, h * d)  # h * d = c, or this process's share of it
        return self.resid_dropout(self.c_proj(y))

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}, n_kv_head={self.n_kv_head}, head_dim={self.head_dim}, pos={self.pos!r}"


class PackedKVCache(RaggedKVCache):
    """A :class:`RaggedKVCache` read one token per batch row: many sequences' new tokens packed into one pass.

    A server's forward pass carries one new token for each running sequence
    and, for each sequence that just arrived, its whole prompt. Padding every
    row to the longest prompt would make each running sequence pay for a
    prompt's worth of padding; packing instead gives each new token its own
    row of an (N, 1) batch, N the number of new tokens in all. Token i belongs
    to sequence ``row[i]`` and sits at position ``at[i]``: its key and value go
    there in that sequence's row of ``cache``, and its query sees that row's
    keys up to and including its own position (a prompt's tokens see one
    another causally, as they would read alone). The layers outside attention
    treat every token alike, so only attention needs to know.

        packed = [PackedKVCache(cache, counts) for cache in caches]  # counts[b]: new tokens of sequence b
        logits, _ = model(ids[:, None], caches=packed)               # ids: the N tokens, sequence by sequence

    Afterwards ``cache.lengths`` has grown by ``counts``.
    """

    def __init__(self, cache: RaggedKVCache, counts: Any) -> None:
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != cache.lengths.shape or (counts < 1).any():
            raise ValueError(f"{counts.tolist()} new tokens for rows holding {cache.lengths.tolist()}: "
                             "one count of at least 1 per row")
        self.cache, self.counts, self.max_length = cache, counts, cache.max_length
        self.row = np.repeat(np.arange(len(counts)), counts)            # (N,) each token's sequence
        first = np.cumsum(counts) - counts                               # each sequence's first token in the pack
        self.at = cache.lengths[self.row] + np.arange(len(self.row)) - first[self.row]  # (N,) its position

    def positions(self, t: int) -> np.ndarray:
        """The absolute position of each packed token, (N, 1)."""
        if t != 1:
            raise ValueError(f"a packed batch holds one token per row, not {t}")
        return self.at[:, None]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store token i's k, v (N, G, 1, d) at its own position of its sequence's row; return, for each
        token, its sequence's keys and values (N, G, S, d), S the longest sequence after the pass."""
        end = int(self.at.max()) + 1
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} needed")
        device = backend.device_of(self.cache._k)
        row, at = backend.to_device(self.row, device), backend.to_device(self.at, device)
        self.cache._k[row, :, at] = k.data[:, :, 0]
        self.cache._v[row, :, at] = v.data[:, :, 0]
        self.cache.lengths = self.cache.lengths + self.counts
        return Tensor(self.cache._k[row, :, :end]), Tensor(self.cache._v[row, :, :end])

    def mask(self, t: int) -> Any:
        """(N, 1, 1, S) booleans: token i sees the keys at positions 0 .. at[i] of its sequence."""
        xp = backend.xp_of(self.cache._k)
        end = int(self.at.max()) + 1
        at = backend.to_device(self.at, backend.device_of(self.cache._k))
        return (xp.arange(end)[None, :] <= at[:, None])[:, None, None]
