"""Chapter 1: an embedding lookup is a one-hot matrix times the table, in value and in gradient; and its cost.

With our engine: F.embedding(ids, W) against one_hot(ids) @ W on the same ids, table and upstream
gradient (max abs differences of outputs and table gradients), then the time of each (forward, and
forward + backward) at vocabulary sizes 1k, 8k and 32k, median of repeats, as a ratio.
Writes figures/ch1_embedding.md and figures/ch1_embedding.png.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import nn  # noqa: E402
from nn import functional as F  # noqa: E402

SOURCE = "docs/manual/figures/ch1_embedding.py"
N_TOKENS, WIDTH, REPEATS = 512, 64, 15      # a batch of 8 sequences of 64 tokens, embedding width 64
VOCABS = (1024, 8192, 32768)


def one_hot(ids: np.ndarray, vocab: int) -> np.ndarray:
    """(N,) ids -> (N, V) float32 rows with a single 1 each."""
    rows = np.zeros((ids.size, vocab), dtype=np.float32)
    rows[np.arange(ids.size), ids] = 1
    return rows


def lookup(ids, table, upstream, backward: bool):
    out = F.embedding(ids, table)
    if backward:
        table.grad = None
        out.backward(upstream)
    return out


def matmul(onehot, table, upstream, backward: bool):
    out = nn.Tensor(onehot) @ table
    if backward:
        table.grad = None
        out.backward(upstream)
    return out


def _diff(x: float) -> str:
    return "0 (exact)" if x == 0 else f"{x:.0e}"


def median_times(first, first_args, second, second_args) -> tuple[float, float]:
    """Median seconds of each of two calls, timed alternately so that machine noise hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(REPEATS):
        for fn, args, out in ((first, first_args, times[0]), (second, second_args, times[1])):
            start = time.perf_counter()
            fn(*args)
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> dict:
    rng = np.random.default_rng(0)
    results = {}
    rows = []
    for vocab in VOCABS:
        ids = rng.integers(0, vocab, N_TOKENS)
        ids[:8] = ids[0]  # a repeated id: its table row must receive the sum of several gradients
        table = nn.Tensor(rng.standard_normal((vocab, WIDTH)).astype(np.float32), requires_grad=True)
        upstream = rng.standard_normal((N_TOKENS, WIDTH)).astype(np.float32)
        onehot = one_hot(ids, vocab)

        out_a = lookup(ids, table, upstream, True)
        grad_a = table.grad.numpy().copy()
        out_b = matmul(onehot, table, upstream, True)
        grad_b = table.grad.numpy().copy()
        d_out = float(np.abs(out_a.numpy() - out_b.numpy()).max())
        d_grad = float(np.abs(grad_a - grad_b).max())
        # The scatter-add by hand: row v of the gradient is the sum of the upstream rows whose id is v.
        scatter = np.zeros_like(grad_a)
        np.add.at(scatter, ids, upstream)
        d_scatter = float(np.abs(grad_a - scatter).max())

        lookup(ids, table, upstream, True)  # warm caches once more before timing
        matmul(onehot, table, upstream, True)
        t = {}
        for backward in (False, True):
            key = "fwd+bwd" if backward else "fwd"
            t[f"lookup_{key}"], t[f"matmul_{key}"] = median_times(lookup, (ids, table, upstream, backward),
                                                                  matmul, (onehot, table, upstream, backward))
        ratio_f = t["matmul_fwd"] / t["lookup_fwd"]
        ratio_b = t["matmul_fwd+bwd"] / t["lookup_fwd+bwd"]
        results[vocab] = {"max_abs_diff_out": d_out, "max_abs_diff_grad": d_grad, "max_abs_diff_scatter": d_scatter,
                          "seconds": t, "ratio_fwd": ratio_f, "ratio_fwd_bwd": ratio_b,
                          "onehot_mib": onehot.nbytes / 2**20}
        rows.append([f"{vocab:,}", _diff(d_out), _diff(d_grad), f"{onehot.nbytes / 2**20:.0f}",
                     f"{ratio_f:.0f}x", f"{ratio_b:.0f}x"])
        print(vocab, results[vocab], flush=True)

    _common.write_table("ch1_embedding.md",
                        ["V", "output diff", "table-grad diff", "one-hot MiB", "time ratio, fwd",
                         "time ratio, fwd+bwd"], rows, align="lrrrrr")

    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = np.arange(len(VOCABS))
    ax.bar(x - 0.2, [results[v]["ratio_fwd"] for v in VOCABS], 0.4, label="forward")
    ax.bar(x + 0.2, [results[v]["ratio_fwd_bwd"] for v in VOCABS], 0.4, label="forward + backward")
    ax.set_xticks(x, [f"V = {v:,}" for v in VOCABS])
    ax.set_yscale("log")
    ax.set_ylabel("one-hot matmul time / lookup time")
    ax.set_title(f"{N_TOKENS} ids, width {WIDTH}, median of {REPEATS}, one core", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _common.save_figure(fig, "ch1_embedding.png", SOURCE)
    plt.close(fig)
    return {"n_tokens": N_TOKENS, "width": WIDTH, "repeats": REPEATS, "by_vocab": results}


if __name__ == "__main__":
    data = main()
    _common.record(__file__, data, sources=["nn/ops/nn.py", "nn/kernels/embedding.py", "nn/ops/matmul.py"])
