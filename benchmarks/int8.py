"""int8 weight-only quantization of the main job's model: size, memory, speed and perplexity, float32 against int8.

    .venv/bin/python benchmarks/int8.py            # about 1 minute; writes benchmarks/results/int8.json

The model is ``runs/small`` (``make train``: the ``small`` preset, trained on
``data/stdlib``), quantized by
``tinygrad_llm.export.int8.quantize_checkpoint`` into a temporary directory.
Every number comes from one run on one machine, float32 and int8 measured
alternately in the same process where they are timed, so that both see the
same load; the ratios are what to read.

- **Size**: the float32 weights (4 bytes per parameter, each tensor once),
  the float32 weights as a checkpoint file (``save_checkpoint`` of the
  state_dict: the tied head is written under both of its names), and the int8
  file (one byte per matrix weight, float32 scales, biases, norms and position
  table, and the JSON header).
- **Memory**: each model is loaded in a fresh process (``--worker memory``),
  which reports (a) the growth of its resident set size (``VmRSS`` of
  ``/proc/self/status``) from just before loading to just after (imports
  done first, ``gc.collect()`` after), and (b) with ``tracemalloc``, to which
  NumPy reports every array buffer, the bytes still allocated after loading,
  the peak while loading, and the peak above that during a forward pass of
  a 128-token prompt and during one decoding step (the temporaries, among
  them the int8 layers' float blocks).
- **Speed**: greedy generation (``generate_tokens``, temperature 0, KV
  cache) of 200 tokens after the same prompt, tokens/s as the median of 3
  runs per side, alternating; and a scoring forward pass of a (8, 128)
  batch, median of 3, for ours and for PyTorch's dynamic int8 quantization
  (``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` to
  qint8, on ``tests/tinygrad_llm/torch_gpt.py``'s reference GPT holding the
  same weights). That reference has no KV cache, so PyTorch is compared on the
  forward pass only, where each side's int8-to-float32 time ratio is the
  number to compare; the same batch gives each side's logit error against its
  own float32 model.
- **Perplexity**: ``tinygrad_llm.evaluate.perplexity.perplexity`` (context
  and stride 128, lm-eval's disjoint windows) on every document of the
  validation split of ``data/stdlib`` that the CLI's
  ``_validation_documents`` returns, float32 and int8, and the relative change.
- **The matmul choice** of ``Int8Linear``: one product with the head's shape
  (4096, 256) for 1 row (decoding) and 1024 rows (scoring): float32 weight,
  cast the int8 weight to float32 first (what Int8Linear does), and NumPy's
  mixed-type ``x @ q.T`` with the int8 matrix as it is.

One BLAS thread on each side (the machine has 2 shared cores).
"""

from __future__ import annotations

import os

# (harness imports no NumPy: the threads are set in time)
from harness import THREAD_VARS, cpu_model, median_seconds, write_json

for _var in THREAD_VARS:
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent), str(ROOT / "tests" / "tinygrad_llm")]

import numpy as np  # noqa: E402

import nn  # noqa: E402
import tinygrad_llm.export.int8 as int8  # noqa: E402
from nn.layers import Linear  # noqa: E402
from nn.tensor import Tensor  # noqa: E402
from tinygrad_llm.checkpoint import TOKENIZER_FILE, Checkpoint, load_model, read_info, save_checkpoint  # noqa: E402
from tinygrad_llm.export.int8 import Int8Linear, load_int8_model, quantize_checkpoint, release_freed_memory  # noqa: E402
from tinygrad_llm.generate import SamplingConfig, generate_tokens  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "int8.json"
PROMPT = "import os\nimport sys\n\n\ndef main(argv):\n"
NEW_TOKENS, REPEATS = 200, 3


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def load(kind: str, path: Path):
    return load_int8_model(path) if kind == "int8" else load_model(path)


def memory_worker(kind: str, path: Path) -> None:
    """Load one model in this fresh process and print its memory figures as one JSON line."""
    gc.collect()
    before = rss_bytes()
    tracemalloc.start()
    model, tokenizer = load(kind, path)
    gc.collect()
    resident, load_peak = tracemalloc.get_traced_memory()
    after = rss_bytes()
    release_freed_memory()  # load_int8_model has done it already; the float32 side gets the same chance
    trimmed = rss_bytes()
    prompt = np.asarray([tokenizer.encode(PROMPT * 8)[:model.config.block_size - 1]])
    with nn.no_grad():
        caches = model.make_caches(1)
        tracemalloc.reset_peak()
        model(prompt, caches=caches)
        forward_peak = tracemalloc.get_traced_memory()[1] - resident
        tracemalloc.reset_peak()
        model(prompt[:, -1:], caches=caches)
        step_peak = tracemalloc.get_traced_memory()[1] - resident
    tensors = {id(t): t for t in [*model.parameters(), *(b for _, b in model.named_buffers())]}
    arrays = sum(t.numpy().nbytes for t in tensors.values())  # each tensor once (the tied head is wte)
    print(json.dumps({"rss_growth_as_loaded_bytes": after - before, "rss_growth_bytes": trimmed - before,
                      "traced_after_load_bytes": resident,
                      "traced_peak_while_loading_bytes": load_peak, "model_array_bytes": arrays,
                      "traced_peak_forward_128_tokens_above_resident_bytes": forward_peak,
                      "traced_peak_decode_step_above_resident_bytes": step_peak}))


