"""Memory-efficient forward passes measured side by side on one small GPT.

One model (4 layers, width 128, 4 heads, context 256, vocabulary 1024), four comparisons, each against its
plain configuration:

(a) a training step (forward + backward, batch 8 x 256) plain against ``checkpoint_activations=True``;
(b) greedy generation of 240 tokens after a 16-token prompt with the KV cache (``generate_tokens``)
    against recomputing the whole prefix for every token (``model(tokens)`` without caches);
(c) one layer's causal attention, forward + backward, q, k, v of shape (8, 4, 256, 32): the composition of
    primitive Tensor ops against the fused ``F.scaled_dot_product_attention`` and the tiled online-softmax
    kernel ``nn/kernels/attention.py`` (the NumPy reference of the CUDA flash kernel);
(d) inference with int8 weights (``quantize_model``) against float32: weight bytes, decoding time per token.

Peak memory is tracemalloc's peak (NumPy reports its allocations to it) above what was allocated when the
measured work began, in a separate run from the timings (tracing slows Python). Times are the median of
interleaved repeats of process CPU time (user + system), which a shared machine disturbs less than wall time;
wall times are recorded too. Writes ch3_memory.md (the table), ch3_memory.png (ratios to the plain
configuration), ch3_memory_decode.png (time per generated token against its position) and ch3_memory.json.
``--replot`` redraws the table and pictures from the numbers of the last run (ch3_memory.json).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import nn  # noqa: E402
from nn import functional as F  # noqa: E402
from nn.checkpoint import activation_bytes  # noqa: E402
from nn.kernels.attention import flash_attention_backward, flash_attention_forward  # noqa: E402
from nn.tensor import Tensor  # noqa: E402
from tinygrad_llm.export.int8 import quantize_model  # noqa: E402
from tinygrad_llm.generate import SamplingConfig, generate_tokens  # noqa: E402
from tinygrad_llm.model import GPT, GPTConfig  # noqa: E402

CONFIG = dict(vocab_size=1024, block_size=256, n_layer=4, n_head=4, n_embd=128)
BATCH, REPEATS = 8, 7
PROMPT, NEW = 16, 240          # generation: 16 + 240 = 256 = the context
GREEDY = SamplingConfig(temperature=0.0)
MB = 1e6


def model(**overrides: object) -> GPT:
    nn.manual_seed(0)
    return GPT(GPTConfig(**CONFIG, **overrides))


def peak(work) -> tuple[int, object]:
    """(bytes of tracemalloc's peak above the memory allocated at the start, work's result)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = work()
    top = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return top - base, result


def timed(works: dict[str, object], repeats: int = REPEATS) -> dict[str, dict[str, float]]:
    """Median CPU and wall seconds of each work, the works interleaved (one warm-up round first)."""
    cpu: dict[str, list[float]] = {k: [] for k in works}
    wall: dict[str, list[float]] = {k: [] for k in works}
    for round_ in range(repeats + 1):
        for name, work in works.items():
            w0, c0 = time.perf_counter(), time.process_time()
            work()
            if round_:
                cpu[name].append(time.process_time() - c0)
                wall[name].append(time.perf_counter() - w0)
    first = next(iter(works))
    return {k: {"cpu_s": statistics.median(cpu[k]), "wall_s": statistics.median(wall[k]),
                "paired_cpu_ratios": [round(a / b, 3) for a, b in zip(cpu[k], cpu[first], strict=True)]} for k in works}


# ----------------------------------------------------------------------------- (a) training step
def training_step() -> dict:
    ids = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (BATCH, CONFIG["block_size"] + 1))
    models = {"plain": model(), "checkpointed": model(checkpoint_activations=True)}

    def step(m: GPT):
        _, loss = m(ids[:, :-1], ids[:, 1:])
        held = activation_bytes(loss)  # what the graph keeps for backward at the top of the forward pass
        loss.backward()
        grads = [p.grad.data.copy() for p in m.parameters()]
        for p in m.parameters():
            p.grad = None
        return float(loss.item()), held, grads

    out = {}
    results = {}
    for name, m in models.items():
        out[name] = {}
        out[name]["peak_bytes"], results[name] = peak(lambda m=m: step(m))
        out[name]["loss"], out[name]["activation_bytes"] = results[name][0], results[name][1]
    same = all(np.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(results["plain"][2],
                                                                         results["checkpointed"][2], strict=True))
    times = timed({name: (lambda m=m: step(m)) for name, m in models.items()})
    for name in models:
        out[name].update(times[name])
    out["same_gradients"] = bool(same)
    block = models["plain"].h[0]
    x = Tensor(np.random.default_rng(5).standard_normal((BATCH, CONFIG["block_size"], CONFIG["n_embd"]))
               .astype(np.float32), requires_grad=True)
    out["one_block_activation_bytes"] = activation_bytes(block(x))
    out["block_input_bytes"] = int(x.data.nbytes)
    return out


