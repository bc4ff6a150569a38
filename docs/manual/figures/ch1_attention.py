"""Chapter 1: causal attention weights as heatmaps, and what the 1/sqrt(d_k) scale does to them.

The weights P = softmax(q k^T * scale + M) come out of our own op: with v = the identity
matrix (T, T), F.scaled_dot_product_attention(q, k, v) returns P @ I = P itself.
Writes figures/ch1_attention.png (two heatmaps: scaled and unscaled, d_k = 64) and
figures/ch1_attention.md (score spread and row entropy against d_k).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import nn  # noqa: E402
from nn import functional as F  # noqa: E402

SOURCE = "docs/manual/figures/ch1_attention.py"


def weights(q: np.ndarray, k: np.ndarray, scale: float) -> np.ndarray:
    """Causal attention probabilities (..., T, T) computed by our ScaledDotProductAttention."""
    t = q.shape[-2]
    eye = np.broadcast_to(np.eye(t, dtype=q.dtype), (*q.shape[:-2], t, t)).copy()
    return F.scaled_dot_product_attention(nn.Tensor(q), nn.Tensor(k), nn.Tensor(eye), is_causal=True,
                                          scale=scale).numpy()


def entropy_bits(p: np.ndarray) -> np.ndarray:
    """Entropy of each row of probabilities, in bits (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p), 0.0)
    return -terms.sum(axis=-1)


def main() -> dict:
    rng = np.random.default_rng(0)
    t, d = 16, 64
    q = rng.standard_normal((t, d)).astype(np.float32)
    k = rng.standard_normal((t, d)).astype(np.float32)
    scaled, unscaled = weights(q, k, 1 / math.sqrt(d)), weights(q, k, 1.0)
    above = float(np.abs(np.triu(scaled, 1)).max())
    row_sums = float(np.abs(scaled.sum(axis=-1) - 1).max())

    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.2), layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0.03, 1, 0.97))  # room for the source line under the axes labels
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("white")  # the masked cells (j > i): weight exactly 0, drawn blank
    future = np.triu(np.ones((t, t), dtype=bool), 1)
    for ax, p, title in ((axes[0], scaled, r"scale $1/\sqrt{d_k}$"), (axes[1], unscaled, "no scale")):
        im = ax.imshow(np.ma.masked_where(future, p), cmap=cmap, vmin=0, vmax=1)
        ax.set_title(f"{title}  (d_k = {d}, T = {t})", fontsize=9)
        ax.set_xlabel("key position j", fontsize=8)
        ax.set_ylabel("query position i", fontsize=8)
        ax.set_xticks(range(0, t, 3))
        ax.set_yticks(range(0, t, 3))
        ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention weight")
    _common.save_figure(fig, "ch1_attention.png", SOURCE)
    plt.close(fig)

    # How the spread of the scores and the sharpness of the weights grow with d_k, with and without the scale.
    rows, table = [], {}
    n_heads, length = 64, 64
    for dk in (4, 16, 64, 256):
        qs = rng.standard_normal((n_heads, length, dk)).astype(np.float32)
        ks = rng.standard_normal((n_heads, length, dk)).astype(np.float32)
        dots = qs @ ks.swapaxes(-1, -2)
        last = slice(length - 1, length)  # the last query sees all 64 keys: its entropy is at most 6 bits
        h_scaled = float(entropy_bits(weights(qs, ks, 1 / math.sqrt(dk))[:, last]).mean())
        h_raw = float(entropy_bits(weights(qs, ks, 1.0)[:, last]).mean())
        table[dk] = {"std_dot": float(dots.std()), "std_scaled": float((dots / math.sqrt(dk)).std()),
                     "entropy_scaled_bits": h_scaled, "entropy_unscaled_bits": h_raw}
        rows.append([dk, f"{dots.std():.2f}", f"{(dots / math.sqrt(dk)).std():.2f}", f"{h_scaled:.2f}",
                     f"{h_raw:.2f}"])
    _common.write_table("ch1_attention.md", ["d_k", "std of q.k", "std of q.k / sqrt(d_k)",
                                             "entropy, scaled (bits)", "entropy, unscaled (bits)"], rows)
    return {"heatmap": {"T": t, "d_k": d, "max_weight_above_diagonal": above, "max_row_sum_error": row_sums},
            "by_dk": table, "entropy_of_uniform_over_64_bits": math.log2(length)}


if __name__ == "__main__":
    data = main()
    print(data)
    _common.record(__file__, data, sources=["nn/ops/nn.py", "nn/functional.py"])
