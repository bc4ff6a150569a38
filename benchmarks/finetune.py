"""Fine-tuning the main job's model: full and LoRA, scored on held-out data before and after.

Runs, from the base run (default ``runs/small``, what ``make train`` writes):

- ``tinygrad-llm finetune --base BASE --time-budget B`` (full fine-tuning) and
  the same with ``--lora-rank 8`` (LoRA), on the built-in mix, into ``--work``
  (a run that already finished there is reused);
- for the base model (given the chat tokens, as fine-tuning starts), the full
  and the LoRA model: exact match (greedy) on held-out generated instructions,
  with the accuracy per task family, and on the same questions asked five at
  a time in one chat (each answer with the earlier exchanges in its history); the loss on the answers of the held-out
  chatterbot conversations and docstring-to-function pairs; and HumanEval's
  canonical-solution bits per byte (how well each predicts the 164 reference
  solutions given their prompts);
- the runs' own numbers: steps, median time per step, the last validation loss.

The summary goes to ``benchmarks/results/finetune.json`` with the machine, CPU,
versions and date. The cost of a step, full vs LoRA, against PyTorch, is
``benchmarks/finetune_step.py``'s.

    .venv/bin/python benchmarks/finetune.py [--base runs/small] [--budget 5m] [--work /tmp/finetune-bench]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from harness import cpu_model, write_json  # noqa: E402

from tinygrad_llm.chat.finetune import build_model, held_out_scores  # noqa: E402
from tinygrad_llm.checkpoint import latest_checkpoint, load_model, read_info  # noqa: E402
from tinygrad_llm.cli import load_any_model  # noqa: E402
from tinygrad_llm.cli import main as cli  # noqa: E402
from tinygrad_llm.evaluate import humaneval  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "finetune.json"


def run_summary(out: Path) -> dict:
    """Steps, median seconds per step (from the logged tokens/s) and the last validation loss of a run."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    info = read_info(latest_checkpoint(out))
    rates = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
    tokens_per_step = info["train_config"]["batch_size"] * info["model_config"]["block_size"]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    return {"steps": info["step"], "seconds_per_step_median": tokens_per_step / statistics.median(rates),
            "val_loss_first": vals[0], "val_loss_last": vals[-1], "elapsed_s": info["elapsed"],
            "trainable": info.get("lora") or "all parameters"}


def scores(model, tokenizer, problems, questions: int) -> dict:
    result = held_out_scores(model, tokenizer, questions)
    result["humaneval_canonical_bits_per_byte"] = humaneval.canonical_bits_per_byte(model, tokenizer,
                                                                                    problems)["bits_per_byte"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="runs/small")
    parser.add_argument("--budget", default="5m", help="time budget of each fine-tuning run")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--questions", type=int, default=500, help="held-out instructions to score")
    parser.add_argument("--work", type=Path, default=Path("/tmp/finetune-bench"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    runs = {"full": args.work / "full", "lora": args.work / "lora"}
    for name, out in runs.items():
        latest = latest_checkpoint(out)
        if latest is not None and read_info(latest).get("done"):
            continue
        argv = ["finetune", "--base", args.base, "--out", str(out), "--time-budget", args.budget]
        if name == "lora":
            argv += ["--lora-rank", str(args.lora_rank)]
        print(f"running: tinygrad-llm {' '.join(argv)}", flush=True)
        if cli(argv) != 0:
            raise SystemExit(f"fine-tuning {name} failed")

    problems = humaneval.load_problems()
    base_model, base_tokenizer = load_model(args.base)
    base_model, base_tokenizer, _ = build_model(base_model, base_tokenizer, "float32", None, seed=0)
    results = {"base": scores(base_model, base_tokenizer, problems, args.questions)}
    for name, out in runs.items():
        model, tokenizer, _ = load_any_model(out)
        results[name] = scores(model, tokenizer, problems, args.questions) | {"run": run_summary(out)}
        print(f"{name}: exact match {results[name]['instructions_exact_match']:.1%}", flush=True)

    document = {
        "what": "fine-tuning the main job's model on the built-in mix: full and LoRA, held-out scores",
        "base": args.base, "budget": args.budget, "lora_rank": args.lora_rank,
        "date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(), "numpy": np.__version__,
        "results": results,
    }
    write_json(args.out, document)
    table = [("", "base", "full", "LoRA")]
    for key, label in (("instructions_exact_match", "exact match, held-out instructions"),
                       ("instructions_exact_match_in_chat", "the same, five at a time in one chat"),
                       ("chatterbot_val_loss", "answer loss, held-out chatterbot"),
                       ("docstrings_val_loss", "answer loss, held-out docstring pairs"),
                       ("humaneval_canonical_bits_per_byte", "HumanEval canonical bits/byte")):
        table.append((label, *(f"{results[k][key]:.4g}" for k in ("base", "full", "lora"))))
    for row in table:
        print(f"{row[0]:<40} {row[1]:>10} {row[2]:>10} {row[3]:>10}")


if __name__ == "__main__":
    main()
