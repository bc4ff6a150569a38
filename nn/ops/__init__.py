"""The primitive differentiable ops, one Function subclass each, grouped by kind.

- ``elementwise``: arithmetic, activations, clamp/where/masked_fill, casts
- ``reduce``: sum, mean, max/min, var/std, logsumexp
- ``shape``: reshape, permute, expand, indexing, cat, triangles
- ``matmul``: batched, broadcasting matrix product
- ``nn``: the fused neural-network ops behind ``nn.functional``
"""