# ----------------------------------------------------------------------------- (b) generation
def generation() -> dict:
    m = model().eval()
    prompt = np.random.default_rng(1).integers(0, CONFIG["vocab_size"], PROMPT).tolist()

    def cached():
        steps, tokens = [], []
        t0 = time.process_time()
        for token in generate_tokens(m, prompt, NEW, GREEDY):
            t1 = time.process_time()
            steps.append(t1 - t0)
            tokens.append(token)
            t0 = t1
        return steps, tokens

    def recompute():
        steps, tokens = [], list(prompt)
        with nn.no_grad():
            for _ in range(NEW):
                t0 = time.process_time()
                logits, _ = m(np.asarray([tokens]))
                tokens.append(int(np.argmax(logits.numpy()[0, -1])))
                steps.append(time.process_time() - t0)
        return steps, tokens[PROMPT:]

    out = {"cache": {}, "recompute": {}}
    out["cache"]["peak_bytes"], (_, cached_tokens) = peak(cached)
    out["recompute"]["peak_bytes"], (_, recomputed_tokens) = peak(recompute)
    runs = {"cache": [], "recompute": []}
    for _ in range(3):
        runs["cache"].append(cached()[0])
        runs["recompute"].append(recompute()[0])
    for name, steps in runs.items():
        per_step = np.median(np.asarray(steps), axis=0)          # median over runs, per position
        out[name]["per_step_cpu_s"] = [round(float(s), 6) for s in per_step]
        out[name]["cpu_s"] = float(np.median([sum(s) for s in steps])) / NEW   # per token
    out["identical_tokens"] = sum(a == b for a, b in zip(cached_tokens, recomputed_tokens, strict=True))
    return out


