"""A training job in which one process fails mid-run; the whole job must end within seconds.

Usage: mpiexec -n N python -m tests.mpi_programs.failing_rank DATA OUT HOW
HOW = raise (an uncaught exception) or kill (the process dies without a word, SIGKILL).
Rank 1 fails after its second step; the others would otherwise wait for it forever
in the next all-reduce.
"""

import io
import os
import signal
import sys

from nn import distributed
from tinygrad_llm.train import Trainer, pretraining, resolve_config


def main() -> None:
    data, out, how = sys.argv[1:4]
    fields, config = resolve_config("tiny", overrides=["block_size=32", "batch_size=2", "eval_interval=100",
                                                       "warmup_steps=2"],
                                    data=data, out_dir=out, max_steps=1000)
    trainer = pretraining(fields, config, stream=io.StringIO())
    rank = distributed.state().rank

    def fail(t: Trainer) -> None:
        if rank == 1 and t.step == 2:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("rank 1 hit a bug in step 2")

    trainer.on_step = fail
    trainer.fit()


if __name__ == "__main__":
    main()
