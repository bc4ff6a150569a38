"""Forward + backward time of each fused op and of matmul, ours against PyTorch CPU, in one run.

GPT-shaped inputs (B=8, T=256, C=384, H=6, vocab 8192), float32, the same
arrays for both libraries, the same number of threads for both (NumPy's BLAS
and PyTorch's intra-op pool). Ours and theirs alternate within every repeat
so that machine noise hits both alike; we report the median time of each and
the median over repeats of the paired ratio ours / PyTorch (below 1 means
we are faster). Where our time
goes (forward vs backward) comes from ``nn.profile``.

    python benchmarks/ops.py [--threads 1] [--repeats 15] [--out benchmarks/results/ops.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC

from harness import THREAD_VARS, cpu_model, write_json


def _set_threads_before_numpy_loads(threads: int) -> None:
    for var in THREAD_VARS:
        os.environ[var] = str(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--out", default="benchmarks/results/ops.json")
    parser.add_argument("--only", nargs="*", help="run only these cases")
    args = parser.parse_args(argv)
    _set_threads_before_numpy_loads(args.threads)

    import math
    import platform
    import statistics
    import time
    from datetime import datetime

    import numpy as np
    import torch
    import torch.nn.functional as TF

    import nn
    import nn.functional as F
    from nn.attention import apply_rope, rope_tables

    torch.set_num_threads(args.threads)
    B, T, C, H, V = 8, 256, 384, 6, 8192
    rng = np.random.default_rng(0)

    def randn(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    # Each case: arrays (float ones are differentiated), ours(*tensors), theirs(*tensors).
    ids = rng.integers(0, V, size=(B, T))
    half = C // H // 2
    cos_np, sin_np = rope_tables(C // H, T)
    cos, sin, cos_t, sin_t = nn.Tensor(cos_np), nn.Tensor(sin_np), torch.from_numpy(cos_np), torch.from_numpy(sin_np)
    targets = rng.integers(0, V, size=(B * T,))
    cases = {
        "softmax (B,H,T,T)": ([randn(B, H, T, T)], lambda x: F.softmax(x, -1), lambda x: TF.softmax(x, -1)),
        "cross_entropy (B*T,V)": ([randn(B * T, V)], lambda x: F.cross_entropy(x, targets),
                                  lambda x: TF.cross_entropy(x, torch.from_numpy(targets))),
        "layer_norm (B,T,C)": ([randn(B, T, C), 1 + randn(C, scale=0.1), randn(C, scale=0.1)],
                               lambda x, w, b: F.layer_norm(x, C, w, b), lambda x, w, b: TF.layer_norm(x, (C,), w, b)),
        "gelu tanh (B,T,4C)": ([randn(B, T, 4 * C)], lambda x: F.gelu(x, approximate="tanh"),
                               lambda x: TF.gelu(x, approximate="tanh")),
        "gelu exact (B,T,4C)": ([randn(B, T, 4 * C)], lambda x: F.gelu(x), lambda x: TF.gelu(x)),
        "embedding (V,C)[B,T]": ([randn(V, C)], lambda w: F.embedding(ids, w),
                                 lambda w: TF.embedding(torch.from_numpy(ids), w)),
        "rotary (B,H,T,C/H)": ([randn(B, H, T, C // H)], lambda x: apply_rope(x, cos, sin),
                               lambda x: x * cos_t + torch.cat([-x[..., half:], x[..., :half]], -1) * sin_t),
        "attention causal (B,H,T,C/H)": ([randn(B, H, T, C // H) for _ in range(3)],
                                         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                         lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True)),
        "matmul (B*T,C)@(C,4C)": ([randn(B * T, C), randn(C, 4 * C, scale=0.05)], lambda a, w: a @ w,
                                  lambda a, w: a @ w),
    }
    if args.only:
        cases = {k: v for k, v in cases.items() if any(o in k for o in args.only)}

    def run_ours(arrays, fn, upstream):
        inputs = [nn.Tensor(a, requires_grad=True) for a in arrays]
        start = time.perf_counter()
        fn(*inputs).backward(upstream)
        return time.perf_counter() - start

    def run_torch(arrays, fn, upstream):
        inputs = [torch.from_numpy(a).requires_grad_() for a in arrays]
        start = time.perf_counter()
        fn(*inputs).backward(upstream)
        return time.perf_counter() - start

    results = []
    for name, (arrays, ours, theirs) in cases.items():
        with nn.no_grad():
            out_shape = ours(*[nn.Tensor(a) for a in arrays]).shape
        g = randn(*out_shape) if out_shape else np.ones((), np.float32)
        g_torch = torch.from_numpy(g)
        for _ in range(2):  # warm-up: allocator, caches, lazy imports
            run_ours(arrays, ours, g)
            run_torch(arrays, theirs, g_torch)
        ours_t, theirs_t = [], []
        for _ in range(args.repeats):
            ours_t.append(run_ours(arrays, ours, g))
            theirs_t.append(run_torch(arrays, theirs, g_torch))
        with nn.profile() as prof:
            run_ours(arrays, ours, g)
        split = {r.name: {"forward_ms": round(r.forward_s * 1e3, 3), "backward_ms": round(r.backward_s * 1e3, 3)}
                 for r in prof.rows()}
        ours_ms, theirs_ms = statistics.median(ours_t) * 1e3, statistics.median(theirs_t) * 1e3
        # Each repeat times ours and theirs back to back, so their ratio shares the machine's state at
        # that moment; the median of these paired ratios is steadier than a ratio of separate medians.
        ratio = statistics.median(o / t for o, t in zip(ours_t, theirs_t, strict=True))
        row = {"case": name, "ours_ms": round(ours_ms, 3), "torch_ms": round(theirs_ms, 3),
               "ratio": round(ratio, 3), "ours_ms_all": [round(t * 1e3, 3) for t in ours_t],
               "torch_ms_all": [round(t * 1e3, 3) for t in theirs_t], "ours_profile": split}
        results.append(row)
        print(f"{name:<32} ours {ours_ms:9.2f} ms   torch {theirs_ms:9.2f} ms   ratio {ratio:5.2f}", flush=True)

    ratios = [r["ratio"] for r in results]
    report = {
        "benchmark": "ops: forward+backward per op, ours vs PyTorch CPU",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "threads": args.threads},
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__, "torch": torch.__version__},
        "shapes": {"B": B, "T": T, "C": C, "H": H, "V": V, "dtype": "float32"},
        "repeats": args.repeats,
        "statistic": "times: median of repeats; ratio: median over repeats of ours / torch, timed back to back",
        "geometric_mean_ratio": round(math.exp(sum(math.log(r) for r in ratios) / len(ratios)), 3),
        "results": results,
    }
    write_json(args.out, report)
    print(f"geometric mean ratio {report['geometric_mean_ratio']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
