"""The primitive differentiable ops, one Function subclass each, grouped by kind.

They work on arrays and know only :class:`nn.function.Function`, the backend and
the kernels, never Tensor: whatever needs Tensors (``max`` with indices, ``split``)
is composed in ``nn/tensor.py``.

- ``elementwise``: arithmetic, activations, clamp/where/masked_fill, casts
- ``reduce``: sum, mean, max/min, var/std, logsumexp
- ``shape``: reshape, permute, expand, indexing, cat, stack, triangles
- ``matmul``: batched, broadcasting matrix product
- ``nn``: the fused neural-network ops behind ``nn.functional``
"""
