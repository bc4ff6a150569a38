"""What the manual's figure scripts share: the repository on the path, a seeded start, and the record of a run.

A figure script ``figures/foo.py`` runs the real code (or reads a file of
``benchmarks/results/``), saves its pictures (``figures/foo*.png``) and tables
(``figures/foo*.md``) next to itself, and last calls :func:`record`, which
writes ``figures/foo.json``: the numbers it found, where they came from, and
the machine, versions and date. That record is the build's cache: ``make
manual`` runs the script again only when it is missing.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Any

FIGURES = Path(__file__).resolve().parent
ROOT = FIGURES.parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

from benchmarks.harness import cpu_model, write_json  # noqa: E402  (as the benchmarks record them)


def out(name: str) -> Path:
    """The path of an output file of the figures folder (``out("rope.png")``)."""
    return FIGURES / name


def save_figure(fig: Any, name: str, source: str) -> Path:
    """Save a matplotlib figure as ``figures/<name>`` at print resolution, its source in small type at the bottom."""
    fig.text(0.99, 0.005, f"source: {source}", ha="right", va="bottom", fontsize=6, color="0.45")
    path = out(name)
    fig.savefig(path, dpi=160, bbox_inches="tight")
    return path


def write_table(name: str, header: list[str], rows: list[list[Any]], align: str | None = None,
                left_marked: bool = False) -> Path:
    """Write a Markdown pipe table to ``figures/<name>``; ``align``: ``l`` or ``r`` per column (default l, then r).

    ``left_marked``: mark the ``l`` columns ``:---`` rather than ``---`` (the PDF centres unmarked columns).
    """
    align = align or "l" + "r" * (len(header) - 1)
    left = ":---" if left_marked else "---"
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if a == "r" else left for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    path = out(name)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def record(script: str, data: dict[str, Any], sources: list[str] | None = None) -> Path:
    """Write ``figures/<script stem>.json``: ``data``, the sources read, and the machine, versions and date."""
    import numpy

    document = {
        "script": f"docs/manual/figures/{Path(script).name}",
        "sources": sources or [],
        "date": datetime.date.today().isoformat(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "data": data,
    }
    path = out(Path(script).stem + ".json")
    write_json(path, document)
    return path
