"""The measured data-parallel scaling and bucket/overlap sweep, from benchmarks/results/ddp.json.

Writes two tables (the scaling table, the bucket/overlap sweep) and a picture
of every run behind them: five runs per configuration, so the spread can be
set against the differences between medians.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python docs/manual/figures/ch4_ddp.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)

SOURCE = "benchmarks/results/ddp.json"


def main() -> None:
    results = json.loads((_common.ROOT / SOURCE).read_text())
    rows = []
    for r in results["table"]:
        rows.append([r["processes"], f"{r['tokens_per_s_ours']:,}", f"{r['tokens_per_s_torch']:,}",
                     f"{r['ours_over_torch']:.2f}x", f"{r['scaling_efficiency_ours']:.3f}",
                     f"{r['scaling_efficiency_torch']:.3f}"])
    _common.write_table("ch4_ddp.md", ["processes", "ours (tokens/s)", "PyTorch DDP (tokens/s)", "ours / PyTorch",
                                       "scaling, ours", "scaling, PyTorch"], rows, align="rrrrrr")

    sweep = []
    for r in results["bucket_overlap_sweep"]:
        key = f"ours n={r['processes']} bucket={r['bucket_mb']} overlap={r['overlap']}"
        runs = results["runs"][key]
        sweep.append([f"{r['bucket_mb']:g}", r["buckets"], "yes" if r["overlap"] else "no", f"{r['tokens_per_s']:,}",
                      f"{min(runs):,.0f}-{max(runs):,.0f}", f"{r['allreduce_wait_ms_per_step']}",
                      f"{r['allreduce_wait_share']:.1%}"])
    _common.write_table("ch4_ddp_sweep.md", ["bucket MB", "buckets", "overlap", "median tokens/s",
                                             "5 runs, tokens/s", "wait ms/step", "wait share"], sweep,
                        align="rrlrrrr", left_marked=True)

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 3.2))
    labels, medians = [], []
    order = sorted(results["runs"], key=lambda k: (k.split()[1], k.split()[0] != "torch",
                                                    float(k.split()[2].split("=")[1]), k.split()[3]))
    for i, key in enumerate(order):
        runs = results["runs"][key]
        who, n, bucket, overlap = key.split()
        label = f"{who}\n{n[2:]} proc"
        if n != "n=1" and who == "ours":
            mode = "overlap" if overlap.endswith("True") else "no overlap"
            label += f"\n{float(bucket.split('=')[1]):g} MB\n{mode}"
        labels.append(label)
        colour = "C0" if who == "ours" else "C1"
        ax.plot([i] * len(runs), [v / 1000 for v in runs], "o", color=colour, alpha=0.55, ms=4)
        medians.append(statistics.median(runs))
        ax.plot([i - 0.3, i + 0.3], [medians[-1] / 1000] * 2, "-", color="k", lw=1.2)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=6)
    ax.set_ylabel("thousand tokens/s")
    ax.set_title("data-parallel runs, small preset (dots: 5 runs; bar: median)", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _common.save_figure(fig, "ch4_ddp.png", source=f"docs/manual/figures/ch4_ddp.py from {SOURCE}")

    _common.record(__file__, {"benchmark": results["benchmark"], "machine": results["machine"],
                              "versions": results["versions"], "date": results["date"],
                              "medians": dict(zip(order, medians, strict=True))}, sources=[SOURCE])


if __name__ == "__main__":
    main()
