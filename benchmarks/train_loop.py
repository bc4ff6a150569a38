"""The whole training loop, ours (the real ``Trainer``) against a PyTorch reference loop, on the CPU.

One run measures three things on the same prepared data, preset, batches,
initial weights and thread count:

1. Speed of the whole loop: data loading (``BatchLoader.next_batch``), forward,
   backward, clipping, AdamW, the learning-rate schedule, the JSONL log line
   and the progress bar. Ours is ``Trainer.fit`` itself, unmodified, driven
   through its ``on_step`` hook; the reference is a loop written here the
   usual PyTorch way: the same loader's batches as ``torch.from_numpy``
   tensors, ``TorchGPT`` (the reference GPT of the tests) with our initial
   weights (``copy_weights``), ``torch.optim.AdamW`` with the same two groups
   (decay on ``ndim >= 2``) and hyperparameters, ``clip_grad_norm_``, the same
   warmup + cosine schedule (our ``nn.optim.learning_rate``, by steps), a
   JSONL log line every ``--log-interval`` steps (opened, appended, closed, as
   the Trainer does) and the same progress bar. Each side runs in its own
   process with the same thread count (``OMP/OPENBLAS/MKL_NUM_THREADS`` set
   before NumPy or torch load, ``torch.set_num_threads``). The parent drives
   them in blocks of ``--block`` steps: after ``--warmup`` untimed steps,
   every pair is one block of ours and one of torch, in alternating order,
   each after an idle gap of ``--gap`` seconds, so machine noise (including
   another job on the machine) hits both alike. The speed ratio is the median
   over pairs of ours tokens/s / torch tokens/s; above 1 means ours is faster.

2. Where our step time goes: ``Trainer`` is instrumented, not copied:
   ``loader.next_batch``, ``model.forward``, ``Tensor.backward``,
   ``optim.clip_grad_norm_`` and ``optimizer.step`` / ``zero_grad`` are
   wrapped with ``perf_counter`` (a few microseconds a step) and the block's
   wall time is taken between ``on_step`` calls. Outside = the step minus
   forward, backward and optimizer: data loading, clipping, the schedule,
   logging, the progress bar and the loop's bookkeeping (target: under 2%).
   The reference loop is timed the same way, for comparison.

3. Loss-curve parity: every step of both runs (float32, identical initial
   weights and batches, the same ``--steps`` long schedule) is recorded; the
   curves, their differences, gradient norms, learning rates and the final
   validation loss are compared, and plotted to ``*_curves.png``.

Data: ``--data DIR`` (a directory written by ``tinygrad-llm prepare``);
without it ``data/stdlib`` when it is prepared, else the first
``--max-documents`` documents of the default corpus, prepared once into a
cache directory under the system temp directory.

    python benchmarks/train_loop.py [--preset small] [--batch-size 16] [--threads 1] [--steps 200]
                                    [--block 4] [--data DIR] [--out benchmarks/results/train_loop.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from harness import THREAD_VARS, PipeWorker, cpu_model, import_from_repository, torch_reference, write_json

ROOT = Path(__file__).resolve().parent.parent
CORE_PHASES = ("forward", "backward", "optimizer")


# ---------------------------------------------------------------- worker side: shared pieces
def _train_config(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """The model fields and TrainConfig both sides use: the preset, the run's length, eval only at the end."""
    from tinygrad_llm.train import resolve_config

    return resolve_config(args.preset, data=args.data, out_dir=args.run_dir, batch_size=args.batch_size,
                          max_steps=args.steps, lr=args.lr, seed=args.seed, log_interval=args.log_interval,
                          eval_interval=args.steps, checkpoint_interval=args.steps,
                          eval_batches=args.eval_batches, dtype="float32", threads=args.threads)


class _Block:
    """What one side did in one command: wall and CPU seconds, phase seconds, per-step records."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self.batch_crc = 0
        self.reset()

    def reset(self) -> None:
        self.phases.clear()
        self.steps.clear()
        self.start, self.cpu = time.perf_counter(), time.process_time()

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def result(self) -> dict[str, Any]:
        return {"wall": time.perf_counter() - self.start, "cpu": time.process_time() - self.cpu,
                "phases": dict(self.phases), "steps": list(self.steps), "batch_crc": self.batch_crc}

    def record_batch(self, x: Any, y: Any) -> None:
        """A running CRC of every batch, so the parent can check both sides saw the same ones."""
        self.batch_crc = zlib.crc32(y.tobytes(), zlib.crc32(x.tobytes(), self.batch_crc))


def _timed(block: _Block, phase: str, fn: Any) -> Any:
    """``fn`` with its wall time added to ``block``'s ``phase``."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            block.add(phase, time.perf_counter() - start)
    return wrapper


