"""k micro-steps x N processes with DDP equal one process on the whole k x N batch.

Every process also trains the reference model itself (one process, full batch)
and compares all parameters after every optimizer step.
Usage: mpiexec -n N python -m tests.mpi_programs.ddp_equivalence K BUCKET_MB OVERLAP(0|1)
"""

import sys

from nn import distributed, optim
from tests.mpi_programs.common import (
    batch,
    build,
    check,
    data_parallel_backward,
    max_relative_difference,
    reference_step,
    tiny_config,
)


def main() -> None:
    micro_steps, bucket_mb, overlap = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1"
    world = distributed.init().world
    n, rank, rows = world.size, world.rank, 2
    config = tiny_config()
    reference = build(config, seed=0)
    model = build(config, seed=0 if rank == 0 else 100 + rank)  # others differ: DDP must broadcast rank 0
    ddp = distributed.DistributedDataParallel(model, bucket_mb=bucket_mb, first_bucket_mb=bucket_mb / 4,
                                              overlap=overlap)
    check(len(ddp.buckets) > 1 or n == 1, f"expected several buckets, got {len(ddp.buckets)}")
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    ref_opt = optim.AdamW(reference.parameters(), lr=1e-2)
    for step in range(4):
        x, y = batch(micro_steps * n * rows, config, seed=step)
        reference_step(reference, ref_opt, x, y)
        data_parallel_backward(ddp, x, y, micro_steps, rank, n, rows)
        optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ours = dict(model.named_parameters())
        for name, p in reference.named_parameters():
            diff = max_relative_difference(ours[name].numpy(), p.numpy())
            check(diff < 1e-10, f"rank {rank} step {step}: {name} differs by {diff:.2e}")
    expected = 4 * len(ddp.buckets) if n > 1 else 0
    check(ddp.stats["reductions"] == expected,
          f"{ddp.stats['reductions']} all-reduces, expected one per bucket per step ({expected})")
    print(f"rank {rank}: OK {n} processes x {micro_steps} micro-steps, {len(ddp.buckets)} buckets", flush=True)


if __name__ == "__main__":
    main()
