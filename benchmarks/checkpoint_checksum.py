"""What checkpoint checksums cost: checksum speeds, and nn.state.load with and without verification.

1. Speed of the candidate checksums (zlib.crc32, zlib.adler32, hashlib's sha256,
   sha1, blake2b and md5) over one buffer of GPT-2 124M's float32 weights
   (124,439,808 parameters, 498 MB). nn.state uses the fastest, CRC-32.
2. ``nn.state.load(path, verify=True)`` against ``verify=False`` on two
   GPT-2-124M-shaped files written by ``nn.state.save``: the weights alone
   (498 MB), and the weights plus AdamW's two moments per weight, as a
   training checkpoint holds them (1.49 GB). The file is read from the page
   cache (it was just written), so the times are those of the work in this
   process, not of the disk. The two variants alternate within each repeat.

Reported: the median of the repeats, and the load-time ratio with / without.

    .venv/bin/python benchmarks/checkpoint_checksum.py [--repeats 5] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
from harness import cpu_model, median_seconds  # noqa: E402

from nn import state  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "checkpoint_checksum.json"

CHECKSUMS: dict[str, Callable[[np.ndarray], object]] = {
    "zlib.crc32": zlib.crc32,
    "zlib.adler32": zlib.adler32,
    "hashlib.sha256": lambda a: hashlib.sha256(a).digest(),
    "hashlib.sha1": lambda a: hashlib.sha1(a).digest(),
    "hashlib.blake2b": lambda a: hashlib.blake2b(a).digest(),
    "hashlib.md5": lambda a: hashlib.md5(a).digest(),
}


def gpt2_124m_shapes(n_layer: int = 12, n_embd: int = 768, vocab: int = 50257, context: int = 1024) -> dict:
    """Tensor name -> shape of GPT-2 124M (Hugging Face names; the output layer shares ``wte``)."""
    shapes = {"wte.weight": (vocab, n_embd), "wpe.weight": (context, n_embd)}
    for i in range(n_layer):
        h = f"h.{i}."
        shapes |= {h + "ln_1.weight": (n_embd,), h + "ln_1.bias": (n_embd,),
                   h + "attn.c_attn.weight": (3 * n_embd, n_embd), h + "attn.c_attn.bias": (3 * n_embd,),
                   h + "attn.c_proj.weight": (n_embd, n_embd), h + "attn.c_proj.bias": (n_embd,),
                   h + "ln_2.weight": (n_embd,), h + "ln_2.bias": (n_embd,),
                   h + "mlp.c_fc.weight": (4 * n_embd, n_embd), h + "mlp.c_fc.bias": (4 * n_embd,),
                   h + "mlp.c_proj.weight": (n_embd, 4 * n_embd), h + "mlp.c_proj.bias": (n_embd,)}
    return shapes | {"ln_f.weight": (n_embd,), "ln_f.bias": (n_embd,)}


def random_state(shapes: dict, with_moments: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float32 tensors of ``shapes``; with ``with_moments``, AdamW's exp_avg and exp_avg_sq of each too."""
    tensors = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}
    if with_moments:
        for i, shape in enumerate(shapes.values()):
            tensors[f"optim/state/{i}/exp_avg"] = rng.standard_normal(shape, dtype=np.float32)
            tensors[f"optim/state/{i}/exp_avg_sq"] = np.square(rng.standard_normal(shape, dtype=np.float32))
    return tensors


def checksum_speeds(n_params: int, repeats: int, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Median seconds and GB/s of each of ``CHECKSUMS`` over ``n_params`` random float32 numbers."""
    weights = rng.standard_normal(n_params, dtype=np.float32)
    speeds = {}
    for name, checksum in CHECKSUMS.items():
        median = median_seconds(lambda checksum=checksum: checksum(weights), repeats, warmup=False)
        speeds[name] = {"median_s": round(median, 4), "gb_per_s": round(weights.nbytes / median / 1e9, 2)}
        print(f"{name:16s} {median:.3f} s  {speeds[name]['gb_per_s']:.2f} GB/s")
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the files are written")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shapes = gpt2_124m_shapes()
    n_params = sum(int(np.prod(s)) for s in shapes.values())

    speeds = checksum_speeds(n_params, args.repeats, rng)

    loads = {}
    for label, with_moments in (("weights", False), ("weights+adamw_moments", True)):
        tensors = random_state(shapes, with_moments, rng)
        with tempfile.TemporaryDirectory(dir=args.dir) as directory:
            path = Path(directory) / "state.safetensors"
            state.save(path, tensors)
            nbytes = sum(t.nbytes for t in tensors.values())
            del tensors
            state.load(path)  # warm the page cache
            seconds: dict[str, list[float]] = {"verify": [], "no_verify": []}
            for _ in range(args.repeats):
                for variant, verify in (("verify", True), ("no_verify", False)):
                    start = time.perf_counter()
                    state.load(path, verify=verify)
                    seconds[variant].append(time.perf_counter() - start)
        medians = {variant: statistics.median(times) for variant, times in seconds.items()}
        loads[label] = {"bytes": nbytes, "seconds": {k: [round(t, 4) for t in v] for k, v in seconds.items()},
                        "median_s": {k: round(v, 4) for k, v in medians.items()},
                        "ratio_verify_over_no_verify": round(medians["verify"] / medians["no_verify"], 3)}
        print(f"load {label} ({nbytes / 1e9:.2f} GB): verify {medians['verify']:.3f} s, "
              f"no verify {medians['no_verify']:.3f} s")

    result = {
        "benchmark": "checkpoint_checksum",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count()},
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "safetensors": safetensors.__version__, "zlib": zlib.ZLIB_RUNTIME_VERSION,
                     "openssl": ssl.OPENSSL_VERSION},
        "input": {"model": "GPT-2 124M shapes, float32", "parameters": n_params, "seed": 0},
        "repeats": args.repeats,
        "checksum_speed_on_weights": speeds,
        "chosen": "zlib.crc32",
        "load": loads,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["load"], indent=1))


if __name__ == "__main__":
    main()
