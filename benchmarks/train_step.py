"""One GPT training step (forward + backward + AdamW), ours against the PyTorch GPT of the tests, on the CPU.

The step: ``loss = model(x, y)``, ``loss.backward()``, ``opt.step()``,
``opt.zero_grad()`` on one fixed batch (``--batch-size`` x block_size tokens,
the same ids for both), float32, the same initial weights (ours built with
``nn.manual_seed(0)``, copied into ``TorchGPT`` by ``copy_weights``), AdamW
with the same two parameter groups (weight decay 0.1 on matrices and
embeddings, none on biases and norm gains: ``nn.optim.param_groups_for_weight_decay``
for ours, the same rule on ``named_parameters()`` for torch) and the same
hyperparameters. torch's AdamW runs with its defaults (``foreach=None``,
``fused=None``), and the report names the implementation that picks on the CPU.

Each side runs in its own worker process with the same thread count
(``OMP/OPENBLAS/MKL_NUM_THREADS`` set before NumPy or torch load, and
``torch.set_num_threads``). The parent drives them in blocks: after a warm-up,
every repeat (a pair) is one block of ``--steps-per-block`` back-to-back steps
of ours and one of torch, in alternating order, so that machine noise hits both
alike. A block's time is the median of its steps after the first: the first
follows the other library's block, with this process idle meanwhile, and runs
slower than a step of a training loop does (reported apart). The speed ratio is
the median over pairs of ours tokens/s / torch tokens/s (above 1 means we are
faster). Before each block the parent waits ``--gap`` seconds: NumPy's OpenBLAS
worker threads busy-wait for about 0.1 s after a call and would otherwise take
a core from the next block. Each block also records how much CPU other
processes used meanwhile (from /proc/stat), and the report gives the ratio over
the quiet pairs too.

Each side runs with its library's own defaults, and that includes the C
allocator: importing ``nn`` raises glibc's mmap and trim thresholds
(``nn.allocator``) so that the memory one step frees serves the next, where
torch's process keeps glibc's defaults. ``--torch-malloc-like-ours`` gives
torch's worker the same thresholds (through glibc's ``MALLOC_*`` variables),
to show what the setting is worth to each side; the report names each side's
allocator.

Each step also counts the worker's minor page faults (``getrusage``): the
pages of memory it touched for the first time, which the kernel had to map
and zero.

Memory is each worker's peak resident set during the steps (Linux ``VmHWM``,
reset after the model, optimizer and batch are built) minus its resident set
at that moment. Where our time goes comes from ``nn.profile`` over a few
extra steps, with the optimizer timed around ``opt.step()``; torch's top ops
come from ``torch.profiler``, for comparison.

    python benchmarks/train_step.py [--preset small] [--batch-size 16] [--threads 1] [--repeats 15]
                                    [--torch-malloc-like-ours] [--out benchmarks/results/train_step.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from harness import THREAD_VARS, PipeWorker, cpu_model, import_from_repository, write_json

ROOT = Path(__file__).resolve().parent.parent
LR, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.95), 1e-8, 0.1
QUIET_CORES = 0.1  # a pair counts as quiet when other processes used less CPU than this during both steps


# ---------------------------------------------------------------- worker: one side, one process
def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB, None where there is no procfs."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Side:
    """One library's model, batch (``x``, ``y``) and optimizer, with a timed step; the same code for both."""

    model: Any
    opt: Any
    x: Any
    y: Any

    def step(self) -> dict[str, float]:
        """One forward + backward + AdamW step: wall seconds of each phase, process CPU seconds, the loss."""
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cpu, start = time.process_time(), time.perf_counter()
        _, loss = self.model(self.x, self.y)
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad()
        end = time.perf_counter()
        return {"forward": forward - start, "backward": backward - forward, "optimizer": end - backward,
                "total": end - start, "cpu": time.process_time() - cpu, "loss": loss.item(),
                "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults}

    def profile(self, steps: int) -> dict[str, Any]:
        raise NotImplementedError


def _batch(config: Any, batch_size: int, seed: int = 0) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, size=(batch_size, config.block_size + 1))
    return np.ascontiguousarray(ids[:, :-1]), np.ascontiguousarray(ids[:, 1:])


def _ours_model(preset: str) -> Any:
    import nn
    from tinygrad_llm.model import GPT, GPTConfig

    nn.manual_seed(0)
    return GPT(GPTConfig.preset(preset))


