"""nn.distributed: the pieces that run in one process, and the multi-process programs under mpiexec.

The programs in tests/mpi_programs compare, on every process, data-parallel and
tensor-parallel training with the same model trained by one process (float64,
tolerance 1e-10). Here each is launched with ``mpiexec -n 2`` and ``-n 4`` and a timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nn
from nn import distributed, optim
from nn.tensor import queue_backward_callback
from tests.mpi_programs import MPI_ENV
from tinygrad_llm.model import GPT, ConfigError, GPTConfig

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- one process
def test_a_single_process_world_needs_no_mpi():
    parallel = distributed.init()
    assert (parallel.rank, parallel.world_size, parallel.data.size, parallel.tensor.size) == (0, 1, 1, 1)
    comm = distributed.Communicator()
    a = np.arange(6.0).reshape(2, 3)
    assert comm.all_reduce(a, op="mean") is a and np.array_equal(a, np.arange(6.0).reshape(2, 3))
    assert np.array_equal(comm.all_gather(a, axis=1), a)
    assert comm.all_gather_object({"x": 1}) == [{"x": 1}]
    comm.all_reduce_async(a).wait()
    with pytest.raises(ValueError, match="op must be one of"):
        comm.all_reduce(a, op="product")
    with pytest.raises(ValueError, match="C-contiguous"):
        comm.all_reduce(a.T)


def test_shard_takes_each_sections_share_and_unshard_restores_it():
    # A fused [q; k; v] projection: 4 query heads and 2 key/value heads of 3 rows each, over 2 processes.
    rows = np.arange(24 * 2).reshape(24, 2)
    sections = (12, 6, 6)
    slices = [distributed.shard(rows, 0, sections, r, 2) for r in range(2)]
    # Process 1 holds query heads 2-3 (rows 6..11), key head 1 (rows 15..17) and value head 1 (rows 21..23).
    expected = np.concatenate([rows[6:12], rows[15:18], rows[21:24]])
    assert np.array_equal(slices[1], expected)
    assert np.array_equal(distributed.unshard(slices, 0, sections), rows)
    columns = np.arange(40).reshape(4, 10)
    parts = [distributed.shard(columns, 1, (10,), r, 5) for r in range(5)]
    assert np.array_equal(parts[3], columns[:, 6:8])
    assert np.array_equal(distributed.unshard(parts, 1, (10,)), columns)
    with pytest.raises(ValueError, match="does not split"):
        distributed.shard(rows, 0, (12, 6, 6), 0, 4)


def test_post_accumulate_hooks_see_each_final_gradient_once():
    w = nn.tensor(np.array([1.0, 2.0]), requires_grad=True)
    seen, ended = [], []

    def hook(t):
        seen.append(t.grad.numpy().copy())
        queue_backward_callback(lambda: ended.append(len(seen)))

    w.register_post_accumulate_grad_hook(hook)
    ((w * 3).sum() + (w * w).sum()).backward()  # two uses: the hook runs after both are added
    assert len(seen) == 1 and np.array_equal(seen[0], [5.0, 7.0])
    assert ended == [1]  # the callback ran once the backward pass was over
    ((w * 3).sum()).backward()  # accumulates: the hook sees the total
    assert np.array_equal(seen[1], [8.0, 10.0]) and ended == [1, 2]
    with pytest.raises(RuntimeError, match="outside a backward pass"):
        queue_backward_callback(lambda: None)
    with pytest.raises(RuntimeError, match="leaf"):
        (w * 2).register_post_accumulate_grad_hook(hook)


def test_callbacks_wait_for_the_outermost_pass_under_activation_checkpointing():
    layer = nn.Linear(3, 3)
    events = []
    layer.weight.register_post_accumulate_grad_hook(
        lambda t: (events.append("weight"), queue_backward_callback(lambda: events.append("end"))))
    x = nn.randn(2, 3, requires_grad=True)
    nn.checkpoint(lambda h: layer(h).tanh(), x).sum().backward()  # the weight's gradient comes from an inner pass
    assert events == ["weight", "end"]


def test_replacing_a_layer_keeps_the_parameter_order():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4), nn.Linear(4, 1))
    names = [name for name, _ in model.named_parameters()]
    setattr(model, "0", nn.Linear(2, 3))
    assert [name for name, _ in model.named_parameters()] == names


def test_buckets_hold_parameters_in_reverse_order_within_their_size():
    model = nn.Sequential(*(nn.Linear(64, 64) for _ in range(6)))  # 16 kB weights, 256 B biases
    ddp = distributed.DistributedDataParallel(model)  # one process: no hooks, no buckets
    assert ddp.buckets == [] and ddp(nn.ones(1, 64)).shape == (1, 64)
    params = list(model.parameters())[::-1]
    buckets = ddp._make_buckets(params)
    assert [p for b in buckets for p in b.params] == params  # every parameter once, in reverse order
    ddp.first_bucket_mb, ddp.bucket_mb = 20_000 / 2**20, 40_000 / 2**20
    buckets = ddp._make_buckets(params)
    # Reverse order is b6 w6 b5 w5 b4 ...: 16,896 B fit the 20 kB first bucket, then 33,280 B per 40 kB bucket.
    assert [len(b.params) for b in buckets] == [3, 4, 4, 1]
    assert [b.flat.nbytes for b in buckets] == [16_896, 33_280, 33_280, 16_384]
    assert all(b.flat.size == sum(p.numel() for p in b.params) for b in buckets)


def test_tensor_parallel_clipping_in_one_process_is_ordinary_clipping():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    for layer in (a, b):
        layer(nn.ones(2, 4) * 3).sum().backward()
    assert optim.clip_grad_norm_(list(a.parameters()), 0.1, comm=distributed.state().tensor) == pytest.approx(
        optim.clip_grad_norm_(list(b.parameters()), 0.1), rel=1e-12)
    assert np.allclose(a.weight.grad.numpy(), b.weight.grad.numpy(), rtol=1e-6)


def test_a_tensor_parallel_gpt_needs_the_processes():
    with pytest.raises(ConfigError, match="tensor_parallel=2 must divide the number of processes"):
        GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16, tensor_parallel=2))
    with pytest.raises(ConfigError, match="must divide n_head"):
        GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=3, n_embd=18, tensor_parallel=2)


# ---------------------------------------------------------------------- several processes
def launch(mpiexec: str, processes: int, program: str, *args: object) -> str:
    env = {**os.environ, **MPI_ENV}
    result = subprocess.run([mpiexec, "-n", str(processes), sys.executable, "-m", f"tests.mpi_programs.{program}",
                             *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(": OK") == processes, result.stdout  # every process checked and agreed
    return result.stdout


@pytest.mark.mpi
@pytest.mark.parametrize("processes, micro_steps, overlap", [(2, 1, 1), (2, 3, 1), (2, 3, 0), (4, 2, 1)])
def test_data_parallel_training_equals_one_process_on_the_whole_batch(mpiexec, processes, micro_steps, overlap):
    out = launch(mpiexec, processes, "ddp_equivalence", micro_steps, 0.01, overlap)
    assert f"{processes} processes x {micro_steps} micro-steps" in out


@pytest.mark.mpi
@pytest.mark.parametrize("processes, tensor_parallel", [(2, 2), (4, 4), (4, 2)])
def test_tensor_parallel_blocks_gpts_and_training_equal_the_dense_ones(mpiexec, processes, tensor_parallel):
    out = launch(mpiexec, processes, "tp_equivalence", tensor_parallel)
    assert f"tensor parallel {tensor_parallel} x data parallel {processes // tensor_parallel}" in out
