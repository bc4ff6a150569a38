"""The NumPy counterparts of the CUDA kernels (cross-entropy, flash attention, AdamW) against PyTorch, on the CPU.

These are the references the GPU tests compare the kernels with, so they are
held to PyTorch here: float64 to ~1e-10, float32 to ~1e-5, float16 against
a float64 computation on the same (rounded) values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from nn.kernels import adamw, attention, cross_entropy

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}


# ---------------------------------------------------------------- cross-entropy


def _logits_and_targets(rows, classes, dtype, ignore_index=-100, seed=0):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((rows, classes))).astype(dtype)
    targets = rng.integers(0, classes, rows)
    targets[::5] = ignore_index  # every fifth row ignored
    return logits, targets


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows,classes", [(1, 7), (100, 1003), (9, 50257)])
def test_cross_entropy_forward_matches_torch(dtype, rows, classes):
    logits, targets = _logits_and_targets(rows, classes, dtype)
    loss, lse = cross_entropy.cross_entropy_forward(logits, targets)
    expected = TF.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), reduction="none")
    np.testing.assert_allclose(loss, expected.numpy(), **TOL[dtype])
    np.testing.assert_allclose(lse, torch.logsumexp(torch.from_numpy(logits), dim=1).numpy(), **TOL[dtype])
    assert loss.dtype == dtype and lse.dtype == dtype
    assert np.all(loss[targets == -100] == 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_backward_per_row_matches_torch(dtype):
    logits, targets = _logits_and_targets(100, 1003, dtype, ignore_index=7)
    row_grad = np.random.default_rng(1).standard_normal(100).astype(dtype)
    _, lse = cross_entropy.cross_entropy_forward(logits, targets, ignore_index=7)
    grad = cross_entropy.cross_entropy_backward(logits, targets, lse, row_grad, ignore_index=7)

    x = torch.tensor(logits, requires_grad=True)
    TF.cross_entropy(x, torch.from_numpy(targets), ignore_index=7, reduction="none").backward(
        torch.from_numpy(row_grad))
    np.testing.assert_allclose(grad, x.grad.numpy(), **TOL[dtype])
    assert grad.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_backward_of_the_mean_matches_torch(dtype):
    logits, targets = _logits_and_targets(37, 515, dtype)
    count = int((targets != -100).sum())
    _, lse = cross_entropy.cross_entropy_forward(logits, targets)
    grad = cross_entropy.cross_entropy_backward(logits, targets, lse, 0.7 / count)

    x = torch.tensor(logits, requires_grad=True)
    (0.7 * TF.cross_entropy(x, torch.from_numpy(targets))).backward()
    np.testing.assert_allclose(grad, x.grad.numpy(), **TOL[dtype])


def test_cross_entropy_float16_is_computed_in_float32():
    logits, targets = _logits_and_targets(40, 333, np.float16)
    loss, lse = cross_entropy.cross_entropy_forward(logits, targets)
    assert loss.dtype == np.float32
    x = torch.tensor(logits.astype(np.float64), requires_grad=True)
    expected = TF.cross_entropy(x, torch.from_numpy(targets), reduction="none")
    np.testing.assert_allclose(loss, expected.detach().numpy(), rtol=1e-5, atol=1e-5)
    expected.sum().backward()
    grad = cross_entropy.cross_entropy_backward(logits, targets, lse, 1.0)
    assert grad.dtype == np.float16
    np.testing.assert_allclose(grad.astype(np.float64), x.grad.numpy(), rtol=2e-3, atol=2e-4)


def test_cross_entropy_ignored_rows_with_inf_logits_get_zero_gradient():
    logits, targets = _logits_and_targets(6, 10, np.float64)
    logits[0, 3] = np.inf  # row 0 is ignored (targets[::5])
    loss, lse = cross_entropy.cross_entropy_forward(logits, targets)
    grad = cross_entropy.cross_entropy_backward(logits, targets, lse, 1.0)
    assert loss[0] == 0 and np.all(grad[0] == 0)
    assert np.all(np.isfinite(grad[1:]))


def test_cross_entropy_rejects_targets_out_of_range():
    logits, targets = _logits_and_targets(4, 10, np.float32)
    targets[1] = 10
    with pytest.raises(IndexError, match="10 classes"):
        cross_entropy.cross_entropy_forward(logits, targets)


@pytest.fixture
def small_blocks(monkeypatch):
    """64 KiB cache blocks, whatever this machine's L2: the tests below then always span several blocks."""
    from nn.kernels import blocked

    monkeypatch.setattr(blocked, "BLOCK_BYTES", 64 * 1024)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_and_grad_over_many_blocks_matches_torch(smoothing, small_blocks):
    """The op's one-pass kernel: rows spread over many cache blocks, one far below its block's max, some ignored."""
    logits, targets = _logits_and_targets(700, 1003, np.float32)
    logits[7] -= 500  # its exponentials underflow against the block's max: redone with its own
    valid = targets != -100
    safe = np.where(valid, targets, 0)
    loss, grad = cross_entropy.loss_and_grad(logits, safe, valid / valid.sum(), smoothing)
    t = torch.from_numpy(logits).requires_grad_()
    ref = TF.cross_entropy(t, torch.from_numpy(targets), label_smoothing=smoothing)
    ref.backward()
    assert math.isclose(float(loss[valid].mean()), ref.item(), rel_tol=2e-6)
    np.testing.assert_allclose(grad, t.grad.numpy(), **TOL[np.float32])
    assert np.all(grad[~valid] == 0)
    only_loss, no_grad = cross_entropy.loss_and_grad(logits, safe, 1.0, smoothing, want_grad=False)
    assert no_grad is None and np.array_equal(only_loss, loss)