class _Channel:
    """The worker's end of the pipe: commands in on stdin, one JSON line out per command."""

    def __init__(self) -> None:
        self.out = sys.stdout
        sys.stdout = sys.stderr  # nothing but replies may reach the pipe

    def reply(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()

    def command(self) -> tuple[str, int]:
        words = (sys.stdin.readline() or "quit").split()
        return words[0], int(words[1]) if len(words) > 1 else 0


def _versions() -> dict[str, str]:
    import numpy as np

    return {"python": sys.version.split()[0], "numpy": np.__version__}


def _weights_sum(arrays: Any) -> float:
    """A float64 sum of all weights: the parent checks both sides start from the same ones."""
    import numpy as np

    return float(sum(np.asarray(a, dtype=np.float64).sum() for a in arrays))


# ---------------------------------------------------------------- worker: ours, the real Trainer
def _ours_worker(args: argparse.Namespace, channel: _Channel, progress_stream: Any) -> None:
    import nn
    from nn import optim
    from tinygrad_llm.train import Trainer, pretraining

    fields, config = _train_config(args)
    trainer = pretraining(fields, config, stream=progress_stream)
    block = _Block()
    loader_next = trainer.setup.batches.next_batch

    def next_batch() -> Any:
        start = time.perf_counter()
        x, y = loader_next()
        block.add("data", time.perf_counter() - start)
        block.record_batch(x, y)
        return x, y

    train_step = trainer.train_step
    pending: dict[str, float] = {}

    def recorded_train_step() -> tuple[float, float]:
        loss, norm = train_step()
        pending.update(loss=loss, grad_norm=norm)
        return loss, norm

    trainer.setup.batches.next_batch = next_batch
    trainer.train_step = recorded_train_step
    trainer.model.forward = _timed(block, "forward", trainer.model.forward)
    nn.Tensor.backward = _timed(block, "backward", nn.Tensor.backward)
    optim.clip_grad_norm_ = _timed(block, "clip", optim.clip_grad_norm_)
    trainer.optimizer.step = _timed(block, "optimizer", trainer.optimizer.step)
    trainer.optimizer.zero_grad = _timed(block, "optimizer", trainer.optimizer.zero_grad)

    channel.reply({"ready": True, "versions": _versions(), "parameters": trainer.model.num_parameters(),
                   "block_size": trainer.model_config.block_size, "vocab_size": trainer.model_config.vocab_size,
                   "tokens_per_step": trainer.setup.tokens_per_step, "warmup_lr_steps": config.warmup_steps,
                   "weights_sum": _weights_sum(p.numpy() for p in trainer.model.parameters()),
                   "optimizer": "nn.optim.AdamW", "model": "tinygrad_llm.model.GPT"})
    _, remaining = channel.command()

    def on_step(t: Trainer) -> None:
        nonlocal remaining
        block.steps.append({**pending, "lr": t.optimizer.param_groups[0]["lr"]})
        remaining -= 1
        if remaining:
            return
        channel.reply(block.result())
        command, remaining = channel.command()
        if command != "run":  # "finish" after the last step; "quit" (end of input) if the parent gave up
            t.request_stop()
        block.reset()  # the next block starts when fit's loop resumes

    trainer.on_step = on_step
    block.reset()
    trainer.fit()
    channel.reply({"val_loss": trainer.last_eval["val_loss"]})


# ---------------------------------------------------------------- worker: the PyTorch reference loop
def _torch_worker(args: argparse.Namespace, channel: _Channel, progress_stream: Any) -> None:
    import torch

    from nn.optim import learning_rate
    from tinygrad_llm.data.loader import TokenShards, eval_windows
    from util.progress import Progress

    torch.set_num_threads(args.threads)
    fields, c = _train_config(args)
    model, opt, loader, config, shards = torch_reference(fields, c)
    params = [p for p in model.parameters() if p.requires_grad]
    tokens_per_step = c.batch_size * config.block_size
    steps = c.max_steps
    warmup = c.warmup_steps
    min_lr = c.lr / 10 if c.min_lr is None else c.min_lr

    def lr_at(step: int) -> float:
        """Our schedule (``nn.optim.learning_rate``) at progress by steps, as the Trainer computes it: 0 at the
        first step, 1 at the last (1 throughout a one-step run)."""
        progress = 1.0 if steps <= 1 else min(1.0, step / (steps - 1))
        return learning_rate(c.schedule, progress, step, max_lr=c.lr, min_lr=min_lr, warmup_steps=warmup)

    log_path = Path(c.out_dir) / "log.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress(total=steps, unit="step", desc="train", stream=progress_stream)
    block = _Block()
    state = {"step": 0, "window_start": time.perf_counter(), "window_tokens": 0}

    def train_step() -> None:
        lr = lr_at(state["step"])
        for group in opt.param_groups:
            group["lr"] = lr
        t1 = time.perf_counter()
        x, y = loader.next_batch()
        block.record_batch(x, y)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        t2 = time.perf_counter()
        _, loss = model(xt, yt)
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        loss_value = loss.item()
        t5 = time.perf_counter()
        norm = float(torch.nn.utils.clip_grad_norm_(params, c.grad_clip))
        t6 = time.perf_counter()
        if math.isfinite(loss_value) and math.isfinite(norm):
            opt.step()
        opt.zero_grad()
        t7 = time.perf_counter()
        for phase, seconds in (("data", t2 - t1), ("forward", t3 - t2), ("backward", t4 - t3),
                               ("clip", t6 - t5), ("optimizer", t7 - t6)):
            block.add(phase, seconds)
        state["step"] += 1
        state["window_tokens"] += tokens_per_step
        step = state["step"]
        if step % c.log_interval == 0 or step == 1 or step == steps:
            tps = state["window_tokens"] / (time.perf_counter() - state["window_start"])
            record = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": norm, "tokens_per_s": tps,
                      "time": time.time()}
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            progress.set_fields(loss=f"{loss_value:.3f}", **{"tok/s": f"{tps:,.0f}"})
            state["window_start"], state["window_tokens"] = time.perf_counter(), 0
        progress.update(1)
        block.steps.append({"loss": loss_value, "grad_norm": norm, "lr": lr})

    versions = {**_versions(), "torch": torch.__version__}
    channel.reply({"ready": True, "versions": versions, "parameters": sum(p.numel() for p in params),
                   "block_size": config.block_size, "vocab_size": config.vocab_size,
                   "tokens_per_step": tokens_per_step, "warmup_lr_steps": warmup,
                   "weights_sum": _weights_sum(p.detach().numpy() for p in params),
                   "optimizer": f"torch.optim.AdamW ({_adamw_impl(params)})", "model": "TorchGPT (tests)"})
    while True:
        command, count = channel.command()
        if command != "run":
            break
        block.reset()
        for _ in range(count):
            train_step()
        channel.reply(block.result())
    progress.close()
    model.eval()
    nats, tokens = 0.0, 0
    with torch.no_grad():
        for x, y in eval_windows(TokenShards(c.data, "val"), config.block_size, c.batch_size, c.eval_batches):
            logits, _ = model(torch.from_numpy(x))
            nats += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                            torch.from_numpy(y).reshape(-1), reduction="sum"))
            tokens += y.size
    channel.reply({"val_loss": nats / tokens})


