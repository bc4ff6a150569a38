"""Tokenizer speed, side by side with the references, on the same input in the same run.

1. Training: our ``Tokenizer.train`` against the Hugging Face ``tokenizers`` BPE
   trainer, same corpus, same vocabulary size, same pre-tokenization (GPT-4 split
   regex, then the byte-level alphabet without a prefix space).
2. Encoding, single process: our ``encode_ordinary`` against tiktoken built from our
   own ranks and pattern.  Ours is timed twice per repeat: "cold" on a fresh
   tokenizer (empty chunk cache) and "warm" (cache filled by the cold pass).

Every measurement is repeated; medians and ratios go to
``benchmarks/results/tokenizer.json``.  Times on shared machines are noisy; the
ratios, taken in the same run on the same input, are what to quote.

    .venv/bin/python benchmarks/tokenizer.py [--vocab-size 8192] [--repeats 3] [--train-fraction 1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tiktoken  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import Regex, models, pre_tokenizers, trainers  # noqa: E402

from tinygrad_llm.data.sources import StdlibCorpus  # noqa: E402
from tokenizer import GPT4_PATTERN, Tokenizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "tokenizer.json"


def train_hf(docs: list[str], vocab_size: int) -> tokenizers.Tokenizer:
    """The Hugging Face BPE trainer with our pre-tokenization: GPT-4 split, byte-level, no prefix space."""
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(docs, trainer)
    return hf


def timed(fn, *args, **kwargs):
    """(seconds, result) of one call ``fn(*args, **kwargs)``."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-fraction", type=int, default=1,
                        help="train on every N-th document of the corpus (1 = all)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    corpus = StdlibCorpus("train")
    docs = list(corpus.texts())
    text = "".join(docs)
    n_bytes = len(text.encode("utf-8"))
    train_docs = docs[::args.train_fraction]
    train_bytes = sum(len(d.encode("utf-8")) for d in train_docs)
    print(f"corpus: {len(docs)} docs, {n_bytes / 1e6:.1f} MB; training on {train_bytes / 1e6:.1f} MB, "
          f"vocab {args.vocab_size}", file=sys.stderr)

    ours_train, hf_train = [], []
    for r in range(args.repeats):
        t_ours, tok = timed(Tokenizer.train, train_docs, args.vocab_size, progress=False)
        t_hf, hf = timed(train_hf, train_docs, args.vocab_size)
        assert tok.vocab_size == hf.get_vocab_size() == args.vocab_size
        ours_train.append(t_ours)
        hf_train.append(t_hf)
        print(f"train repeat {r}: ours {t_ours:.2f}s  hf {t_hf:.2f}s", file=sys.stderr)

    ref = tok.to_tiktoken()
    cold, warm, tik = [], [], []
    for r in range(args.repeats):
        fresh = Tokenizer(tok.to_tiktoken_ranks(), tok.pattern, tok.special_tokens)
        t_cold, ids = timed(fresh.encode_ordinary, text)
        t_warm, _ = timed(fresh.encode_ordinary, text)
        t_tik, want = timed(ref.encode_ordinary, text)
        assert ids == want, "encoders disagree"
        cold.append(t_cold)
        warm.append(t_warm)
        tik.append(t_tik)
        print(f"encode repeat {r}: ours cold {t_cold:.2f}s warm {t_warm:.2f}s  tiktoken {t_tik:.2f}s",
              file=sys.stderr)

    mbps = {name: n_bytes / 1e6 / statistics.median(times)
            for name, times in (("ours_cold", cold), ("ours_warm", warm), ("tiktoken", tik))}
    result = {
        "benchmark": "tokenizer",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": cpu_name(), "cores": os.cpu_count()},
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "tiktoken": tiktoken.__version__, "tokenizers": tokenizers.__version__},
        "corpus": {"name": "stdlib corpus, train split", "documents": len(docs), "bytes": n_bytes,
                   "skipped_files": len(corpus.skipped), "training_documents": len(train_docs),
                   "training_bytes": train_bytes},
        "vocab_size": args.vocab_size,
        "pattern": "gpt4",
        "repeats": args.repeats,
        "training": {
            "ours_seconds": ours_train, "hf_seconds": hf_train,
            "ours_median_s": statistics.median(ours_train), "hf_median_s": statistics.median(hf_train),
            "ratio_ours_over_hf": statistics.median(ours_train) / statistics.median(hf_train),
            "note": "HF BpeTrainer uses all cores (Rust, rayon); ours is one Python process",
        },
        "encoding": {
            "tokens": len(ids),
            "ours_cold_seconds": cold, "ours_warm_seconds": warm, "tiktoken_seconds": tik,
            "mb_per_s": {k: round(v, 3) for k, v in mbps.items()},
            "ratio_cold_over_tiktoken": mbps["ours_cold"] / mbps["tiktoken"],
            "ratio_warm_over_tiktoken": mbps["ours_warm"] / mbps["tiktoken"],
            "note": "single process, single thread; throughput = UTF-8 bytes / median time",
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"training": {k: result["training"][k] for k in ("ours_median_s", "hf_median_s",
                                                                    "ratio_ours_over_hf")},
                      "encoding": {k: result["encoding"][k] for k in ("mb_per_s", "ratio_cold_over_tiktoken",
                                                                    "ratio_warm_over_tiktoken")}},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
