"""The main job's first impression, as numbers: bits per byte, and how many sampled functions parse.

A newcomer's first result is what ``make train`` prints. This benchmark runs
that job (``examples/train_gpt.py``) and then measures its model the same way
every time:

- **parse rate**: 20 functions sampled with ``generate --prompt "def " -n 120
  --temperature 0.8 --top-k 50 --seed S`` for S = 0..19; each is cut before the
  first line after the first that starts at column 0 (the end of the function),
  and counts if ``ast.parse`` accepts it (``tinygrad_llm.evaluate.syntax``). The
  command heals the prompt's last token by default (``generate.heal_prompt``);
  the count without healing is kept too;
- **bits per byte** on the whole validation split (``eval perplexity``:
  disjoint windows, every token scored once), and on the validation split of a
  fixed reference dataset (``--reference-data``, default ``data/stdlib`` as
  ``make train`` prepares it), so that runs whose data rules differ are still
  scored on the same text; the trainer's own last estimate is kept too;
- the wall time of the job, its steps and the tokens it trained on.

    .venv/bin/python benchmarks/main_job.py                    # `make train` as shipped, from scratch
    .venv/bin/python benchmarks/main_job.py --sweep lr=2e-3 --set lr=2e-3 --budget 9m
    .venv/bin/python benchmarks/main_job.py --score runs/small --label before   # score a finished run only
    .venv/bin/python benchmarks/main_job.py --score runs/small --sampling        # the sampling table

The default run writes ``benchmarks/results/main_job.json`` (and removes the
job's data and run first, so prepare is timed too; ``main_job_7m.json`` is the
record of the job before issue 20); ``--sweep NAME`` instead
adds or replaces row NAME in ``benchmarks/results/main_job_sweep.json``, reusing
prepared data between rows that prepare the same way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import ROOT, cpu_model, write_json  # noqa: E402

from tinygrad_llm.checkpoint import read_info, resolve_checkpoint  # noqa: E402
from tinygrad_llm.cli import load_any_model  # noqa: E402
from tinygrad_llm.evaluate.syntax import parses, sample_functions  # noqa: E402
from tinygrad_llm.generate import SamplingConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PROMPT, NEW_TOKENS, SEEDS = "def ", 120, range(20)
PROTOCOL = dict(temperature=0.8, top_k=50, top_p=1.0)
SAMPLING_GRID = (  # (temperature, top_k, top_p): the protocol first, then what a default could be
    (0.8, 50, 1.0), (1.0, 0, 1.0), (0.6, 50, 1.0), (0.4, 50, 1.0), (0.2, 50, 1.0), (0.0, 0, 1.0),
    (0.8, 0, 0.9), (0.6, 0, 0.9), (0.6, 20, 1.0))


def sample(model, tokenizer, temperature: float, top_k: int, top_p: float, heal: bool = True) -> list[str]:
    """The 20 functions of the protocol under one sampling setting."""
    return sample_functions(model, tokenizer, SEEDS, SamplingConfig(temperature, top_k, top_p), PROMPT, NEW_TOKENS,
                            heal)


def bits_per_byte(run: Path, data: Path | None) -> float:
    """``eval perplexity`` on the validation split of ``data`` (default: the run's own training data)."""
    out = Path("/tmp") / f"main-job-ppl-{time.time_ns()}.json"
    argv = [sys.executable, "-m", "tinygrad_llm", "eval", "perplexity", "--checkpoint", str(run), "--quiet",
            "--json", str(out)] + (["--data", str(data)] if data is not None else [])
    subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    out.unlink()
    return round(result["bits_per_byte"], 4)


def score(run: Path, reference: Path) -> dict:
    """Every number of one finished run: its log's last evaluation, both bits per byte, the parse rate."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in records if "val_loss" in r]
    steps = [r for r in records if "tokens_per_s" in r]
    info = read_info(resolve_checkpoint(run))
    train, model = info["train_config"], info["model_config"]
    tokens_per_step = train["total_batch_tokens"] or train["batch_size"] * model["block_size"]
    network, tokenizer, _ = load_any_model(run)  # the checkpoint `generate` picks
    functions = sample(network, tokenizer, **PROTOCOL)
    ok = [parses(f) for f in functions]
    unhealed = sum(map(parses, sample(network, tokenizer, **PROTOCOL, heal=False)))
    return {
        "steps": evals[-1]["step"],
        "tokens_seen": info["step"] * tokens_per_step,
        "median_tokens_per_s": round(sorted(r["tokens_per_s"] for r in steps)[len(steps) // 2], 1) if steps else None,
        "train_seconds": round(info["elapsed"], 1),
        "status": "done" if info.get("done") else "interrupted",
        "evaluations": [{k: round(e[k], 4) if k != "step" else e[k] for k in ("step", "val_loss", "val_bpb")}
                        for e in evals],
        "trainer_val_bpb": round(evals[-1]["val_bpb"], 4),
        "val_bpb": bits_per_byte(run, None),
        "reference_val_bpb": bits_per_byte(run, reference) if reference.is_dir() else None,
        "parse_rate": sum(ok) / len(ok),
        "parsed": sum(ok),
        "parsed_without_healing": unhealed,
        "samples": [{"seed": s, "parses": p, "text": f} for s, p, f in zip(SEEDS, ok, functions, strict=True)],
        "model_config": model, "train_config": train,
    }


def sampling_table(run: Path) -> list[dict]:
    rows = []
    model, tokenizer, _ = load_any_model(run)
    for temperature, top_k, top_p in SAMPLING_GRID:
        functions = sample(model, tokenizer, temperature, top_k, top_p)
        parsed = sum(map(parses, functions))
        rows.append({"temperature": temperature, "top_k": top_k, "top_p": top_p, "parsed": parsed,
                     "parse_rate": parsed / len(functions)})
        print(f"temperature {temperature} top-k {top_k} top-p {top_p}: {parsed}/{len(functions)} parse", flush=True)
    return rows


def machine() -> dict:
    import numpy

    return {"cpu": cpu_model(), "cpu_count": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version(), "numpy": numpy.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", metavar="NAME", help="write row NAME of main_job_sweep.json instead of main_job.json")
    p.add_argument("--score", type=Path, metavar="RUN", help="only score this finished run (no training)")
    p.add_argument("--label", help="the row's name with --score")
    p.add_argument("--sampling", action="store_true", help="with --score: parse rate under each sampling setting")
    p.add_argument("--budget", default=None, help="--budget for the job (default: the job's own)")
    p.add_argument("--preset", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--prepare", action="append", default=[], metavar="OPTION",
                   help="an option for the job's prepare step, e.g. --prepare=--vocab-size=8192 (repeatable)")
    p.add_argument("--work", type=Path, default=Path("/tmp/main-job"), help="where sweep data and runs go")
    p.add_argument("--reference-data", type=Path, default=ROOT / "data" / "stdlib")
    p.add_argument("--table", action="store_true", help="print main_job_sweep.json as a Markdown table and exit")
    args = p.parse_args()
    if args.table:
        print(sweep_table())
        return

    start = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if args.score:
        row = {"label": args.label or str(args.score), "date": start, "machine": machine(),
               **score(args.score, args.reference_data)}
        if args.sampling:
            row["sampling"] = sampling_table(args.score)
        print(json.dumps(brief(row), indent=1))
        if args.sweep:
            _write_row(args.sweep, row)
        return

    if args.sweep:
        data = args.work / ("data-" + "-".join(o.strip("-").replace("=", "") for o in args.prepare) if args.prepare
                            else "data-default")
        run = args.work / ("run-" + args.sweep)
        shutil.rmtree(run, ignore_errors=True)
    else:
        data, run = ROOT / "data" / "stdlib", ROOT / "runs" / (args.preset or "small")
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)
    command = [sys.executable, "examples/train_gpt.py", "--data", str(data), "--out", str(run)]
    command += ["--samples", "1"] if args.sweep else []  # the default run is `make train` exactly
    command += (["--budget", args.budget] if args.budget else []) + (["--preset", args.preset] if args.preset else [])
    command += [f"--set={s}" for s in args.set] + [f"--prepare={o}" for o in args.prepare]
    loads = machine()
    began = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    wall = time.perf_counter() - began
    row = {"label": args.sweep or "make train", "date": start, "machine": loads, "command": command[1:],
           "wall_time_s": round(wall, 1), **score(run, args.reference_data)}
    print(json.dumps(brief(row), indent=1))
    if args.sweep:
        _write_row(args.sweep, row)
    else:
        write_json(RESULTS / "main_job.json", row)


def sweep_table() -> str:
    """The sweep's rows as a Markdown table, in the order they were run."""
    rows = json.loads((RESULTS / "main_job_sweep.json").read_text())["rows"]
    lines = ["| row | budget | changes | steps | tokens seen | tokens/s | bits/byte (trainer) | bits/byte (val split) "
             "| bits/byte (reference) | parse |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        command = r.get("command", [])
        budget = command[command.index("--budget") + 1] if "--budget" in command else "7m"
        changes = " ".join(c.replace("--set=", "").replace("--prepare=", "") for c in command
                           if c.startswith(("--set=", "--prepare="))) or "defaults"
        reference = "" if r["reference_val_bpb"] is None else f"{r['reference_val_bpb']:.3f}"
        lines.append(f"| {name} | {budget} | {changes} | {r['steps']:,} | {r['tokens_seen']:,} | "
                     f"{r['median_tokens_per_s']:,.0f} | {r['trainer_val_bpb']:.3f} | {r['val_bpb']:.3f} | "
                     f"{reference} | {r['parsed']}/{len(r['samples'])} |")
    return "\n".join(lines)


def brief(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("samples", "model_config", "train_config")}


def _write_row(name: str, row: dict) -> None:
    path = RESULTS / "main_job_sweep.json"
    table = json.loads(path.read_text()) if path.exists() else {"benchmark": __doc__.split("\n\n")[0], "rows": {}}
    earlier = table["rows"].get(name, {})
    for key in ("command", "wall_time_s"):  # a rescored run keeps how it was trained
        if key not in row and key in earlier:
            row[key] = earlier[key]
    table["rows"][name] = row
    write_json(path, table)


if __name__ == "__main__":
    main()
