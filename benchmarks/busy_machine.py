"""The main job on a busy machine: does training keep its time budget and slow down gracefully when another
program keeps a core busy? Ours against a PyTorch reference loop under the same load, on the CPU.

Two conditions: ``quiet``, and ``busy``: a second process spinning a pure-Python loop (``while True: pass``),
started a second before each run and stopped after it, pinned to no core (the OS schedules it). Three sides:

1. ``ours``: the real command, ``python -m tinygrad_llm train --data DATA --preset small --time-budget B
   --out RUN``, with its default threads (the trainer keeps the BLAS threads at the cores that other
   programs leave free, re-checked every few seconds, with threadpoolctl);
2. ``ours_all_cores``: the same command with ``--threads N``, N = the cores: OpenBLAS on every core, what
   the trainer did before it followed the load, to show what adapting avoids;
3. ``torch``: a PyTorch reference loop (``--worker torch`` of this script) doing the same job the usual
   PyTorch way: the same batches (``BatchLoader`` with the same seed), the same initial weights (our
   ``GPT`` built with the same seed, copied into ``TorchGPT`` of the tests), ``torch.optim.AdamW`` with the
   same two parameter groups and hyperparameters, gradient clipping, and torch's default threads
   (``torch.get_num_threads()``). It keeps the same clock as ours: the budget counts from the moment the
   parent starts the process; before each step it stops if the step (as long as the longest of the last
   ``loop.STEP_TIME_WINDOW``), the final
   evaluation and two checkpoints (as long as the last ones) and ``loop.FINAL_MARGIN_SECONDS`` would not
   fit. The learning rate is our schedule itself, ``nn.optim.learning_rate`` (warmup, then half a cosine
   from ``lr`` to ``lr / 10``), at the progress our trainer computes: seconds spent / the second by which
   the last step must start, 1 on the last step that fits, never going back. Like ours it logs a JSON line
   every ``log_interval`` steps (tokens/s over the training steps since the last line: their own seconds,
   evaluations and checkpoints left out), evaluates on the first ``eval_batches`` batches
   of validation windows (``eval_windows``, our batch size) at step 0, every ``eval_interval`` steps and at
   the end, and saves model + optimizer (``torch.save``, atomically) at each new best validation loss,
   every ``checkpoint_interval`` steps and at the end.

Each side runs as its own process, timed by the parent from start to exit (wall/budget above 1 means the
budget was overrun); both write the same ``log.jsonl`` records, parsed the same way: steps done, tokens/s
(median of the logged windows), the final validation loss (the last ``val_loss``) and the BLAS/OpenMP
threads used. The parent also measures, from ``/proc``, how many cores the run used, how many the spinner
got (a graceful job leaves the other program its core) and how many other processes on the machine took
(noise). No thread variables (``OMP/OPENBLAS/MKL_NUM_THREADS``) reach the runs: every side uses its
libraries' defaults. Each (condition, side) runs ``--repeats`` times, conditions and sides in a rotating
order so drifting load hits all of them; the report gives every run and the medians.

    .venv/bin/python benchmarks/busy_machine.py [--budget 60s] [--repeats 2] [--data data/stdlib]
                                                [--preset small] [--out benchmarks/results/busy_machine.json]

It takes about 6 x repeats x (budget + 5 s): 13 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from harness import THREAD_VARS, cpu_model, import_from_repository, torch_reference, write_json

ROOT = Path(__file__).resolve().parent.parent
CONDITIONS = ("quiet", "busy")
SIDES = ("ours", "ours_all_cores", "torch")
SPIN = "while True: pass"


# ---------------------------------------------------------------- worker: the PyTorch reference loop
def _torch_worker(args: argparse.Namespace) -> int:
    """Train TorchGPT for ``args.budget`` seconds counted from ``args.started``; log like our trainer."""
    import threadpoolctl
    import torch

    from nn.optim import learning_rate
    from tinygrad_llm.data.loader import TokenShards, eval_windows
    from tinygrad_llm.train import resolve_config
    from tinygrad_llm.train.loop import FINAL_MARGIN_SECONDS, STEP_TIME_WINDOW
    from util.files import atomic_write
    from util.progress import Progress

    fields, c = resolve_config(args.preset, data=args.data, out_dir=args.run_dir, time_budget=args.budget)
    model, opt, loader, config, shards = torch_reference(fields, c)
    params = [p for p in model.parameters() if p.requires_grad]
    val_shards = TokenShards(c.data, "val")
    tokens_per_step = c.batch_size * config.block_size
    min_lr = c.lr / 10 if c.min_lr is None else c.min_lr
    max_norm = c.grad_clip if c.grad_clip > 0 else math.inf
    threads = torch.get_num_threads()
    run_dir = Path(c.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "log.jsonl"
    clock = {"step": 0.0, "eval": 0.0, "save": 0.0}  # seconds: the next step (expected), the last eval and save
    recent_steps: deque[float] = deque(maxlen=STEP_TIME_WINDOW)  # as Trainer: the longest of the last few steps
    best = math.inf
    schedule_progress = 0.0  # the next step's progress through the budget, as of the last stop check

    def log(record: dict[str, Any]) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "time": time.time()}) + "\n")

    def spent() -> float:
        return time.monotonic() - args.started

    def deadline() -> float:
        """The second by which the next step must start for the budget to hold (``Trainer._start_deadline``)."""
        reserve = clock["eval"] + 2 * clock["save"] + FINAL_MARGIN_SECONDS
        return args.budget - reserve - clock["step"]

    def go_on() -> bool:
        """Whether the next step fits the budget; sets its progress (``Trainer._stop_reason``, one process)."""
        nonlocal schedule_progress
        limit, now = deadline(), spent()
        last = limit - now < clock["step"]  # the step after the next one will not fit: the next is the last
        schedule_progress = max(schedule_progress, 1.0 if last or limit <= 0 else min(1.0, now / limit))
        return now <= limit

    def save(step: int, name: str) -> None:
        start = time.monotonic()
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}
        atomic_write(run_dir / name, lambda tmp: torch.save(state, tmp))
        clock["save"] = time.monotonic() - start

    def evaluate(step: int) -> None:
        nonlocal best
        start = time.monotonic()
        model.eval()
        nats, tokens = 0.0, 0
        with torch.no_grad():
            for x, y in eval_windows(val_shards, config.block_size, c.batch_size, c.eval_batches):
                logits, _ = model(torch.from_numpy(x))
                nats += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                                torch.from_numpy(y).reshape(-1), reduction="sum"))
                tokens += y.size
        model.train()
        clock["eval"] = time.monotonic() - start
        log({"step": step, "val_loss": nats / tokens})
        if step > 0 and nats / tokens < best:
            best = nats / tokens
            save(step, "best.pt")

    log({"step": 0, "threads": threads, "torch": torch.__version__,
         "threadpools": threadpoolctl.threadpool_info(), "parameters": sum(p.numel() for p in params)})
    evaluate(0)
    step, last_eval = 0, 0
    progress = Progress(total=None, unit="step", desc="train", stream=sys.stderr)
    window_seconds, window_tokens = 0.0, 0  # training steps only: evaluations and saves are not in tokens/s
    fits = go_on()
    while fits:
        step_start = time.monotonic()
        lr = learning_rate(c.schedule, schedule_progress, step, max_lr=c.lr, min_lr=min_lr,
                           warmup_steps=c.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = loader.next_batch()
        _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        loss_value = loss.item()
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if math.isfinite(loss_value) and math.isfinite(norm):
            opt.step()
        opt.zero_grad()
        step += 1
        step_seconds = time.monotonic() - step_start
        recent_steps.append(step_seconds)
        clock["step"] = max(recent_steps)
        window_tokens += tokens_per_step
        window_seconds += step_seconds
        if step % c.log_interval == 0 or step == 1:
            tps = window_tokens / window_seconds if window_seconds > 0 else 0.0
            log({"step": step, "loss": loss_value, "lr": lr, "grad_norm": norm, "tokens_per_s": tps,
                 "threads": threads})
            progress.set_fields(loss=f"{loss_value:.3f}", **{"tok/s": f"{tps:,.0f}"})
            window_seconds, window_tokens = 0.0, 0
        progress.update(1)
        fits = go_on()
        if fits:  # the final evaluation and checkpoint follow the loop
            if step % c.eval_interval == 0:
                evaluate(step)
                last_eval = step
            if step % c.checkpoint_interval == 0:
                save(step, f"ckpt_{step:07d}.pt")
    progress.close()
    if last_eval != step:
        evaluate(step)
    save(step, f"ckpt_{step:07d}.pt")
    print(f"time budget reached at step {step} in {spent():.0f}s", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- parent: one run
def _process_cpu_seconds(pid: int) -> float:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class _Spinner:
    """Another program keeping one core busy: a pure-Python loop in its own process, on no particular core."""

    def __init__(self, settle: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", SPIN])
        self.started = time.monotonic()
        time.sleep(settle)  # running, and counted in the machine's load, before the run starts

    def stop(self) -> float:
        """Kill it; return the cores it got, on average, while it ran."""
        cores = _process_cpu_seconds(self.proc.pid) / (time.monotonic() - self.started)
        self.proc.kill()
        self.proc.wait()
        return cores


def _environment() -> dict[str, str]:
    """This process's environment without thread settings, so every side picks its own default."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _command(side: str, args: argparse.Namespace, run_dir: Path, started: float) -> list[str]:
    if side == "torch":
        return [sys.executable, str(Path(__file__).resolve()), "--worker", "torch", "--data", args.data,
                "--preset", args.preset, "--budget", str(args.budget), "--started", repr(started),
                "--run-dir", str(run_dir)]
    command = [sys.executable, "-m", "tinygrad_llm", "train", "--data", args.data, "--preset", args.preset,
               "--time-budget", f"{args.budget:g}s", "--out", str(run_dir)]
    return command + (["--threads", str(args.cores)] if side == "ours_all_cores" else [])


