"""A tensor-parallel block and GPT equal the dense ones; with DDP on top, training equals one process.

Usage: mpiexec -n N python -m tests.mpi_programs.tp_equivalence TP
With N = TP: pure tensor parallelism. With N = 2 x TP: data x tensor parallelism.
Every process also runs the dense model itself and compares (gathered) outputs,
loss, every gradient, and after each optimizer step every parameter.
"""

import contextlib
import sys

import numpy as np

import nn
from nn import distributed, optim
from tests.mpi_programs.common import (
    batch,
    build,
    check,
    data_parallel_backward,
    max_relative_difference,
    perturb,
    reference_step,
    tiny_config,
)

LLAMA = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_weights=False)


def variants(tp: int) -> dict[str, dict]:
    """GPT-2's layout, and Llama's with grouped-query attention (2 key/value heads for 4 query heads if tp allows)."""
    return {"gpt2": {}, "llama": {**LLAMA, "n_kv_head": max(2, tp)}}


def gathered_grads(model, comm) -> dict[str, np.ndarray]:
    return {name: distributed.gather_parameter(p.grad.data, p, comm) for name, p in model.named_parameters()}


def compare(ours: dict, reference: dict, what: str, tolerance: float = 1e-10) -> None:
    check(ours.keys() == reference.keys(), f"{what}: names differ")
    for name, value in reference.items():
        check(ours[name].shape == value.shape, f"{what}: {name} has shape {ours[name].shape}, not {value.shape}")
        diff = max_relative_difference(ours[name], value)
        check(diff < tolerance, f"rank {distributed.state().rank}: {what}: {name} differs by {diff:.2e}")


def block_and_model(tp: int, variant: str) -> None:
    parallel = distributed.init(tp)
    dense = perturb(build(tiny_config(**variants(tp)[variant]), seed=0))
    split = perturb(build(tiny_config(**variants(tp)[variant], tensor_parallel=tp), seed=0), parallel.tensor)
    check(split.h[0].attn.c_attn.weight.shape[0] * tp == dense.h[0].attn.c_attn.weight.shape[0],
          "c_attn is not split")
    check(split.flops_per_token() == dense.flops_per_token(), "FLOPs per token must count the whole model")

    # One block, on an input that requires grad.
    x = np.random.default_rng(1).standard_normal((3, 8, 32))
    outputs, input_grads = [], []
    for model in (dense, split):
        xt = nn.tensor(x, requires_grad=True)
        y = model.h[0](xt)
        (y * nn.tensor(np.cos(np.arange(y.numel())).reshape(y.shape))).sum().backward()
        outputs.append(y.numpy())
        input_grads.append(xt.grad.numpy())
    compare({"out": outputs[1], "dx": input_grads[1]}, {"out": outputs[0], "dx": input_grads[0]}, f"{variant} block")
    block_grads = {n: distributed.gather_parameter(p.grad.data, p, parallel.tensor)
                   for n, p in split.h[0].named_parameters()}
    compare(block_grads, {n: p.grad.numpy() for n, p in dense.h[0].named_parameters()}, f"{variant} block grads")
    dense.zero_grad()
    split.zero_grad()

    # The whole GPT: logits, loss and every gradient.
    xs, ys = batch(4, dense.config, seed=7)
    (logits_d, loss_d), (logits_s, loss_s) = dense(xs, ys), split(xs, ys)
    loss_d.backward()
    loss_s.backward()
    compare({"logits": logits_s.numpy(), "loss": loss_s.numpy()},
            {"logits": logits_d.numpy(), "loss": loss_d.numpy()}, f"{variant} GPT")
    compare(gathered_grads(split, parallel.tensor), {n: p.grad.numpy() for n, p in dense.named_parameters()},
            f"{variant} GPT grads")
    norm_d = optim.clip_grad_norm_(dense.parameters(), 0.5)
    norm_s = optim.clip_grad_norm_(split.parameters(), 0.5, comm=parallel.tensor)
    check(abs(norm_d - norm_s) < 1e-10 * norm_d, f"{variant}: grad norm {norm_s} vs dense {norm_d}")
    compare(gathered_grads(split, parallel.tensor), {n: p.grad.numpy() for n, p in dense.named_parameters()},
            f"{variant} clipped grads")


def training(tp: int, micro_steps: int = 2, rows: int = 2) -> None:
    """DDP over the data group around a tensor-parallel GPT, against one process on the whole batch."""
    parallel = distributed.init(tp)
    n, r = parallel.data.size, parallel.data.rank
    config = tiny_config(**variants(tp)["llama"])
    reference = perturb(build(config, seed=0))
    model = perturb(build(tiny_config(**variants(tp)["llama"], tensor_parallel=tp), seed=0), parallel.tensor)
    ddp = distributed.DistributedDataParallel(model, comm=parallel.data, bucket_mb=0.01)
    opt, ref_opt = optim.AdamW(model.parameters(), lr=1e-2), optim.AdamW(reference.parameters(), lr=1e-2)
    for step in range(3):
        x, y = batch(micro_steps * n * rows, config, seed=10 + step)
        reference_step(reference, ref_opt, x, y)
        data_parallel_backward(ddp, x, y, micro_steps, r, n, rows)
        optim.clip_grad_norm_(model.parameters(), 1.0, comm=parallel.tensor)
        opt.step()
        opt.zero_grad()
        ours = {name: distributed.gather_parameter(p.data, p, parallel.tensor) for name, p in model.named_parameters()}
        compare(ours, {name: p.numpy() for name, p in reference.named_parameters()}, f"step {step} parameters")


def main() -> None:
    tp = int(sys.argv[1])
    world = distributed.init(tp).world
    if world.size == tp:
        for variant in variants(tp):
            block_and_model(tp, variant)
    training(tp)
    print(f"rank {world.rank}: OK tensor parallel {tp} x data parallel {world.size // tp}", flush=True)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
