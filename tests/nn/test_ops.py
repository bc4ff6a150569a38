"""Every op of the engine, property-tested over hypothesis-drawn shapes and values.

For each op in ``opspecs.SPECS``:
- its gradients match central finite differences in float64 (``nn.gradcheck``);
- its forward values and gradients match PyTorch's, in float64 (tight) and
  float32 (1e-5 of the result's scale), with the same output dtype;
- it does not modify its inputs;
- float16 in gives float16 out, values and gradients, close to float64.
Inputs include size-1 and broadcast dimensions and strided (non-contiguous) views.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import is_float_array, to_ours, to_torch, torch_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st
from opspecs import SPECS

import nn

# Examples per op and property; EXAMPLES_SCALE=10 make test for a longer hunt.
SCALE = int(os.environ.get("EXAMPLES_SCALE", "1"))
GRADCHECK_EXAMPLES, FLOAT64_EXAMPLES, FLOAT32_EXAMPLES, FLOAT16_EXAMPLES = (n * SCALE for n in (100, 60, 40, 20))


def _upstream(shape, dtype, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _run_ours(spec, arrays, kwargs, upstream_seed: int = 0):
    inputs = to_ours(arrays)
    out = spec.ours(*inputs, **kwargs)
    out.backward(_upstream(out.shape, out.dtype, upstream_seed))
    grads = [t.grad.numpy() if t.grad is not None else np.zeros(t.shape, t.dtype)
             for t in inputs if t.requires_grad]
    return out, grads


def _run_torch(spec, arrays, kwargs, upstream_seed: int = 0):
    inputs = to_torch(arrays)
    out = spec.theirs(*inputs, **torch_kwargs(kwargs))
    g = torch.from_numpy(_upstream(tuple(out.shape), out.detach().numpy().dtype, upstream_seed))
    out.backward(g)
    grads = [t.grad.numpy() if t.grad is not None else np.zeros(t.shape) for t in inputs if t.requires_grad]
    return out.detach().numpy(), grads


def _assert_close(ours, theirs, rtol, scale_atol, what):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    scale = float(np.max(np.abs(theirs))) if theirs.size else 0.0
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=scale_atol * max(scale, 1.0), err_msg=what)


@pytest.mark.parametrize("spec", SPECS, ids=str)
@settings(max_examples=GRADCHECK_EXAMPLES)
@given(data=st.data())
def test_gradient_matches_finite_differences(spec, data):
    arrays, kwargs = spec.draw(data, np.float64)
    inputs = to_ours(arrays)
    assert nn.gradcheck(lambda *xs: spec.ours(*xs, **kwargs), inputs)


def _compare_with_torch(spec, data, dtype, rtol: float, atol: float) -> None:
    """Same inputs through ours and PyTorch: same output dtype, values and input gradients; inputs untouched."""
    arrays, kwargs = spec.draw(data, dtype)
    before = [np.copy(a) for a in arrays]
    out, grads = _run_ours(spec, arrays, kwargs)
    ref_out, ref_grads = _run_torch(spec, arrays, kwargs)
    assert out.dtype == ref_out.dtype, f"output dtype {out.dtype}, PyTorch gives {ref_out.dtype}"
    _assert_close(out.numpy(), ref_out, rtol, atol, "forward")
    float_inputs = [a for a in arrays if is_float_array(a)]
    for i, (g, rg) in enumerate(zip(grads, ref_grads, strict=True)):
        assert g.dtype == float_inputs[i].dtype, f"gradient of input {i} is {g.dtype}"
        _assert_close(g, rg, rtol, atol, f"gradient of input {i}")
    for a, b in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(a, b, err_msg="the op modified its input")


@pytest.mark.parametrize("spec", SPECS, ids=str)
@settings(max_examples=FLOAT64_EXAMPLES)
@given(data=st.data())
def test_matches_torch_float64_and_leaves_inputs_alone(spec, data):
    _compare_with_torch(spec, data, np.float64, 1e-10, 1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=str)
@settings(max_examples=FLOAT32_EXAMPLES)
@given(data=st.data())
def test_matches_torch_float32(spec, data):
    _compare_with_torch(spec, data, np.float32, spec.tolerance_f32, spec.tolerance_f32)


@pytest.mark.parametrize("spec", SPECS, ids=str)
@settings(max_examples=FLOAT16_EXAMPLES)
@given(data=st.data())
def test_float16_stays_float16(spec, data):
    arrays, kwargs = spec.draw(data, np.float16)
    out, grads = _run_ours(spec, arrays, kwargs)
    wide = [a.astype(np.float64) if is_float_array(a) else a for a in arrays]
    wide_kwargs = {k: v.astype(np.float64) if is_float_array(v) else v for k, v in kwargs.items()}
    ref_out, ref_grads = _run_ours(spec, wide, wide_kwargs)
    expected = np.float64 if spec.name == "cast_f64" else np.float16
    assert out.dtype == expected
    _assert_close(out.numpy(), ref_out.numpy(), 2e-2, 2e-2, "forward")
    for g, rg in zip(grads, ref_grads, strict=True):
        assert g.dtype == np.float16
        _assert_close(g, rg, 5e-2, 5e-2, "gradient")
