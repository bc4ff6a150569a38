"""The Tensor API: factories, dtypes, properties, operators, indexing, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nn


def test_factories_follow_pytorch_dtypes_and_shapes():
    assert nn.tensor([1.0, 2.0]).dtype == np.float32  # Python floats -> float32
    assert nn.tensor([1, 2]).dtype == np.int64
    assert nn.tensor(np.zeros(2, np.float64)).dtype == np.float64  # arrays keep their dtype
    assert nn.zeros(2, 3).shape == (2, 3) and nn.zeros((2, 3)).dtype == np.float32
    assert nn.ones(4, dtype="float64").dtype == np.float64
    np.testing.assert_array_equal(nn.full((2, 2), 7.0).numpy(), np.full((2, 2), 7.0))
    np.testing.assert_array_equal(nn.arange(5).numpy(), torch.arange(5).numpy())
    np.testing.assert_allclose(nn.arange(0, 1, 0.25).numpy(), torch.arange(0, 1, 0.25).numpy())
    assert nn.arange(3).dtype == np.int64 and nn.arange(0.0, 1.0, 0.5).dtype == np.float32
    assert nn.randn(3, 4, requires_grad=True).requires_grad
    assert nn.zeros_like(nn.ones(2, dtype=nn.float64)).dtype == np.float64


def test_random_state_is_seedable_and_restorable():
    nn.manual_seed(5)
    a = nn.randn(4).numpy()
    state = nn.get_rng_state()
    b = nn.randn(4).numpy()
    nn.manual_seed(5)
    np.testing.assert_array_equal(nn.randn(4).numpy(), a)
    nn.set_rng_state(state)
    np.testing.assert_array_equal(nn.randn(4).numpy(), b)
    assert not np.array_equal(a, b)


def test_properties_and_conversions():
    t = nn.tensor([[1.0, 2.0, 3.0]])
    assert t.shape == (1, 3) and t.ndim == 2 and t.numel() == 3 and len(t) == 1 and t.size(1) == 3
    assert t.device == "cpu" and t.is_leaf and t.grad is None and not t.requires_grad
    assert isinstance(t.numpy(), np.ndarray)
    assert t.sum().item() == 6.0 and isinstance(t.sum().item(), float)
    assert t.tolist() == [[1.0, 2.0, 3.0]]
    with pytest.raises(ValueError, match="one element"):
        t.item()
    assert "requires_grad=True" in repr(nn.ones(1, requires_grad=True))
    assert t.to("cpu") is t
    assert t.to(nn.float64).dtype == np.float64 and t.half().dtype == np.float16


def test_cuda_without_cupy_or_gpu_fails_with_one_clear_line():
    with pytest.raises(RuntimeError, match="cuda") as info:
        nn.zeros(2, device="cuda")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown device"):
        nn.zeros(2, device="tpu")


def test_python_scalars_keep_float32_float32():
    x = nn.ones(3)
    for y in (x + 1, 2 * x, x / 3, 1 - x, x ** 2, 2.0 ** x, -x, x * True):
        assert y.dtype == np.float32


def test_comparisons_give_boolean_tensors_outside_the_graph():
    x = nn.tensor([1.0, 2.0, 3.0], requires_grad=True)
    for result, expected in [(x < 2, [True, False, False]), (x <= 2, [True, True, False]),
                             (x > 2, [False, False, True]), (x >= 2, [False, True, True]),
                             (x == 2, [False, True, False]), (x != 2, [True, False, True])]:
        assert result.dtype == np.bool_ and not result.requires_grad
        np.testing.assert_array_equal(result.numpy(), expected)
    np.testing.assert_array_equal((~(x > 2) & (x > 1)).numpy(), [False, True, False])


def test_indexing_follows_numpy_semantics_with_tensor_indices():
    a = np.arange(24.0).reshape(2, 3, 4)
    t = nn.tensor(a)
    for index in [1, (slice(None), 2), (Ellipsis, slice(None, None, -2)), (None, 0, slice(1, 3)),
                  ([0, 1, 1],), (slice(None), [2, 0]), a > 10]:
        np.testing.assert_array_equal(t[index].numpy(), a[index])
    np.testing.assert_array_equal(t[nn.tensor([1, 0])].numpy(), a[[1, 0]])
    np.testing.assert_array_equal(t[t > 10].numpy(), a[a > 10])


def test_max_and_min_with_dim_return_values_and_indices_like_torch():
    a = np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 7.0]])
    values, indices = nn.tensor(a).max(dim=1)
    ref = torch.tensor(a).max(dim=1)
    np.testing.assert_array_equal(values.numpy(), ref.values.numpy())
    np.testing.assert_array_equal(indices.numpy(), ref.indices.numpy())
    np.testing.assert_array_equal(nn.tensor(a).argmin(dim=0).numpy(), torch.tensor(a).argmin(dim=0).numpy())


def test_max_over_ties_splits_the_gradient_like_torch():
    a = np.array([3.0, 1.0, 3.0])
    x, tx = nn.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    x.max().backward()
    tx.max().backward()
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())


def test_tril_triu_masks_and_where():
    ones = nn.ones(3, 3)
    np.testing.assert_array_equal(nn.tril(ones).numpy(), np.tril(np.ones((3, 3))))
    np.testing.assert_array_equal(nn.triu(ones, 1).numpy(), np.triu(np.ones((3, 3)), 1))
    x = nn.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = nn.where(x > 0, x, 0.0)
    y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 0.0, 1.0])


def test_bad_arguments_raise_clear_errors():
    x = nn.ones(2, 3)
    with pytest.raises(IndexError, match="out of range"):
        x.sum(dim=2)
    with pytest.raises(ValueError, match="permutation"):
        x.permute(0, 0)
    with pytest.raises(ValueError, match="do not add up"):
        x.split([1, 1], dim=1)
    with pytest.raises(ValueError, match="approximate"):
        x.gelu(approximate="fast")
    with pytest.raises(TypeError, match="unknown dtype"):
        nn.zeros(2, dtype="float8")


def test_clone_copies_the_data_and_passes_gradients_like_torch():
    x = nn.tensor([1.0, 2.0], requires_grad=True)
    y = x.clone()
    y.data[0] = 5.0  # the copy is separate memory
    (y * 3).sum().backward()
    tx = torch.tensor([1.0, 2.0], requires_grad=True)
    (tx.clone() * 3).sum().backward()
    np.testing.assert_array_equal(x.numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())
