"""A data-parallel run with a time budget: every process must take the same steps with the same learning rates.

Usage: mpiexec -n N python -m tests.mpi_programs.budget_agreement DATA OUT SECONDS

Each process measures its own clock, and only process 0 pays for writing
checkpoints, so their views of the budget differ; the loop must agree on when to
stop and on the schedule's progress, or the replicas' weights drift apart. At the
end every process reports a float64 checksum of its weights and its learning
rates; process 0 prints AGREE or DIFFER.
"""

import io
import sys

import numpy as np

from nn import distributed
from tinygrad_llm.train import Trainer, pretraining, resolve_config


def main() -> None:
    data, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    fields, config = resolve_config("tiny", overrides=["block_size=32", "batch_size=2", "eval_interval=5",
                                                       "eval_batches=2", "checkpoint_interval=4", "warmup_steps=2",
                                                       "dtype=float64", "threads=1"],
                                    data=data, out_dir=out, time_budget=seconds)
    trainer = pretraining(fields, config, stream=io.StringIO())
    lrs: list[float] = []

    def record(t: Trainer) -> None:
        lrs.append(t.optimizer.param_groups[0]["lr"])

    trainer.on_step = record
    trainer.fit()
    checksum = float(sum(np.asarray(p.numpy(), dtype=np.float64).sum() for p in trainer.model.parameters()))
    views = distributed.state().world.all_gather_object((trainer.step, lrs, checksum))
    if distributed.state().rank == 0:
        same = all(view == views[0] for view in views)
        print(f"{'AGREE' if same else 'DIFFER'} steps={[v[0] for v in views]} checksums={[v[2] for v in views]}",
              flush=True)


if __name__ == "__main__":
    main()