@pytest.mark.parametrize("upstream", [1.0, 3.0])
def test_cross_entropy_gradient_made_in_forward_survives_a_second_backward(upstream):
    """The op hands back the gradient it made in forward; a retained graph's second pass must find it intact."""
    import nn
    import nn.functional as F

    logits, targets = _logits_and_targets(20, 30, np.float64)
    ours = nn.Tensor(logits, requires_grad=True)
    loss = F.cross_entropy(ours, targets)
    if upstream != 1:
        loss = loss * upstream
    loss.backward(retain_graph=True)
    ours.grad.data *= 10  # the user's own in-place use of .grad must not reach the saved gradient
    loss.backward()
    t = torch.from_numpy(logits).requires_grad_()
    TF.cross_entropy(t, torch.from_numpy(targets)).backward()
    np.testing.assert_allclose(ours.grad.numpy(), 11 * upstream * t.grad.numpy(), **TOL[np.float64])


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_ignored_rows_get_zero_gradient_even_from_an_infinite_upstream(reduction):
    import nn
    import nn.functional as F

    logits, targets = _logits_and_targets(6, 5, np.float64)  # rows 0 and 5 ignored
    upstream = np.array([np.inf, 1.0, 2.0, 0.5, 1.5, np.nan]) if reduction == "none" else np.array(np.inf)
    ours = nn.Tensor(logits, requires_grad=True)
    F.cross_entropy(ours, targets, reduction=reduction).backward(upstream)
    t = torch.from_numpy(logits).requires_grad_()
    TF.cross_entropy(t, torch.from_numpy(targets), reduction=reduction).backward(torch.from_numpy(upstream))
    np.testing.assert_array_equal(ours.grad.numpy()[[0, 5]], 0)
    np.testing.assert_array_equal(t.grad.numpy()[[0, 5]], 0)
    # Rows fed an infinite or NaN gradient are not finite on either side (where inf - inf falls differs).
    np.testing.assert_array_equal(np.isfinite(ours.grad.numpy()), np.isfinite(t.grad.numpy()))


# ---------------------------------------------------------------- flash attention


def _qkv(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(4)]  # q, k, v, dout


def _torch_attention(q, k, v, dout, scale=None):
    """out, logsumexp of the masked scaled scores, and (dq, dk, dv), all by PyTorch in float64."""
    tq, tk, tv = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (q, k, v))
    out = TF.scaled_dot_product_attention(tq, tk, tv, is_causal=True, scale=scale)
    out.backward(torch.from_numpy(dout.astype(np.float64)))
    seq = q.shape[-2]
    c = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (tq @ tk.transpose(-1, -2)).detach() * c
    scores.masked_fill_(torch.ones(seq, seq, dtype=torch.bool).triu(1), -math.inf)
    lse = torch.logsumexp(scores, dim=-1)
    return out.detach().numpy(), lse.numpy(), (tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(2, 3, 1, 16), (2, 3, 37, 24), (1, 2, 150, 32), (2, 1, 200, 8), (130, 16)])
def test_flash_attention_matches_torch_sdpa(dtype, shape):
    """T below, at and past several tiles (TILE = 64, T not a multiple of it), with and without batch dims."""
    q, k, v, dout = _qkv(shape, dtype)
    out, lse = attention.flash_attention_forward(q, k, v)
    dq, dk, dv = attention.flash_attention_backward(q, k, v, out, lse, dout)
    expected_out, expected_lse, expected_grads = _torch_attention(q, k, v, dout)
    np.testing.assert_allclose(out, expected_out, **TOL[dtype])
    np.testing.assert_allclose(lse, expected_lse, **TOL[dtype])
    for got, want in zip((dq, dk, dv), expected_grads, strict=True):
        assert got.dtype == dtype and got.shape == shape
        np.testing.assert_allclose(got, want, **TOL[dtype])


