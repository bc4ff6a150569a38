"""The loss plot of a run: training and validation loss against step, from its log.jsonl records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from util.files import atomic_write

__all__ = ["plot_losses"]


def plot_losses(records: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Draw the training records' ``loss`` and the evaluations' ``val_loss`` into the PNG ``path``."""
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path
