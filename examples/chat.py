"""From the main job's base model to a chat model: fine-tune for a few minutes, compare, then talk to it.

    python examples/chat.py                    # base runs/small (from `make train`), 5 minutes of fine-tuning
    python examples/chat.py --budget 10m --lora-rank 8

The same steps a user would type:

    tinygrad-llm finetune --base runs/small --out runs/small-chat --time-budget 5m
    tinygrad-llm chat --checkpoint runs/small-chat

Between the two it prints the numbers before and after fine-tuning, on data
the run never saw: exact-match accuracy on held-out generated instructions,
and the loss on held-out chatterbot conversations and docstring-to-function
pairs. Run it again and it reuses the finished fine-tuning run. The chat opens
when standard input is a terminal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a fresh clone without installing

from tinygrad_llm.chat.finetune import build_model, held_out_scores  # noqa: E402
from tinygrad_llm.checkpoint import latest_checkpoint, load_model, read_info  # noqa: E402
from tinygrad_llm.cli import load_any_model  # noqa: E402
from tinygrad_llm.cli import main as cli  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="runs/small", help="the base run (default runs/small, from `make train`)")
    p.add_argument("--out", default=None, help="the fine-tuning run (default <base>-chat, or <base>-lora)")
    p.add_argument("--budget", default="5m", help="fine-tuning time, evaluation included (default 5m)")
    p.add_argument("--lora-rank", type=int, default=None, help="fine-tune LoRA adapters of this rank instead")
    p.add_argument("--questions", type=int, default=200, help="held-out instructions to score (default 200)")
    return p.parse_args()


def show(title: str, scores: dict) -> None:
    print(f"{title}: exact match {scores['instructions_exact_match']:.1%} of {scores['instructions']} held-out "
          f"instructions; answer loss {scores['chatterbot_val_loss']:.3f} on chatterbot, "
          f"{scores['docstrings_val_loss']:.3f} on docstring-to-function pairs", flush=True)


def main() -> int:
    args = parse_args()
    base = Path(args.base)
    if latest_checkpoint(base) is None:
        print(f"{base}: no base run here; train one first with `make train` (about ten minutes)", file=sys.stderr)
        return 2
    out = Path(args.out or f"{base}-{'lora' if args.lora_rank else 'chat'}")
    latest = latest_checkpoint(out)
    if latest is None or not read_info(latest).get("done"):
        argv = ["finetune", "--base", str(base), "--out", str(out), "--time-budget", args.budget]
        if args.lora_rank:
            argv += ["--lora-rank", str(args.lora_rank)]
        if latest is not None:
            argv = ["finetune", "--out", str(out), "--resume"]
        print(f"\n=== fine-tuning: tinygrad-llm {' '.join(argv)}", flush=True)
        if cli(argv) != 0:
            return 1
    else:
        print(f"\n=== {out} is a finished fine-tuning run; reusing it (delete it to fine-tune again)")

    print("\n=== before and after, on data the fine-tuning never saw", flush=True)
    model, tokenizer = load_model(base)
    model, tokenizer, _ = build_model(model, tokenizer, "float32", None, seed=0)
    show("base model      ", held_out_scores(model, tokenizer, args.questions))
    tuned, tuned_tokenizer, _ = load_any_model(out)
    after = held_out_scores(tuned, tuned_tokenizer, args.questions)
    show("fine-tuned model", after)
    for record in after["examples"]:
        print(f"  {record['question']!r} -> {record['answer']!r} (expected {record['expected']!r})")

    if sys.stdin.isatty():
        print(f"\n=== chat: tinygrad-llm chat --checkpoint {out}", flush=True)
        return cli(["chat", "--checkpoint", str(out)])
    print(f"\nTalk to it: tinygrad-llm chat --checkpoint {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