def test_flash_attention_tiles_the_sequence():
    """The test shapes above really span several tiles (T = 200 covers four of them, the last partial)."""
    assert 200 > 3 * attention.TILE and 200 % attention.TILE != 0


def test_flash_attention_with_an_explicit_scale():
    q, k, v, dout = _qkv((2, 70, 12), np.float64, seed=3)
    out, lse = attention.flash_attention_forward(q, k, v, scale=0.3)
    grads = attention.flash_attention_backward(q, k, v, out, lse, dout, scale=0.3)
    expected_out, expected_lse, expected_grads = _torch_attention(q, k, v, dout, scale=0.3)
    np.testing.assert_allclose(out, expected_out, **TOL[np.float64])
    np.testing.assert_allclose(lse, expected_lse, **TOL[np.float64])
    for got, want in zip(grads, expected_grads, strict=True):
        np.testing.assert_allclose(got, want, **TOL[np.float64])


def test_flash_attention_float16_against_float64():
    q, k, v, dout = _qkv((2, 2, 90, 32), np.float16, seed=5)
    out, lse = attention.flash_attention_forward(q, k, v)
    grads = attention.flash_attention_backward(q, k, v, out, lse, dout)
    expected_out, expected_lse, expected_grads = _torch_attention(q, k, v, dout)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    np.testing.assert_allclose(out.astype(np.float64), expected_out, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(lse, expected_lse, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=5e-3, atol=5e-3)


# ---------------------------------------------------------------- AdamW, norm, scale


HYPER = dict(lr=3e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


def _torch_adamw(params, grads_per_step, grad_scale=1.0):
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    opt = torch.optim.AdamW(tensors, lr=HYPER["lr"], betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"],
                            weight_decay=HYPER["weight_decay"])
    for grads in grads_per_step:
        for t, g in zip(tensors, grads, strict=True):
            t.grad = torch.from_numpy(g.astype(p_dtype(params)) * grad_scale)
        opt.step()
    states = [opt.state[t] for t in tensors]
    return ([t.detach().numpy() for t in tensors], [s["exp_avg"].numpy() for s in states],
            [s["exp_avg_sq"].numpy() for s in states])


def p_dtype(params):
    return params[0].dtype


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("grad_scale", [1.0, 0.25])
def test_adamw_over_one_flat_buffer_matches_torch(dtype, grad_scale):
    """Two parameters living in one flat buffer, updated by one call per step, equal torch's per-tensor AdamW."""
    rng = np.random.default_rng(0)
    sizes = (1000, 37)
    flat = rng.standard_normal(sum(sizes)).astype(dtype)
    params = [flat[:sizes[0]].copy(), flat[sizes[0]:].copy()]
    grads_per_step = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(5)]
    m, v = np.zeros_like(flat), np.zeros_like(flat)
    for step, grads in enumerate(grads_per_step, start=1):
        adamw.adamw_step(flat, np.concatenate(grads), m, v, step, grad_scale=grad_scale, **HYPER)
    want_p, want_m, want_v = _torch_adamw(params, grads_per_step, grad_scale)
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat, np.concatenate(want_p), **tol)
    np.testing.assert_allclose(m, np.concatenate(want_m), **tol)
    np.testing.assert_allclose(v, np.concatenate(want_v), **tol)


def test_adamw_float16_gradients_update_float32_master_weights():
    rng = np.random.default_rng(1)
    param = rng.standard_normal(513).astype(np.float32)
    start = param.copy()
    grads = [rng.standard_normal(513).astype(np.float16) for _ in range(3)]
    m, v = np.zeros_like(param), np.zeros_like(param)
    for step, g in enumerate(grads, start=1):
        adamw.adamw_step(param, g, m, v, step, **HYPER)
    want_p, _, _ = _torch_adamw([start], [[g.astype(np.float32)] for g in grads])
    np.testing.assert_allclose(param, want_p[0], rtol=1e-5, atol=1e-6)


def test_adamw_squares_float16_gradients_in_the_parameters_dtype():
    """g^2 of a float16 gradient of 1000 overflows float16 (max 65504); in float32 it is fine."""
    grad = np.full(5, 1000.0, dtype=np.float16)
    param, m, v = np.ones(5, dtype=np.float32), np.zeros(5, dtype=np.float32), np.zeros(5, dtype=np.float32)
    adamw.adamw_step(param, grad, m, v, 1, **HYPER)
    want_p, _, want_v = _torch_adamw([np.ones(5, dtype=np.float32)], [[grad.astype(np.float32)]])
    np.testing.assert_allclose(v, want_v[0], rtol=1e-6)
    np.testing.assert_allclose(param, want_p[0], rtol=1e-6)


