"""Every CUDA kernel against its NumPy counterpart on the same inputs (needs CuPy and a CUDA GPU).

float32 is compared with the NumPy kernel in float32, tightly; float16 and
bfloat16 with the NumPy kernel in float64 on the same (rounded) inputs, to
within a few roundings of the 16-bit type. Sizes are odd on purpose (T not a
multiple of the attention tile, a vocabulary not a multiple of 64, row
lengths not a multiple of 32), and some inputs are non-contiguous views.
bfloat16 travels as uint16 bit patterns (CuPy has no bfloat16 dtype).
"""

from __future__ import annotations

import numpy as np
import pytest

from nn.kernels import adamw, attention, cross_entropy, cuda, gelu, norm
from nn.module import Parameter
from nn.optim import AdamW, clip_grad_norm_
from nn.tensor import Tensor

real_adamw_step = cuda.adamw_step

try:
    import cupy as cp

    HAVE_GPU = cp.cuda.runtime.getDeviceCount() > 0
except Exception:  # no CuPy, no driver, or no device
    cp, HAVE_GPU = None, False

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAVE_GPU, reason="needs CuPy and a CUDA GPU")]

DTYPES = ("float32", "float16", "bfloat16")
REL_TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
"""Allowed error relative to the largest reference value: float32 vs float32, 16-bit vs float64."""


# ---------------------------------------------------------------- dtype helpers


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest even), as uint16 bit patterns."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def test_bf16_helpers_round_to_nearest_even():
    # bfloat16 keeps 7 mantissa bits: near 1 its spacing is 2^-7; ties go to the even neighbour.
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-7 + 2**-9, -2.5], dtype=np.float32)
    np.testing.assert_array_equal(from_bf16_bits(to_bf16_bits(x)), [1.0, 1.0, 1 + 2**-6, 1 + 2**-7, -2.5])


