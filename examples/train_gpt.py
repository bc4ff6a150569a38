"""The main job: raw text -> tokenizer -> token shards -> a trained GPT -> samples, in one command.

    python examples/train_gpt.py                 # the default corpus, the small preset, about ten minutes
    python examples/train_gpt.py --budget 30m --preset small --source ~/my_texts/

It runs the same three steps a user would type, through the same code:

    tinygrad-llm prepare  --source stdlib --out data/stdlib
    tinygrad-llm train    --data data/stdlib --preset small --time-budget 9m --out runs/small
    tinygrad-llm generate --checkpoint runs/small --prompt "def "

Run it again and it reuses the prepared data and, if the run finished, the
checkpoint (it resumes an interrupted run instead of starting over).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a fresh clone without installing

from tinygrad_llm.checkpoint import latest_checkpoint, read_info  # noqa: E402
from tinygrad_llm.cli import main as cli  # noqa: E402
from tinygrad_llm.data.loader import TokenShards  # noqa: E402

PROMPTS = ("def ", "class ", "import ")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="stdlib", help="stdlib (default), a directory, a glob or a .jsonl file")
    p.add_argument("--data", default=None, help="where the token shards go (default: data/<source name>)")
    p.add_argument("--preset", default="small", help="model preset (default: small)")
    p.add_argument("--budget", default="9m", help="training time, evaluation included (default: 9m)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None, help="run directory (default: runs/<preset>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--prepare", action="append", default=[], metavar="OPTION",
                   help="an extra option for the prepare step, e.g. --prepare=--vocab-size=8192 (repeatable)")
    p.add_argument("--samples", type=int, default=len(PROMPTS), help="samples to print at the end")
    return p.parse_args()


def command_name() -> str:
    """How to type the ``tinygrad-llm`` command from here: the venv's script (``make`` installs it), else the module."""
    script = Path(sys.executable).parent / "tinygrad-llm"
    if not script.exists():
        return f"{sys.executable} -m tinygrad_llm"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def step(title: str, argv: list[str]) -> None:
    print(f"\n=== {title}: {command_name()} {' '.join(argv)}", flush=True)
    status = cli(argv)
    if status != 0:
        sys.exit(status)


def unigram_entropy(data: str) -> float:
    """Entropy (nats) of the training tokens' frequencies: what predicting without context achieves."""
    tokens = TokenShards(data, "train")
    counts = np.bincount(np.asarray(tokens[0:len(tokens)]), minlength=tokens.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def main() -> None:
    args = parse_args()
    name = "stdlib" if args.source == "stdlib" else Path(args.source).stem or "custom"
    data = args.data or str(ROOT / "data" / name)
    out = args.out or str(ROOT / "runs" / args.preset)

    step("1/3 prepare", ["prepare", "--source", args.source, "--out", data, *args.prepare])

    train = ["train", "--data", data, "--preset", args.preset, "--time-budget", args.budget, "--out", out,
             "--device", args.device] + [f"--set={s}" for s in args.set]
    latest = latest_checkpoint(out)
    if latest is not None and read_info(latest).get("done"):
        print(f"\n=== 2/3 train: {out} already holds a finished run; reusing it "
              f"(extend it with: {command_name()} train --out {out} --resume --time-budget 5m)")
    elif latest is not None:  # an interrupted run: continue its plan (a new --time-budget would extend it)
        step("2/3 train", ["train", "--out", out, "--resume"])
    else:
        step("2/3 train", train)

    for prompt in PROMPTS[: args.samples]:
        step("3/3 generate", ["generate", "--checkpoint", out, "--prompt", prompt, "--max-new-tokens", "120",
                              "--temperature", "0.8", "--top-k", "50", "--seed", "0"])

    records = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines() if line.strip()]
    last_eval = [r for r in records if "val_loss" in r][-1]
    print(f"\nvalidation: loss {last_eval['val_loss']:.3f} nats/token, perplexity {last_eval['val_ppl']:.1f}, "
          f"{last_eval['val_bpb']:.3f} bits/byte at step {last_eval['step']}")
    print(f"baseline:   {unigram_entropy(data):.3f} nats/token, the loss of a model that ignores the context "
          "(the unigram entropy of the training tokens)")
    print(f"checkpoints: {out}/ (best.safetensors, ckpt_*.safetensors)")
    print(f"metrics log: {out}/log.jsonl")
    print(f"loss curve:  {out}/loss.png")
    print(f"try:         {command_name()} generate --checkpoint {out} --prompt 'def parse('")
    print("             (or `source .venv/bin/activate` once, then plain `tinygrad-llm ...`)")


if __name__ == "__main__":
    main()
