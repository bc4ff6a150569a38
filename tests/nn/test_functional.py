"""The fused ops of nn.functional: equal to their compositions, and their special cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import nn
import nn.functional as F


def _grads(fn, *arrays, seed=0):
    """Forward value and input gradients of fn under a fixed random upstream gradient."""
    inputs = [nn.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*inputs)
    out.backward(np.random.default_rng(seed).standard_normal(out.shape))
    return out.numpy(), [t.grad.numpy() for t in inputs]


def _assert_same(fused, composed, rtol=1e-10, atol=1e-12):
    (out_a, grads_a), (out_b, grads_b) = fused, composed
    np.testing.assert_allclose(out_a, out_b, rtol=rtol, atol=atol)
    for a, b in zip(grads_a, grads_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


RNG = np.random.default_rng(7)
X = RNG.standard_normal((3, 5, 7))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_equals_its_composition(dim):
    def composed(x):
        e = (x - x.amax(dim, keepdim=True)).exp()
        return e / e.sum(dim, keepdim=True)

    _assert_same(_grads(lambda x: F.softmax(x, dim), X), _grads(composed, X))


@pytest.mark.parametrize("dim", [0, -1])
def test_log_softmax_equals_its_composition(dim):
    _assert_same(_grads(lambda x: F.log_softmax(x, dim), X),
                 _grads(lambda x: x - x.logsumexp(dim, keepdim=True), X))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_equals_log_softmax_then_pick(smoothing):
    logits = RNG.standard_normal((6, 5))
    targets = np.array([0, 4, 2, -100, 1, 4])

    def composed(x):
        logp = F.log_softmax(x, -1)
        valid = targets != -100
        rows = np.flatnonzero(valid)
        nll = -logp[rows, targets[valid]]
        smooth = -logp[rows].mean(-1)
        return ((1 - smoothing) * nll + smoothing * smooth).mean()

    _assert_same(_grads(lambda x: F.cross_entropy(x, targets, label_smoothing=smoothing), logits),
                 _grads(composed, logits))


def test_cross_entropy_with_every_target_ignored_is_nan_like_torch():
    logits = RNG.standard_normal((2, 3))
    targets = np.array([-100, -100])
    ours = F.cross_entropy(nn.tensor(logits), targets).item()
    theirs = TF.cross_entropy(torch.tensor(logits), torch.tensor(targets)).item()
    assert math.isnan(ours) and math.isnan(theirs)


def test_cross_entropy_rejects_a_target_out_of_range():
    with pytest.raises(IndexError, match="out of range"):
        F.cross_entropy(nn.randn(2, 3), np.array([0, 3]))


def test_cross_entropy_custom_ignore_index_matches_torch():
    logits = RNG.standard_normal((4, 3))
    targets = np.array([2, 0, 2, 1])
    ours = _grads(lambda x: F.cross_entropy(x, targets, ignore_index=2), logits)
    t = torch.tensor(logits, requires_grad=True)
    loss = TF.cross_entropy(t, torch.tensor(targets), ignore_index=2)
    loss.backward(torch.tensor(np.random.default_rng(0).standard_normal(())))
    np.testing.assert_allclose(ours[0], loss.item(), rtol=1e-12)
    np.testing.assert_allclose(ours[1][0], t.grad.numpy(), rtol=1e-10)


def test_softmax_and_cross_entropy_survive_huge_logits():
    logits = nn.tensor([[1000.0, 0.0, -1000.0]], requires_grad=True)
    loss = F.cross_entropy(logits, np.array([0]))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.isfinite(logits.grad.numpy()))
    np.testing.assert_allclose(F.softmax(logits, -1).numpy(), [[1.0, 0.0, 0.0]], atol=1e-6)


def test_layer_norm_equals_its_composition():
    w, b = RNG.standard_normal(7), RNG.standard_normal(7)

    def composed(x, w, b):
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, correction=0, keepdim=True)
        return (x - mean) * (var + 1e-5).rsqrt() * w + b

    _assert_same(_grads(lambda x, w, b: F.layer_norm(x, 7, w, b), X, w, b), _grads(composed, X, w, b))


def test_rms_norm_equals_its_composition():
    w = RNG.standard_normal(7)

    def composed(x, w):
        return x * ((x * x).mean(-1, keepdim=True) + 1e-6).rsqrt() * w

    _assert_same(_grads(lambda x, w: F.rms_norm(x, 7, w, eps=1e-6), X, w), _grads(composed, X, w))


def test_rms_norm_default_eps_is_the_dtype_epsilon_like_torch():
    x = RNG.standard_normal((2, 4)).astype(np.float32) * 1e-4
    np.testing.assert_allclose(F.rms_norm(nn.tensor(x), 4).numpy(), TF.rms_norm(torch.tensor(x), (4,)).numpy(),
                               rtol=1e-5)


def test_embedding_equals_indexing_and_adds_repeated_ids():
    weight = RNG.standard_normal((10, 4))
    ids = np.array([[1, 3, 1], [9, 1, 0]])
    _assert_same(_grads(lambda w: F.embedding(ids, w), weight), _grads(lambda w: w[ids], weight))


def test_embedding_backward_equals_add_at_on_a_gpt_sized_batch():
    weight = nn.randn(512, 16, requires_grad=True)
    ids = np.random.default_rng(0).integers(0, 512, size=(8, 256))
    g = np.random.default_rng(1).standard_normal((8, 256, 16)).astype(np.float32)
    F.embedding(ids, weight).backward(g)
    expected = np.zeros((512, 16), np.float32)
    np.add.at(expected, ids.reshape(-1), g.reshape(-1, 16))
    np.testing.assert_allclose(weight.grad.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_embedding_padding_idx_gets_no_gradient_like_torch():
    weight = RNG.standard_normal((5, 3))
    ids = np.array([0, 2, 0, 4])
    ours = _grads(lambda w: F.embedding(ids, w, padding_idx=0), weight)
    t = torch.tensor(weight, requires_grad=True)
    out = TF.embedding(torch.tensor(ids), t, padding_idx=0)
    out.backward(torch.tensor(np.random.default_rng(0).standard_normal(out.shape)))
    np.testing.assert_allclose(ours[1][0], t.grad.numpy(), rtol=1e-12)


def test_attention_equals_its_composition_with_causal_mask():
    q, k, v = (RNG.standard_normal((2, 3, 5, 4)) for _ in range(3))

    def composed(q, k, v):
        scores = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(4))
        mask = np.tril(np.ones((5, 5), dtype=bool))
        return F.softmax(scores.masked_fill(~mask, -math.inf), -1) @ v

    _assert_same(_grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v),
                 _grads(composed, q, k, v))


def test_attention_keeps_no_float64_copy_of_the_scores():
    q = nn.randn(1, 2, 16, 8, requires_grad=True)
    out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert out.dtype == np.float32
    saved = [a for a in out._ctx.saved_arrays if a is not None]
    assert all(a.dtype != np.float64 for a in saved)
    # exactly one (B, H, T, T) array is kept: the float32 probabilities (no dropout mask without dropout)
    assert sum(a.nbytes for a in saved if a.shape[-2:] == (16, 16)) == 1 * 2 * 16 * 16 * 4


def test_attention_rejects_mask_and_is_causal_together():
    q = nn.randn(1, 2, 3)
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=np.ones((2, 2), bool), is_causal=True)


def test_attention_dropout_equals_manual_dropout_with_the_same_mask():
    q, k, v = (RNG.standard_normal((2, 4, 3)) for _ in range(3))
    nn.manual_seed(3)
    fused = _grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.3), q, k, v)
    nn.manual_seed(3)
    keep = nn.backend.rng().random((2, 4, 4)) >= 0.3

    def composed(q, k, v):
        p = F.softmax((q @ k.transpose(-1, -2)) * (1 / math.sqrt(3)), -1)
        return (p * keep * (1 / 0.7)) @ v

    _assert_same(fused, _grads(composed, q, k, v))


def test_attention_with_dropout_passes_gradcheck():
    q, k, v = (nn.tensor(RNG.standard_normal((2, 4, 3)), requires_grad=True) for _ in range(3))
    assert nn.gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.4, is_causal=True),
                        [q, k, v])


def test_dropout_zeroes_about_p_scales_the_rest_and_repeats_with_the_seed():
    x = nn.ones(100_000)
    nn.manual_seed(11)
    a = F.dropout(x, p=0.25).numpy()
    nn.manual_seed(11)
    b = F.dropout(x, p=0.25).numpy()
    np.testing.assert_array_equal(a, b)
    zero_fraction = float((a == 0).mean())
    assert abs(zero_fraction - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 100_000)
    np.testing.assert_allclose(np.unique(a), [0.0, 1 / 0.75], rtol=1e-6)


def test_dropout_backward_uses_the_forward_mask_and_eval_is_identity():
    x = nn.randn(50, requires_grad=True)
    y = F.dropout(x, p=0.5)
    y.backward(np.ones(50, np.float32))
    np.testing.assert_array_equal(x.grad.numpy() == 0, y.numpy() == 0)
    assert F.dropout(x, p=0.5, training=False) is x
    assert nn.gradcheck(lambda t: F.dropout(t, 0.5), [nn.randn(6, dtype=nn.float64, requires_grad=True)])


def test_empty_tensors_flow_through_elementwise_reduction_matmul_and_cat():
    a = nn.zeros(0, 3, requires_grad=True)
    b = nn.ones(3, 2, requires_grad=True)
    out = nn.cat([(a.exp() @ b), nn.ones(1, 2)], dim=0).sum()
    out.backward()
    assert a.grad.shape == (0, 3)
    np.testing.assert_allclose(b.grad.numpy(), np.zeros((3, 2)))
    assert out.item() == 2.0


def test_float32_normal_cdf_of_exact_gelu_is_accurate_to_float32_precision():
    from nn.kernels.gelu import _normal_cdf_and_density

    x = np.linspace(-9, 9, 200_001)
    cdf, density = _normal_cdf_and_density(x.astype(np.float32))
    exact_cdf = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    exact_density = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    assert cdf.dtype == np.float32
    # A&S 7.1.26's own error (1.5e-7 on erf, half that on Phi) plus float32 rounding: a few ulps near 1.
    assert np.max(np.abs(cdf - exact_cdf)) < 4e-7
    assert np.max(np.abs(density - exact_density)) < 1e-7


def test_softmax_rows_far_below_the_rest_of_their_block_stay_exact():
    # one shift per block is used; rows 300 below it must be redone with their own max
    x = np.array([[0.0, 1.0, 2.0], [-300.0, -299.0, -301.0], [-90.0, -89.5, -95.0]], dtype=np.float32)
    for fn, ref in ((F.softmax, TF.softmax), (F.log_softmax, TF.log_softmax)):
        np.testing.assert_allclose(fn(nn.tensor(x), -1).numpy(), ref(torch.tensor(x), -1).numpy(), rtol=1e-6)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_softmax_of_a_fully_masked_row_is_nan_like_torch():
    x = np.array([[0.0, 1.0], [-np.inf, -np.inf]], dtype=np.float32)
    ours, theirs = F.softmax(nn.tensor(x), -1).numpy(), TF.softmax(torch.tensor(x), -1).numpy()
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)
