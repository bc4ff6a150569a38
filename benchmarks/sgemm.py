"""The matrix products of one training step of the ``small`` preset: NumPy's BLAS against PyTorch's, shape by shape.

A step of the ``small`` GPT (batch 16 x 128 = 2,048 rows, width 128, MLP
512, vocabulary 4,096) multiplies matrices of a handful of shapes. For each,
in the layout the engine uses (``nn.ops.matmul.Linear``: x @ W^T forward,
g @ W for the input's gradient, g^T @ x for the weight's), this times the
product on the same float32 arrays with NumPy (``a @ b``, OpenBLAS) and with
PyTorch (``torch.from_numpy`` views, ``a @ b`` under ``no_grad``), the two
alternating, median of ``--repeats`` calls in each of 3 rounds, then the
median over rounds. Each thread count runs in a fresh process, with
``OMP/OPENBLAS/MKL_NUM_THREADS`` set before NumPy and torch load and
``torch.set_num_threads``; the BLAS that NumPy found (threadpoolctl: library,
version, kernel architecture) goes into the results. A ratio above 1 means
NumPy's product is faster.

    .venv/bin/python benchmarks/sgemm.py [--threads 1,2] [--repeats 15]     # writes benchmarks/results/sgemm.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from harness import THREAD_VARS, cpu_model, median_seconds, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "sgemm.json"
ROWS, WIDTH, HIDDEN, VOCAB = 2048, 128, 512, 4096

# name: (shape of a, shape of b, layout) with layout "nt" = a @ b.T, "nn" = a @ b, "tn" = a.T @ b
SHAPES = {
    "c_attn forward, x @ W^T": ((ROWS, WIDTH), (3 * WIDTH, WIDTH), "nt"),
    "c_proj forward": ((ROWS, WIDTH), (WIDTH, WIDTH), "nt"),
    "c_fc forward": ((ROWS, WIDTH), (HIDDEN, WIDTH), "nt"),
    "mlp c_proj forward": ((ROWS, HIDDEN), (WIDTH, HIDDEN), "nt"),
    "lm_head forward": ((ROWS, WIDTH), (VOCAB, WIDTH), "nt"),
    "lm_head input grad, g @ W": ((ROWS, VOCAB), (VOCAB, WIDTH), "nn"),
    "lm_head weight grad, g^T @ x": ((ROWS, VOCAB), (ROWS, WIDTH), "tn"),
    "c_fc input grad": ((ROWS, HIDDEN), (HIDDEN, WIDTH), "nn"),
    "c_fc weight grad": ((ROWS, HIDDEN), (ROWS, WIDTH), "tn"),
    "c_attn input grad": ((ROWS, 3 * WIDTH), (3 * WIDTH, WIDTH), "nn"),
    "c_attn weight grad": ((ROWS, 3 * WIDTH), (ROWS, WIDTH), "tn"),
}


def product(a, b, layout: str):
    """The product in the given layout, for NumPy arrays and torch tensors alike."""
    return a @ b.T if layout == "nt" else a @ b if layout == "nn" else a.T @ b


def worker(threads: int, repeats: int) -> dict:
    """In this process (thread variables already set): every shape, NumPy against torch."""
    import statistics

    import numpy as np
    import torch
    from threadpoolctl import threadpool_info

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)

    rows = []
    for name, (a_shape, b_shape, layout) in SHAPES.items():
        a = rng.standard_normal(a_shape).astype(np.float32)
        b = rng.standard_normal(b_shape).astype(np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        ours, theirs = functools.partial(product, a, b, layout), functools.partial(product, ta, tb, layout)
        rounds = []
        with torch.no_grad():
            for _ in range(3):
                rounds.append((median_seconds(ours, repeats), median_seconds(theirs, repeats)))
        numpy_s, torch_s = (statistics.median(r[i] for r in rounds) for i in (0, 1))
        m, k = a_shape if layout != "tn" else a_shape[::-1]
        n = b_shape[0] if layout == "nt" else b_shape[1]
        rows.append({"product": name, "m_k_n": [m, k, n], "layout": layout, "numpy_ms": round(numpy_s * 1e3, 3),
                     "torch_ms": round(torch_s * 1e3, 3), "numpy_speed_over_torch": round(torch_s / numpy_s, 3)})
    blas = [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for i in threadpool_info() if i["user_api"] == "blas"]
    return {"threads": threads, "numpy_blas": blas, "torch_threads": torch.get_num_threads(),
            "torch_blas": "MKL" if torch.backends.mkl.is_available() else "other", "products": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats)))
        return 0
    runs = []
    for threads in [int(t) for t in args.threads.split(",")]:
        env = {**os.environ, **{v: str(threads) for v in THREAD_VARS}}
        out = subprocess.run([sys.executable, __file__, "--worker", str(threads), "--repeats", str(args.repeats)],
                             env=env, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.splitlines()[-1]))
        for row in runs[-1]["products"]:
            print(f"{threads} thread(s)  {row['product']:<30} numpy {row['numpy_ms']:8.3f} ms  "
                  f"torch {row['torch_ms']:8.3f} ms  numpy faster by {row['numpy_speed_over_torch']:.2f}x")
    import numpy
    import torch
    write_json(args.out, {
        "benchmark": "sgemm: the small preset's matrix products, NumPy's BLAS vs PyTorch, per shape",
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu_model(), "cores": os.cpu_count(),
        "python": platform.python_version(), "versions": {"numpy": numpy.__version__, "torch": torch.__version__},
        "repeats": args.repeats, "statistic": "median of repeats per round, median of 3 rounds, sides alternating",
        "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
