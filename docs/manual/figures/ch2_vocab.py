"""Chapter 2: the tokenizer's vocabulary size, what it buys and what it costs, and the tokenizer's speed.

- Compression: ``benchmarks/results/vocab_scaling.json`` (bytes per token on the
  held-out stdlib split for vocabularies of 512 to 65,536 tokens).
- Cost: the parameters of the repository's own models (``tinygrad_llm.model.GPT``,
  presets ``tiny`` and ``small``, built at every vocabulary size and counted with
  ``num_parameters``; the tied embedding/output matrix is ``padded_vocab_size x
  n_embd``). For ``gpt2-124m`` the non-embedding part is counted on a one- and a
  two-layer build of its configuration with a 64-token vocabulary and extrapolated
  to its 12 layers (building 124M parameters is not needed to count them).
- Speed: ``benchmarks/results/tokenizer.json`` (ours against tiktoken and HF tokenizers).
- The first merges BPE learns: ``count_chunks`` + ``learn_merges`` on every 8th
  file of the stdlib train split.

Writes ch2_vocab.png, ch2_vocab.md, ch2_vocab_speed.md and ch2_vocab_merges.md. About 10 s on one core.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nn.backend import manual_seed  # noqa: E402
from tinygrad_llm.data.sources import StdlibCorpus  # noqa: E402
from tinygrad_llm.model import GPT, PRESETS, GPTConfig  # noqa: E402
from tokenizer.patterns import GPT4_PATTERN  # noqa: E402
from tokenizer.train import count_chunks, learn_merges  # noqa: E402

RESULTS = _common.ROOT / "benchmarks" / "results"
SOURCE = "benchmarks/results/vocab_scaling.json; parameters: docs/manual/figures/ch2_vocab.py"
MERGES_SHOWN = 16


def parameters(preset: str, vocab_size: int) -> tuple[int, int]:
    """(all parameters, embedding parameters) of a preset built at ``vocab_size``."""
    config = GPTConfig.preset(preset, vocab_size=vocab_size)
    model = GPT(config)
    embedding = model.wte.weight.numel()
    assert embedding == config.padded_vocab_size * config.n_embd
    return model.num_parameters(), embedding


def gpt2_counts() -> dict[str, int]:
    """gpt2-124m's parameters without building it: embedding exactly, the rest from 1- and 2-layer builds."""
    config = GPTConfig.preset("gpt2-124m")
    small = [GPT(GPTConfig.preset("gpt2-124m", vocab_size=64, n_layer=n)) for n in (1, 2)]
    per_layer = small[1].num_parameters() - small[0].num_parameters()
    rest = small[0].num_parameters() - small[0].wte.weight.numel() + (config.n_layer - 1) * per_layer
    embedding = config.padded_vocab_size * config.n_embd
    return {"vocab_size": config.vocab_size, "padded_vocab_size": config.padded_vocab_size, "n_embd": config.n_embd,
            "embedding": embedding, "non_embedding": rest, "total": rest + embedding}