def measure_memory(kind: str, path: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(path)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout)


def generation_speed(models: dict, tokenizer) -> dict:
    prompt = tokenizer.encode(PROMPT)
    greedy = SamplingConfig(temperature=0.0)
    seconds: dict[str, list[float]] = {kind: [] for kind in models}
    tokens: dict[str, list[int]] = {}
    for model in models.values():  # warm-up, not timed
        list(generate_tokens(model, prompt, NEW_TOKENS, greedy))
    for _ in range(REPEATS):
        for kind, model in models.items():
            start = time.perf_counter()
            tokens[kind] = list(generate_tokens(model, prompt, NEW_TOKENS, greedy))
            seconds[kind].append(time.perf_counter() - start)
    same = next((i for i, (a, b) in enumerate(zip(tokens["float32"], tokens["int8"], strict=True)) if a != b),
                NEW_TOKENS)
    result = {kind: {"tokens_per_s": round(NEW_TOKENS / statistics.median(s), 1),
                     "seconds": [round(x, 3) for x in s]} for kind, s in seconds.items()}
    result["int8_over_float32_speed"] = round(result["int8"]["tokens_per_s"] / result["float32"]["tokens_per_s"], 3)
    result["prompt_tokens"], result["new_tokens"] = len(prompt), NEW_TOKENS
    result["identical_leading_tokens"] = same
    return result


def forward_speed(models: dict, float_for_torch) -> dict:
    import torch
    from torch_gpt import TorchGPT, copy_weights

    torch.set_num_threads(1)
    config = models["float32"].config
    batch = np.random.default_rng(0).integers(0, config.vocab_size, size=(8, config.block_size))
    tokens = batch.size
    ours, logits = {}, {}
    for kind, model in models.items():
        with nn.no_grad():
            ours[kind] = tokens / median_seconds(lambda m=model: m(batch), REPEATS)
            logits[kind] = model(batch)[0].numpy()
    reference = copy_weights(float_for_torch, TorchGPT(config)).eval()
    quantized = torch.ao.quantization.quantize_dynamic(reference, {torch.nn.Linear}, dtype=torch.qint8)
    theirs, their_logits = {}, {}
    idx = torch.from_numpy(batch)
    for kind, model in (("float32", reference), ("int8", quantized)):
        with torch.no_grad():
            theirs[kind] = tokens / median_seconds(lambda m=model: m(idx), REPEATS)
            out = model(idx)
            their_logits[kind] = (out[0] if isinstance(out, tuple) else out).numpy()

    def rms_error(pair: dict) -> float:
        return float(np.sqrt(np.mean((pair["int8"] - pair["float32"]) ** 2)) / pair["float32"].std())

    return {
        "batch": list(batch.shape),
        "ours_tokens_per_s": {k: round(v) for k, v in ours.items()},
        "ours_int8_over_float32_speed": round(ours["int8"] / ours["float32"], 3),
        "torch_tokens_per_s": {k: round(v) for k, v in theirs.items()},
        "torch_int8_over_float32_speed": round(theirs["int8"] / theirs["float32"], 3),
        "ours_float32_over_torch_float32_speed": round(ours["float32"] / theirs["float32"], 3),
        "ours_int8_over_torch_int8_speed": round(ours["int8"] / theirs["int8"], 3),
        "logit_rms_error_over_logit_std": {"ours": round(rms_error(logits), 5),
                                           "torch_dynamic": round(rms_error(their_logits), 5)},
        "torch_note": "torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, qint8): per-tensor weight scale "
                      "by default, activations quantized per batch to uint8 and multiplied by int8 kernels (fbgemm); "
                      "the embedding stays float32 (the quantized head is then a separate copy of it)",
    }


def perplexity_change(models: dict, tokenizer) -> dict:
    from tinygrad_llm.cli import _validation_documents
    from tinygrad_llm.evaluate.perplexity import perplexity

    texts = _validation_documents(ROOT / "data" / "stdlib")
    result = {}
    for kind, model in models.items():
        start = time.perf_counter()
        r = perplexity(model, tokenizer, texts)
        result[kind] = {key: r[key] for key in ("perplexity", "token_loss", "bits_per_byte")}
        result[kind]["seconds"] = round(time.perf_counter() - start, 1)
    result.update(documents=len(texts), tokens=r["tokens"], context=r["context"], stride=r["stride"],
                  texts="data/stdlib validation split, every document (_validation_documents)")
    result["relative_change"] = result["int8"]["perplexity"] / result["float32"]["perplexity"] - 1
    return result


