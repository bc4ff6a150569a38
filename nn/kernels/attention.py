"""Causal attention computed tile by tile with an online softmax: the NumPy reference for ``attention.cu``.

For queries, keys and values q, k, v of shape (..., T, D) and scale c
(1 / sqrt(D) unless given):

    S = c q k^T with S_ij = -inf for j > i,   P = softmax(S) over j,   out = P v

The (T, T) matrix S is never formed. Query rows go in tiles of ``TILE``; for
each, the key tiles up to the diagonal are visited in order while every row
keeps a running maximum m, denominator l = sum exp(S - m) and unnormalised
output acc = sum exp(S - m) v. A tile that raises the maximum to m' first
rescales l and acc by exp(m - m'), so after the last tile out = acc / l is
exact. Forward also returns lse = m + log l per row, from which backward
rebuilds any tile of P as exp(S - lse):

    dv = P^T dout,   dP = dout v^T,   dS = P * (dP - D),   D_i = dout_i . out_i
    dq = c dS k,     dk = c dS^T q

This is the algorithm the CUDA kernels run (there with tiles of 32 rows);
CuPy arrays of float32/float16 (bfloat16 bits) with D <= 128 go to them.
float16 is computed in float32.
"""

from __future__ import annotations

import math

from nn.backend import xp_of
from nn.kernels import cuda
from nn.kernels.blocked import compute_dtype

TILE = 64
"""Query and key rows per tile."""


def _on_gpu(q) -> bool:
    return cuda.supports(q) and q.shape[-1] <= cuda.HEAD_DIMS[-1]


def _causal_scores(qt, kt, i0: int, j0: int):
    """Scores of query rows i0.. (already scaled) against key rows j0..; -inf above the diagonal."""
    xp = xp_of(qt)
    s = qt @ xp.swapaxes(kt, -1, -2)
    future = xp.arange(j0, j0 + kt.shape[-2])[None, :] > xp.arange(i0, i0 + qt.shape[-2])[:, None]
    return xp.where(future, -xp.inf, s)


def flash_attention_forward(q, k, v, scale: float | None = None):
    """(out (..., T, D) in q's dtype, lse (..., T) in the compute dtype) of causal softmax(c q k^T) v."""
    if _on_gpu(q):
        return cuda.flash_attention_forward(q, k, v, scale)
    xp = xp_of(q)
    *lead, seq, dim = q.shape
    scale = 1 / math.sqrt(dim) if scale is None else scale
    dtype, result_dtype = compute_dtype(q.dtype), q.dtype
    q, k, v = (a.astype(dtype, copy=False) for a in (q, k, v))
    out = xp.empty(q.shape, dtype=dtype)
    lse = xp.empty(q.shape[:-1], dtype=dtype)
    for i0 in range(0, seq, TILE):
        i1 = min(i0 + TILE, seq)
        qt = q[..., i0:i1, :] * scale
        m = xp.full((*lead, i1 - i0), -xp.inf, dtype=dtype)
        l = xp.zeros((*lead, i1 - i0), dtype=dtype)
        acc = xp.zeros((*lead, i1 - i0, dim), dtype=dtype)
        for j0 in range(0, i1, TILE):  # key tiles up to the diagonal; key 0 makes m finite at once
            j1 = min(j0 + TILE, seq)
            s = _causal_scores(qt, k[..., j0:j1, :], i0, j0)
            m_new = xp.maximum(m, s.max(axis=-1))
            rescale = xp.exp(m - m_new)
            p = xp.exp(s - m_new[..., None])
            l = l * rescale + p.sum(axis=-1)
            acc = acc * rescale[..., None] + p @ v[..., j0:j1, :]
            m = m_new
        out[..., i0:i1, :] = acc / l[..., None]
        lse[..., i0:i1] = m + xp.log(l)
    return out.astype(result_dtype, copy=False), lse


def flash_attention_backward(q, k, v, out, lse, dout, scale: float | None = None):
    """(dq, dk, dv) in q's dtype from forward's ``out`` and ``lse``, recomputing P tile by tile."""
    if _on_gpu(q):
        return cuda.flash_attention_backward(q, k, v, out, lse, dout, scale)
    xp = xp_of(q)
    seq, dim = q.shape[-2:]
    scale = 1 / math.sqrt(dim) if scale is None else scale
    dtype, result_dtype = compute_dtype(q.dtype), q.dtype
    q, k, v, out, lse, dout = (a.astype(dtype, copy=False) for a in (q, k, v, out, lse, dout))
    row_dot = (dout * out).sum(axis=-1)  # D_i = dout_i . out_i = sum_j P_ij dP_ij
    dq, dk, dv = (xp.zeros(q.shape, dtype=dtype) for _ in range(3))
    for i0 in range(0, seq, TILE):
        i1 = min(i0 + TILE, seq)
        qt, dot = q[..., i0:i1, :], dout[..., i0:i1, :]
        for j0 in range(0, i1, TILE):
            j1 = min(j0 + TILE, seq)
            kt, vt = k[..., j0:j1, :], v[..., j0:j1, :]
            p = xp.exp(_causal_scores(qt * scale, kt, i0, j0) - lse[..., i0:i1, None])
            dv[..., j0:j1, :] += xp.swapaxes(p, -1, -2) @ dot
            ds = p * (dot @ xp.swapaxes(vt, -1, -2) - row_dot[..., i0:i1, None])
            dq[..., i0:i1, :] += (ds @ kt) * scale
            dk[..., j0:j1, :] += (xp.swapaxes(ds, -1, -2) @ qt) * scale
    return tuple(a.astype(result_dtype, copy=False) for a in (dq, dk, dv))
