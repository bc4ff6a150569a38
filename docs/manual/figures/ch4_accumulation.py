"""Gradient accumulation: one batch of 8 against 4 micro-batches of 2 and 8 of 1, through the real training loop.

Every configuration builds the same tiny GPT from the same seed and computes
its gradients with ``Trainer.train_step`` (tinygrad_llm/train/loop.py), which
runs ``accum`` micro-batches and back-propagates ``loss / accum`` from each.
We compare the gradients with the one-batch ones, the parameters after one
AdamW step, and the losses of a few steps. A second part shows what breaks the
equality: micro-batches whose numbers of trained tokens differ (targets of
-100, as in chat fine-tuning), and how weighting by token counts repairs it.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python docs/manual/figures/ch4_accumulation.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402

import nn  # noqa: E402
from nn import distributed, optim  # noqa: E402
from tinygrad_llm.model import GPT, GPTConfig  # noqa: E402
from tinygrad_llm.train.config import TrainConfig  # noqa: E402
from tinygrad_llm.train.loop import Setup, Trainer  # noqa: E402

CONFIG = dict(vocab_size=256, block_size=32, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
BATCH = 8                       # rows per optimizer step
SPLITS = [(1, 8), (4, 2), (8, 1)]  # (micro-batches, rows each)
STEPS = 6                       # optimizer steps of the loss trajectories


class Rows:
    """A batch source for the loop: the rows of each step's batch, ``rows`` at a time, in order."""

    def __init__(self, batches: list[tuple[np.ndarray, np.ndarray]], rows: int) -> None:
        self.pieces = [(x[i:i + rows], y[i:i + rows]) for x, y in batches for i in range(0, len(x), rows)]
        self.next = 0

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        piece = self.pieces[self.next]
        self.next += 1
        return piece

    def state_dict(self) -> dict:
        return {"next": self.next}

    def load_state_dict(self, state: dict) -> None:
        self.next = state["next"]


