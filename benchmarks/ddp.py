"""Data-parallel scaling: tokens/s of the small preset on 1 and N processes, ours (MPI) against PyTorch DDP (gloo).

    python benchmarks/ddp.py                       # 1 and 2 processes, the bucket/overlap sweep, 3 repeats
    python benchmarks/ddp.py --ranks 1,2,4,8       # on a machine with more cores

Weak scaling, as data parallelism is used: every process trains on its own
micro-batch (16 x 128 tokens by default, one BLAS thread each), so N processes
take N times the tokens per step. Scaling efficiency = tokens/s on N processes
/ (N x tokens/s on one). Both sides run the same loop (forward, backward, the
gradient all-reduce, clipping, AdamW) on the same weights and batches, and both
are launched by ``mpiexec``; PyTorch's DDP talks over gloo (TCP on localhost),
ours over MPI (shared memory). Every configuration runs ``--repeats`` times, in a
shuffled order, each time in fresh processes; the medians are reported.

For ours the JSON also gives the seconds per step spent waiting for all-reduces
(the whole all-reduce without overlap; what is left after backward with it), and
a sweep over the bucket size and overlap on the largest process count.
Results: benchmarks/results/ddp.json (machine, versions, date).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from harness import THREAD_VARS, cpu_model, write_json

ROOT = Path(__file__).resolve().parents[1]
LR, BETAS, EPS, WEIGHT_DECAY, CLIP = 1e-3, (0.9, 0.95), 1e-8, 0.1, 1.0


# ---------------------------------------------------------------- workers (one per process, under mpiexec)
def _batches(vocab: int, block: int, batch_size: int, rank: int, count: int):
    import numpy as np

    rng = np.random.default_rng(1000 + rank)
    tokens = rng.integers(0, vocab, (count, batch_size, block + 1))
    return [(t[:, :-1].copy(), t[:, 1:].copy()) for t in tokens]


def _ours_model():
    import nn
    from tinygrad_llm.model import GPT, GPTConfig

    nn.manual_seed(0)
    return GPT(GPTConfig.preset("small"))


def _worker_ours(args: argparse.Namespace) -> dict:
    import numpy as np

    from nn import distributed, optim

    parallel = distributed.init()
    comm = parallel.world
    model = _ours_model()
    ddp = distributed.DistributedDataParallel(model, bucket_mb=args.bucket_mb, overlap=args.overlap) \
        if comm.size > 1 else None
    opt = optim.AdamW(optim.param_groups_for_weight_decay(model.named_parameters(), WEIGHT_DECAY), lr=LR,
                      betas=BETAS, eps=EPS)
    config = model.config
    batches = _batches(config.vocab_size, config.block_size, args.batch_size, comm.rank, args.warmup + args.steps)
    forward = ddp or model
    times = []
    for i, (x, y) in enumerate(batches):
        if i == args.warmup:
            comm.barrier()
            if ddp is not None:
                ddp.stats.update(reductions=0, bytes=0, wait_seconds=0.0)
        start = time.perf_counter()
        _, loss = forward(x, y)
        loss.backward()
        optim.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], CLIP)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    timed = np.array(times[args.warmup:])
    comm.all_reduce(timed, op="max")  # a step ends when the slowest process ends it
    stats = ddp.stats if ddp is not None else {"reductions": 0, "bytes": 0, "wait_seconds": 0.0}
    return {"step_s": timed.tolist(), "buckets": len(ddp.buckets) if ddp else 0,
            "wait_s_per_step": stats["wait_seconds"] / args.steps,
            "reduced_MiB_per_step": stats["bytes"] / args.steps / 2**20,
            "tokens_per_step": comm.size * args.batch_size * config.block_size, "rank": comm.rank}


def _worker_torch(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(ROOT / "tests" / "tinygrad_llm"))
    from torch_gpt import TorchGPT, copy_weights

    from nn import distributed

    torch.set_num_threads(1)
    world = distributed.init().world  # only to learn rank and size from the launcher
    ours = _ours_model()
    model = copy_weights(ours, TorchGPT(ours.config))
    config = ours.config
    del ours
    if world.size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=world.rank,
                                world_size=world.size)
        forward = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb)
    else:
        forward = model
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    batches = _batches(config.vocab_size, config.block_size, args.batch_size, world.rank, args.warmup + args.steps)
    times = []
    for i, (x, y) in enumerate(batches):
        if i == args.warmup:
            world.barrier()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        start = time.perf_counter()
        _, loss = forward(xt, yt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    timed = np.array(times[args.warmup:])
    world.all_reduce(timed, op="max")
    if world.size > 1:
        dist.destroy_process_group()
    return {"step_s": timed.tolist(), "tokens_per_step": world.size * args.batch_size * config.block_size,
            "rank": world.rank}


def _worker(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT))
    result = (_worker_ours if args.worker == "ours" else _worker_torch)(args)
    if result["rank"] == 0:
        print("RESULT " + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------- the parent
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: argparse.Namespace, side: str, ranks: int, bucket_mb: float, overlap: bool) -> dict:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    command = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(ranks), sys.executable, __file__,
               "--worker", side, "--bucket-mb", str(bucket_mb), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--port", str(_free_port())]
    if overlap:
        command.append("--overlap")
    env = {**os.environ, **{v: "1" for v in THREAD_VARS}, "HYDRA_LAUNCHER": "fork"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{side} on {ranks} processes failed:\n{result.stderr[-3000:]}")
    data = json.loads(lines[-1][len("RESULT "):])
    data["tokens_per_s"] = data["tokens_per_step"] / statistics.median(data["step_s"])
    return data


def _versions() -> dict:
    import mpi4py
    import numpy
    import torch
    from mpi4py import MPI

    return {"python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__,
            "mpi4py": mpi4py.__version__, "mpi": MPI.Get_library_version().splitlines()[0].strip()}


def _parent(args: argparse.Namespace) -> int:
    ranks = [int(r) for r in args.ranks.split(",")]
    top = max(ranks)
    configs = [("ours", n, 25.0, True) for n in ranks] + [("torch", n, 25.0, True) for n in ranks]
    if top > 1:
        configs += [("ours", top, mb, overlap) for mb in (1.0, 1000.0) for overlap in (True, False)]
        configs += [("ours", top, 25.0, False)]
    runs: dict[tuple, list[dict]] = {c: [] for c in configs}
    load_before = os.getloadavg()
    started = time.time()
    for repeat in range(args.repeats):
        order = configs[:]
        random.Random(repeat).shuffle(order)
        for config in order:
            result = _launch(args, *config)
            runs[config].append(result)
            side, n, mb, overlap = config
            print(f"repeat {repeat + 1}/{args.repeats}  {side:5s} {n} proc  bucket {mb:6g} MB  "
                  f"overlap {'on ' if overlap else 'off'}  {result['tokens_per_s']:8,.0f} tok/s", flush=True)

    def median(config: tuple, key: str = "tokens_per_s") -> float:
        return statistics.median(r[key] for r in runs[config])

    table = []
    for n in ranks:
        ours, torch_ = median(("ours", n, 25.0, True)), median(("torch", n, 25.0, True))
        row = {"processes": n, "tokens_per_s_ours": round(ours), "tokens_per_s_torch": round(torch_),
               "ours_over_torch": round(ours / torch_, 3),
               "scaling_efficiency_ours": round(ours / (n * median(("ours", 1, 25.0, True))), 3),
               "scaling_efficiency_torch": round(torch_ / (n * median(("torch", 1, 25.0, True))), 3)}
        if n > 1:
            step = statistics.median(statistics.median(r["step_s"]) for r in runs[("ours", n, 25.0, True)])
            wait = median(("ours", n, 25.0, True), "wait_s_per_step")
            row.update(allreduce_wait_ms_per_step=round(1000 * wait, 1), allreduce_wait_share=round(wait / step, 4),
                       reduced_MiB_per_step=round(runs[("ours", n, 25.0, True)][0]["reduced_MiB_per_step"], 1))
        table.append(row)
    sweep = []
    if top > 1:
        for mb in (1.0, 25.0, 1000.0):
            for overlap in (True, False):
                config = ("ours", top, mb, overlap)
                step = statistics.median(statistics.median(r["step_s"]) for r in runs[config])
                sweep.append({"processes": top, "bucket_mb": mb, "buckets": runs[config][0]["buckets"],
                              "overlap": overlap, "tokens_per_s": round(median(config)),
                              "allreduce_wait_ms_per_step": round(1000 * median(config, "wait_s_per_step"), 1),
                              "allreduce_wait_share": round(median(config, "wait_s_per_step") / step, 4)})
    report = {
        "benchmark": "data-parallel scaling, small preset, weak scaling",
        "what": (f"tokens/s of forward + backward + gradient all-reduce + clipping + AdamW, micro-batch "
                 f"{args.batch_size} x 128 per process, one BLAS thread per process, float32; median of "
                 f"{args.repeats} runs of {args.steps} timed steps (after {args.warmup} warm-up steps), each "
                 f"step timed on its slowest process. Ours: nn.distributed.DistributedDataParallel over MPI; "
                 f"reference: torch.nn.parallel.DistributedDataParallel over gloo, both under mpiexec."),
        "table": table,
        "bucket_overlap_sweep": sweep,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "versions": _versions(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.time() - started),
        "runs": {f"{c[0]} n={c[1]} bucket={c[2]} overlap={c[3]}": [r["tokens_per_s"] for r in v]
                 for c, v in runs.items()},
    }
    out = Path(args.out)
    write_json(out, report)
    print(json.dumps(table, indent=2))
    print(f"wrote {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="1,2", help="process counts to measure (comma separated)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per process per step")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ddp.json"))
    parser.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--bucket-mb", type=float, default=25.0, help=argparse.SUPPRESS)
    parser.add_argument("--overlap", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=29500, help=argparse.SUPPRESS)
    args = parser.parse_args()
    return _worker(args) if args.worker else _parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
