"""Chapter 5: loss curves of real runs, in bits per byte where the data allows, and the harness's perplexity numbers.

Reads three results files, runs nothing:

- ``benchmarks/results/main_job_7m.json``: the validation evaluations of the main job (``make train``, 7 minutes),
  each with loss in nats per token and bits per byte (the trainer divides the summed loss in bits by the UTF-8
  bytes of the predicted tokens);
- ``benchmarks/results/train_loop.json``: the training loss of every step of 200 steps, ours and PyTorch's on the
  same batches (nats per token: the file has no byte counts for the training batches);
- ``benchmarks/results/eval.json``: ``tinygrad-llm eval perplexity`` on the finished model.

    .venv/bin/python docs/manual/figures/ch5_curves.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = _common.ROOT / "benchmarks" / "results"


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def main() -> None:
    main_job, loop, evaluation = load("main_job_7m.json"), load("train_loop.json"), load("eval.json")
    evals = main_job["evaluations"]
    steps = [e["step"] for e in evals]
    bpb = [e["val_bpb"] for e in evals]
    # Tokens per byte of the scored validation tokens, per evaluation: bpb = loss / ln 2 * tokens / bytes.
    tokens_per_byte = [e["val_bpb"] * math.log(2) / e["val_loss"] for e in evals]
    ppl = evaluation["perplexity"]
    final = steps[-1]

    curves = loop["curves"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.0))
    left.plot(steps, bpb, "o-", color="C0", ms=3, label="training log (first 20 val batches)")
    left.plot([final], [ppl["perplexity_val"]["bits_per_byte"]], "s", color="C3", ms=5,
              label=f"eval harness, stride 128: {ppl['perplexity_val']['bits_per_byte']:.3f}")
    left.plot([final], [ppl["perplexity_val_stride32"]["bits_per_byte"]], "^", color="C2", ms=5,
              label=f"eval harness, stride 32: {ppl['perplexity_val_stride32']['bits_per_byte']:.3f}")
    left.set_xlabel("step (2,048 tokens each)")
    left.set_ylabel("validation bits per byte")
    left.set_title(f"main job, {main_job['train_seconds']} s of training", fontsize=8)
    left.legend(fontsize=6)
    left.grid(alpha=0.3)
    xs = range(1, len(curves["loss_ours"]) + 1)
    right.plot(xs, curves["loss_ours"], lw=0.9, color="C0", label="ours")
    right.plot(xs, curves["loss_torch"], lw=0.9, ls="--", color="C1", label="PyTorch, same batches")
    right.set_xlabel("step")
    right.set_ylabel("training loss (nats per token)")
    right.set_title(f"train_loop benchmark, lr {loop['config']['lr']:g}", fontsize=8)
    right.legend(fontsize=6)
    right.grid(alpha=0.3)
    fig.tight_layout()
    _common.save_figure(fig, "ch5_curves.png", source="docs/manual/figures/ch5_curves.py")

    rows = []
    for key, label in (("perplexity_val", "stdlib validation, stride 128"),
                       ("perplexity_val_stride32", "stdlib validation, stride 32"),
                       ("perplexity_text", "GNU GPL v3 (English), stride 128")):
        r = ppl[key]
        rows.append([label, f"{r['documents']}", f"{r['bytes']:,}", f"{r['tokens']:,}",
                     f"{r['bytes'] / r['tokens']:.2f}", f"{r['token_loss']:.3f}", f"{r['perplexity']:.1f}",
                     f"{r['bits_per_byte']:.3f}"])
    _common.write_table("ch5_curves_eval.md", ["text", "docs", "bytes", "tokens", "bytes/token", "nats/token",
                                               "perplexity", "bits/byte"], rows, align="lrrrrrrr")
    _common.record(__file__, {
        "main_job_evaluations": evals, "tokens_per_byte_of_val_batches": tokens_per_byte,
        "train_loop_final_val_loss": curves["final_val_loss"],
        "train_loop_max_abs_loss_difference": curves["max_abs_loss_difference"],
        "eval_perplexity": ppl,
    }, sources=["benchmarks/results/main_job_7m.json", "benchmarks/results/train_loop.json",
                "benchmarks/results/eval.json"])
    print(f"bpb {bpb}; tokens/byte {[round(t, 4) for t in tokens_per_byte]}")


if __name__ == "__main__":
    main()