def batches(steps: int, vocab: int, block: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token windows of a repeating random sequence (something a model can learn in a few steps)."""
    rng = np.random.default_rng(0)
    motif = rng.integers(0, vocab, 50)
    out = []
    for _ in range(steps):
        starts = rng.integers(0, 50, BATCH)
        rows = np.stack([np.resize(np.roll(motif, -s), block + 1) for s in starts])
        noise = rng.random(rows.shape) < 0.1
        rows[noise] = rng.integers(0, vocab, int(noise.sum()))
        out.append((rows[:, :-1].copy(), rows[:, 1:].copy()))
    return out


def trainer(dtype: str, accum: int, rows: int, data: list, out_dir: Path) -> Trainer:
    """The loop's Trainer over a fresh tiny GPT (seed 0), AdamW as pretraining builds it, clipping at 1.0."""
    nn.manual_seed(0)
    model = GPT(GPTConfig(**CONFIG)).to(dtype)
    config = TrainConfig(max_steps=STEPS, out_dir=str(out_dir), batch_size=rows, dtype=dtype, lr=3e-3,
                         warmup_steps=0, schedule="constant")
    optimizer = optim.AdamW(optim.param_groups_for_weight_decay(model.named_parameters(), config.weight_decay),
                            lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
    setup = Setup(model=model, optimizer=optimizer, batches=Rows(data, rows), validate=lambda: {"val_loss": 0.0},
                  parallel=distributed.init(), accum=accum, tokens_per_step=BATCH * CONFIG["block_size"],
                  tokenizer_path=Path("unused"), tokenizer_sha256="")
    return Trainer(setup, config)


def grads(model: GPT) -> np.ndarray:
    return np.concatenate([p.grad.numpy().ravel() for p in model.parameters()])


def params(model: GPT) -> np.ndarray:
    return np.concatenate([p.numpy().ravel() for p in model.parameters()])


def equal_sizes(out_dir: Path) -> dict:
    """Gradients, parameters after one step and a loss trajectory for each split, float64 and float32."""
    data = batches(STEPS, CONFIG["vocab_size"], CONFIG["block_size"])
    found: dict = {}
    for dtype in ("float64", "float32"):
        reference = None
        for accum, rows in SPLITS:
            t = trainer(dtype, accum, rows, data, out_dir / f"{dtype}-{accum}")
            losses = []
            for step in range(STEPS):
                loss, norm = t.train_step()
                if step == 0:
                    g = grads(t.model)
                    t.optimizer.step()
                    p = params(t.model)
                else:
                    t.optimizer.step()
                t.optimizer.zero_grad()
                losses.append(loss)
            row = {"grad": g, "param": p, "losses": losses, "norm0": norm}
            if reference is None:
                reference = row
            found[(dtype, accum, rows)] = {
                "grad_max_abs": float(np.max(np.abs(g - reference["grad"]))),
                "grad_scale": float(np.max(np.abs(reference["grad"]))),
                "param_max_abs": float(np.max(np.abs(p - reference["param"]))),
                "update_scale": float(np.max(np.abs(reference["param"] - params_at_start(dtype)))),
                "loss_max_abs": float(np.max(np.abs(np.array(losses) - np.array(reference["losses"])))),
                "losses": [float(v) for v in losses],
                "grad_norm_before_clipping": float(row["norm0"]),
            }
    return found


def params_at_start(dtype: str) -> np.ndarray:
    nn.manual_seed(0)
    return params(GPT(GPTConfig(**CONFIG)).to(dtype))


def masked_batch() -> tuple[np.ndarray, np.ndarray]:
    """A batch like chat fine-tuning's: each row trains only on its last few targets (the others are -100)."""
    x, y = batches(1, CONFIG["vocab_size"], CONFIG["block_size"])[0]
    y = y.copy()
    trained = [30, 26, 20, 12, 6, 4, 3, 2]  # targets trained per row
    for r, n in enumerate(trained):
        y[r, :CONFIG["block_size"] - n] = -100
    return x, y


def unequal_counts() -> dict:
    """Full batch against 2 micro-batches of 4 rows, weighted equally (as the loop does) or by token counts."""
    x, y = masked_batch()

    def model() -> GPT:
        nn.manual_seed(0)
        return GPT(GPTConfig(**CONFIG)).to("float64")

    full = model()
    _, loss = full(x, y)
    loss.backward()
    reference = grads(full)
    out = {"reference_scale": float(np.max(np.abs(reference)))}
    parts = [(slice(0, 4), slice(4, 8)), (slice(0, 5), slice(5, 8))]  # equal rows; unequal rows (5 + 3)
    total = int(np.sum(y != -100))
    for name, pieces in zip(("4+4 rows", "5+3 rows"), parts, strict=True):
        for weighting in ("equal", "tokens"):
            m = model()
            counts = [int(np.sum(y[s] != -100)) for s in pieces]
            for s, count in zip(pieces, counts, strict=True):
                _, loss = m(x[s], y[s])
                weight = 1.0 / len(pieces) if weighting == "equal" else count / total
                (loss * weight).backward()
            out[f"{name}, {weighting}"] = {"counts": counts,
                                          "grad_max_abs": float(np.max(np.abs(grads(m) - reference)))}
    out["total_tokens"] = total
    return out


def main() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        found = equal_sizes(Path(tmp))
    unequal = unequal_counts()

    rows = []
    for (dtype, accum, size), r in found.items():
        rows.append([dtype, f"{accum} x {size}", f"{r['grad_max_abs']:.1e}", f"{r['grad_scale']:.2f}",
                     f"{r['param_max_abs']:.1e}", f"{r['update_scale']:.1e}", f"{r['loss_max_abs']:.1e}"])
    _common.write_table("ch4_accumulation.md",
                        ["dtype", "k x rows", "grad diff", "largest grad", "param diff", "largest update",
                         f"loss diff, {STEPS} steps"], rows, align="llrrrrr", left_marked=True)

    urows = []
    for name in ("4+4 rows", "5+3 rows"):
        for weighting, label in (("equal", "1/k (the loop)"), ("tokens", "n_j / N")):
            r = unequal[f"{name}, {weighting}"]
            urows.append([name, " + ".join(map(str, r["counts"])), label, f"{r['grad_max_abs']:.1e}"])
    _common.write_table("ch4_accumulation_masked.md",
                        ["micro-batches", "trained tokens", "weight of a loss",
                         "max abs grad diff from the full batch"], urows, align="lllr", left_marked=True)

    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.0))
    steps = np.arange(1, STEPS + 1)
    styles = {1: ("-", "o", 7), 4: ("--", "s", 5), 8: (":", "^", 3)}
    for (dtype, accum, size), r in found.items():
        if dtype != "float32":
            continue
        line, marker, ms = styles[accum]
        left.plot(steps, r["losses"], line, marker=marker, ms=ms, label=f"{accum} x {size}")
    left.set_xlabel("optimizer step")
    left.set_ylabel("training loss (float32)")
    left.legend(title="micro-batches x rows", fontsize=7, title_fontsize=7)
    left.set_title("loss trajectories", fontsize=9)
    for dtype, colour in (("float64", "C0"), ("float32", "C3")):
        for accum, size in SPLITS[1:]:
            r = found[(dtype, accum, size)]
            base = found[(dtype, 1, 8)]["losses"]
            diff = np.abs(np.array(r["losses"]) - np.array(base))
            diff = np.maximum(diff, 1e-18)
            right.semilogy(steps, diff, styles[accum][0], marker=styles[accum][1], color=colour,
                           label=f"{dtype}, {accum} x {size}", ms=4)
    right.set_xlabel("optimizer step")
    right.set_ylabel("|loss - loss of 1 x 8|")
    right.set_title("difference from one batch", fontsize=9)
    right.legend(fontsize=6)
    fig.tight_layout()
    _common.save_figure(fig, "ch4_accumulation.png", source="docs/manual/figures/ch4_accumulation.py")

    data = {f"{d} {a}x{s}": r for (d, a, s), r in found.items()}
    data["masked"] = unequal
    data["config"] = CONFIG
    data["seconds"] = round(time.perf_counter() - started, 1)
    _common.record(__file__, data, sources=["tinygrad_llm/train/loop.py", "tinygrad_llm/model.py", "nn/optim.py"])
    print(f"ch4_accumulation: {data['seconds']} s")


if __name__ == "__main__":
    main()