def matmul_choice() -> dict:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 256)).astype(np.float32)
    q = rng.integers(-127, 128, size=w.shape).astype(np.int8)
    s = rng.random(4096).astype(np.float32)
    result = {}
    for rows in (1, 1024):
        x = rng.standard_normal((rows, 256)).astype(np.float32)

        def cast(x=x):
            y = x @ q.astype(np.float32).T
            y *= s
            return y

        timings = {"float32_weight": median_seconds(lambda x=x: x @ w.T, 20), "cast_then_matmul": median_seconds(
            cast, 20), "numpy_mixed_int8_matmul": median_seconds(lambda x=x: (x @ q.T) * s, 5)}
        result[f"{rows}_rows_us"] = {k: round(v * 1e6, 1) for k, v in timings.items()}
    result["shape"] = [4096, 256]
    # Int8Linear's blocks of CHUNK_ELEMENTS weights against one cast of the whole matrix, on a GPT-2-sized head.
    head = Int8Linear.from_linear(Linear(768, 50304, bias=False)).eval()
    x = Tensor(rng.standard_normal((1, 768)).astype(np.float32))
    default = int8.CHUNK_ELEMENTS
    blocks = {}
    for name, chunk in (("blocks_of_4MiB_us", default), ("blocks_of_1MiB_us", default // 4),
                        ("whole_matrix_us", head.qweight.numel())):
        int8.CHUNK_ELEMENTS = chunk
        blocks[name] = round(median_seconds(lambda: head(x), 10) * 1e6, 1)
    int8.CHUNK_ELEMENTS = default
    result["gpt2_head_50304x768_one_row"] = blocks
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "small")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        memory_worker(args.worker[0], Path(args.worker[1]))
        return
    started = time.perf_counter()
    source = args.run / "best.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        int8_file = Path(tmp) / "int8.safetensors"
        start = time.perf_counter()
        quantize_checkpoint(source, int8_file)
        quantize_seconds = time.perf_counter() - start
        float_model, tokenizer = load_model(source)
        float_file = Path(tmp) / "float32.safetensors"
        save_checkpoint(float_file, Checkpoint(model={k: v.numpy() for k, v in float_model.state_dict().items()},
                                               info=read_info(source)))
        assert (Path(tmp) / TOKENIZER_FILE).exists()
        params = float_model.num_parameters()
        sizes = {"parameters": params, "float32_weights_bytes": 4 * params,
                 "float32_weights_checkpoint_file_bytes": float_file.stat().st_size,
                 "training_checkpoint_file_bytes_with_optimizer": source.stat().st_size,
                 "int8_file_bytes": int8_file.stat().st_size}
        sizes["float32_weights_over_int8_file"] = round(4 * params / sizes["int8_file_bytes"], 3)
        sizes["float32_file_over_int8_file"] = round(float_file.stat().st_size / sizes["int8_file_bytes"], 3)
        memory = {kind: measure_memory(kind, path) for kind, path in (("float32", float_file), ("int8", int8_file))}
        memory["rss_note"] = ("rss_growth_bytes is after release_freed_memory() (glibc malloc_trim), which "
                              "load_int8_model calls itself; rss_growth_as_loaded_bytes is before it, where glibc "
                              "still holds the freed pages of the float32 model built while loading")
        memory["rss_growth_float32_over_int8"] = round(
            memory["float32"]["rss_growth_bytes"] / memory["int8"]["rss_growth_bytes"], 3)
        memory["arrays_float32_over_int8"] = round(
            memory["float32"]["traced_after_load_bytes"] / memory["int8"]["traced_after_load_bytes"], 3)
        int8_model, _ = load_int8_model(int8_file)
        torch_source, _ = load_model(float_file)
        models = {"float32": float_model.eval(), "int8": int8_model}
        generation = generation_speed(models, tokenizer)
        forward = forward_speed(models, torch_source)
        ppl = perplexity_change(models, tokenizer)
    import torch

    document = {
        "benchmark": "int8 weight-only quantization (tinygrad_llm/export/int8.py) of the main job's model",
        "run": str(args.run.relative_to(ROOT) if args.run.is_relative_to(ROOT) else args.run),
        "date": datetime.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "blas_threads": 1, "load_average_at_start": round(os.getloadavg()[0], 2)},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__},
        "scheme": "int8 per output channel (row), absmax scale s = max|w_row|/127, float32 scales",
        "targets": {"size_ratio_at_least": 3.5, "perplexity_change_below": 0.01},
        "quantize_seconds": round(quantize_seconds, 2),
        "size": sizes,
        "memory": memory,
        "generation": generation,
        "forward": forward,
        "perplexity": ppl,
        "matmul_choice": matmul_choice(),
        "summary": {
            "float32_weights_over_int8_file": sizes["float32_weights_over_int8_file"],
            "rss_float32_over_int8": memory["rss_growth_float32_over_int8"],
            "generation_int8_over_float32_speed": generation["int8_over_float32_speed"],
            "forward_int8_over_float32_speed": {"ours": forward["ours_int8_over_float32_speed"],
                                                "torch_dynamic": forward["torch_int8_over_float32_speed"]},
            "perplexity_relative_change": ppl["relative_change"],
            "targets_met": sizes["float32_weights_over_int8_file"] >= 3.5 and abs(ppl["relative_change"]) < 0.01,
        },
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    write_json(args.out, document)
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