# ----------------------------------------------------------------------------- (c) attention
def attention() -> dict:
    rng = np.random.default_rng(2)
    shape = (BATCH, CONFIG["n_head"], CONFIG["block_size"], CONFIG["n_embd"] // CONFIG["n_head"])
    qa, ka, va, ga = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    t = shape[2]
    future = np.triu(np.ones((t, t), dtype=bool), k=1)

    def composed():
        q, k, v = (Tensor(a, requires_grad=True) for a in (qa, ka, va))
        s = (q @ k.transpose(-2, -1)) * (1 / np.sqrt(shape[-1]))
        s = s.masked_fill(future, -np.inf)
        e = (s - s.amax(dim=-1, keepdim=True)).exp()
        y = (e / e.sum(dim=-1, keepdim=True)) @ v
        y.backward(Tensor(ga))
        return y.data, q.grad.data, k.grad.data, v.grad.data

    def fused():
        q, k, v = (Tensor(a, requires_grad=True) for a in (qa, ka, va))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y.backward(Tensor(ga))
        return y.data, q.grad.data, k.grad.data, v.grad.data

    def tiled():
        y, lse = flash_attention_forward(qa, ka, va)
        return (y, *flash_attention_backward(qa, ka, va, y, lse, ga))

    works = {"composed": composed, "fused": fused, "tiled": tiled}
    out, results = {}, {}
    for name, work in works.items():
        out[name] = {}
        out[name]["peak_bytes"], results[name] = peak(work)
    times = timed(works)
    for name in works:
        out[name].update(times[name])
        pairs = zip(results[name], results["fused"], strict=True)
        out[name]["max_abs_difference_to_fused"] = float(max(np.abs(a - b).max() for a, b in pairs))
    out["probabilities_bytes_one_layer"] = int(np.prod(shape[:3]) * t * 4)
    return out


# ----------------------------------------------------------------------------- (d) int8 weights
def weight_bytes(m: GPT) -> int:
    arrays = {id(t.data): t.data for t in [*m.parameters(), *(b for _, b in m.named_buffers())] if t is not None}
    return sum(int(a.nbytes) for a in arrays.values())


def int8_inference() -> dict:
    models = {"float32": model().eval(), "int8": quantize_model(model())}
    prompt = np.random.default_rng(3).integers(0, CONFIG["vocab_size"], PROMPT).tolist()
    batch = np.random.default_rng(4).integers(0, CONFIG["vocab_size"], (BATCH, CONFIG["block_size"]))
    out, tokens = {}, {}
    for name, m in models.items():
        out[name] = {"weight_bytes": weight_bytes(m)}
        out[name]["peak_bytes"], tokens[name] = peak(lambda m=m: list(generate_tokens(m, prompt, NEW, GREEDY)))
    times = timed({name: (lambda m=m: list(generate_tokens(m, prompt, NEW, GREEDY))) for name, m in models.items()},
                  repeats=3)
    for name in models:
        out[name]["cpu_s"] = times[name]["cpu_s"] / NEW          # per token
        out[name]["wall_s"] = times[name]["wall_s"] / NEW
    with nn.no_grad():
        logits = {name: m(batch)[0].numpy() for name, m in models.items()}
    error = logits["int8"] - logits["float32"]
    out["logit_rms_error_over_std"] = float(np.sqrt((error ** 2).mean()) / logits["float32"].std())
    out["identical_tokens"] = sum(a == b for a, b in zip(tokens["float32"], tokens["int8"], strict=True))
    return out


# ----------------------------------------------------------------------------- table and figures
def render(data: dict) -> None:
    """The table and the two pictures, from the measured ``data``."""
    a, b, c, d = (data[k] for k in ("training_step", "generation", "attention", "int8"))
    def row(group: str, name: str, entry: dict, reference: dict, memory: str = "peak_bytes") -> tuple:
        """(group, configuration, memory bytes, reference memory, time s, reference time)."""
        return group, name, entry[memory], reference[memory], entry["cpu_s"], reference["cpu_s"]

    rows = [
        row("(a) training step", "plain", a["plain"], a["plain"]),
        row("(a) training step", "checkpointing", a["checkpointed"], a["plain"]),
        row("(b) per new token", "KV cache", b["cache"], b["cache"]),
        row("(b) per new token", "recompute prefix", b["recompute"], b["cache"]),
        row("(c) attention fwd+bwd", "composed ops", c["composed"], c["composed"]),
        row("(c) attention fwd+bwd", "fused op", c["fused"], c["composed"]),
        row("(c) attention fwd+bwd", "tiled kernel", c["tiled"], c["composed"]),
        row("(d) inference, per token", "float32 weights", d["float32"], d["float32"], "weight_bytes"),
        row("(d) inference, per token", "int8 weights", d["int8"], d["float32"], "weight_bytes"),
    ]
    table = [[group, name, f"{mem / MB:.2f}", f"{mem / ref_mem:.2f}", f"{t * 1e3:.2f}", f"{t / ref_t:.2f}"]
             for group, name, mem, ref_mem, t, ref_t in rows]
    _common.write_table("ch3_memory.md", ["comparison", "configuration", "memory (MB)", "ratio",
                                          "CPU time (ms)", "ratio"], table, align="llrrrr")
    data["ratios"] = {f"{g} / {n}": {"memory": mem / rm, "time": t / rt} for g, n, mem, rm, t, rt in rows}

    labels = [f"{g.split(' ')[0]} {n}" for g, n, *_ in rows]
    memory = [mem / rm for _, _, mem, rm, _, _ in rows]
    times = [t / rt for *_, t, rt in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, memory, 0.4, label="memory (peak, or weights in (d))", color="#4C72B0")
    ax.barh(y + 0.2, times, 0.4, label="CPU time", color="#DD8452")
    for yi, value in zip(y, memory, strict=True):
        ax.text(value, yi - 0.2, f" {value:.2f}", va="center", fontsize=6)
    for yi, value in zip(y, times, strict=True):
        ax.text(value, yi + 0.2, f" {value:.2f}", va="center", fontsize=6)
    ax.axvline(1.0, color="0.3", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ratio to the plain configuration of its group (log scale)")
    ax.legend(fontsize=7, loc="upper right")
    fig.subplots_adjust(bottom=0.2)
    _common.save_figure(fig, "ch3_memory.png", source="docs/manual/figures/ch3_memory.py")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.2))
    positions = np.arange(data["prompt"], data["prompt"] + data["new_tokens"])
    for name, label in (("recompute", "recompute the whole prefix"), ("cache", "KV cache (generate_tokens)")):
        ax.plot(positions, np.asarray(b[name]["per_step_cpu_s"]) * 1e3, label=label, lw=1)
    ax.set_xlabel("tokens in the context when the step runs")
    ax.set_ylabel("CPU ms per new token")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.subplots_adjust(bottom=0.2)
    _common.save_figure(fig, "ch3_memory_decode.png", source="docs/manual/figures/ch3_memory.py")
    plt.close(fig)


def main() -> None:
    """Measure and draw; ``--replot`` only redraws the table and pictures from the last record's numbers."""
    if "--replot" in sys.argv:
        data = json.loads(_common.out("ch3_memory.json").read_text())["data"]
    else:
        start = time.perf_counter()
        data = {"config": CONFIG, "batch": BATCH, "repeats": REPEATS, "prompt": PROMPT, "new_tokens": NEW,
                "training_step": training_step(), "generation": generation(), "attention": attention(),
                "int8": int8_inference()}
        data["seconds"] = round(time.perf_counter() - start, 1)
    render(data)
    print(_common.out("ch3_memory.md").read_text())
    print({k: v for k, v in data.items() if k not in ("generation",)})
    print("generation identical tokens", data["generation"]["identical_tokens"], "seconds", data["seconds"])
    _common.record(__file__, data, sources=["tinygrad_llm/model.py", "nn/checkpoint.py", "nn/attention.py",
                                            "tinygrad_llm/generate.py", "nn/ops/nn.py", "nn/kernels/attention.py",
                                            "tinygrad_llm/export/int8.py"])


if __name__ == "__main__":
    main()
