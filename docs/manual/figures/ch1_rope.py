"""Chapter 1: rotary positions. The relative-position property checked numerically, then two tiny GPTs
(learned absolute positions against RoPE) trained alike and evaluated inside and beyond their trained context.

Data: a few standard-library .py files (train) and two others (validation), tokenized with a 512-token
byte-level BPE that our `tokenizer` package learns from the training files. Models: GPTConfig with
2 layers, width 64, 4 heads, block_size 128, trained on 64-token windows only, so that positions
64..127 are never seen in training: for learned positions, rows 64..127 of the position table keep
their initial values (apart from weight decay); for RoPE the rotation angles are simply larger.
Writes figures/ch1_rope_relative.md, figures/ch1_rope.md and figures/ch1_rope.png.
"""

from __future__ import annotations

import math
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import nn  # noqa: E402
from nn import functional as F  # noqa: E402
from nn.attention import apply_rope, rope_tables  # noqa: E402
from tinygrad_llm.model import GPT, GPTConfig  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

SOURCE = "docs/manual/figures/ch1_rope.py"
TRAIN_FILES = ("argparse.py", "textwrap.py", "shlex.py", "difflib.py", "calendar.py", "pprint.py", "dataclasses.py")
VAL_FILES = ("configparser.py", "csv.py")
VOCAB, TRAIN_T, EVAL_T, BATCH, STEPS, SEEDS = 512, 64, 128, 16, 500, (0, 1)
MAX_LR, MIN_LR, WARMUP = 3e-3, 3e-4, 50
EVAL_STRIDE = 32  # 128-token windows start every 32 tokens: each position is averaged over 4x more text


# ---------------------------------------------------------------- the relative-position property
def relative_check() -> dict:
    """<R_m q, R_n k> against <R_{m+s} q, R_{n+s} k>, with our rope_tables and apply_rope, in float64."""
    rng = np.random.default_rng(0)
    d = 16
    cos, sin = rope_tables(d, 2048, dtype=np.float64)
    q, k = rng.standard_normal(d), rng.standard_normal(d)
    p = rng.standard_normal((2048, d))  # a random "learned" position table, for contrast

    def rope_dot(m: int, n: int) -> float:
        qm = apply_rope(nn.Tensor(q[None]), nn.Tensor(cos[m:m + 1]), nn.Tensor(sin[m:m + 1])).numpy()[0]
        kn = apply_rope(nn.Tensor(k[None]), nn.Tensor(cos[n:n + 1]), nn.Tensor(sin[n:n + 1])).numpy()[0]
        return float(qm @ kn)

    def added_dot(m: int, n: int) -> float:
        return float((q + p[m]) @ (k + p[n]))

    rows, data = [], []
    for m, n, s in ((5, 2, 1), (5, 2, 100), (40, 10, 500), (7, 30, 1000), (300, 0, 1700)):
        a, b = rope_dot(m, n), rope_dot(m + s, n + s)
        c, e = added_dot(m, n), added_dot(m + s, n + s)
        diff = "0" if a == b else f"{abs(a - b):.0e}"
        rows.append([f"({m}, {n})", s, f"{a:+.6f}", f"{b:+.6f}", diff, f"{abs(c - e):.2f}"])
        data.append({"m": m, "n": n, "s": s, "rope": [a, b], "added": [c, e]})
    _common.write_table("ch1_rope_relative.md",
                        ["(m, n)", "s", "RoPE at (m, n)", "RoPE at (m+s, n+s)", "RoPE diff", "added: diff"],
                        rows, align="lrrrrr")
    return {"head_dim": d, "pairs": data}


# ---------------------------------------------------------------- data
def load_tokens() -> tuple[Tokenizer, np.ndarray, np.ndarray, float]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    train_texts = [(lib / name).read_text(encoding="utf-8") for name in TRAIN_FILES]
    val_texts = [(lib / name).read_text(encoding="utf-8") for name in VAL_FILES]
    tok = Tokenizer.train(train_texts, VOCAB, progress=False)
    eot = tok.eot_token

    def encode(texts: list[str]) -> np.ndarray:
        return np.array([i for text in texts for i in [eot, *tok.encode_ordinary(text)]], dtype=np.int64)

    val = encode(val_texts)
    val_bytes = sum(len(text.encode("utf-8")) for text in val_texts)
    return tok, encode(train_texts), val, (len(val) - len(val_texts)) / val_bytes


