"""Chapter 5: instruction fine-tuning before and after, full against LoRA.

Reads ``benchmarks/results/finetune_7m.json`` (five minutes of ``tinygrad-llm finetune`` on the main job's model as
it was before issue 20, the 4.2M-parameter ``main_job_7m.json`` run; ``finetune.json`` holds the same on today's
model), full and LoRA rank 8, scored on held-out data) and ``benchmarks/results/finetune_step.json`` (one step, full
vs LoRA, ours vs PyTorch), and for the calculator's table ``finetune_engine18.json`` (direct answers) and
``finetune_engine18_calculator.json`` (the calculator) on one base model. Regenerates the 500 held-out questions
the benchmark scored (``chat.data.generated_items``, the same seed, a pure function) to count the questions per task
family, and encodes the benchmark's example questions and answers with the main job's tokenizer
(``runs/small/tokenizer.txt``) to show how numbers are split.

    .venv/bin/python docs/manual/figures/ch5_finetune.py
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from tinygrad_llm.chat.data import GROUPS, generated_items  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

RESULTS = _common.ROOT / "benchmarks" / "results"
TOKENIZER = _common.ROOT / "runs" / "small" / "tokenizer.txt"


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def family_label(family: str) -> str:
    """"call_max" -> "max()", the others as they are."""
    return family.removeprefix("call_") + "()" if family.startswith("call_") else family


def main() -> None:
    tune, step = load("finetune_7m.json"), load("finetune_step.json")
    results = tune["results"]
    questions = results["full"]["instructions"]
    counts = Counter(item.family for item in generated_items("test", questions, 0))
    order = [(group, task.family) for group, tasks in GROUPS.items() for task in tasks if task.family in counts]
    full, lora = results["full"]["instructions_by_family"], results["lora"]["instructions_by_family"]

    fig, ax = plt.subplots(figsize=(6.6, 3.4))
    xs = range(len(order))
    ax.bar([x - 0.2 for x in xs], [100 * full[f] for _, f in order], width=0.4, color="C0",
           label=f"full fine-tuning ({100 * results['full']['instructions_exact_match']:.1f}% overall)")
    ax.bar([x + 0.2 for x in xs], [100 * lora[f] for _, f in order], width=0.4, color="C1",
           label=f"LoRA rank {tune['lora_rank']} ({100 * results['lora']['instructions_exact_match']:.1f}% overall)")
    ax.set_xticks(list(xs), [f"{family_label(f)} ({counts[f]})" for _, f in order], rotation=90, fontsize=5.5)
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(0, 100)
    edges = [i for i in range(1, len(order)) if order[i][0] != order[i - 1][0]]
    for edge in edges:
        ax.axvline(edge - 0.5, color="0.6", lw=0.6)
    starts = [0, *edges]
    ends = [*edges, len(order)]
    for begin, end in zip(starts, ends, strict=True):
        ax.text((begin + end - 1) / 2, 93, order[begin][0], ha="center", fontsize=6, color="0.3")
    ax.axhline(80, color="C3", lw=0.8, ls=":", label="the issue's target, 80%")
    ax.legend(fontsize=6, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.set_xlabel(f"task family (questions of the {questions} held out, in brackets)", fontsize=7)
    fig.tight_layout()
    _common.save_figure(fig, "ch5_finetune.png", source="docs/manual/figures/ch5_finetune.py")

    base = results["base"]
    rows = [["optimizer steps in 5 minutes", "", str(results["full"]["run"]["steps"]),
             str(results["lora"]["run"]["steps"])]]
    rows.append(["exact match, held-out instructions"]
                + [f"{100 * results[k]['instructions_exact_match']:.1f}%" for k in ("base", "full", "lora")])
    for key, label in (("chatterbot_val_loss", "answer loss, held-out chatterbot (nats/token)"),
                       ("docstrings_val_loss", "answer loss, held-out docstring pairs (nats/token)"),
                       ("humaneval_canonical_bits_per_byte", "HumanEval canonical solutions (bits/byte)")):
        rows.append([label] + [f"{results[k][key]:.3f}" for k in ("base", "full", "lora")])
    _common.write_table("ch5_finetune.md", ["", "base", "full", f"LoRA (rank {tune['lora_rank']})"], rows)

    configs = step["configs"]
    srows = []
    for mode in ("full", "lora"):
        ours, torch = configs[f"ours/{mode}"], configs[f"torch/{mode}"]
        srows.append([mode if mode == "full" else "LoRA", f"{ours['step_ms']:.0f}", f"{torch['step_ms']:.0f}",
                      f"{step['ratios'][f'ours_over_torch_{mode}']['all_rounds']:.2f}",
                      f"{ours['trainable_parameters']:,}", f"{ours['grads_and_moments_bytes'] / 2**20:.1f} MiB"])
    _common.write_table("ch5_finetune_step.md", ["", "ours (ms)", "PyTorch (ms)", "ours / PyTorch", "trainable",
                                                 "grads + AdamW moments"], srows)

    if not TOKENIZER.is_file():
        sys.exit(f"{TOKENIZER} is missing: train the main job's model first (make train)")
    tokenizer = Tokenizer.load(TOKENIZER)
    trows = []
    for example in results["full"]["examples"]:
        def pieces(text: str) -> str:
            return " + ".join(f"`{tokenizer.decode([i])}`" for i in tokenizer.encode_ordinary(text))
        trows.append([example["question"].replace("`", "'"), pieces(example["expected"]),
                      pieces(example["answer"]), pieces(results["lora"]["examples"][len(trows)]["answer"])])
    _common.write_table("ch5_finetune_tokens.md", ["question", "expected, as tokens", "full", "LoRA"], trows,
                        align="llll")

    calculator = calculator_table(counts)

    _common.record(__file__, {
        "calculator": calculator,
        "questions_per_family": dict(counts),
        "exact_match": {k: results[k]["instructions_exact_match"] for k in ("base", "full", "lora")},
        "ratios": step["ratios"], "lora_over_full_seconds_per_step_finetune_json":
            results["lora"]["run"]["seconds_per_step_median"] / results["full"]["run"]["seconds_per_step_median"],
        "base_chatterbot": base["chatterbot_val_loss"],
    }, sources=["benchmarks/results/finetune_7m.json", "benchmarks/results/finetune_step.json",
                "benchmarks/results/finetune_engine18.json", "benchmarks/results/finetune_engine18_calculator.json",
                "tinygrad_llm/chat/data.py generated_items", "runs/small/tokenizer.txt"])
    print(dict(counts))


def calculator_table(counts: Counter) -> dict:
    """``ch5_calculator.md``: exact match per group of tasks on one base model, answering directly
    (``finetune_engine18.json``) and through the calculator (``finetune_engine18_calculator.json``)."""
    direct, tool = load("finetune_engine18.json")["results"], load("finetune_engine18_calculator.json")["results"]

    def share(results: dict, families: list[str]) -> float:
        by_family = results["instructions_by_family"]
        return sum(by_family[f] * counts[f] for f in families) / sum(counts[f] for f in families)

    rows, numbers = [], {}
    for group, tasks in [*GROUPS.items(), ("all", tuple(t for ts in GROUPS.values() for t in ts))]:
        families = [t.family for t in tasks if t.family in counts]
        cells = [share(direct["full"], families), share(tool["full"], families), share(tool["lora"], families)]
        numbers[group] = cells
        label = "all" if group == "all" else f"{group} ({', '.join(map(family_label, families[:3]))}, ...)"
        rows.append([label, str(sum(counts[f] for f in families)), *(f"{100 * c:.1f}%" for c in cells)])
    steps = [str(r["run"]["steps"]) for r in (direct["full"], tool["full"], tool["lora"])]
    rows.append(["optimizer steps in 5 minutes", "", *steps])
    _common.write_table("ch5_calculator.md", ["held-out questions", "n", "full, direct answers",
                                              "full, with the calculator", "LoRA, with the calculator"], rows)
    return numbers


if __name__ == "__main__":
    main()
