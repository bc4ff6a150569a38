"""Chapter 2: MinHash and LSH banding, measured with the repository's own code, and the dedup benchmark.

1. The (bands, rows) that ``choose_bands_rows`` picks for threshold 0.8 and 128
   permutations, and its S-curve ``1 - (1 - s**r)**b`` (with datatrove's 14 x 8 for
   comparison).
2. Planted near-duplicates: copies of stdlib files (at least 800 code pre-tokens)
   with tokens replaced at spaced positions, at random target similarities. For each
   pair: the true Jaccard of the shingle sets (``jaccard``), the MinHash estimate
   (``MinHasher`` + ``estimate_jaccard``) and whether the LSH index
   (``NearDuplicateIndex``, no verification) makes the pair a candidate.
3. The recall and speed that ``benchmarks/results/dedup.json`` measured (ours
   against datasketch), as a table and as points on the S-curve.

Writes ch2_dedup.png and ch2_dedup.md. Seeded; about 15 s on one core.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tinygrad_llm.data.dedup import NearDuplicateIndex  # noqa: E402
from tinygrad_llm.data.minhash import (  # noqa: E402
    NUM_PERM,
    SHINGLE_SIZE,
    MinHasher,
    candidate_probability,
    choose_bands_rows,
    estimate_jaccard,
    hash_shingles,
    jaccard,
    tokens_of,
)
from tinygrad_llm.data.normalize import normalize_text  # noqa: E402
from tinygrad_llm.data.sources import StdlibCorpus  # noqa: E402

RESULTS = _common.ROOT / "benchmarks" / "results" / "dedup.json"
SOURCE = "docs/manual/figures/ch2_dedup.py; points: benchmarks/results/dedup.json"
THRESHOLD = 0.8
PAIRS = 800
SEED = 0


def mutate(tokens: list[str], target: float, rng: np.random.Generator) -> list[str]:
    """A copy of ``tokens`` with k tokens replaced, spaced a shingle apart, so that J is about ``target``.

    Each replaced token changes the SHINGLE_SIZE shingles that contain it: with n shingles
    and k replacements J = (n - 5k) / (n + 5k), so k = n (1 - J) / (5 (1 + J)).
    """
    n = len(tokens) - SHINGLE_SIZE + 1
    k = min(round(n * (1 - target) / (SHINGLE_SIZE * (1 + target))), len(tokens) // SHINGLE_SIZE)
    copy = list(tokens)
    for j, slot in enumerate(rng.choice(len(tokens) // SHINGLE_SIZE, size=k, replace=False)):
        copy[slot * SHINGLE_SIZE] = f"<changed {j}>"
    return copy


def main() -> None:
    started = time.perf_counter()
    bands, rows = choose_bands_rows(THRESHOLD, NUM_PERM)
    rng = np.random.default_rng(SEED)
    docs = [tokens_of(normalize_text(doc.text), "code") for doc in StdlibCorpus()]
    eligible = [tokens for tokens in docs if len(tokens) >= 800]
    hasher = MinHasher(NUM_PERM, seed=1)
    true, estimate, candidate = [], [], []
    for _ in range(PAIRS):
        original = eligible[rng.integers(len(eligible))]
        copy = mutate(original, float(rng.uniform(0.4, 1.0)), rng)
        a, b = hash_shingles(original), hash_shingles(copy)
        sig_a, sig_b = hasher.signature(a), hasher.signature(b)
        index = NearDuplicateIndex(bands, rows, THRESHOLD, verify=False)
        index.add(0, sig_a)
        true.append(jaccard(a, b))
        estimate.append(estimate_jaccard(sig_a, sig_b))
        candidate.append(bool(index.add(1, sig_b)))
    true_j, est_j, cand = np.array(true), np.array(estimate), np.array(candidate)

    bench = json.loads(RESULTS.read_text())
    s = np.linspace(0, 1, 401)
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.6, 3.0))
    left.plot(s, candidate_probability(s, bands, rows), color="tab:blue", lw=1.6, label=f"{bands} x {rows} (ours)")
    left.plot(s, candidate_probability(s, 14, 8), color="0.5", lw=1.0, ls="--", label="14 x 8 (datatrove)")
    edges = np.linspace(0.4, 1.0, 13)
    centers, rates = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (true_j >= lo) & (true_j < hi)
        if inside.sum() >= 10:
            centers.append((lo + hi) / 2)
            rates.append(cand[inside].mean())
    left.plot(centers, rates, "o", color="tab:blue", ms=3.5, label="planted pairs, measured here")
    for level, (lo, hi) in bench["input"]["planted_true_jaccard"].items():
        recall = bench["quality"]["ours"]["recall"][level]
        left.plot([lo, hi], [recall, recall], color="tab:orange", lw=2.2,
                  label="dedup.json recall (J range)" if level == "0.7" else None)
    left.axvline(THRESHOLD, color="tab:red", lw=0.8, ls=":")
    left.set_xlim(0.4, 1.0)
    left.set_xlabel("Jaccard similarity s", fontsize=8)
    left.set_ylabel("P(candidate pair)", fontsize=8)
    left.legend(fontsize=6, loc="upper left")
    left.set_title("LSH S-curve, 128 permutations", fontsize=8)

    sigma = np.sqrt(s * (1 - s) / NUM_PERM)
    right.fill_between(s, -2 * sigma, 2 * sigma, color="tab:blue", alpha=0.15, label=r"$\pm 2\sqrt{s(1-s)/128}$")
    right.plot(true_j, est_j - true_j, ".", color="tab:blue", ms=2.0, label="MinHash estimate - true J")
    right.axhline(0, color="0.3", lw=0.6)
    right.set_xlim(0.4, 1.0)
    right.set_xlabel("true Jaccard similarity", fontsize=8)
    right.set_ylabel("estimate error", fontsize=8)
    right.legend(fontsize=6, loc="lower left")
    right.set_title(f"{PAIRS} planted pairs of stdlib files", fontsize=8)
    for ax in (left, right):
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    _common.save_figure(fig, "ch2_dedup.png", SOURCE)

    ours, theirs = bench["quality"]["ours"], bench["quality"]["datasketch"]
    table = []
    for name, q, key in (("ours", ours, "ours"),
                         (f"datasketch {bench['versions']['datasketch']}", theirs, "datasketch")):
        table.append([name, f"{bench['docs_per_second'][key]:.0f}", q["candidate_pairs"], f"{q['precision']:.2f}",
                      f"{q['recall']['0.7']:.2f} / {q['recall']['0.8']:.2f} / {q['recall']['0.9']:.2f}",
                      f"{q['recall']['true_jaccard_at_or_above_threshold']:.2f}"])
    _common.write_table("ch2_dedup.md", ["", "Docs/s", "Candidates", "Precision", "Recall at 0.7 / 0.8 / 0.9",
                                         "Recall, J >= 0.8"], table)

    errors = est_j - true_j
    inside = np.abs(errors) <= 2 * np.sqrt(true_j * (1 - true_j) / NUM_PERM) + 1e-12
    seconds = time.perf_counter() - started
    print(f"ch2_dedup: {bands} x {rows}, {seconds:.1f} s")
    _common.record(__file__, {
        "bands": bands, "rows": rows, "threshold_approx": (1 / bands) ** (1 / rows),
        "s_curve": {f"{v:.2f}": float(candidate_probability(v, bands, rows))
                    for v in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)},
        "s_curve_14x8": {f"{v:.2f}": float(candidate_probability(v, 14, 8)) for v in (0.7, 0.8, 0.9)},
        "pairs": PAIRS, "eligible_files": len(eligible),
        "estimate_error_mean": float(errors.mean()), "estimate_error_std": float(errors.std()),
        "share_within_2_sigma": float(inside.mean()),
        "binned_candidate_rate": {f"{c:.3f}": float(r) for c, r in zip(centers, rates, strict=True)},
        "benchmark_ratio_ours_over_datasketch": bench["ratio_ours_over_datasketch"],
        "script_seconds": round(seconds, 1),
    }, sources=["tinygrad_llm/data/minhash.py", "tinygrad_llm/data/dedup.py", "benchmarks/results/dedup.json"])


if __name__ == "__main__":
    main()
