"""Causal self-attention, rotary positions and the KV cache of ``nn.attention``.

The references are the plain-PyTorch ones the GPT tests use
(``tests/tinygrad_llm/torch_gpt.py``): an attention module spelled out
(explicit mask, softmax, ``repeat_interleave`` for grouped-query heads) and
rotary positions computed a second way, with complex numbers. Besides
equality with them: the property that makes RoPE a *relative* position code,
and a KV cache that, fed one token or one chunk at a time, gives what a full
recompute gives at every position.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nn
from nn.attention import CausalSelfAttention, KVCache, apply_rope, repeat_kv, rope_tables

sys.path.append(str(Path(__file__).resolve().parents[1] / "tinygrad_llm"))  # the shared torch reference
from torch_gpt import TorchCausalSelfAttention, apply_rope_complex  # noqa: E402

RTOL = {np.float64: 1e-10, np.float32: 1e-5}
WIDTH, HEADS, CONTEXT = 32, 4, 16


def assert_close(ours: np.ndarray, theirs: torch.Tensor | np.ndarray, dtype, name: str = "") -> None:
    """Elementwise agreement to the dtype's relative tolerance, measured against the reference's largest value."""
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    assert ours.dtype == dtype, name
    assert ours.shape == theirs.shape, name
    scale = max(float(np.abs(theirs).max()), 1e-12)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL[dtype], atol=RTOL[dtype] * scale, err_msg=name)


def attention(pos: str, n_kv_head: int, dtype, bias: bool = True) -> CausalSelfAttention:
    """A random attention layer in ``dtype``, in eval mode (no dropout)."""
    layer = CausalSelfAttention(WIDTH, HEADS, n_kv_head, block_size=CONTEXT, pos=pos, bias=bias)
    return layer.to(dtype).eval()


# ---------------------------------------------------------------- against the PyTorch reference
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("pos", "n_kv_head", "bias"), [
    ("learned", 4, True), ("learned", 2, False), ("rope", 4, True), ("rope", 2, True), ("rope", 1, False)])
def test_attention_output_and_gradients_equal_pytorch(pos, n_kv_head, bias, dtype):
    ours = attention(pos, n_kv_head, dtype, bias)
    theirs = TorchCausalSelfAttention(WIDTH, HEADS, n_kv_head, pos=pos, bias=bias).to(getattr(torch, dtype.__name__))
    theirs.load_state_dict({k: torch.from_numpy(v.numpy().copy()) for k, v in ours.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 11, WIDTH)).astype(dtype)
    x_ours, x_theirs = nn.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)

    out, ref = ours(x_ours), theirs(x_theirs)
    assert_close(out.numpy(), ref, dtype, "output")
    upstream = rng.standard_normal(x.shape).astype(dtype)
    (out * nn.tensor(upstream)).sum().backward()
    (ref * torch.tensor(upstream)).sum().backward()
    assert_close(x_ours.grad.numpy(), x_theirs.grad, dtype, "input gradient")
    reference = dict(theirs.named_parameters())
    assert [name for name, _ in ours.named_parameters()] == list(reference)
    for name, p in ours.named_parameters():
        assert_close(p.grad.numpy(), reference[name].grad, dtype, name)


def test_attention_parameter_shapes_follow_the_grouped_layout():
    layer = CausalSelfAttention(WIDTH, HEADS, n_kv_head=2, pos="rope")
    head_dim = WIDTH // HEADS
    assert layer.c_attn.weight.shape == ((HEADS + 2 * 2) * head_dim, WIDTH)
    assert layer.c_proj.weight.shape == (WIDTH, WIDTH)
    assert list(layer.state_dict()) == ["c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"]


def test_repeat_kv_gives_key_value_head_j_to_query_heads_j_rep_to_j_rep_plus_rep():
    kv = np.random.default_rng(0).standard_normal((2, 3, 5, 4))
    np.testing.assert_array_equal(repeat_kv(nn.tensor(kv), 4).numpy(),
                                  torch.tensor(kv).repeat_interleave(4, dim=1).numpy())


def test_later_tokens_never_change_earlier_outputs():
    layer = attention("rope", 2, np.float64)
    x = np.random.default_rng(0).standard_normal((1, 10, WIDTH))
    changed = x.copy()
    changed[:, 6:] += 1.0
    before, after = layer(nn.tensor(x)).numpy(), layer(nn.tensor(changed)).numpy()
    np.testing.assert_allclose(before[:, :6], after[:, :6], rtol=1e-13, atol=1e-15)  # BLAS may reorder sums
    assert not np.allclose(before[:, 6:], after[:, 6:])


# ---------------------------------------------------------------- rotary positions
def test_rope_reference_is_the_rotate_half_formula():
    """The complex reference pairs dims (j, j + d/2); Meta's unpermuted pairing (2j, 2j+1) is a different map."""
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    positions = torch.arange(7)
    inv_freq = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    angles = torch.outer(positions.double(), inv_freq).repeat(1, 2)
    rotate_half = torch.cat([-x[..., 4:], x[..., :4]], dim=-1)
    spec = x * angles.cos() + rotate_half * angles.sin()
    torch.testing.assert_close(apply_rope_complex(x, positions), spec, rtol=1e-14, atol=1e-14)
    interleaved = torch.view_as_real(torch.view_as_complex(x.reshape(2, 3, 7, 4, 2))
                                     * torch.polar(torch.ones_like(angles[:, :4]), angles[:, :4])).reshape(x.shape)
    assert not torch.allclose(interleaved, spec)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("head_dim", "theta", "start"), [(8, 10000.0, 0), (16, 10000.0, 5), (16, 500000.0, 100)])