def storage(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(what goes to the GPU, the same values as the NumPy reference sees them)."""
    if dtype == "bfloat16":
        bits = to_bf16_bits(x)
        return bits, from_bf16_bits(bits).astype(np.float64)
    stored = x.astype(dtype)
    return stored, stored if dtype == "float32" else stored.astype(np.float64)


def values(gpu_array, dtype: str) -> np.ndarray:
    """A GPU result as float64 host values."""
    host = cp.asnumpy(gpu_array)
    return from_bf16_bits(host).astype(np.float64) if dtype == "bfloat16" else host.astype(np.float64)


def assert_close(actual, reference, dtype: str, scale: float = 1.0) -> None:
    reference = np.asarray(reference, dtype=np.float64)
    bound = REL_TOL[dtype] * scale * max(1.0, float(np.max(np.abs(reference), initial=0.0)))
    error = float(np.max(np.abs(np.asarray(actual, dtype=np.float64) - reference), initial=0.0))
    assert error <= bound, f"{dtype}: max error {error:.3g} > {bound:.3g}"


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- GELU


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(dtype, approximate):
    x, x_ref = storage(4 * rng(0).standard_normal(100_003).astype(np.float32), dtype)
    g, g_ref = storage(rng(1).standard_normal(100_003).astype(np.float32), dtype)
    y = cuda.gelu_forward(cp.asarray(x), approximate)
    dx = cuda.gelu_backward(cp.asarray(x), cp.asarray(g), approximate)
    assert y.dtype == x.dtype and dx.dtype == x.dtype
    assert_close(values(y, dtype), gelu.gelu_forward(x_ref, approximate), dtype)
    assert_close(values(dx, dtype), gelu.gelu_backward(x_ref, g_ref, approximate), dtype)


def test_gelu_non_contiguous_input_and_dispatch():
    """A transposed view goes through the NumPy function's dispatch to the kernel and keeps its shape."""
    x = 3 * rng(2).standard_normal((70, 33)).astype(np.float32)
    view = cp.asarray(x).T
    y = gelu.gelu_forward(view, "tanh")
    assert isinstance(y, cp.ndarray) and y.shape == (33, 70)
    np.testing.assert_allclose(cp.asnumpy(y), gelu.gelu_forward(x.T, "tanh"), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- layer norm / RMS norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_norm_forward_and_backward(dtype, centre, affine):
    rows, n = 67, 771
    x, x_ref = storage((2 + 3 * rng(0).standard_normal((rows, n))).astype(np.float32), dtype)
    g, g_ref = storage(rng(1).standard_normal((rows, n)).astype(np.float32), dtype)
    weight = (1 + 0.1 * rng(2).standard_normal(n)).astype(np.float32) if affine else None
    bias = 0.1 * rng(3).standard_normal(n).astype(np.float32) if affine and centre else None
    ref_dtype = np.float32 if dtype == "float32" else np.float64
    w_ref = None if weight is None else weight.astype(ref_dtype)
    b_ref = None if bias is None else bias.astype(ref_dtype)
    gpu = lambda a: None if a is None else cp.asarray(a)  # noqa: E731

    y, xhat, rstd = cuda.norm_forward(cp.asarray(x), gpu(weight), gpu(bias), 1e-5, centre)
    y_ref, xhat_ref, rstd_ref = norm.norm_forward(x_ref, w_ref, b_ref, 1e-5, centre)
    assert y.dtype == x.dtype and xhat.dtype == rstd.dtype == cp.float32 and rstd.shape == (rows, 1)
    assert_close(values(y, dtype), y_ref, dtype)
    stats_tol = "float32"  # statistics are float32 whatever the input: compare them at float32 precision
    assert_close(cp.asnumpy(xhat), xhat_ref, stats_tol, scale=4)
    assert_close(cp.asnumpy(rstd), rstd_ref, stats_tol, scale=4)

    dx, dw, db = cuda.norm_backward(cp.asarray(g), xhat, rstd, gpu(weight), centre, affine, bias is not None)
    dx_ref, dw_ref, db_ref = norm.norm_backward(g_ref, xhat_ref, rstd_ref, w_ref, centre, affine, bias is not None)
    assert_close(cp.asnumpy(dx), dx_ref, stats_tol, scale=10)
    assert (dw is None) == (dw_ref is None) and (db is None) == (db_ref is None)
    if dw is not None:
        assert_close(cp.asnumpy(dw), dw_ref, stats_tol, scale=10)
    if db is not None:
        assert_close(cp.asnumpy(db), db_ref, stats_tol, scale=10)


def test_norm_of_a_non_contiguous_view():
    x = rng(4).standard_normal((50, 300)).astype(np.float32)
    view = cp.asarray(x)[:, 7:263]  # rows are 300 apart: not contiguous
    y, xhat, rstd = norm.norm_forward(view, None, None, 1e-5, True)
    y_ref, _, rstd_ref = norm.norm_forward(x[:, 7:263], None, None, 1e-5, True)
    np.testing.assert_allclose(cp.asnumpy(y), y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cp.asnumpy(rstd), rstd_ref, rtol=1e-5)


# ---------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,classes", [(1, 7), (37, 1003), (9, 50257)])
def test_cross_entropy(dtype, rows, classes):
    logits, logits_ref = storage((3 * rng(0).standard_normal((rows, classes))).astype(np.float32), dtype)
    targets = rng(1).integers(0, classes, rows)
    targets[1::4] = -100
    loss, lse = cuda.cross_entropy_forward(cp.asarray(logits), cp.asarray(targets))
    loss_ref, lse_ref = cross_entropy.cross_entropy_forward(logits_ref, targets)
    assert loss.dtype == lse.dtype == cp.float32
    assert_close(cp.asnumpy(loss), loss_ref, "float32", scale=4)
    assert_close(cp.asnumpy(lse), lse_ref, "float32", scale=4)

    row_grad = rng(2).standard_normal(rows).astype(np.float32)
    grad = cuda.cross_entropy_backward(cp.asarray(logits), cp.asarray(targets), lse, cp.asarray(row_grad))
    grad_ref = cross_entropy.cross_entropy_backward(logits_ref, targets, lse_ref, row_grad.astype(lse_ref.dtype))
    assert grad.dtype == logits.dtype
    assert_close(values(grad, dtype), grad_ref, dtype)
    scalar = cuda.cross_entropy_backward(cp.asarray(logits), cp.asarray(targets), lse, 0.5)
    scalar_ref = cross_entropy.cross_entropy_backward(logits_ref, targets, lse_ref, 0.5)
    assert_close(values(scalar, dtype), scalar_ref, dtype)


def test_cross_entropy_non_contiguous_logits_and_out_of_range_targets():
    wide = (2 * rng(3).standard_normal((20, 130))).astype(np.float32)
    targets = rng(4).integers(0, 100, 20)
    loss, lse = cross_entropy.cross_entropy_forward(cp.asarray(wide)[:, :100], cp.asarray(targets))
    loss_ref, lse_ref = cross_entropy.cross_entropy_forward(wide[:, :100], targets)
    np.testing.assert_allclose(cp.asnumpy(loss), loss_ref, rtol=1e-5, atol=1e-5)
    targets[3] = 100
    with pytest.raises(IndexError):
        cuda.cross_entropy_forward(cp.asarray(wide[:, :100]), cp.asarray(targets))


# ---------------------------------------------------------------- AdamW, norm, scale


HYPER = dict(lr=3e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


@pytest.mark.parametrize("grad_dtype", DTYPES)
def test_adamw_step(grad_dtype):
    size = 1_000_003
    param = rng(0).standard_normal(size).astype(np.float32)
    state = [param, np.zeros_like(param), np.zeros_like(param)]
    gpu_state = [cp.asarray(a) for a in state]
    for step in range(1, 4):
        grad, grad_ref = storage(rng(step).standard_normal(size).astype(np.float32), grad_dtype)
        cuda.adamw_step(gpu_state[0], cp.asarray(grad), gpu_state[1], gpu_state[2], step, grad_scale=0.5, **HYPER)
        adamw.adamw_step(*state[:1], grad_ref.astype(np.float32), *state[1:], step, grad_scale=0.5, **HYPER)
    for got, want in zip(gpu_state, state, strict=True):
        np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # float32: the CUDA kernel; float64: the CuPy array code
def test_the_adamw_optimizer_on_the_gpu_matches_the_cpu(dtype, monkeypatch):
    launches = []
    monkeypatch.setattr(cuda, "adamw_step", lambda *a, **k: launches.append(1) or real_adamw_step(*a, **k))
    start = rng(7).standard_normal((64, 33)).astype(dtype)
    on_cpu, on_gpu = Parameter(start.copy()), Parameter(cp.asarray(start))
    optimizers = AdamW([on_cpu], lr=1e-2, weight_decay=0.1), AdamW([on_gpu], lr=1e-2, weight_decay=0.1)
    for step in range(3):
        g = rng(8 + step).standard_normal(start.shape).astype(dtype)
        on_cpu.grad, on_gpu.grad = Tensor(g), Tensor(cp.asarray(g))
        for optimizer in optimizers:
            optimizer.step()
    assert len(launches) == (3 if dtype == np.float32 else 0)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cp.asnumpy(on_gpu.data), on_cpu.numpy(), **tol)


def test_clip_grad_norm_on_the_gpu_matches_the_cpu():
    grads = [rng(9).standard_normal(s).astype(np.float32) for s in [(300, 7), (7,)]]
    on_cpu = [Parameter(np.zeros_like(g)) for g in grads]
    on_gpu = [Parameter(cp.zeros(g.shape, dtype=cp.float32)) for g in grads]
    for p, q, g in zip(on_cpu, on_gpu, grads, strict=True):
        p.grad, q.grad = Tensor(g.copy()), Tensor(cp.asarray(g))
    assert clip_grad_norm_(on_gpu, 0.5) == pytest.approx(clip_grad_norm_(on_cpu, 0.5), rel=1e-9)
    for p, q in zip(on_cpu, on_gpu, strict=True):
        np.testing.assert_allclose(cp.asnumpy(q.grad.data), p.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_of_squares_and_scale(dtype):
    x, x_ref = storage(rng(5).standard_normal(3_000_017).astype(np.float32), dtype)
    total = cuda.sum_of_squares(cp.asarray(x))
    assert total == pytest.approx(float(np.sum(x_ref.astype(np.float64) ** 2)), rel=1e-9)
    on_gpu = cp.asarray(x)
    cuda.scale_(on_gpu, 0.37)
    assert_close(values(on_gpu, dtype), x_ref.astype(np.float64) * 0.37, dtype)


def test_scale_needs_a_contiguous_array():
    with pytest.raises(ValueError, match="contiguous"):
        cuda.scale_(cp.zeros((4, 6), dtype=cp.float32)[:, ::2], 2.0)


# ---------------------------------------------------------------- attention


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 1, 16), (2, 3, 33, 64), (1, 2, 100, 80), (1, 1, 257, 128),
                                   (3, 31, 32)])