class _Ours(_Side):
    def __init__(self, preset: str, batch_size: int) -> None:
        import nn

        self.nn = nn
        self.model = _ours_model(preset)
        self.model.train()
        self.x, self.y = _batch(self.model.config, batch_size)
        groups = nn.optim.param_groups_for_weight_decay(self.model.named_parameters(), WEIGHT_DECAY)
        self.opt = nn.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
        self.info = {"optimizer": "nn.optim.AdamW (per-parameter in-place NumPy update)",
                     "parameters": self.model.num_parameters(), "block_size": self.model.config.block_size,
                     "allocator": _allocator(nn.allocator.KEEPING_FREED_MEMORY)}

    def profile(self, steps: int) -> dict[str, Any]:
        phases, stats = [], {}
        for _ in range(steps):
            with self.nn.profile() as prof:
                phases.append(self.step())
            for r in prof.rows():
                s = stats.setdefault(r.name, {"calls": 0, "forward_s": 0.0, "backward_s": 0.0, "saved_bytes": 0})
                s["calls"] += r.calls
                s["forward_s"] += r.forward_s
                s["backward_s"] += r.backward_s
                s["saved_bytes"] += r.saved_bytes
        means = _phase_means(phases)
        step_ms, optimizer_ms = means["step_ms"], means["optimizer_ms"]
        ops_ms = sum(s["forward_s"] + s["backward_s"] for s in stats.values()) * 1e3 / steps
        rows = sorted(stats.items(), key=lambda kv: kv[1]["forward_s"] + kv[1]["backward_s"], reverse=True)
        top = [{"op": name, "calls_per_step": s["calls"] // steps,
                "forward_ms": round(s["forward_s"] * 1e3 / steps, 2),
                "backward_ms": round(s["backward_s"] * 1e3 / steps, 2),
                "share_of_step": round((s["forward_s"] + s["backward_s"]) * 1e3 / steps / step_ms, 3),
                "saved_MiB": round(s["saved_bytes"] / steps / 2**20, 1)} for name, s in rows]
        return {
            "steps": steps,
            "statistic": ("means over the profiled steps; shares are of the whole step (forward+backward+optimizer); "
                          "outside ops: the rest of the step (graph recording, the backward walk and gradient "
                          "accumulation, Python); saved_MiB: arrays the ops keep for backward, counted per op "
                          "(an array two ops keep, or a weight, counts each time)"),
            "step_ms": round(step_ms, 1),
            "forward_ms": round(means["forward_ms"], 1),
            "backward_ms": round(means["backward_ms"], 1),
            "optimizer_ms": round(optimizer_ms, 1),
            "optimizer_share": round(optimizer_ms / step_ms, 3),
            "ops_ms": round(ops_ms, 1),
            "ops_share": round(ops_ms / step_ms, 3),
            "outside_ops_share": round(1 - (ops_ms + optimizer_ms) / step_ms, 3),
            "saved_for_backward_MiB": round(sum(s["saved_bytes"] for s in stats.values()) / steps / 2**20, 1),
            "top_ops": top,
        }


class _Torch(_Side):
    def __init__(self, preset: str, batch_size: int, threads: int, optimizer_impl: str) -> None:
        import torch

        sys.path.insert(0, str(ROOT / "tests" / "tinygrad_llm"))
        from torch_gpt import TorchGPT, copy_weights

        torch.set_num_threads(threads)
        self.torch = torch
        ours = _ours_model(preset)
        self.model = copy_weights(ours, TorchGPT(ours.config))
        self.model.train()
        x, y = _batch(ours.config, batch_size)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        block_size = ours.config.block_size
        del ours
        params = [p for _, p in self.model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        flags = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True},
                 "for-loop": {"foreach": False}}[optimizer_impl]
        self.opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, **flags)
        self.info = {"optimizer": f"torch.optim.AdamW ({optimizer_impl}: {self._adamw_impl(params, flags)})",
                     "parameters": sum(p.numel() for p in params), "block_size": block_size,
                     "allocator": _allocator(False)}

    def _adamw_impl(self, params: list[Any], flags: dict[str, bool]) -> str:
        """Which AdamW kernel torch runs with these flags: fused, foreach (multi-tensor) or single-tensor loop."""
        if flags.get("fused"):
            return "fused kernel"
        foreach = flags.get("foreach")
        if foreach is None:
            from torch.optim.optimizer import _default_to_fused_or_foreach

            _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        return "foreach multi-tensor" if foreach else "single-tensor for-loop (_single_tensor_adamw)"

    def profile(self, steps: int) -> dict[str, Any]:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            phases = [self.step() for _ in range(steps)]
        summary = _phase_means(phases)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        top = []
        for e in events[:15]:
            self_ms = e.self_cpu_time_total / 1e3 / steps
            top.append({"op": e.key, "calls_per_step": e.count // steps, "self_ms": round(self_ms, 2),
                        "share_of_step": round(self_ms / summary["step_ms"], 3)})
        return {"steps": steps, "statistic": ("means over the profiled steps (the profiler's own overhead included); "
                                              "ops by self CPU time of the calling thread, children excluded"),
                **{k: round(v, 1) for k, v in summary.items()}, "top_ops": top}


