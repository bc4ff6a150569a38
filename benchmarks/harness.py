"""What the side-by-side benchmarks share: the machine's name, a worker process driven over a pipe, the
PyTorch reference's model and optimizer, and writing the results file.

A benchmark's parent starts one worker per side (ours, the reference) as a
separate process, so each has its own thread settings and memory, and speaks
to it one line at a time: a command goes in on stdin, one JSON line comes back
on stdout.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""Set before NumPy or torch is imported, they fix the number of BLAS/OpenMP threads."""


def write_json(path: str | os.PathLike[str], document: Any) -> None:
    """Write ``document`` to ``path`` as JSON indented by 2 with a final newline, atomically (``util.files``).

    The directory is created if missing; a reader (or a crash mid-write) sees the old file or the new one.
    """
    from util.files import atomic_write_bytes

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(document, indent=2) + "\n").encode())


def median_seconds(run, repeats: int, warmup: bool = True) -> float:
    """The median wall time of ``repeats`` calls of ``run()`` (after one untimed call when ``warmup``)."""
    import statistics
    import time

    if warmup:
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo), for the results file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class PipeWorker:
    """``script --worker side ...`` in its own process with ``threads`` BLAS threads; ``hello`` is its first line."""

    def __init__(self, side: str, script: str | Path, options: list[str], threads: int,
                 extra_env: dict[str, str] | None = None) -> None:
        env = {**os.environ, **{v: str(threads) for v in THREAD_VARS}, **(extra_env or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        command = [sys.executable, str(Path(script).resolve()), "--worker", side, *options]
        self.side = side
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT)
        self.hello = self.read()

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.side} exited with status {self.proc.wait()}")
        return json.loads(line)

    def ask(self, command: str, gap: float = 0.0) -> dict[str, Any]:
        """Send ``command``, return the worker's answer; ``gap`` seconds of quiet first."""
        time.sleep(gap)  # let the other side's idle BLAS/OpenMP threads stop spinning first
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self, goodbye: str | None = None) -> None:
        """Close its stdin (after sending ``goodbye``, if given) and wait for it to exit."""
        try:
            if goodbye is not None:
                self.proc.stdin.write(goodbye + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:  # it died already; its exit status is what the caller's error names
            pass
        self.proc.wait()


def torch_reference(fields: dict[str, Any], c: Any) -> tuple[Any, Any, Any, Any, Any]:
    """PyTorch's side of a training comparison: (model, AdamW, batch loader, GPTConfig, train shards).

    The model is the PyTorch GPT of ``tests/tinygrad_llm/torch_gpt.py`` holding
    the weights our trainer starts from (our GPT built with the same seed,
    copied across); AdamW decays the matrices only, with ``c``'s (a
    TrainConfig's) hyperparameters; the loader gives our trainer's batches.
    """
    import torch

    import nn
    from tinygrad_llm.data.loader import BatchLoader, TokenShards
    from tinygrad_llm.model import GPT, GPTConfig

    sys.path.insert(0, str(ROOT / "tests" / "tinygrad_llm"))
    from torch_gpt import TorchGPT, copy_weights

    shards = TokenShards(c.data, "train")
    config = GPTConfig.from_dict({**fields, "vocab_size": shards.vocab_size})
    nn.manual_seed(c.seed)  # the trainer's initial weights: same seed, same model, copied across
    model = copy_weights(GPT(config).to(c.dtype), TorchGPT(config))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": c.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps)
    loader = BatchLoader(shards, c.batch_size, config.block_size, seed=c.seed)
    return model, opt, loader, config, shards


def import_from_repository() -> None:
    """Put the repository first on ``sys.path`` and drop ``benchmarks/``: ``benchmarks/tokenizer.py`` (a script)
    would otherwise shadow the ``tokenizer`` package in the processes a benchmark starts."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != here]
