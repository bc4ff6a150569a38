"""Embedding backward: add each output row's gradient into the table row it was read from.

The same id usually appears many times in a batch, so this is a scatter-add.
NumPy's ``add.at`` handles 2-D rows one scalar at a time; instead the
scatter is written as a sparse matrix product: with the one-hot matrix
S (V, N), S[v, i] = 1 when ids[i] == v, the table gradient is S @ g. SciPy's
CSR product sums each id's rows in one compiled loop.
"""

from __future__ import annotations

import numpy as np

from nn.backend import xp_of
from nn.kernels.blocked import compute_dtype


def embedding_backward(ids, g, num_embeddings: int):
    """d table (V, C) from ids (any shape) and the output gradient (*ids.shape, C)."""
    xp = xp_of(g)
    flat_ids = ids.reshape(-1)
    rows = g.reshape(flat_ids.size, g.shape[-1])
    if xp is np:
        import scipy.sparse

        dtype = compute_dtype(g.dtype)  # SciPy's sparse products have no float16
        onehot = scipy.sparse.csr_matrix(
            (np.ones(flat_ids.size, dtype=dtype), (flat_ids, np.arange(flat_ids.size))),
            shape=(num_embeddings, flat_ids.size))
        return np.asarray(onehot @ rows.astype(dtype, copy=False)).astype(g.dtype, copy=False)
    grad = xp.zeros((num_embeddings, rows.shape[1]), dtype=g.dtype)
    xp.add.at(grad, flat_ids, rows)
    return grad