def _phase_means(phases: list[dict[str, float]]) -> dict[str, float]:
    """Mean milliseconds of each phase over some steps."""
    names = {"step_ms": "total", "forward_ms": "forward", "backward_ms": "backward", "optimizer_ms": "optimizer"}
    return {name: sum(p[phase] for p in phases) * 1e3 / len(phases) for name, phase in names.items()}


def _worker(args: argparse.Namespace) -> int:
    """Build one side, then answer commands on stdin with one JSON line each on stdout."""
    import platform

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but our replies may reach the pipe
    side: _Side = (_Ours(args.preset, args.batch_size) if args.worker == "ours"
                   else _Torch(args.preset, args.batch_size, args.threads, args.torch_optimizer))
    import numpy as np

    versions = {"python": sys.version.split()[0], "numpy": np.__version__}
    if args.worker == "torch":
        versions["torch"] = side.torch.__version__
    baseline_kib = _status_kib("VmRSS")
    hwm_reset = _reset_peak_rss()

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    reply({"ready": True, "versions": versions, "platform": platform.platform(), **side.info})
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "steps":
            reply({"steps": [side.step() for _ in range(int(rest[0]))]})
        elif command == "memory":
            peak_kib, now_kib = _status_kib("VmHWM"), _status_kib("VmRSS")
            if None in (baseline_kib, peak_kib, now_kib):
                reply({"error": "no /proc/self/status on this system"})
                continue
            reply({"rss_before_steps_MiB": round(baseline_kib / 1024, 1),
                   "peak_rss_during_steps_MiB": round(peak_kib / 1024, 1),
                   "peak_rss_growth_MiB": round((peak_kib - baseline_kib) / 1024, 1),
                   "rss_after_steps_MiB": round(now_kib / 1024, 1), "peak_reset_before_steps": hwm_reset})
        elif command == "profile":
            reply(side.profile(int(rest[0])))
        elif command == "quit":
            break
    return 0


def _allocator(set_by_nn: bool) -> str:
    """How this worker's C allocator was configured: by nn.allocator, by glibc's variables, or glibc's defaults."""
    if set_by_nn:
        return "glibc mallopt by nn.allocator: mmap threshold 32 MiB, trim threshold 1 GiB"
    own = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    return f"glibc, environment {own}" if own else "C library defaults"


# ---------------------------------------------------------------- parent: drive both, pair the steps
class _Worker(PipeWorker):
    def __init__(self, side: str, args: argparse.Namespace) -> None:
        malloc = {}
        if side == "torch" and args.torch_malloc_like_ours:  # glibc's own variables, the values nn.allocator sets
            from nn.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD
            malloc = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
        super().__init__(side, __file__, ["--preset", args.preset, "--batch-size", str(args.batch_size),
                                          "--threads", str(args.threads), "--torch-optimizer", args.torch_optimizer],
                         args.threads, extra_env=malloc)

    def block(self, steps: int, gap: float) -> dict[str, Any]:
        """``steps`` training steps back to back, summarised by :func:`_summarise`.

        Also measures ``foreign_cores``: the CPU that other processes used meanwhile, in cores
        (machine busy time from /proc/stat minus the steps' own CPU time, over their wall time).
        """
        time.sleep(gap)
        from tinygrad_llm.train.hardware import cores_busy_seconds  # this process's cores, busy
        before = cores_busy_seconds()
        result = self.ask(f"steps {steps}")["steps"]
        after = cores_busy_seconds()
        foreign = None
        if before is not None and after is not None:
            foreign = max(0.0, after - before - sum(s["cpu"] for s in result)) / sum(s["total"] for s in result)
        return _summarise(result, foreign)

    def close(self) -> None:
        super().close(goodbye="quit")


