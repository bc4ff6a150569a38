"""Shared engine-test set-up: the conversions between our tensors and PyTorch's, a fixed seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nn

torch.set_num_threads(1)


def is_float_array(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def to_ours(arrays) -> list[nn.Tensor]:
    """Our tensors: float arrays become leaves that require grad, the rest constants.

    The arrays are used as they are, not copied, so their memory layout (strided,
    transposed) reaches the ops; the tests check separately that no op writes to them.
    """
    return [nn.Tensor(a, requires_grad=is_float_array(a)) for a in arrays]


def to_torch(arrays) -> list[torch.Tensor]:
    return [torch.tensor(np.array(a), requires_grad=is_float_array(a)) for a in arrays]


def torch_kwargs(kwargs: dict) -> dict:
    return {k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v
            for k, v in kwargs.items()}


@pytest.fixture(autouse=True)
def _fresh_seed():
    """Every test starts from the same engine random state."""
    nn.manual_seed(1234)
