"""Chapter 5: the unbiased pass@k estimator, computed with the harness's own function.

For n = 10 samples of a problem, of which c pass, plots ``tinygrad_llm.evaluate.humaneval.pass_at_k(n, c, k)`` for
k = 1, 2, 5, 10 against c, beside the biased "plug-in" estimate 1 - (1 - c/n)^k. It also checks the product form
against the binomial-coefficient definition (exact rational arithmetic) for every n <= 30, and shows where the
plain float formula breaks down for a large n. Pure arithmetic: no model, no data.

    .venv/bin/python docs/manual/figures/ch5_passk.py
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from tinygrad_llm.evaluate.humaneval import pass_at_k  # noqa: E402

N = 10
KS = (1, 2, 5, 10)


def exact(n: int, c: int, k: int) -> Fraction:
    """1 - C(n - c, k) / C(n, k) in exact rational arithmetic (math.comb is 0 when n - c < k)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def naive_float(n: int, c: int, k: int) -> float:
    """The definition evaluated in floating point, as one would first write it: overflows for large n."""
    try:
        return 1.0 - float(math.comb(n - c, k)) / float(math.comb(n, k))
    except OverflowError:
        return math.nan


def main() -> None:
    worst = max(abs(pass_at_k(n, c, k) - float(exact(n, c, k)))
                for n in range(1, 31) for c in range(n + 1) for k in range(1, n + 1))

    cs = list(range(N + 1))
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    for i, k in enumerate(KS):
        ax.plot(cs, [pass_at_k(N, c, k) for c in cs], "o-", color=f"C{i}", ms=3, label=f"pass@{k} (unbiased)")
        if k > 1:
            ax.plot(cs, [1 - (1 - c / N) ** k for c in cs], ":", color=f"C{i}", lw=1,
                    label=f"1 - (1 - c/n)^{k} (biased)")
    ax.set_xlabel(f"c, passing samples out of n = {N}")
    ax.set_ylabel("estimate for one problem")
    ax.set_xticks(cs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    fig.tight_layout()
    _common.save_figure(fig, "ch5_passk.png", source="docs/manual/figures/ch5_passk.py")

    cases = [(10, 1, 5), (10, 3, 5), (200, 10, 100), (2000, 10, 1000)]
    rows = []
    for n, c, k in cases:
        ours, truth, plain = pass_at_k(n, c, k), float(exact(n, c, k)), naive_float(n, c, k)
        rows.append([n, c, k, f"{truth:.6f}", f"{ours:.6f}", "overflow" if math.isnan(plain) else f"{plain:.6f}",
                     f"{len(str(math.comb(n, k)))} digits"])
    _common.write_table("ch5_passk.md", ["n", "c", "k", "exact (fractions)", "pass_at_k", "float of C/C",
                                         "C(n, k) has"], rows, align="rrrrrrr")
    _common.record(__file__, {
        "n": N, "ks": list(KS),
        "curves": {f"pass@{k}": [pass_at_k(N, c, k) for c in cs] for k in KS},
        "max_abs_difference_vs_exact_n_le_30": worst,
        "cases": [dict(zip(["n", "c", "k", "exact", "pass_at_k", "float_comb_ratio", "comb_n_k"], r, strict=True))
                  for r in rows],
    }, sources=["tinygrad_llm/evaluate/humaneval.py pass_at_k"])
    print(f"max |pass_at_k - exact| over n <= 30: {worst:.2e}")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