def _adamw_impl(params: list[Any]) -> str:
    """Which AdamW kernel torch picks by default for these tensors: foreach (multi-tensor) or a for-loop."""
    from torch.optim.optimizer import _default_to_fused_or_foreach

    _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    return "default: foreach multi-tensor" if foreach else "default: single-tensor for-loop"


def _worker(args: argparse.Namespace) -> int:
    channel = _Channel()
    with open(Path(args.run_dir) / "progress.log", "w", encoding="utf-8") as progress_stream:
        (_ours_worker if args.worker == "ours" else _torch_worker)(args, channel, progress_stream)
    return 0


# ---------------------------------------------------------------- parent: drive both, pair the blocks
class _Worker(PipeWorker):
    def __init__(self, side: str, args: argparse.Namespace, run_dir: Path) -> None:
        run_dir.mkdir(parents=True)
        options = ["--run-dir", str(run_dir), "--data", args.data, "--preset", args.preset,
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--steps", str(args.steps),
                   "--lr", str(args.lr), "--seed", str(args.seed), "--log-interval", str(args.log_interval),
                   "--eval-batches", str(args.eval_batches)]
        super().__init__(side, __file__, options, args.threads)


def _cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of every process, from /proc (empty where there is none)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    seconds = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        seconds[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def _command_line(pid: int) -> str:
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(a.decode(errors="replace") for a in argv[:4])[:120]


class _LoadMonitor:
    """How many cores processes other than this benchmark used, per interval (another job on the machine)."""

    def __init__(self, own: set[int]) -> None:
        self.own = own
        self.total: dict[int, float] = {}
        self.commands: dict[int, str] = {}
        self.last, self.last_time = _cpu_seconds(), time.perf_counter()
        self.first_time = self.last_time

    def sample(self) -> float:
        """Cores used by other processes since the previous sample."""
        now, now_time = _cpu_seconds(), time.perf_counter()
        used = 0.0
        for pid, seconds in now.items():
            if pid in self.own or pid not in self.last:
                continue
            delta = seconds - self.last[pid]
            self.total[pid] = self.total.get(pid, 0.0) + delta
            if delta > 0.1 and pid not in self.commands:  # read now: a short job is gone by the end
                self.commands[pid] = _command_line(pid)
            used += delta
        cores = used / max(now_time - self.last_time, 1e-9)
        self.last, self.last_time = now, now_time
        return cores

    def busiest(self, min_cores: float = 0.05) -> list[dict[str, Any]]:
        span = max(self.last_time - self.first_time, 1e-9)
        rows = sorted(self.total.items(), key=lambda kv: kv[1], reverse=True)
        return [{"pid": pid, "cores": round(sec / span, 2), "command": self.commands.get(pid) or _command_line(pid)}
                for pid, sec in rows if sec / span >= min_cores]


def _resolve_data(args: argparse.Namespace) -> tuple[str, str]:
    """The prepared directory to train on and how it was chosen."""
    if args.data:
        if not (Path(args.data) / "meta.json").exists():
            raise SystemExit(f"{args.data}: no meta.json; prepare it first (tinygrad-llm prepare --out {args.data})")
        return args.data, "given with --data"
    full = ROOT / "data" / "stdlib"
    if (full / "meta.json").exists():
        return str(full), "the full default corpus (data/stdlib)"
    from tinygrad_llm.data.prepare import PrepareConfig, prepare

    cache = Path(tempfile.gettempdir()) / "tinygrad_llm_bench" / f"stdlib_{args.max_documents}docs"
    prepare(PrepareConfig(source="stdlib", out=cache, max_documents=args.max_documents))
    return str(cache), f"the first {args.max_documents} documents of the default corpus (stdlib), prepared here"


def _phase_summary(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Milliseconds per step and share of the step for each phase, over the timed blocks."""
    wall = sum(b["wall"] for b in blocks)
    steps = sum(len(b["steps"]) for b in blocks)
    totals = {name: sum(b["phases"].get(name, 0.0) for b in blocks) for name in
              ("data", "forward", "backward", "clip", "optimizer")}
    outside = wall - sum(totals[p] for p in CORE_PHASES)
    totals["other"] = outside - totals["data"] - totals["clip"]

    def outside_share(b: dict[str, Any]) -> float:
        return 1 - sum(b["phases"].get(p, 0.0) for p in CORE_PHASES) / b["wall"]

    return {
        "step_ms": round(wall / steps * 1e3, 2),
        "ms_per_step": {name: round(t / steps * 1e3, 3) for name, t in totals.items()},
        "share_of_step": {name: round(t / wall, 5) for name, t in totals.items()},
        "outside_ms_per_step": round(outside / steps * 1e3, 3),
        "outside_share": round(outside / wall, 5),
        "outside_share_median_over_blocks": round(statistics.median(map(outside_share, blocks)), 5),
    }


def _curve_summary(ours: list[dict[str, float]], torch: list[dict[str, float]], val: dict[str, float]
                   ) -> dict[str, Any]:
    diffs = [abs(o["loss"] - t["loss"]) for o, t in zip(ours, torch, strict=True)]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    quarter = max(1, len(diffs) // 4)
    norm_rel = [abs(o["grad_norm"] - t["grad_norm"]) / max(abs(t["grad_norm"]), 1e-12)
                for o, t in zip(ours, torch, strict=True)]
    tail = max(1, len(diffs) // 10)
    return {
        "steps": len(diffs),
        "first_step_loss": {"ours": ours[0]["loss"], "torch": torch[0]["loss"], "abs_difference": diffs[0]},
        "max_abs_loss_difference": diffs[worst],
        "max_abs_loss_difference_at_step": worst + 1,
        "max_relative_loss_difference": diffs[worst] / abs(torch[worst]["loss"]),
        "mean_abs_loss_difference": sum(diffs) / len(diffs),
        "median_abs_loss_difference": statistics.median(diffs),
        "steps_with_abs_loss_difference_over_1e-3": sum(d > 1e-3 for d in diffs),
        "max_abs_loss_difference_by_quarter": [max(diffs[i:i + quarter]) for i in range(0, len(diffs), quarter)],
        f"mean_loss_last_{tail}_steps": {"ours": statistics.fmean(o["loss"] for o in ours[-tail:]),
                                         "torch": statistics.fmean(t["loss"] for t in torch[-tail:])},
        "max_relative_grad_norm_difference": max(norm_rel),
        "max_abs_lr_difference": max(abs(o["lr"] - t["lr"]) for o, t in zip(ours, torch, strict=True)),
        "final_val_loss": {**val, "abs_difference": abs(val["ours"] - val["torch"])},
        "loss_ours": [o["loss"] for o in ours],
        "loss_torch": [t["loss"] for t in torch],
    }


def _plot(curve: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from util.files import atomic_write

    ours, theirs = curve["loss_ours"], curve["loss_torch"]
    steps = range(1, len(ours) + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(3, 2))
    top.plot(steps, ours, label="ours (Trainer, nn)", linewidth=1.2)
    top.plot(steps, theirs, "--", label="PyTorch reference (TorchGPT)", linewidth=1.2)
    top.set_ylabel("training loss (nats/token)")
    top.set_title(title)
    top.grid(alpha=0.3)
    top.legend()
    diffs = [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
    running = [max(diffs[:i + 1]) for i in range(len(diffs))]
    bottom.semilogy([i for i, d in zip(steps, diffs, strict=True) if d], [d for d in diffs if d], ".", markersize=3,
                    label="|ours - torch| (exact ties not shown)")
    bottom.semilogy(steps, running, linewidth=1, label="running maximum")
    bottom.set_ylabel("loss difference")
    bottom.legend(fontsize="small")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3, which="both")
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)


def _parent(args: argparse.Namespace) -> int:
    import platform
    from datetime import UTC, datetime

    timed_blocks = (args.steps - args.warmup - 1) // args.block
    if args.warmup < 1 or timed_blocks < 2:
        raise SystemExit(f"--steps {args.steps} leaves {timed_blocks} timed blocks of {args.block} after "
                         f"{args.warmup} warm-up steps and one final step; need at least 2 (and --warmup >= 1)")
    args.data, data_origin = _resolve_data(args)
    meta = json.loads((Path(args.data) / "meta.json").read_text())
    load_before = os.getloadavg()
    run_root = Path(tempfile.mkdtemp(prefix="train_loop_"))
    started = time.perf_counter()
    workers: list[_Worker] = []
    try:
        ours = _Worker("ours", args, run_root / "ours")
        workers.append(ours)
        theirs = _Worker("torch", args, run_root / "torch")
        workers.append(theirs)
        tokens_block = ours.hello["tokens_per_step"] * args.block
        warm = {"ours": ours.ask(f"run {args.warmup}"), "torch": theirs.ask(f"run {args.warmup}", args.gap)}
        monitor = _LoadMonitor({os.getpid(), ours.proc.pid, theirs.proc.pid})
        pairs, foreign = [], []
        for i in range(timed_blocks):
            order = ((ours, theirs) if i % 2 == 0 else (theirs, ours))
            got = {w.side: w.ask(f"run {args.block}", args.gap) for w in order}
            foreign.append(monitor.sample())
            pairs.append(got)
            o, t = got["ours"]["wall"], got["torch"]["wall"]
            print(f"pair {i + 1:>3}/{timed_blocks}: ours {tokens_block / o:7.0f} tok/s  torch {tokens_block / t:7.0f} "
                  f"tok/s  ratio {t / o:5.3f}  other load {foreign[-1]:4.2f} cores", flush=True)
        rest = args.steps - args.warmup - timed_blocks * args.block
        last = {w.side: w.ask(f"run {rest}", args.gap) for w in workers}
        val = {w.side: w.ask("finish")["val_loss"] for w in workers}
    finally:
        for w in workers:
            w.close()
        shutil.rmtree(run_root, ignore_errors=True)
    seconds = time.perf_counter() - started

    ratios = [p["torch"]["wall"] / p["ours"]["wall"] for p in pairs]
    sides, curves = {}, {}
    for side, worker in (("ours", ours), ("torch", theirs)):
        blocks = [p[side] for p in pairs]
        sides[side] = {
            "tokens_per_s": round(statistics.median(tokens_block / b["wall"] for b in blocks), 1),
            "step_ms_median": round(statistics.median(b["wall"] / args.block for b in blocks) * 1e3, 2),
            "cpu_per_wall_median": round(statistics.median(b["cpu"] / b["wall"] for b in blocks), 3),
            "block_tokens_per_s_all": [round(tokens_block / b["wall"], 1) for b in blocks],
            "phases": _phase_summary(blocks),
            "model": worker.hello["model"], "optimizer": worker.hello["optimizer"],
            "parameters": worker.hello["parameters"], "initial_weights_sum": worker.hello["weights_sum"],
        }
        curves[side] = [s for b in (warm[side], *blocks, last[side]) for s in b["steps"]]
    curve = _curve_summary(curves["ours"], curves["torch"], val)
    same_batches = all(p["ours"]["batch_crc"] == p["torch"]["batch_crc"] for p in pairs + [last])
    quartiles = statistics.quantiles(ratios, n=4)
    quiet = [r for r, cores in zip(ratios, foreign, strict=True) if cores < 0.2]
    other_cores = statistics.median(foreign)
    hello = ours.hello
    out = Path(args.out)
    plot_path = out.with_name(out.stem + "_curves.png")
    report = {
        "benchmark": "train_loop: the whole training loop (data, forward, backward, clipping, AdamW, schedule, "
                     "logging, progress), ours (tinygrad_llm.train.Trainer.fit) vs a PyTorch reference loop, CPU",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "threads": args.threads, "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "concurrent_load": {
            "detected": other_cores >= 0.2,
            "other_processes_cores_median_per_pair": round(other_cores, 2),
            "other_processes_cores_per_pair": [round(x, 2) for x in foreign],
            "busiest_other_processes": monitor.busiest(),
            "note": ("CPU used by processes other than this benchmark and its two workers during the timed pairs "
                     "(from /proc). Only one side runs at a time, so another job takes the same share of the "
                     "machine from both; the paired ratio is what to trust, absolute tokens/s are lower than "
                     "on an idle machine."),
        },
        "versions": theirs.hello["versions"],
        "data": {"dir": args.data, "origin": data_origin, "source": meta["source"]["spec"],
                 "documents": meta["source"]["documents"], "vocab_size": meta["vocab_size"],
                 "train_tokens": meta["splits"]["train"]["tokens"], "val_tokens": meta["splits"]["val"]["tokens"],
                 "same_batches_both_sides": same_batches},
        "config": {"preset": args.preset, "parameters": hello["parameters"], "batch_size": args.batch_size,
                   "block_size": hello["block_size"], "tokens_per_step": hello["tokens_per_step"],
                   "dtype": "float32", "steps": args.steps, "lr": args.lr, "schedule": "cosine",
                   "lr_warmup_steps": hello["warmup_lr_steps"], "min_lr": args.lr / 10, "betas": [0.9, 0.95],
                   "eps": 1e-8, "weight_decay": {"ndim>=2": 0.1, "ndim<2": 0.0}, "grad_clip": 1.0,
                   "log_interval": args.log_interval, "eval": f"at step 0 (ours) and at the end, "
                                                              f"{args.eval_batches} batches, untimed",
                   "seed": args.seed},
        "measurement": {"warmup_steps": args.warmup, "block_steps": args.block, "repeats": timed_blocks,
                        "timed_steps_per_side": timed_blocks * args.block, "gap_s": args.gap,
                        "wall_seconds_total": round(seconds, 1)},
        "statistic": ("tokens/s: median over timed blocks; speed_ratio: median over pairs of the paired ratio "
                      "ours tokens/s / torch tokens/s (= torch block time / ours) of one block of each side run "
                      "one after the other, in alternating order, each after an idle gap of gap_s; above 1 means "
                      "ours is faster. Phases: totals over the timed blocks; outside = step - forward - backward - "
                      "optimizer (step + zero_grad), i.e. data, clipping, schedule, logging, progress and the "
                      "loop's own bookkeeping ('other')."),
        "speed_ratio": round(statistics.median(ratios), 3),
        "speed_ratio_quartiles": [round(q, 3) for q in quartiles],
        "speed_ratio_by_order": {"ours_first": round(statistics.median(ratios[0::2]), 3),
                                 "torch_first": round(statistics.median(ratios[1::2]), 3)},
        "speed_ratio_quiet_pairs": {"pairs": len(quiet),
                                    "median": round(statistics.median(quiet), 3) if quiet else None,
                                    "definition": "pairs during which other processes used under 0.2 cores"},
        "speed_ratio_all": [round(r, 3) for r in ratios],
        "ours": sides["ours"],
        "torch": sides["torch"],
        "outside_share_ours": sides["ours"]["phases"]["outside_share"],
        "outside_share_target": 0.02,
        "curves": {**curve, "plot": plot_path.as_posix()},
    }
    write_json(out, report)
    _plot(curve, plot_path, f"{args.preset} preset, {hello['parameters']:,} parameters, batch "
                            f"{args.batch_size}x{hello['block_size']}, float32")

    o, t = sides["ours"], sides["torch"]
    print(f"\n{args.preset}, batch {args.batch_size}x{hello['block_size']}, {args.threads} thread(s), "
          f"{timed_blocks} pairs of {args.block} steps, other load {other_cores:.2f} cores")
    for name, s in (("ours ", o), ("torch", t)):
        ph = s["phases"]
        print(f"{name} {s['tokens_per_s']:8.0f} tok/s  step {s['step_ms_median']:7.1f} ms  outside fwd/bwd/opt "
              f"{100 * ph['outside_share']:.2f}% ({ph['outside_ms_per_step']:.1f} ms: data "
              f"{ph['ms_per_step']['data']:.2f}, clip {ph['ms_per_step']['clip']:.2f}, other "
              f"{ph['ms_per_step']['other']:.2f})")
    quiet_median = report["speed_ratio_quiet_pairs"]["median"]
    print(f"speed ratio ours/torch {report['speed_ratio']:.3f} (quartiles {quartiles[0]:.3f}..{quartiles[2]:.3f}); "
          f"{len(quiet)} pairs without other load: {'-' if quiet_median is None else f'{quiet_median:.3f}'}")
    print(f"curves over {curve['steps']} steps: first-step |diff| {curve['first_step_loss']['abs_difference']:.2e}, "
          f"max |diff| {curve['max_abs_loss_difference']:.2e} at step {curve['max_abs_loss_difference_at_step']}, "
          f"mean {curve['mean_abs_loss_difference']:.2e}; final val loss ours {val['ours']:.4f} torch "
          f"{val['torch']:.4f}; same batches: {same_batches}")
    print(f"wrote {out} and {plot_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="prepared directory (default: data/stdlib or a prepared slice)")
    parser.add_argument("--max-documents", type=int, default=400,
                        help="documents of the default corpus to prepare when no data is given")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200, help="steps each side trains (the loss curves' length)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each side first")
    parser.add_argument("--block", type=int, default=4, help="steps per timed block (one pair = a block of each)")
    parser.add_argument("--gap", type=float, default=0.3,
                        help="seconds of idle before each block (OpenBLAS threads spin ~0.1 s after a call)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--log-interval", type=int, default=1, help="steps between JSONL log lines (both sides)")
    parser.add_argument("--eval-batches", type=int, default=10, help="validation batches at the end (untimed)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/train_loop[_Nthreads].json")
    parser.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import_from_repository()  # benchmarks/tokenizer.py would shadow the tokenizer package
    if args.worker:
        os.environ.update({v: str(args.threads) for v in THREAD_VARS})  # before NumPy or torch is imported
        return _worker(args)
    if args.out is None:
        suffix = "" if args.threads == 1 else f"_{args.threads}threads"
        args.out = f"benchmarks/results/train_loop{suffix}.json"
    return _parent(args)


if __name__ == "__main__":
    sys.exit(main())
