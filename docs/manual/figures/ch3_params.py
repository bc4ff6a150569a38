"""Parameter counts of the model presets: the closed-form count of chapter 3 against the model's own count.

For every preset of ``tinygrad_llm/model.py`` (and two Llama-style variants)
the script computes the formula of the chapter and counts the parameters of
real modules: the whole GPT for the small models, and for the big GPT-2 sizes
(which would take gigabytes) a one-layer GPT of the same config plus
``n_layer - 1`` times one real Block, which is the same sum without
allocating every layer (checked equal to the whole model where both fit).
Writes figures/ch3_params.md and figures/ch3_params.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import nn  # noqa: E402
from tinygrad_llm.model import GPT, PRESETS, Block, GPTConfig  # noqa: E402


def formula(c: GPTConfig) -> dict[str, int]:
    """The closed-form count, term by term (see the chapter's derivation)."""
    d, b, hd = c.n_embd, int(c.bias), c.head_dim
    qkv = (c.n_head + 2 * c.kv_heads) * hd                     # c_attn's outputs
    attn = d * qkv + b * qkv + d * d + b * d                    # c_attn, c_proj
    if c.mlp == "gelu":
        mlp = d * 4 * d + b * 4 * d + 4 * d * d + b * d         # c_fc, c_proj
    else:
        m = c.mlp_hidden
        mlp = d * 2 * m + b * 2 * m + m * d + b * d             # c_fc ([gate; up]), c_proj
    norm = d + (b * d if c.norm == "layernorm" else 0)          # weight (+ bias)
    block = attn + mlp + 2 * norm
    embeddings = c.padded_vocab_size * d + (c.block_size * d if c.pos == "learned" else 0)
    head = 0 if c.tie_weights else c.padded_vocab_size * d
    return {"block": block, "blocks": c.n_layer * block, "embeddings": embeddings, "head": head,
            "final_norm": norm, "total": c.n_layer * block + embeddings + head + norm,
            "twelve_L_d2": 12 * c.n_layer * d * d}


def counted(c: GPTConfig, whole: bool) -> int:
    """The model's own parameter count (num_parameters counts a tied weight once)."""
    nn.manual_seed(0)
    if whole:
        return GPT(c).num_parameters()
    one_layer = GPT(GPTConfig.from_dict({**c.to_dict(), "n_layer": 1})).num_parameters()
    return one_layer + (c.n_layer - 1) * Block(c).num_parameters()


LLAMA = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)
MODELS = [(name, name, dict()) for name in PRESETS] + [
    ("small, Llama, G=2", "small", dict(LLAMA, n_kv_head=2)),
    ("gpt2-124m, Llama, G=4", "gpt2-124m", dict(LLAMA, n_kv_head=4)),
]
SMALL = {"tiny", "small", "small, Llama, G=2"}


def main() -> None:
    start = time.perf_counter()
    rows, data = [], {}
    for label, preset, overrides in MODELS:
        c = GPTConfig.preset(preset, **overrides)
        f = formula(c)
        n = counted(c, whole=label in SMALL)
        if label in SMALL:  # the composed count equals the whole model's
            assert counted(c, whole=False) == n, label
        assert n == f["total"], (label, n, f["total"])
        data[label] = {"n_layer": c.n_layer, "n_embd": c.n_embd, "padded_vocab": c.padded_vocab_size,
                       "counted": n, **f}
        rows.append([label, c.n_layer, c.n_embd, f"{f['twelve_L_d2'] / 1e6:.2f} M", f"{f['embeddings'] / 1e6:.2f} M",
                     f"{f['total']:,}", f"{n:,}", f"{f['twelve_L_d2'] / n:.2f}"])
    _common.write_table("ch3_params.md",
                        ["model", "$L$", "$d$", "$12Ld^2$", "embeddings", "formula", "counted", "share"],
                        rows, align="lrrrrrrr")
    data["seconds"] = round(time.perf_counter() - start, 1)
    print(data["seconds"], "s")
    _common.record(__file__, data, sources=["tinygrad_llm/model.py"])


if __name__ == "__main__":
    main()
