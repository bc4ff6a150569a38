"""Whole networks written with the engine equal the same networks in PyTorch, weight for weight.

The networks are written twice below, line by line, from the same functional
building blocks (the layers of a later issue do not exist yet), with the
same weights and data; loss and every parameter's gradient must agree.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import nn
import nn.functional as F


def _weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("norm_w"):
            out[name] = 1 + 0.1 * rng.standard_normal(shape)
        else:
            out[name] = rng.standard_normal(shape) * (0.02 if len(shape) > 1 else 0.1)
    return out


def _compare(loss, params, ref_loss, ref_params, dtype):
    rtol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(loss.item(), ref_loss.item(), rtol=rtol)
    for name in params:
        ours, theirs = params[name].grad.numpy(), ref_params[name].grad.numpy()
        assert ours.dtype == dtype
        scale = max(float(np.abs(theirs).max()), 1e-12)
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale, err_msg=name)


# ---------------------------------------------------------------- MLP
MLP_SHAPES = {"w1": (16, 10), "b1": (16,), "w2": (16, 16), "b2": (16,), "w3": (5, 16), "b3": (5,)}


def mlp(p, x, targets, lib):
    h = lib.linear(x, p["w1"], p["b1"]).relu()
    h = lib.gelu(lib.linear(h, p["w2"], p["b2"])) + h
    logits = lib.linear(h.tanh(), p["w3"], p["b3"])
    return lib.cross_entropy(logits, targets)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mlp_loss_and_gradients_equal_pytorch(dtype):
    weights = _weights(MLP_SHAPES, seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 10)).astype(dtype)
    targets = rng.integers(0, 5, size=32)
    params = {k: nn.tensor(v.astype(dtype), requires_grad=True) for k, v in weights.items()}
    ref = {k: torch.tensor(v.astype(dtype), requires_grad=True) for k, v in weights.items()}
    loss = mlp(params, nn.tensor(x), targets, F)
    loss.backward()
    ref_loss = mlp(ref, torch.tensor(x), torch.tensor(targets), TF)
    ref_loss.backward()
    _compare(loss, params, ref_loss, ref, dtype)


# ---------------------------------------------------------------- one transformer block
VOCAB, CONTEXT, WIDTH, HEADS = 37, 12, 16, 4
BLOCK_SHAPES = {
    "wte": (VOCAB, WIDTH), "wpe": (CONTEXT, WIDTH),
    "ln1_norm_w": (WIDTH,), "ln1_b": (WIDTH,),
    "qkv_w": (3 * WIDTH, WIDTH), "qkv_b": (3 * WIDTH,), "proj_w": (WIDTH, WIDTH), "proj_b": (WIDTH,),
    "ln2_norm_w": (WIDTH,), "ln2_b": (WIDTH,),
    "fc_w": (4 * WIDTH, WIDTH), "fc_b": (4 * WIDTH,), "out_w": (WIDTH, 4 * WIDTH), "out_b": (WIDTH,),
    "lnf_norm_w": (WIDTH,), "lnf_b": (WIDTH,),
}


def transformer(p, idx, targets, lib, arange, dropout_p=0.0):
    """A GPT-2 style block: pre-norm causal attention and GELU MLP, tied embedding head."""
    batch, length = idx.shape
    x = lib.embedding(idx, p["wte"]) + lib.embedding(arange(length), p["wpe"])
    h = lib.layer_norm(x, (WIDTH,), p["ln1_norm_w"], p["ln1_b"])
    q, k, v = lib.linear(h, p["qkv_w"], p["qkv_b"]).split(WIDTH, dim=-1)
    heads = [t.reshape(batch, length, HEADS, WIDTH // HEADS).transpose(1, 2) for t in (q, k, v)]
    att = lib.scaled_dot_product_attention(*heads, is_causal=True, dropout_p=dropout_p)
    att = att.transpose(1, 2).reshape(batch, length, WIDTH)
    x = x + lib.linear(att, p["proj_w"], p["proj_b"])
    h = lib.layer_norm(x, (WIDTH,), p["ln2_norm_w"], p["ln2_b"])
    x = x + lib.linear(lib.gelu(lib.linear(h, p["fc_w"], p["fc_b"]), approximate="tanh"), p["out_w"], p["out_b"])
    x = lib.layer_norm(x, (WIDTH,), p["lnf_norm_w"], p["lnf_b"])
    logits = x @ p["wte"].T
    return lib.cross_entropy(logits.reshape(batch * length, VOCAB), targets.reshape(-1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_block_transformer_loss_and_gradients_equal_pytorch(dtype):
    weights = _weights(BLOCK_SHAPES, seed=2)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, VOCAB, size=(3, CONTEXT))
    targets = rng.integers(0, VOCAB, size=(3, CONTEXT))
    params = {k: nn.tensor(v.astype(dtype), requires_grad=True) for k, v in weights.items()}
    ref = {k: torch.tensor(v.astype(dtype), requires_grad=True) for k, v in weights.items()}
    loss = transformer(params, nn.tensor(idx), nn.tensor(targets), F, lambda n: np.arange(n))
    loss.backward()
    ref_loss = transformer(ref, torch.tensor(idx), torch.tensor(targets), TF, torch.arange)
    ref_loss.backward()
    assert loss.item() == pytest.approx(math.log(VOCAB), rel=0.05)  # small init: near-uniform predictions
    _compare(loss, params, ref_loss, ref, dtype)


def test_one_block_transformer_passes_gradcheck_with_dropout():
    weights = _weights(BLOCK_SHAPES, seed=4)
    rng = np.random.default_rng(5)
    idx = rng.integers(0, VOCAB, size=(2, 5))
    targets = rng.integers(0, VOCAB, size=(2, 5))
    names = sorted(weights)
    tensors = [nn.tensor(weights[n], requires_grad=True) for n in names]

    def loss_of(*ts):
        return transformer(dict(zip(names, ts, strict=True)), nn.tensor(idx), nn.tensor(targets), F,
                           lambda n: np.arange(n), dropout_p=0.1)

    assert nn.gradcheck(loss_of, tensors)