def test_rope_equals_the_complex_reference(head_dim, theta, start, dtype):
    length = 9
    cos, sin = rope_tables(head_dim, start + length, theta, dtype)
    assert cos.shape == sin.shape == (start + length, head_dim) and cos.dtype == dtype
    x = np.random.default_rng(0).standard_normal((2, 3, length, head_dim)).astype(dtype)
    x_ours, x_theirs = nn.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out = apply_rope(x_ours, nn.tensor(cos[start:]), nn.tensor(sin[start:]))
    ref = apply_rope_complex(x_theirs, torch.arange(start, start + length), theta)
    assert_close(out.numpy(), ref, dtype, "rotated")
    upstream = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    (out * nn.tensor(upstream)).sum().backward()
    (ref * torch.tensor(upstream)).sum().backward()
    assert_close(x_ours.grad.numpy(), x_theirs.grad, dtype, "gradient")


def _rotate(x: np.ndarray, position: int, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    return apply_rope(nn.tensor(x), nn.tensor(cos[position]), nn.tensor(sin[position])).numpy()


def test_rope_dot_products_depend_only_on_the_offset():
    head_dim = 16
    cos, sin = rope_tables(head_dim, 64, dtype=np.float64)
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(head_dim), rng.standard_normal(head_dim)
    for m, n in [(0, 0), (3, 1), (1, 3), (7, 0), (10, 20)]:
        base = _rotate(q, m, cos, sin) @ _rotate(k, n, cos, sin)
        for shift in (1, 5, 30):
            shifted = _rotate(q, m + shift, cos, sin) @ _rotate(k, n + shift, cos, sin)
            assert shifted == pytest.approx(base, rel=1e-12, abs=1e-12), (m, n, shift)
    offsets = [_rotate(q, m, cos, sin) @ _rotate(k, 0, cos, sin) for m in range(4)]
    assert len(set(np.round(offsets, 6))) == 4  # and it does depend on the offset
    np.testing.assert_allclose(np.linalg.norm(_rotate(q, 9, cos, sin)), np.linalg.norm(q), rtol=1e-14)


@pytest.mark.parametrize("make", [
    lambda: CausalSelfAttention(WIDTH, HEADS, pos="rope", block_size=CONTEXT, dtype=np.float64),
    lambda: CausalSelfAttention(WIDTH, HEADS, pos="rope", block_size=CONTEXT).to(nn.float64),
], ids=["built-float64", "cast-to-float64"])
def test_rope_tables_are_exact_in_the_layer_dtype(make):
    """A float64 layer (gradient checks, the float64 comparisons) needs float64 angles, not float32 ones cast up."""
    layer = make()
    cos, sin = rope_tables(WIDTH // HEADS, CONTEXT, dtype=np.float64)
    layer_cos, layer_sin = layer.rope(layer.c_attn.weight)
    assert layer_cos.dtype == layer_sin.dtype == np.float64
    np.testing.assert_allclose(layer_cos.numpy(), cos, rtol=0, atol=1e-15)
    np.testing.assert_allclose(layer_sin.numpy(), sin, rtol=0, atol=1e-15)


def test_rope_needs_an_even_head_dimension():
    with pytest.raises(ValueError, match="even head dimension"):
        rope_tables(7, 4)


# ---------------------------------------------------------------- KV cache
@pytest.mark.parametrize(("pos", "n_kv_head"), [("learned", 4), ("rope", 4), ("rope", 2), ("rope", 1)])
@pytest.mark.parametrize("chunks", [[1] * 12, [3, 1, 4, 2, 2]], ids=["one-at-a-time", "chunks"])
def test_kv_cache_equals_full_recompute_at_every_position(pos, n_kv_head, chunks):
    layer = attention(pos, n_kv_head, np.float64)
    x = np.random.default_rng(0).standard_normal((2, sum(chunks), WIDTH))
    full = layer(nn.tensor(x)).numpy()
    cache = KVCache(2, n_kv_head, CONTEXT, WIDTH // HEADS, dtype=np.float64)
    start = 0
    for size in chunks:
        step = layer(nn.tensor(x[:, start:start + size]), cache).numpy()
        start += size
        assert cache.length == start
        np.testing.assert_allclose(step, full[:, start - size:start], rtol=1e-12, atol=1e-12)


def test_kv_cache_refuses_to_overflow_and_can_be_reset():
    cache = KVCache(1, 2, max_length=4, head_dim=3)
    k = nn.zeros(1, 2, 3, 3)
    cache.append(k, k)
    with pytest.raises(ValueError, match="KV cache holds 4 positions; 6 needed"):
        cache.append(k, k)
    cache.reset()
    keys, values = cache.append(k, k)
    assert cache.length == 3 and keys.shape == values.shape == (1, 2, 3, 3)


@pytest.mark.parametrize("cos_shape,sin_shape", [((3, 2), (3, 4)), ((), ()), ((3, 4), ())])
def test_rope_refuses_tables_without_the_head_dimension(cos_shape, sin_shape):
    x = nn.tensor(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="last dimension"):
        apply_rope(x, nn.tensor(np.ones(cos_shape)), nn.tensor(np.ones(sin_shape)))


def test_rope_with_tables_broadcasting_past_x_matches_the_formula():
    """Per-row tables (B, 1, T, d) against x (1, H, T, d): the output and x's gradient take the broadcast shape."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 3, 4))
    cos, sin = rng.standard_normal((5, 1, 3, 4)), rng.standard_normal((5, 1, 3, 4))
    ours = nn.tensor(x, requires_grad=True)
    out = apply_rope(ours, nn.tensor(cos), nn.tensor(sin))
    out.sum().backward()
    t = torch.tensor(x, requires_grad=True)
    ref = t * torch.tensor(cos) + torch.cat([-t[..., 2:], t[..., :2]], dim=-1) * torch.tensor(sin)
    ref.sum().backward()
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.grad.numpy(), t.grad.numpy(), rtol=1e-12)