def main() -> None:
    started = time.perf_counter()
    manual_seed(0)
    scaling = json.loads((RESULTS / "vocab_scaling.json").read_text())
    speed = json.loads((RESULTS / "tokenizer.json").read_text())
    vocabs = [row["vocab_size"] for row in scaling["rows"]]
    bpt = np.array([row["bytes_per_token"] for row in scaling["rows"]])
    tokens = np.array([row["tokens"] for row in scaling["rows"]])

    counts = {preset: [parameters(preset, v) for v in vocabs] for preset in ("tiny", "small")}
    share = {preset: np.array([e / t for t, e in counts[preset]]) for preset in counts}
    gpt2 = gpt2_counts()

    # -- the figure ------------------------------------------------------------------------------------------------
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.6, 2.9))
    left.plot(vocabs, bpt, "o-", color="tab:blue", ms=4)
    for v, b in zip(vocabs, bpt, strict=True):
        left.annotate(f"{b:.2f}", (v, b), textcoords="offset points", xytext=(0, -11), ha="center", fontsize=6)
    left.set_xscale("log", base=2)
    left.set_xlabel("vocabulary size V", fontsize=8)
    left.set_ylabel("held-out bytes per token", fontsize=8)
    left.set_title("Compression on held-out stdlib source", fontsize=8)
    left.set_ylim(1.6, 4.3)
    for preset, color in (("tiny", "tab:orange"), ("small", "tab:green")):
        d = PRESETS[preset]["n_embd"]
        right.plot(vocabs, 100 * share[preset], "o-", color=color, ms=4,
                   label=f"{preset} (d={d}, {PRESETS[preset]['n_layer']} layers)")
    right.axvline(4096, color="0.5", lw=0.8, ls=":")
    right.set_xscale("log", base=2)
    right.set_ylim(0, 100)
    right.set_xlabel("vocabulary size V", fontsize=8)
    right.set_ylabel("embedding = head, % of parameters", fontsize=8)
    right.set_title(r"Cost: $V \times d$ tied parameters", fontsize=8)
    right.legend(fontsize=7, loc="lower right")
    for ax in (left, right):
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _common.save_figure(fig, "ch2_vocab.png", SOURCE)

    # -- the tables ------------------------------------------------------------------------------------------------
    base = tokens[vocabs.index(4096)]
    rows = []
    for i, v in enumerate(vocabs):
        gain = "" if i == 0 else f"{100 * (bpt[i] / bpt[i - 1] - 1):+.1f}%"
        rows.append([f"{v:,}", f"{tokens[i]:,}", f"{bpt[i]:.2f}", gain, f"{100 * (tokens[i] / base - 1):+.1f}%",
                     f"{counts['small'][i][1]:,}", f"{100 * share['small'][i]:.0f}%",
                     f"{100 * share['tiny'][i]:.0f}%"])
    _common.write_table("ch2_vocab.md", ["V", "Held-out tokens", "Bytes/token", "vs V/2", "Tokens vs 4,096",
                                         "Embedding, small", "small", "tiny"], rows)

    enc, train = speed["encoding"], speed["training"]
    mbs = enc["mb_per_s"]
    speed_rows = [
        ["encode, cold cache (MB/s)", f"{mbs['ours_cold']:.1f}", f"{mbs['tiktoken']:.1f} (tiktoken)",
         f"{enc['ratio_cold_over_tiktoken']:.2f}x"],
        ["encode, warm cache (MB/s)", f"{mbs['ours_warm']:.1f}", f"{mbs['tiktoken']:.1f} (tiktoken)",
         f"{enc['ratio_warm_over_tiktoken']:.2f}x"],
        [f"train to {speed['vocab_size']:,} tokens (median s)", f"{train['ours_median_s']:.1f}",
         f"{train['hf_median_s']:.1f} (HF tokenizers)", f"{1 / train['ratio_ours_over_hf']:.2f}x"],
    ]
    _common.write_table("ch2_vocab_speed.md", ["", "Ours", "Reference", "Ours as a share of reference speed"],
                        speed_rows)

    texts = [doc.text for i, doc in enumerate(StdlibCorpus("train")) if i % 8 == 0]
    chunk_counts = count_chunks(texts, GPT4_PATTERN)
    vocab = learn_merges(chunk_counts, 256 + MERGES_SHOWN)
    merges = [[256 + i, f"`{vocab[256 + i]!r}`"] for i in range(MERGES_SHOWN)]
    half = MERGES_SHOWN // 2
    merge_rows = [merges[i] + merges[i + half] for i in range(half)]
    _common.write_table("ch2_vocab_merges.md", ["Id", "Token (bytes)", "Id", "Token (bytes)"], merge_rows,
                        align="rlrl")

    seconds = time.perf_counter() - started
    print(f"ch2_vocab: {seconds:.1f} s")
    _common.record(__file__, {
        "vocab_sizes": vocabs, "bytes_per_token": bpt.tolist(), "heldout_tokens": tokens.tolist(),
        "heldout_bytes": scaling["heldout_bytes"],
        "parameters": {p: [{"vocab_size": v, "total": t, "embedding": e} for v, (t, e) in zip(vocabs, c, strict=True)]
                       for p, c in counts.items()},
        "small_context_bytes": {v: PRESETS["small"]["block_size"] * b for v, b in zip(vocabs, bpt.tolist(),
                                                                                     strict=True)},
        "small_flops_per_token": {"head_2dV_at_4096": 2 * PRESETS["small"]["n_embd"] * 4096,
                                  "blocks_24Ld2": 24 * PRESETS["small"]["n_layer"] * PRESETS["small"]["n_embd"] ** 2},
        "merges_at_4096": 4096 - 256 - 1,
        "gpt2_124m": gpt2, "gpt2_124m_embedding_share": gpt2["embedding"] / gpt2["total"],
        "speed": {"ratio_cold_over_tiktoken": enc["ratio_cold_over_tiktoken"],
                  "ratio_warm_over_tiktoken": enc["ratio_warm_over_tiktoken"],
                  "training_ratio_ours_over_hf": train["ratio_ours_over_hf"]},
        "merges_sample": {"documents": len(texts), "distinct_chunks": len(chunk_counts),
                          "chunk_occurrences": sum(chunk_counts.values()),
                          "first_merges": [repr(vocab[256 + i]) for i in range(MERGES_SHOWN)]},
        "script_seconds": round(seconds, 1),
    }, sources=["benchmarks/results/vocab_scaling.json", "benchmarks/results/tokenizer.json",
                "tinygrad_llm/model.py", "tokenizer/train.py"])


if __name__ == "__main__":
    main()
