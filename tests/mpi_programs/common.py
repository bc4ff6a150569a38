"""Shared pieces of the programs that tests run under ``mpiexec`` (see tests/nn/test_distributed.py)."""

from __future__ import annotations

import contextlib
import sys

import numpy as np

import nn
from tinygrad_llm.model import GPT, GPTConfig


def tiny_config(**overrides) -> GPTConfig:
    fields = dict(vocab_size=61, block_size=8, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    return GPTConfig(**{**fields, **overrides})


def build(config: GPTConfig, seed: int = 0) -> GPT:
    nn.manual_seed(seed)
    return GPT(config).to(nn.float64)


def perturb(model: GPT, comm=None) -> GPT:
    """Add the same noise (by parameter name) to every parameter, so zero-initialised biases are not zero.

    A tensor-parallel model gets the slice of the full-size noise that matches its slice of the weight.
    """
    from nn import distributed

    for name, p in model.named_parameters():
        split = getattr(p, "tensor_parallel", None)
        shape = list(p.shape)
        if split is not None:
            shape[split[0]] *= comm.size
        noise = np.random.default_rng(sum(map(ord, name))).standard_normal(shape) * 0.05
        if split is not None:
            noise = distributed.shard(noise, split[0], split[1], comm.rank, comm.size)
        p.data += noise
    return model


def batch(rows: int, config: GPTConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, (rows, config.block_size + 1))
    return tokens[:, :-1], tokens[:, 1:]


def check(condition: bool, message: str) -> None:
    """Fail this process (the test reads the exit status and the message)."""
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr, flush=True)
        raise SystemExit(1)


def max_relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def reference_step(model: GPT, optimizer, x: np.ndarray, y: np.ndarray) -> None:
    """One process, the whole batch: forward, backward, clipping at 1.0, AdamW."""
    from nn import optim

    _, loss = model(x, y)
    loss.backward()
    optim.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()


def data_parallel_backward(ddp, x: np.ndarray, y: np.ndarray, micro_steps: int, rank: int, size: int,
                           rows: int) -> None:
    """This process's share of the batch: micro-step j takes rows of slot j * size + rank; only the last talks."""
    for j in range(micro_steps):
        mine = slice((j * size + rank) * rows, (j * size + rank + 1) * rows)
        with ddp.no_sync() if j < micro_steps - 1 else contextlib.nullcontext():
            _, loss = ddp(x[mine], y[mine])
            (loss * (1.0 / micro_steps)).backward()
