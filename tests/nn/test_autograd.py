"""How backward walks the graph: order, accumulation, freeing, hooks, grad mode."""

from __future__ import annotations

import gc
import sys
import weakref

import numpy as np
import pytest
import torch

import nn


def test_chain_of_ten_thousand_ops_needs_no_recursion():
    x = nn.tensor(0.5, dtype=nn.float64, requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # prove backward does not recurse per node
    try:
        y.backward()
    finally:
        sys.setrecursionlimit(limit)
    assert x.grad.item() == pytest.approx(1.0001 ** 10_000, rel=1e-9)


def test_tensor_used_twice_gets_the_sum_of_both_paths():
    x = nn.tensor([1.5, -2.0], dtype=nn.float64, requires_grad=True)
    y = x * x + x.exp() * x  # x reaches y along four edges
    y.sum().backward()
    xv = x.numpy()
    np.testing.assert_allclose(x.grad.numpy(), 2 * xv + np.exp(xv) * (1 + xv), rtol=1e-12)


def test_diamond_graph_runs_each_backward_once_in_topological_order():
    calls = []

    class Tap(nn.Function):
        def forward(self, x):
            return x * 1.0

        def backward(self, g):
            calls.append(g.copy())
            return g

    x = nn.tensor([1.0, 2.0], requires_grad=True)
    shared = Tap.apply(x)
    out = (shared * 2 + shared * 3).sum()
    out.backward()
    assert len(calls) == 1, "the shared node must run once, after both consumers"
    np.testing.assert_allclose(calls[0], [5.0, 5.0])
    np.testing.assert_allclose(x.grad.numpy(), [5.0, 5.0])


def test_leaf_gradients_accumulate_across_backward_calls_like_torch():
    x = nn.tensor([1.0, 2.0, 3.0], requires_grad=True)
    tx = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    for _ in range(3):
        (x * x).sum().backward()
        (tx * tx).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy())


def test_two_leaves_never_share_one_gradient_buffer():
    a = nn.tensor([1.0, 2.0], requires_grad=True)
    b = nn.tensor([3.0, 4.0], requires_grad=True)
    (a + b).sum().backward()  # Add hands the same upstream array to both inputs
    a.grad.data *= 10  # an optimizer may scale gradients in place
    np.testing.assert_allclose(b.grad.numpy(), [1.0, 1.0])


def test_backward_frees_saved_arrays_and_a_second_backward_says_why():
    x = nn.randn(4, 4, requires_grad=True)
    hidden = x.tanh()
    saved = weakref.ref(hidden._ctx.saved_arrays[0])
    loss = (hidden * 2).sum()
    del hidden
    loss.backward()
    assert saved() is None, "backward must release what the op saved, even while the loss is alive"
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_retain_graph_keeps_it_for_a_second_backward():
    x = nn.tensor([1.0, -1.0], requires_grad=True)
    loss = (x.exp() * x).sum()
    loss.backward(retain_graph=True)
    first = x.grad.numpy().copy()
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first, rtol=1e-6)


def test_no_reference_cycles_keep_activations_alive():
    gc.disable()  # only reference counting may free them: no cycle collector
    try:
        x = nn.randn(8, 8, requires_grad=True)
        h = (x @ x).relu()
        activation = weakref.ref(h.data)
        node = weakref.ref(h._ctx)
        loss = h.sum()
        del h
        loss.backward()
        del loss
        assert activation() is None
        assert node() is None
    finally:
        gc.enable()


def test_graph_without_backward_is_freed_when_its_output_dies():
    gc.disable()
    try:
        x = nn.randn(8, 8, requires_grad=True)
        out = (x * 2).sigmoid().sum()
        inner = weakref.ref(out._ctx.inputs[0].data)
        del out
        assert inner() is None
    finally:
        gc.enable()


