"""Activation checkpointing gives the gradients of the plain network while holding far fewer activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import nn
import nn.functional as F
from nn.checkpoint import activation_bytes, checkpoint
from nn.module import Parameter

WIDTH, BATCH, DEPTH = 8, 6, 8


def _weights(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """DEPTH blocks of MLP weights: w1 (4C, C), b1 (4C,), w2 (C, 4C), b2 (C,)."""
    rng = np.random.default_rng(seed)
    shapes = {"w1": (4 * WIDTH, WIDTH), "b1": (4 * WIDTH,), "w2": (WIDTH, 4 * WIDTH), "b2": (WIDTH,)}
    return [{k: rng.standard_normal(s) * 0.3 for k, s in shapes.items()} for _ in range(DEPTH)]


def _block(p: dict, dropout: float, lib=F):
    """A residual MLP block x + dropout(W2 gelu(W1 x + b1) + b2), closing over its parameters."""
    def forward(x):
        h = lib.gelu(lib.linear(x, p["w1"], p["b1"]))
        return x + lib.dropout(lib.linear(h, p["w2"], p["b2"]), p=dropout)
    return forward


def _stack(blocks, x, use_checkpoint: bool):
    h = x
    for block in blocks:
        h = checkpoint(block, h) if use_checkpoint else block(h)
    return h


def _gradients(x_requires_grad: bool, use_checkpoint: bool, dropout: float):
    """Loss, every gradient and the next random number after a forward and backward from a fixed seed."""
    params = [{k: Parameter(v) for k, v in w.items()} for w in _weights()]
    x = nn.tensor(np.random.default_rng(1).standard_normal((BATCH, WIDTH)), requires_grad=x_requires_grad)
    nn.manual_seed(7)
    loss = (_stack([_block(p, dropout) for p in params], x, use_checkpoint) ** 2).mean()
    loss.backward()
    grads = {f"{i}.{k}": p.grad.numpy() for i, block in enumerate(params) for k, p in block.items()}
    if x_requires_grad:
        grads["x"] = x.grad.numpy()
    return loss.item(), grads, nn.rand(3).numpy()


@pytest.mark.parametrize("x_requires_grad", [True, False])  # False: only the closed-over parameters need grads
def test_checkpointed_gradients_equal_plain_ones_with_dropout(x_requires_grad):
    plain_loss, plain, plain_rng = _gradients(x_requires_grad, use_checkpoint=False, dropout=0.3)
    loss, grads, rng = _gradients(x_requires_grad, use_checkpoint=True, dropout=0.3)
    assert loss == plain_loss
    assert grads.keys() == plain.keys()
    for name in plain:
        np.testing.assert_allclose(grads[name], plain[name], rtol=1e-12, atol=1e-15, err_msg=name)
    np.testing.assert_array_equal(rng, plain_rng)  # the random stream continues as if nothing was recomputed


def test_checkpointed_gradients_equal_pytorch():
    """The recomputed backward gives the true gradients, as PyTorch computes them without checkpointing."""
    weights = _weights()
    x_np = np.random.default_rng(1).standard_normal((BATCH, WIDTH))
    _, ours, _ = _gradients(x_requires_grad=True, use_checkpoint=True, dropout=0.0)

    params = [{k: torch.tensor(v, requires_grad=True) for k, v in w.items()} for w in weights]
    x = torch.tensor(x_np, requires_grad=True)
    h = x
    for p in params:
        h = _block(p, 0.0, TF)(h)
    (h**2).mean().backward()
    theirs = {f"{i}.{k}": t.grad.numpy() for i, block in enumerate(params) for k, t in block.items()}
    theirs["x"] = x.grad.numpy()
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_checkpointing_lowers_the_activation_memory():
    params = [{k: Parameter(v) for k, v in w.items()} for w in _weights()]
    blocks = [_block(p, dropout=0.1) for p in params]
    x = nn.tensor(np.random.default_rng(1).standard_normal((BATCH, WIDTH)), requires_grad=True)
    plain = activation_bytes(_stack(blocks, x, use_checkpoint=False))
    checkpointed = activation_bytes(_stack(blocks, x, use_checkpoint=True))
    assert checkpointed == (DEPTH - 1) * x.data.nbytes  # only the boundaries between blocks are kept
    # Backward recomputes one block at a time, so its peak is the boundaries plus one block's graph.
    one_block = activation_bytes(blocks[0](x * 1.0))
    assert checkpointed + one_block < plain / 4


def test_activation_bytes_counts_each_buffer_once_and_skips_leaves():
    x = nn.tensor(np.ones((5, 4)), requires_grad=True)
    w = nn.tensor(np.ones((3, 4)), requires_grad=True)
    loss = x.exp().sum()  # exp keeps its output, which sum also holds as its input: one buffer
    assert activation_bytes(loss) == x.data.nbytes
    assert activation_bytes(x @ w.T) == 0  # matmul keeps x and a view of w: both leaves
    loss.backward()
    assert activation_bytes(loss) == 0  # backward released the graph


def test_checkpoint_under_no_grad_just_calls_the_function():
    w = Parameter(np.ones((2, 2)))
    with nn.no_grad():
        out = checkpoint(lambda x: x @ w, nn.tensor(np.ones((1, 2))))
    assert out.grad_fn is None and not out.requires_grad
    np.testing.assert_array_equal(out.numpy(), [[2.0, 2.0]])
