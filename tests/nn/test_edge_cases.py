"""Edge cases found in review: each compared with PyTorch, or with the clear error PyTorch also raises."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import nn
import nn.functional as F


def _grad_of(fn, *arrays):
    inputs = [nn.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*inputs)
    out.backward(np.ones(out.shape, out.dtype))
    return out.numpy(), [t.grad.numpy() for t in inputs]


def _torch_grad_of(fn, *arrays):
    inputs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*inputs)
    out.backward(torch.ones_like(out))
    return out.detach().numpy(), [t.grad.numpy() for t in inputs]


def test_memory_falls_while_backward_walks_the_graph():
    n = 500_000
    x = nn.randn(n, requires_grad=True)
    h = x
    for _ in range(10):
        h = (h * 1.0001).tanh()
    loss = h.sum()
    seen = []
    x.register_hook(lambda g: seen.append(tracemalloc.get_traced_memory()[0]))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        loss.backward()
    finally:
        tracemalloc.stop()
    # When the walk reaches the leaf, the ten layers' activations (about 10 x 2 x 2 MB) must be gone.
    assert seen[0] - before < 4 * n * 4


def test_gradcheck_sees_through_fortran_ordered_inputs():
    class Broken(nn.Function):
        def forward(self, x):
            return x * 2

        def backward(self, g):
            return g * 0

    a = np.asfortranarray(np.random.default_rng(0).standard_normal((3, 4)))
    assert not nn.gradcheck(lambda x: Broken.apply(x), [nn.Tensor(a, requires_grad=True)], raise_exception=False)
    assert nn.gradcheck(lambda x: x * x, [nn.Tensor(a, requires_grad=True)])


def test_attention_with_a_fully_masked_query_row_matches_torch():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 4, 3)) for _ in range(3))
    mask = np.ones((4, 4), bool)
    mask[3] = False
    ours = _grad_of(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), q, k, v)
    theirs = _torch_grad_of(
        lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, attn_mask=torch.tensor(mask)), q, k, v)
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-12)
    for a, b in zip(ours[1], theirs[1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_a_nan_stays_in_its_own_softmax_row():
    y = np.random.default_rng(2).standard_normal((4096, 50)).astype(np.float32)
    y[10, 3] = np.nan
    out = F.softmax(nn.tensor(y), -1).numpy()
    assert np.isnan(out).any(axis=1).sum() == 1
    np.testing.assert_allclose(np.delete(out, 10, 0), np.delete(TF.softmax(torch.tensor(y), -1).numpy(), 10, 0),
                               rtol=1e-5, atol=1e-7)


def test_softmax_rows_do_not_depend_on_their_block_neighbours():
    x = np.array([[45.0, 0.0, 0.0], [0.0, -64.0, -95.0]], np.float32)
    together = F.softmax(nn.tensor(x), -1).numpy()[1]
    alone = F.softmax(nn.tensor(x[1:]), -1).numpy()[0]
    np.testing.assert_allclose(together, alone, rtol=1e-6)
    np.testing.assert_allclose(together, TF.softmax(torch.tensor(x), -1).numpy()[1], rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_ignores_minus_infinity_in_ignored_rows(reduction):
    logits = np.random.default_rng(3).standard_normal((3, 4))
    logits[:, 0] = -np.inf
    targets = np.array([1, -100, 2])
    ours = _grad_of(lambda x: F.cross_entropy(x, targets, reduction=reduction), logits)
    theirs = _torch_grad_of(lambda x: TF.cross_entropy(x, torch.tensor(targets), reduction=reduction), logits)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12)
    np.testing.assert_allclose(ours[1][0], theirs[1][0], rtol=1e-12, atol=1e-15)


def test_float16_mean_and_var_over_more_elements_than_float16_can_count():
    a = np.random.default_rng(4).standard_normal(100_000).astype(np.float16)
    for fn in (lambda t: t.mean(), lambda t: t.var(), lambda t: t.std()):
        ours = _grad_of(fn, a)
        theirs = _torch_grad_of(fn, a)
        np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-2)
        np.testing.assert_allclose(ours[1][0].astype(np.float32), theirs[1][0].astype(np.float32), rtol=2e-2,
                                   atol=1e-7)


def test_var_and_std_at_degenerate_points_match_torch():
    one = np.array([1.5])
    for fn in (lambda t: t.var(), lambda t: t.std()):
        ours, theirs = _grad_of(fn, one), _torch_grad_of(fn, one)
        np.testing.assert_array_equal(np.isnan(ours[0]), np.isnan(theirs[0]))
        np.testing.assert_array_equal(np.isnan(ours[1][0]), np.isnan(theirs[1][0]))
    constant_row = np.array([[2.0, 2.0, 2.0], [1.0, 2.0, 3.0]])
    ours = _grad_of(lambda t: t.std(1), constant_row)
    theirs = _torch_grad_of(lambda t: t.std(1), constant_row)
    np.testing.assert_allclose(ours[1][0], theirs[1][0], atol=1e-12)


def test_pow_with_zero_base_and_zero_exponent_matches_torch():
    x, y = np.array([0.0, 2.0]), np.array([0.0, 3.0])
    ours, theirs = _grad_of(lambda a, b: a ** b, x, y), _torch_grad_of(lambda a, b: a ** b, x, y)
    for a, b in zip(ours[1], theirs[1], strict=True):
        np.testing.assert_allclose(a, b)


@pytest.mark.parametrize("expr", [
    lambda t, lib: t / 2, lambda t, lib: t * 0.5, lambda t, lib: 2.0 ** t, lambda t, lib: t.exp(),
    lambda t, lib: 10000 ** (t / 6), lambda t, lib: t.sqrt(), lambda t, lib: t / t,
])
def test_integer_tensors_meet_floats_in_float32_like_torch(expr):
    ours = expr(nn.arange(1, 7), nn)
    theirs = expr(torch.arange(1, 7), torch)
    assert ours.dtype == np.float32 and theirs.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)


def test_numpy_scalars_do_not_widen_a_tensor():
    x16, x32 = nn.ones(3, dtype=nn.float16), nn.ones(3)
    assert (x16 * np.float32(2)).dtype == np.float16
    assert (x32 * np.int64(2)).dtype == np.float32
    assert (x32 / np.prod(x32.shape)).dtype == np.float32
    assert nn.Tensor([1.0]).dtype == np.float32 and nn.Tensor(0.5).dtype == np.float32


@pytest.mark.parametrize("call", [
    lambda: nn.cat([nn.ones(2, 3), nn.ones(2, 3)], dim=2),
    lambda: F.softmax(nn.ones(2, 3), dim=5),
    lambda: nn.ones(2, 3).unsqueeze(7),
    lambda: nn.ones(3).expand(-1, 3),
    lambda: nn.ones(2, 3, 4).flatten(2, 1),
    lambda: nn.ones(3).tril(),
    lambda: F.cross_entropy(nn.ones(3, 5), np.array([0])),
    lambda: F.cross_entropy(nn.ones(1, 5, 2), np.array([0])),
    lambda: F.embedding(np.array([-1]), nn.ones(4, 2)),
    lambda: nn.cat([nn.tensor(1.0), nn.tensor(2.0)]),
])
def test_bad_arguments_raise_instead_of_returning_something(call):
    with pytest.raises((ValueError, IndexError, RuntimeError)):
        call()


def test_empty_and_zero_sized_cases_work_like_torch():
    weight = nn.ones(4, 2, requires_grad=True)
    F.embedding(np.zeros((0,), np.int64), weight).sum().backward()
    np.testing.assert_array_equal(weight.grad.numpy(), np.zeros((4, 2)))
    a, b = nn.ones(2, 3, requires_grad=True), nn.ones(3, 0, requires_grad=True)
    (a @ b).sum().backward()
    assert a.grad.shape == (2, 3) and b.grad.shape == (3, 0)
    assert F.softmax(nn.ones(2, 0), -1).shape == (2, 0)
    assert nn.tensor([[1.0, 2.0]]).sum(dim=()).item() == 3.0
    np.testing.assert_array_equal(nn.where(np.array([True, False]), 1.0, 2.0).numpy(), [1.0, 2.0])


def test_casting_to_an_integer_dtype_leaves_the_graph_like_torch():
    x = nn.tensor([1.5, 2.5], requires_grad=True)
    as_int = x.to(nn.int64)
    assert as_int.dtype == np.int64 and not as_int.requires_grad


def test_clamp_accepts_tensor_bounds_as_constants():
    x = np.array([-2.0, 0.5, 3.0])
    low, high = np.array([-1.0, 0.0, 0.0]), np.array([1.0, 1.0, 2.0])
    ours = _grad_of(lambda t: t.clamp(nn.tensor(low), nn.tensor(high)), x)
    theirs = _torch_grad_of(lambda t: t.clamp(torch.tensor(low), torch.tensor(high)), x)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1][0], theirs[1][0])