def test_flash_attention(dtype, shape):
    """T below, at and past the 32-row tile; D = 80 runs the 128 kernel with padding."""
    q, k, v, dout = (storage(rng(seed).standard_normal(shape).astype(np.float32), dtype) for seed in range(4))
    gpu = [cp.asarray(a[0]) for a in (q, k, v, dout)]
    ref = [a[1] for a in (q, k, v, dout)]
    out, lse = cuda.flash_attention_forward(*gpu[:3])
    out_ref, lse_ref = attention.flash_attention_forward(*ref[:3])
    assert out.dtype == gpu[0].dtype and out.shape == shape and lse.shape == shape[:-1]
    assert_close(values(out, dtype), out_ref, dtype)
    assert_close(cp.asnumpy(lse), lse_ref, "float32", scale=4)

    grads = cuda.flash_attention_backward(*gpu[:3], out, lse, gpu[3])
    # The reference backward starts from the GPU's own (rounded) output, as the kernel does.
    out_seen = values(out, dtype).astype(ref[0].dtype)
    grads_ref = attention.flash_attention_backward(*ref[:3], out_seen, lse_ref, ref[3])
    for got, want in zip(grads, grads_ref, strict=True):
        assert got.dtype == gpu[0].dtype and got.shape == shape
        assert_close(values(got, dtype), want, dtype, scale=4)