def test_hooks_see_the_complete_gradient_and_may_replace_it():
    x = nn.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    seen = []
    y.register_hook(lambda g: seen.append(g.numpy().copy()))
    handle = y.register_hook(lambda g: g * 0.5)
    (y * y).sum().backward()
    np.testing.assert_allclose(seen[0], 2 * y.numpy())
    np.testing.assert_allclose(x.grad.numpy(), 3 * 0.5 * 2 * y.numpy())
    handle.remove()
    x.grad = None
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 3.0])


def test_leaf_hook_runs_before_accumulation():
    w = nn.tensor([1.0, 1.0], requires_grad=True)
    w.register_hook(lambda g: g * 2)
    (w * 5).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), [10.0, 10.0])


def test_retain_grad_keeps_an_intermediate_gradient():
    x = nn.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    y.retain_grad()
    (y * y).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), 2 * y.numpy())


def test_no_grad_records_nothing_and_enable_grad_overrides_it():
    x = nn.ones(3, requires_grad=True)
    with nn.no_grad():
        y = x * 2
        with nn.enable_grad():
            z = x * 2
    assert not y.requires_grad and y.is_leaf
    assert z.requires_grad and not z.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_only_requested_inputs_get_gradients():
    w = nn.randn(3, 3, requires_grad=True)
    data = nn.randn(3, 3)
    (data @ w).sum().backward()
    assert data.grad is None
    np.testing.assert_allclose(w.grad.numpy(), data.numpy().T @ np.ones((3, 3)), rtol=1e-6)


def test_backward_needs_a_gradient_for_non_scalar_outputs():
    x = nn.ones(2, 2, requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match="one-element"):
        y.backward()
    y.backward(nn.ones(2, 2))
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 2), 2.0))


def test_a_backward_with_the_wrong_shape_is_reported_with_the_op_name():
    class Broken(nn.Function):
        def forward(self, x):
            return x.sum()

        def backward(self, g):
            return g  # forgets to broadcast back

    x = nn.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="Broken.backward returned a gradient of shape"):
        Broken.apply(x).backward()


def test_detach_cuts_the_graph():
    x = nn.tensor([2.0], requires_grad=True)
    y = (x * x).detach() * x
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [4.0])


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="floating-point"):
        nn.tensor([1, 2], requires_grad=True)


def test_mixed_dtype_gradients_come_back_in_each_inputs_dtype():
    a = nn.tensor([1.0, 2.0], dtype=nn.float32, requires_grad=True)
    b = nn.tensor([3.0, 4.0], dtype=nn.float64, requires_grad=True)
    out = a.double() * b + a * b  # explicit cast, and NumPy's own promotion
    out.sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_allclose(a.grad.numpy(), [6.0, 8.0])


def test_gradients_never_alias_views_the_seed_or_each_other():
    w = nn.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    b = nn.tensor([1.0, 1.0], requires_grad=True)
    seed = np.ones(2, np.float32)
    out = w.reshape(4)[:2] + b  # w's gradient is a view scattered from b's upstream
    out.backward(seed)
    w.grad.data *= 7
    b.grad.data *= 3
    np.testing.assert_array_equal(seed, [1.0, 1.0])
    np.testing.assert_array_equal(b.grad.numpy(), [3.0, 3.0])
    np.testing.assert_array_equal(w.grad.numpy(), [[7.0, 7.0], [0.0, 0.0]])
    out2 = (w.reshape(4) * 1.0).sum()  # the reshape backward hands w a broadcast view
    w.grad = None
    out2.backward()
    w.grad.data += 1  # must be writeable and private
    np.testing.assert_array_equal(w.grad.numpy(), np.full((2, 2), 2.0))


def test_a_leaf_that_receives_the_callers_gradient_unchanged_gets_a_copy():
    x = nn.ones(3, requires_grad=True)
    upstream = np.array([1.0, 2.0, 3.0], np.float32)
    x.backward(upstream)  # the root is the leaf itself
    x.grad.data *= 0
    np.testing.assert_array_equal(upstream, [1.0, 2.0, 3.0])
