"""Near-duplicate detection speed and quality: ours against datasketch, same run, same input.

Input: the standard-library corpus as code pre-tokens (GPT-4 split, blanks dropped),
plus planted near-duplicates: for each target similarity 0.7 / 0.8 / 0.9, copies of
randomly chosen files with tokens replaced at spaced positions so that the copy's
5-gram shingle set has about that Jaccard similarity with the original.

Both systems get the same token lists, the same shingles (token 5-grams), the same
``num_perm`` and threshold (so the same 9 x 13 bands x rows), one process each:

- ours: ``hash_shingles`` + ``MinHasher.signature`` + ``NearDuplicateIndex.add``;
- datasketch: shingles as UTF-8 bytes, ``MinHash.update_batch`` (its default SHA-1
  hash), ``MinHashLSH.query`` then ``insert``.

Reported: documents/s (median of the repeats) and their ratio; recall on the planted
pairs per similarity level and over those at or above the threshold; precision of all
candidate pairs, a pair being correct when its true Jaccard reaches the threshold.

    .venv/bin/python benchmarks/dedup.py [--repeats 3] [--copies 150] [--num-perm 128] [--threshold 0.8]
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

import datasketch  # noqa: E402
import numpy as np  # noqa: E402

from tinygrad_llm.data.dedup import NearDuplicateIndex  # noqa: E402
from tinygrad_llm.data.minhash import (  # noqa: E402
    SHINGLE_SIZE,
    MinHasher,
    candidate_probability,
    choose_bands_rows,
    hash_shingles,
    jaccard,
    tokens_of,
)
from tinygrad_llm.data.normalize import normalize_text  # noqa: E402
from tinygrad_llm.data.sources import StdlibCorpus  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dedup.json"
LEVELS = (0.7, 0.8, 0.9)


def plant(tokens: list[str], similarity: float, tag: str, rng: np.random.Generator) -> list[str]:
    """A copy of ``tokens`` whose 5-gram set has Jaccard about ``similarity`` with the original.

    Replacing k tokens spaced at least 5 apart changes 5k of n shingles: J = (n - 5k) / (n + 5k).
    """
    n = len(tokens) - SHINGLE_SIZE + 1
    k = round(n * (1 - similarity) / (SHINGLE_SIZE * (1 + similarity)))
    slots = rng.choice(len(tokens) // SHINGLE_SIZE, size=k, replace=False)
    copy = list(tokens)
    for j, slot in enumerate(slots):
        copy[slot * SHINGLE_SIZE] = f"{tag}_{j}"
    return copy


def build_input(copies: int, seed: int) -> tuple[list[list[str]], list[tuple[int, int, float]]]:
    """Token lists of the corpus plus planted copies, and the planted (original, copy, level) triples."""
    docs = [tokens_of(normalize_text(doc.text), "code") for doc in StdlibCorpus()]
    rng = np.random.default_rng(seed)
    eligible = [i for i, tokens in enumerate(docs) if len(tokens) >= 500]
    planted = []
    for level in LEVELS:
        for original in rng.choice(eligible, size=copies, replace=False):
            planted.append((int(original), len(docs), level))
            docs.append(plant(docs[original], level, f"planted{len(docs)}", rng))
    return docs, planted


def run_ours(docs: list[list[str]], num_perm: int, threshold: float) -> set[tuple[int, int]]:
    hasher = MinHasher(num_perm, seed=1)
    index = NearDuplicateIndex(*choose_bands_rows(threshold, num_perm), threshold, verify=False)
    pairs = set()
    for i, tokens in enumerate(docs):
        pairs.update((j, i) for j in index.add(i, hasher.signature(hash_shingles(tokens))))
    return pairs


def run_datasketch(docs: list[list[str]], num_perm: int, threshold: float) -> set[tuple[int, int]]:
    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm)
    pairs = set()
    for i, tokens in enumerate(docs):
        shingles = {" ".join(tokens[k:k + SHINGLE_SIZE]).encode() for k in range(len(tokens) - SHINGLE_SIZE + 1)}
        minhash = datasketch.MinHash(num_perm=num_perm, seed=1)
        minhash.update_batch(shingles)
        pairs.update((j, i) for j in lsh.query(minhash))
        lsh.insert(i, minhash)
    return pairs


def quality(pairs: set[tuple[int, int]], planted: list[tuple[int, int, float]], truth: dict[tuple[int, int], float],
            shingles: list[np.ndarray], threshold: float) -> dict:
    """Recall per planted level and at or above the threshold; precision against true Jaccard."""
    recall = {str(level): float(np.mean([(o, c) in pairs for o, c, lv in planted if lv == level]))
              for level in LEVELS}
    above = [(o, c) for o, c, _ in planted if truth[(o, c)] >= threshold]
    recall["true_jaccard_at_or_above_threshold"] = float(np.mean([p in pairs for p in above]))
    correct = sum(jaccard(shingles[a], shingles[b]) >= threshold for a, b in pairs)
    return {"candidate_pairs": len(pairs), "precision": correct / len(pairs) if pairs else 1.0, "recall": recall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=150, help="planted copies per similarity level")
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    docs, planted = build_input(args.copies, args.seed)
    shingles = [hash_shingles(tokens) for tokens in docs]
    truth = {(o, c): jaccard(shingles[o], shingles[c]) for o, c, _ in planted}
    bands, rows = choose_bands_rows(args.threshold, args.num_perm)
    print(f"{len(docs)} documents ({len(planted)} planted), {sum(map(len, shingles)):,} shingles, "
          f"{bands} x {rows} bands x rows")

    seconds: dict[str, list[float]] = {"ours": [], "datasketch": []}
    pairs = {}
    for repeat in range(args.repeats):
        for name, run in (("ours", run_ours), ("datasketch", run_datasketch)):
            start = time.perf_counter()
            found = run(docs, args.num_perm, args.threshold)
            seconds[name].append(time.perf_counter() - start)
            if repeat > 0 and found != pairs[name]:
                raise RuntimeError(f"{name} is not deterministic across repeats")
            pairs[name] = found
            print(f"repeat {repeat}: {name} {seconds[name][-1]:.2f} s")

    docs_per_s = {name: len(docs) / statistics.median(times) for name, times in seconds.items()}
    result = {
        "benchmark": "dedup",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cores": os.cpu_count()},
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "datasketch": datasketch.__version__},
        "input": {"documents": len(docs), "planted_copies": len(planted), "shingles": int(sum(map(len, shingles))),
                  "shingle": f"code pre-token {SHINGLE_SIZE}-grams", "seed": args.seed,
                  "planted_true_jaccard": {str(level): [round(min(v for (o, c), v in truth.items()
                                                                  if (o, c, level) in planted), 3),
                                                        round(max(v for (o, c), v in truth.items()
                                                                  if (o, c, level) in planted), 3)]
                                           for level in LEVELS}},
        "settings": {"num_perm": args.num_perm, "threshold": args.threshold, "bands": bands, "rows": rows,
                     "s_curve": {str(s): round(float(candidate_probability(s, bands, rows)), 3) for s in LEVELS}},
        "repeats": args.repeats,
        "seconds": seconds,
        "docs_per_second": docs_per_s,
        "ratio_ours_over_datasketch": docs_per_s["ours"] / docs_per_s["datasketch"],
        "quality": {name: quality(pairs[name], planted, truth, shingles, args.threshold) for name in pairs},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("docs_per_second", "ratio_ours_over_datasketch", "quality")}, indent=1))


if __name__ == "__main__":
    main()