def test_adamw_on_strided_views_updates_them_in_place_like_contiguous_arrays():
    """A parameter may be a strided view (a column slice, a transpose): it is updated where it lives."""
    rng = np.random.default_rng(3)
    storage = rng.standard_normal((3, 4, 6))
    storage[1:] **= 2  # moments: v must be positive
    param, m, v = storage[0, :, ::2], storage[1, :, ::2], storage[2, :, ::2]  # three strided views
    grad = rng.standard_normal((3, 4)).T  # a transposed gradient
    start = param.copy()
    want = [a.copy() for a in (param, m, v)]  # C-contiguous copies
    for step in (1, 2):
        adamw.adamw_step(param, grad, m, v, step, grad_scale=0.5, **HYPER)
        adamw.adamw_step(*want[:1], np.ascontiguousarray(grad), *want[1:], step, grad_scale=0.5, **HYPER)
    assert not np.allclose(want[0], start)
    for got, expected in zip((storage[0, :, ::2], storage[1, :, ::2], storage[2, :, ::2]), want, strict=True):
        np.testing.assert_array_equal(got, expected)  # written through the views, into the storage


def test_sum_of_squares_and_scale_give_torch_clipping():
    """sum_of_squares then scale_ is clip_grad_norm_ over one flat gradient buffer."""
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal(s).astype(np.float32) for s in (300, 7)]
    flat = np.concatenate(grads)
    norm = math.sqrt(adamw.sum_of_squares(flat))
    adamw.scale_(flat, 1.5 / (norm + 1e-6))

    tensors = [torch.zeros(g.shape, requires_grad=True) for g in grads]
    for t, g in zip(tensors, grads, strict=True):
        t.grad = torch.from_numpy(g.copy())
    expected_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm=1.5)
    assert norm == pytest.approx(float(expected_norm), rel=1e-6)
    np.testing.assert_allclose(flat, np.concatenate([t.grad.numpy() for t in tensors]), rtol=1e-6)


def test_scale_of_an_infinite_gradient_by_zero_is_nan():
    x = np.array([np.inf, 1.0], dtype=np.float32)
    adamw.scale_(x, 0.0)
    assert np.isnan(x[0]) and x[1] == 0


# ---------------------------------------------------------------- GELU (tanh) with its s kept


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tanh_gelu_backward_from_the_kept_s_matches_torch_over_many_blocks(dtype, small_blocks):
    """Against PyTorch in float64 on the same values; float32 near the far negative tail cancels to ~1e-6."""
    from nn.kernels import gelu

    rng = np.random.default_rng(3)
    x = (4 * rng.standard_normal((700, 1001))).astype(dtype)[:, ::2]  # strided, several cache blocks
    g = rng.standard_normal(x.shape).astype(dtype)
    y, s = gelu.gelu_tanh_forward_keep(x)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).requires_grad_()
    ref = TF.gelu(t, approximate="tanh")
    ref.backward(torch.from_numpy(g.astype(np.float64)))
    tol = TOL[np.float64] if dtype == np.float64 else dict(rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(y, ref.detach().numpy(), **tol)
    x64 = t.detach().numpy()
    np.testing.assert_allclose(s, (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3))) / 2, **tol)
    np.testing.assert_allclose(gelu.gelu_tanh_backward_kept(x, s, g), t.grad.numpy(), **tol)


# ---------------------------------------------------------------- cache blocks


def _fake_cache_dir(tmp_path, entries):
    for name, (level, size) in entries.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "level").write_text(f"{level}\n")
        (tmp_path / name / "size").write_text(f"{size}\n")
    return str(tmp_path)


@pytest.mark.parametrize("entries,expected", [
    ({"index0": (1, "48K"), "index1": (1, "32K"), "index2": (2, "1024K"), "index3": (3, "32768K")}, 1 << 20),
    ({"index0": (1, "32K"), "index2": (2, "2M")}, 2 << 20),
    ({"index0": (1, "32K"), "index3": (3, "8192K")}, 256 * 1024),   # no L2 listed: the default
    ({"index2": (2, "lots")}, 256 * 1024),                          # unreadable size: the default
    ({"index2": (2, "64M")}, 256 * 1024),                           # implausible: the default
])
def test_block_size_is_the_l2_cache_read_from_sysfs(tmp_path, entries, expected):
    from nn.kernels.blocked import l2_cache_bytes

    assert l2_cache_bytes(cpu_dir=_fake_cache_dir(tmp_path, entries)) == expected


def test_block_size_without_sysfs_is_the_default(tmp_path):
    from nn.kernels.blocked import l2_cache_bytes

    assert l2_cache_bytes(cpu_dir=str(tmp_path / "absent")) == 256 * 1024