def test_flash_attention_non_contiguous_inputs_through_dispatch():
    """(B, T, H, D) tensors transposed to (B, H, T, D), as the attention layer makes them."""
    q, k, v, dout = (rng(seed).standard_normal((2, 45, 3, 32)).astype(np.float32) for seed in range(4))
    views = [cp.asarray(a).transpose(0, 2, 1, 3) for a in (q, k, v, dout)]
    refs = [a.transpose(0, 2, 1, 3) for a in (q, k, v, dout)]
    out, lse = attention.flash_attention_forward(*views[:3], scale=0.2)
    out_ref, lse_ref = attention.flash_attention_forward(*refs[:3], scale=0.2)
    np.testing.assert_allclose(cp.asnumpy(out), out_ref, rtol=1e-4, atol=1e-5)
    grads = attention.flash_attention_backward(*views[:3], out, lse, views[3], scale=0.2)
    grads_ref = attention.flash_attention_backward(*refs[:3], out_ref, lse_ref, refs[3], scale=0.2)
    for got, want in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-4, atol=1e-4)


def test_flash_attention_head_dim_above_128_falls_back_to_the_array_code():
    q, k, v = (rng(seed).standard_normal((1, 40, 160)).astype(np.float32) for seed in range(3))
    with pytest.raises(ValueError, match="128"):
        cuda.flash_attention_forward(*(cp.asarray(a) for a in (q, k, v)))
    out, _ = attention.flash_attention_forward(*(cp.asarray(a) for a in (q, k, v)))
    expected, _ = attention.flash_attention_forward(q, k, v)
    np.testing.assert_allclose(cp.asnumpy(out), expected, rtol=1e-4, atol=1e-5)