def _read_log(path: Path, tokens_per_step: int) -> dict[str, Any]:
    """Steps, tokens/s, final validation loss and threads from a run's ``log.jsonl``."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [r for r in records if r.get("loss") is not None]
    evals = [r for r in records if "val_loss" in r]
    threads = [r["threads"] for r in (train or records) if "threads" in r]  # no step: the threads it started with
    header = next((r for r in records if "threadpools" in r), {})
    return {"steps": max((r["step"] for r in records), default=0),
            "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in train), 1) if train else None,
            "val_loss": evals[-1]["val_loss"] if evals else None,
            "initial_val_loss": evals[0]["val_loss"] if evals else None,
            "threads": Counter(threads).most_common(1)[0][0] if threads else None,
            "threads_seen": sorted(set(threads)), "tokens_per_step": tokens_per_step,
            **({"torch_threadpools": header["threadpools"]} if header else {})}


def _run(side: str, condition: str, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """One timed run of ``side`` under ``condition``: what its log says and what the parent measured."""
    from tinygrad_llm.train.hardware import cores_busy_seconds

    spinner = _Spinner(args.settle) if condition == "busy" else None
    try:
        busy, children = cores_busy_seconds(), _children_cpu_seconds()
        started = time.monotonic()
        with open(run_dir / "output.txt", "w", encoding="utf-8") as output:
            proc = subprocess.run(_command(side, args, run_dir, started), stdout=output, stderr=subprocess.STDOUT,
                                  env=_environment(), cwd=ROOT, check=False)
        wall = time.monotonic() - started
        run_cpu = _children_cpu_seconds() - children
        busy_after = cores_busy_seconds()
    finally:
        spinner_cores = spinner.stop() if spinner else None
    spinner_cpu = 0.0 if spinner_cores is None else spinner_cores * wall
    result: dict[str, Any] = {
        "side": side, "condition": condition, "wall_s": round(wall, 2),
        "wall_over_budget": round(wall / args.budget, 3), "run_cores": round(run_cpu / wall, 2),
        "spinner_cores": None if spinner_cores is None else round(spinner_cores, 2),
        "other_load_cores": None if busy is None or busy_after is None
        else round(max(0.0, busy_after - busy - run_cpu - spinner_cpu) / wall, 2)}
    log_path = run_dir / "log.jsonl"
    if proc.returncode != 0 or not log_path.exists():
        lines = (run_dir / "output.txt").read_text(errors="replace").strip().splitlines() or ["(no output)"]
        return {**result, "error": f"exit status {proc.returncode}: {lines[-1]}"}
    return {**result, **_read_log(log_path, args.tokens_per_step)}


# ---------------------------------------------------------------- parent: the schedule and the report
def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def _summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medians over the repeats of each (condition, side), keyed ``condition/side``."""
    out = {}
    for condition in CONDITIONS:
        for side in SIDES:
            done = [r for r in runs if (r["condition"], r["side"]) == (condition, side) and "error" not in r]
            keys = ("steps", "tokens_per_s", "val_loss", "wall_s", "wall_over_budget", "threads", "run_cores",
                    "spinner_cores", "other_load_cores")
            out[f"{condition}/{side}"] = {"runs": len(done), **{k: _median(done, k) for k in keys}}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _ratios(medians: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def tps(condition: str, side: str) -> float | None:
        return medians[f"{condition}/{side}"]["tokens_per_s"]

    return {
        "ours_over_torch_tokens_per_s": {c: _ratio(tps(c, "ours"), tps(c, "torch")) for c in CONDITIONS},
        "ours_all_cores_over_torch_tokens_per_s": {c: _ratio(tps(c, "ours_all_cores"), tps(c, "torch"))
                                                   for c in CONDITIONS},
        "busy_over_quiet_tokens_per_s": {s: _ratio(tps("busy", s), tps("quiet", s)) for s in SIDES},
        "slowdown_quiet_over_busy": {s: _ratio(tps("quiet", s), tps("busy", s)) for s in SIDES},
    }


def _fmt(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``, or a dash as wide as the spec asks for."""
    return format("-", f">{spec.split('.')[0] or 1}") if value is None else format(value, spec)


def _print_table(report: dict[str, Any], labels: dict[str, str]) -> None:
    m = report["machine"]
    print(f"\n{report['config']['preset']} preset, budget {report['budget_s']:g}s, {m['cores']} cores ({m['cpu']}), "
          f"medians of {report['repeats']} repeat(s)")
    print(f"{'condition':<9} {'side':<18} {'steps':>6} {'tok/s':>8} {'val loss':>9} {'wall s':>7} {'wall/B':>7} "
          f"{'threads':>7} {'cores':>6} {'spinner':>7} {'others':>6}")
    for key, s in report["medians"].items():
        condition, side = key.split("/")
        print(f"{condition:<9} {labels[side]:<18} {_fmt(s['steps'], '6.0f')} {_fmt(s['tokens_per_s'], '8.0f')} "
              f"{_fmt(s['val_loss'], '9.4f')} {_fmt(s['wall_s'], '7.1f')} {_fmt(s['wall_over_budget'], '7.3f')} "
              f"{_fmt(s['threads'], '7.0f')} {_fmt(s['run_cores'], '6.2f')} {_fmt(s['spinner_cores'], '7.2f')} "
              f"{_fmt(s['other_load_cores'], '6.2f')}")
    r = report["ratios"]
    for name in ("ours", "ours_all_cores"):
        got = r[f"{name}_over_torch_tokens_per_s"]
        print(f"tokens/s {labels[name]} / PyTorch: quiet {_fmt(got['quiet'], '.3f')}, busy {_fmt(got['busy'], '.3f')}")
    print("tokens/s busy / quiet: " + ", ".join(f"{labels[s]} {_fmt(r['busy_over_quiet_tokens_per_s'][s], '.3f')}"
                                                for s in SIDES))
    print("(cores: CPU the run used; spinner: CPU the busy loop got; others: other processes on the machine)")
    others = max((r["other_load_cores"] or 0.0 for r in report["runs"]), default=0.0)
    if others >= 0.2:
        print(f"warning: other programs used up to {others:.2f} cores during a run: the machine was not quiet, "
              "so 'quiet' is not, and the numbers carry their load")


def _ensure_data(data: str) -> None:
    if (Path(data) / "meta.json").exists():
        return
    print(f"{data}: not prepared yet; running tinygrad-llm prepare (about a minute)", flush=True)
    subprocess.run([sys.executable, "-m", "tinygrad_llm", "prepare", "--out", data], cwd=ROOT, env=_environment(),
                   check=True)


def _parent(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime
    from importlib.metadata import version

    import threadpoolctl

    from tinygrad_llm.train import resolve_config
    from tinygrad_llm.train.hardware import available_cores

    _ensure_data(args.data)
    import numpy  # noqa: F401  (loaded so that threadpool_info sees the BLAS our trainer uses)

    fields, config = resolve_config(args.preset, data=args.data, time_budget=args.budget)
    args.cores = available_cores()
    args.tokens_per_step = config.batch_size * fields["block_size"]
    labels = {"ours": "ours (adaptive)", "ours_all_cores": f"ours --threads {args.cores}", "torch": "PyTorch"}
    out = Path(args.out)
    report: dict[str, Any] = {
        "benchmark": "busy_machine: the main job (tinygrad-llm train with a time budget) on a quiet machine and "
                     "with another process spinning on one core, ours (adaptive threads, and all cores) vs a "
                     "PyTorch reference loop",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "machine": {"cpu": cpu_model(), "cores": args.cores, "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "node": platform.node(),
                    "load_average_before": [round(x, 2) for x in os.getloadavg()],
                    "blas": threadpoolctl.threadpool_info()},
        "versions": {"python": sys.version.split()[0],
                     **{p: version(p) for p in ("numpy", "torch", "threadpoolctl")}},
        "config": {"preset": args.preset, "data": args.data, "batch_size": config.batch_size,
                   "block_size": fields["block_size"], "tokens_per_step": args.tokens_per_step, "lr": config.lr,
                   "schedule": "warmup + cosine to lr/10 over the time budget (both sides)",
                   "eval_batches": config.eval_batches, "eval_interval": config.eval_interval,
                   "checkpoint_interval": config.checkpoint_interval, "log_interval": config.log_interval,
                   "seed": config.seed},
        "busy": f"one process running `{SPIN}` (Python), started {args.settle:g}s before each busy run and "
                "killed after it, on no particular core",
        "sides": labels,
        "budget_s": args.budget, "repeats": args.repeats,
        "statistic": "per run: tokens/s = median of the logged windows (log_interval steps each); val_loss = the "
                     "last evaluation; wall = process start to exit, as the parent measured it. medians: over the "
                     "repeats. ratios: of those medians.",
        "complete": False, "runs": [],
    }
    run_root = Path(tempfile.mkdtemp(prefix="busy_machine_"))
    total = len(CONDITIONS) * len(SIDES) * args.repeats
    try:
        for repeat in range(args.repeats):
            conditions = CONDITIONS if repeat % 2 == 0 else CONDITIONS[::-1]
            for i, condition in enumerate(conditions):
                shift = (repeat * len(conditions) + i) % len(SIDES)
                for side in SIDES[shift:] + SIDES[:shift]:
                    run_dir = run_root / f"{repeat}_{condition}_{side}"
                    run_dir.mkdir()
                    time.sleep(args.gap)
                    result = {"repeat": repeat, **_run(side, condition, args, run_dir)}
                    report["runs"].append(result)
                    write_json(out, report)
                    n = len(report["runs"])
                    if "error" in result:
                        print(f"[{n}/{total}] {condition:<5} {labels[side]:<18} FAILED: {result['error']}",
                              flush=True)
                        continue
                    print(f"[{n}/{total}] {condition:<5} {labels[side]:<18} {result['steps']:5d} steps "
                          f"{_fmt(result['tokens_per_s'], '7.0f')} tok/s  val {_fmt(result['val_loss'], '.4f')}  "
                          f"wall {result['wall_s']:6.1f}s ({result['wall_over_budget']:.3f} x budget)  threads "
                          f"{result['threads_seen']}  others {_fmt(result['other_load_cores'], '.2f')} cores",
                          flush=True)
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["medians"] = _summary(report["runs"])
    report["ratios"] = _ratios(report["medians"])
    report["complete"] = True
    write_json(out, report)
    _print_table(report, labels)
    failed = sum("error" in r for r in report["runs"])
    print(f"wrote {out}" + (f"; {failed} run(s) failed" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    from tinygrad_llm.train import parse_duration

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=parse_duration, default=60.0, help="time budget of each run (60, 60s, 2m)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each (condition, side); medians reported")
    parser.add_argument("--data", default="data/stdlib", help="prepared directory (prepared here if missing)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--gap", type=float, default=2.0, help="seconds of quiet before each run")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds the spinner runs before a busy run")
    parser.add_argument("--out", default="benchmarks/results/busy_machine.json")
    parser.add_argument("--worker", choices=("torch",), help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _torch_worker(args)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return _parent(args)


if __name__ == "__main__":
    import_from_repository()  # benchmarks/tokenizer.py would shadow the tokenizer package
    sys.exit(main())