def windows(tokens: np.ndarray, length: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) windows of ``length`` tokens starting every ``stride`` tokens (default: disjoint)."""
    starts = np.arange(0, len(tokens) - length, stride or length)
    x = np.stack([tokens[s:s + length] for s in starts])
    y = np.stack([tokens[s + 1:s + length + 1] for s in starts])
    return x, y


def per_position_loss(model: GPT, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean cross-entropy (nats) at each position of the windows, (T,)."""
    with nn.no_grad():
        losses = []
        for i in range(0, len(x), 32):
            logits, _ = model(x[i:i + 32])
            b, t, v = logits.shape
            loss = F.cross_entropy(logits.reshape(b * t, v), y[i:i + 32].reshape(-1), reduction="none")
            losses.append(loss.numpy().reshape(b, t))
    return np.concatenate(losses).mean(axis=0)


# ---------------------------------------------------------------- training
def train(pos: str, seed: int, train_ids: np.ndarray, val_ids: np.ndarray) -> dict:
    nn.manual_seed(seed)
    config = GPTConfig(vocab_size=VOCAB, block_size=EVAL_T, n_layer=2, n_head=4, n_embd=64, pos=pos)
    model = GPT(config)
    opt = nn.optim.AdamW(nn.optim.param_groups_for_weight_decay(model.named_parameters(), 0.1), lr=MAX_LR)
    batches = np.random.default_rng(1000 + seed)  # the same batches for both models of a seed
    val_x, val_y = windows(val_ids, TRAIN_T)
    curve, val_curve = [], []
    for step in range(STEPS):
        lr = nn.optim.learning_rate("cosine", step / (STEPS - 1), step, max_lr=MAX_LR, min_lr=MIN_LR,
                                    warmup_steps=WARMUP)
        nn.optim.set_lr(opt, lr)
        starts = batches.integers(0, len(train_ids) - TRAIN_T - 1, BATCH)
        x = np.stack([train_ids[s:s + TRAIN_T] for s in starts])
        y = np.stack([train_ids[s + 1:s + TRAIN_T + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        nn.optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        curve.append(loss.item())
        if step % 50 == 49 or step == 0:
            model.eval()
            val_curve.append((step + 1, float(per_position_loss(model, val_x, val_y).mean())))
            model.train()
    model.eval()
    inside = per_position_loss(model, val_x, val_y)           # windows of the trained length
    long_x, long_y = windows(val_ids, EVAL_T, EVAL_STRIDE)
    beyond = per_position_loss(model, long_x, long_y)          # windows twice as long, overlapping
    result = {"pos": pos, "seed": seed, "params": sum(p.numel() for p in model.parameters()),
              "train_curve": curve, "val_curve": val_curve,
              "val_loss_T64": float(inside.mean()), "per_position_T64": inside.tolist(),
              "per_position_T128": beyond.tolist(),
              "T128_first_half": float(beyond[:TRAIN_T].mean()), "T128_second_half": float(beyond[TRAIN_T:].mean()),
              "T128_32_63": float(beyond[TRAIN_T // 2:TRAIN_T].mean()),
              "T128_all": float(beyond.mean())}
    if pos == "learned":
        table = model.wpe.weight.numpy()
        result["wpe_row_norm_trained"] = float(np.linalg.norm(table[:TRAIN_T], axis=1).mean())
        result["wpe_row_norm_untrained"] = float(np.linalg.norm(table[TRAIN_T:], axis=1).mean())
    return result


def main() -> dict:
    relative = relative_check()
    tok, train_ids, val_ids, tokens_per_byte = load_tokens()
    print(f"train {len(train_ids)} tokens, val {len(val_ids)} tokens, {tokens_per_byte:.3f} tokens/byte", flush=True)
    runs = {}
    for seed in SEEDS:
        for pos in ("learned", "rope"):
            started = time.perf_counter()
            runs[f"{pos}/{seed}"] = r = train(pos, seed, train_ids, val_ids)
            print(f"{pos} seed {seed}: val@64 {r['val_loss_T64']:.3f}, @128 first {r['T128_first_half']:.3f} "
                  f"second {r['T128_second_half']:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)

    def mean(pos: str, key: str) -> float:
        return float(np.mean([runs[f"{pos}/{s}"][key] for s in SEEDS]))

    rows, summary = [], {}
    for pos, label in (("learned", "learned absolute"), ("rope", "rotary (RoPE)")):
        v64, first, second = mean(pos, "val_loss_T64"), mean(pos, "T128_first_half"), mean(pos, "T128_second_half")
        plateau = mean(pos, "T128_32_63")
        by_seed = " / ".join(f"{runs[f'{pos}/{s}']['T128_second_half'] - runs[f'{pos}/{s}']['T128_32_63']:+.2f}"
                             for s in SEEDS)
        summary[pos] = {"val_loss_T64": v64, "bits_per_byte_T64": v64 * tokens_per_byte / math.log(2),
                        "T128_first_half": first, "T128_32_63": plateau, "T128_second_half": second,
                        "beyond_minus_plateau": second - plateau, "params": runs[f"{pos}/{SEEDS[0]}"]["params"]}
        rows.append([label, f"{summary[pos]['params']:,}", f"{v64:.3f}", f"{summary[pos]['bits_per_byte_T64']:.2f}",
                     f"{plateau:.3f}", f"{second:.3f}", f"{second - plateau:+.3f} ({by_seed})"])
    _common.write_table("ch1_rope.md",
                        ["positions", "params", "T=64", "bits/byte", "T=128, 32-63", "T=128, 64-127",
                         "change (by seed)"], rows, align="lrrrrrr")

    fig, axes = plt.subplots(1, 2, figsize=(6.6, 3.3), layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0.03, 1, 0.97))  # room for the source line under the axes labels
    colors = {"learned": "tab:blue", "rope": "tab:orange"}
    for r in runs.values():
        pos = r["pos"]
        label = f"{pos}, seed {r['seed']}"
        smooth = np.convolve(r["train_curve"], np.ones(20) / 20, mode="valid")
        style = "-" if r["seed"] == SEEDS[0] else "--"
        axes[0].plot(np.arange(20, STEPS + 1), smooth, style, color=colors[pos], alpha=0.35, lw=1)
        steps, vals = zip(*r["val_curve"], strict=True)
        axes[0].plot(steps, vals, style, color=colors[pos], marker="o", ms=2.5, lw=1.2, label=f"{label} (val)")
    for pos in ("learned", "rope"):  # mean over seeds, then a moving average of 8 positions within each half
        per_position = np.mean([runs[f"{pos}/{s}"]["per_position_T128"] for s in SEEDS], axis=0)
        for half in (slice(0, TRAIN_T), slice(TRAIN_T, EVAL_T)):
            smooth = np.convolve(per_position[half], np.ones(8) / 8, mode="valid")
            axes[1].plot(np.arange(half.start + 7, half.stop), smooth, color=colors[pos], lw=1.4,
                         label=pos if half.start == 0 else None)
    axes[1].legend(fontsize=7, loc="lower left")
    axes[0].set_xlabel("step", fontsize=8)
    axes[0].set_ylabel("loss (nats/token)", fontsize=8)
    axes[0].set_title("training (faint) and validation at T = 64", fontsize=8)
    axes[0].set_ylim(top=4.5)
    axes[0].legend(fontsize=6)
    axes[1].axvline(TRAIN_T - 0.5, color="0.4", lw=0.8, ls=":")
    axes[1].text(TRAIN_T + 2, 0.03, "beyond the trained context", fontsize=7, transform=axes[1].get_xaxis_transform())
    axes[1].set_xlabel("position in a 128-token window", fontsize=8)
    axes[1].set_ylabel("validation loss (nats/token)", fontsize=8)
    axes[1].set_title("per-position loss (mean of seeds, 8-position average)", fontsize=8)
    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    _common.save_figure(fig, "ch1_rope.png", SOURCE)
    plt.close(fig)
    return {"relative": relative, "vocab": VOCAB, "tokens_per_byte_val": tokens_per_byte,
            "train_tokens": int(len(train_ids)), "val_tokens": int(len(val_ids)), "steps": STEPS, "batch": BATCH,
            "train_T": TRAIN_T, "eval_T": EVAL_T, "summary": summary, "runs": runs}


if __name__ == "__main__":
    started = time.perf_counter()
    data = main()
    data["seconds"] = time.perf_counter() - started
    print({k: v for k, v in data.items() if k != "runs"})
    _common.record(__file__, data, sources=["nn/attention.py", "tinygrad_llm/model.py", "tokenizer/bpe.py"])
