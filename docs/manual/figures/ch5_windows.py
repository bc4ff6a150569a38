"""Chapter 5: the rolling windows of the perplexity harness, drawn from ``rolling_windows`` itself.

A text of 20 tokens scored with a context of 8, once with lm-eval's disjoint windows (stride 8) and once with
stride 3. Each row is one window: the tokens the model reads (light) and the ones whose predictions are kept (dark).
Pure arithmetic: no model.

    .venv/bin/python docs/manual/figures/ch5_windows.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from tinygrad_llm.evaluate.perplexity import rolling_windows  # noqa: E402

N, CONTEXT = 20, 8


def draw(ax, stride: int) -> list[tuple[int, int, int]]:
    windows = rolling_windows(N, CONTEXT, stride)
    for row, (begin, end, scored) in enumerate(windows):
        y = len(windows) - 1 - row
        for position in range(begin, end):   # seq = [EOT] + tokens: position p predicts token p + 1
            kept = position >= end - scored
            ax.add_patch(Rectangle((position, y + 0.1), 0.9, 0.8, color="C0", alpha=0.9 if kept else 0.2, lw=0))
    ax.set_xlim(-0.2, N + 0.2)
    ax.set_ylim(-0.1, len(windows))
    ax.set_yticks([])
    ax.set_xticks([0, 5, 10, 15, N - 1], ["EOT", "5", "10", "15", str(N - 1)], fontsize=7)
    reads = sum(end - begin for begin, end, _ in windows)
    name = "lm-eval's disjoint windows" if stride == CONTEXT else "overlapping windows"
    ax.set_title(f"context {CONTEXT}, stride {stride} ({name}): {len(windows)} windows, the model reads "
                 f"{reads} positions to score {N} tokens", fontsize=7)
    ax.set_xlabel("input position (position p predicts token p + 1)", fontsize=7)
    return windows


def main() -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.0, 3.4), gridspec_kw={"height_ratios": [3, 6]})
    disjoint = draw(top, CONTEXT)
    strided = draw(bottom, 3)
    fig.tight_layout()
    _common.save_figure(fig, "ch5_windows.png", source="docs/manual/figures/ch5_windows.py")
    _common.record(__file__, {"n_tokens": N, "context": CONTEXT, "stride_8": disjoint, "stride_3": strided},
                   sources=["tinygrad_llm/evaluate/perplexity.py rolling_windows"])
    print(disjoint, strided)


if __name__ == "__main__":
    main()