def _summarise(steps: list[dict[str, float]], foreign_cores: float | None) -> dict[str, Any]:
    """One block: the median of each phase over its steps after the first, the first step's time, the last loss.

    The first step of a block follows the other library's block, with this process idle meanwhile, and
    is slower than a step in a training loop, where steps follow each other (on the 2-core machine of
    the results: ours by 10-15%, torch by 1-2%); so it is reported apart and kept out of the paired ratio.
    """
    import statistics

    warm = steps[1:] or steps
    summary = {phase: statistics.median(s[phase] for s in warm)
               for phase in ("total", "forward", "backward", "optimizer", "cpu", "faults")}
    return {**summary, "first_step": steps[0]["total"], "loss": steps[-1]["loss"], "foreign_cores": foreign_cores}


def _parent(args: argparse.Namespace) -> int:
    import platform
    import statistics
    from datetime import UTC, datetime

    load_before = os.getloadavg()
    ours, theirs = _Worker("ours", args), _Worker("torch", args)
    block_size = ours.hello["block_size"]
    tokens = args.batch_size * block_size
    try:
        warmup = {"ours": ours.ask(f"steps {args.warmup}")["steps"],
                  "torch": theirs.ask(f"steps {args.warmup}", args.gap)["steps"]}
        pairs = []
        for i in range(args.repeats):
            order = (("ours", ours), ("torch", theirs))[::1 if i % 2 == 0 else -1]
            got = {name: worker.block(args.steps_per_block, args.gap) for name, worker in order}
            pairs.append(got)
            o, t = got["ours"], got["torch"]
            load = "  ".join(f"{v:4.2f}" if v is not None else " n/a" for v in (o["foreign_cores"], t["foreign_cores"]))
            print(f"pair {i + 1:>3}/{args.repeats}: ours {o['total'] * 1e3:8.1f} ms  torch {t['total'] * 1e3:8.1f} ms"
                  f"  speed ratio {t['total'] / o['total']:5.2f}   other load (cores) {load}", flush=True)
        memory = {"ours": ours.ask("memory"), "torch": theirs.ask("memory")}
        profiles = {"ours": ours.ask(f"profile {args.profile_steps}", args.gap),
                    "torch": theirs.ask(f"profile {args.profile_steps}", args.gap)}
    finally:
        ours.close()
        theirs.close()

    def med(side: str, phase: str) -> float:
        return statistics.median(p[side][phase] for p in pairs)

    def paired(phase: str, among: list[dict[str, Any]] = pairs) -> float:
        return statistics.median(p["torch"][phase] / p["ours"][phase] for p in among)

    ratio = paired("total")
    quiet = [p for p in pairs if all(p[s]["foreign_cores"] is not None and p[s]["foreign_cores"] < QUIET_CORES
                                     for s in ("ours", "torch"))]
    sides = {}
    for side, hello in (("ours", ours.hello), ("torch", theirs.hello)):
        sides[side] = {
            "tokens_per_s": round(tokens / med(side, "total"), 1),
            "step_ms": round(med(side, "total") * 1e3, 2),
            "forward_ms": round(med(side, "forward") * 1e3, 2),
            "backward_ms": round(med(side, "backward") * 1e3, 2),
            "optimizer_ms": round(med(side, "optimizer") * 1e3, 2),
            "step_ms_all": [round(p[side]["total"] * 1e3, 2) for p in pairs],
            "first_step_of_block_ms": round(med(side, "first_step") * 1e3, 2),
            "other_load_cores_all": [None if p[side]["foreign_cores"] is None else round(p[side]["foreign_cores"], 2)
                                     for p in pairs],
            "cpu_ms_per_step": round(med(side, "cpu") * 1e3, 2),
            "minor_page_faults_per_step": round(med(side, "faults")),
            "optimizer": hello["optimizer"],
            "allocator": hello["allocator"],
            "parameters": hello["parameters"],
            "loss_first_step": warmup[side][0]["loss"],
            "loss_last_step": pairs[-1][side]["loss"],
            "memory": memory[side],
        }
    loss_gap = abs(warmup["ours"][0]["loss"] - warmup["torch"][0]["loss"])
    report = {
        "benchmark": "train_step: GPT forward + backward + AdamW step, ours vs PyTorch eager CPU",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "threads": args.threads, "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "versions": theirs.hello["versions"],
        "config": {"preset": args.preset, "batch_size": args.batch_size, "block_size": block_size,
                   "tokens_per_step": tokens, "dtype": "float32", "lr": LR, "betas": list(BETAS), "eps": EPS,
                   "weight_decay": {"ndim>=2": WEIGHT_DECAY, "ndim<2": 0.0}},
        "warmup_steps": args.warmup,
        "repeats": args.repeats,
        "steps_per_block": args.steps_per_block,
        "gap_s": args.gap,
        "statistic": ("a pair is one block of steps_per_block back-to-back steps of each library, the blocks one "
                      "after the other in alternating order, each after an idle gap of gap_s; a block's time is the "
                      "median of its steps after the first (the first follows the other library's block: "
                      "first_step_of_block_ms). tokens/s and *_ms: median over pairs; speed_ratio: median over "
                      "pairs of ours tokens/s / torch tokens/s (= torch step time / ours); above 1 means ours is "
                      "faster"),
        "speed_ratio": round(ratio, 3),
        "speed_ratio_by_phase": {ph: round(paired(ph), 3) for ph in ("forward", "backward", "optimizer")},
        "quiet_pairs": len(quiet),
        "speed_ratio_quiet_pairs": round(paired("total", quiet), 3) if quiet else None,
        "quiet_pairs_rule": (f"both steps of the pair ran while other processes used under {QUIET_CORES} cores "
                             "(machine busy time from /proc/stat minus the step's own CPU time, over its wall time)"),
        "first_step_loss_abs_difference": loss_gap,
        "memory_measured": ("per worker process: peak resident set size (Linux /proc/self/status VmHWM, reset via "
                            "clear_refs after the model, optimizer and batch are built and before the first step) "
                            "over the warm-up and timed steps, minus the resident set at that reset. It covers "
                            "activations, gradients, AdamW moments (allocated in the first step) and allocator "
                            "caches; the model weights and the imported libraries are in the baseline."),
        "ours": sides["ours"],
        "torch": sides["torch"],
        "ours_profile": profiles["ours"],
        "torch_profile": profiles["torch"],
    }
    out = Path(args.out)
    write_json(out, report)

    o, t = sides["ours"], sides["torch"]
    print(f"\n{args.preset}, batch {args.batch_size}x{block_size}, {args.threads} thread(s)")
    print(f"ours  {o['tokens_per_s']:9.0f} tok/s  step {o['step_ms']:8.1f} ms  peak RSS growth "
          f"{o['memory'].get('peak_rss_growth_MiB', float('nan')):7.1f} MiB")
    print(f"torch {t['tokens_per_s']:9.0f} tok/s  step {t['step_ms']:8.1f} ms  peak RSS growth "
          f"{t['memory'].get('peak_rss_growth_MiB', float('nan')):7.1f} MiB   ({t['optimizer']})")
    print(f"speed ratio ours/torch {ratio:.3f} (median of {args.repeats} pairs; {report['speed_ratio_quiet_pairs']} "
          f"over the {len(quiet)} quiet pairs); by phase "
          f"{report['speed_ratio_by_phase']}; first-step loss gap {loss_gap:.2e}")
    prof = profiles["ours"]
    print(f"ours: optimizer {100 * prof['optimizer_share']:.1f}% of the step, ops {100 * prof['ops_share']:.1f}%, "
          f"outside ops {100 * prof['outside_ops_share']:.1f}%")
    for r in prof["top_ops"][:10]:
        print(f"  {r['op']:<26}{r['calls_per_step']:>5} calls  fwd {r['forward_ms']:7.2f} ms  "
              f"bwd {r['backward_ms']:7.2f} ms  {100 * r['share_of_step']:5.1f}%")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15, help="timed pairs (one block of steps of each side)")
    parser.add_argument("--steps-per-block", type=int, default=3, help="back-to-back steps per block (first untimed)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each side first")
    parser.add_argument("--gap", type=float, default=0.3,
                        help="seconds of idle before each step (OpenBLAS threads spin ~0.1 s after a call)")
    parser.add_argument("--profile-steps", type=int, default=5, help="extra steps under nn.profile / torch.profiler")
    parser.add_argument("--torch-optimizer", choices=("default", "for-loop", "foreach", "fused"), default="default",
                        help="torch AdamW implementation (default: whatever torch picks for CPU tensors)")
    parser.add_argument("--torch-malloc-like-ours", action="store_true",
                        help="give torch's worker the glibc thresholds that nn.allocator sets for ours")
    parser.add_argument("--out", default=None, help="default benchmarks/results/train_step[_Nthreads].json")
    parser.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_steps < 1:
        parser.error("--profile-steps must be at least 1 (the report shows the profile)")
    if args.worker:
        os.environ.update({v: str(args.threads) for v in THREAD_VARS})  # before NumPy or torch is imported
        return _worker(args)
    if args.out is None:
        suffix = "" if args.threads == 1 else f"_{args.threads}threads"
        args.out = f"benchmarks/results/train_step{suffix}.json"
    return _parent(args)


if __name__ == "__main__":
    import_from_repository()  # benchmarks/tokenizer.py would shadow the tokenizer package
    sys.exit(main())
