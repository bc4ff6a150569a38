"""Data against tensor parallelism on 2 processes: the bytes each all-reduces, and that each equals one process.

The script launches itself under ``mpiexec -n 2`` (the mpich wheel's, in
.venv). Every process builds the same tiny GPT in float64 and also computes,
alone, the one-process reference on the whole batch of 8 rows. Then:

- data parallelism: ``DistributedDataParallel`` over the 2 processes, 4 rows
  each; we compare the mean loss and every gradient with the reference, and
  read DDP's count of all-reduced bytes;
- tensor parallelism: ``GPT`` with ``tensor_parallel=2``, the whole batch on
  both processes; we compare the logits, the loss and every gathered gradient,
  and count the bytes of every all-reduce on the tensor group, forward and
  backward apart (by wrapping the group's ``all_reduce``).

Last, the formulas the measurement confirms give the traffic of the small
preset and of GPT-2 124M. Nothing here is timed: on 2 shared cores a speed-up
would mean nothing.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python docs/manual/figures/ch4_parallel.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402

CONFIG = dict(vocab_size=256, block_size=32, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
ROWS = 8
MiB = 2**20


# ---------------------------------------------------------------- under mpiexec: one of the 2 processes
def build(tensor_parallel: int = 1):
    import nn
    from tinygrad_llm.model import GPT, GPTConfig

    nn.manual_seed(0)
    return GPT(GPTConfig(**CONFIG, tensor_parallel=tensor_parallel)).to(nn.float64)


def worker(out: Path) -> None:
    from nn import distributed, optim

    rng = np.random.default_rng(7)
    tokens = rng.integers(0, CONFIG["vocab_size"], (ROWS, CONFIG["block_size"] + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]

    # The reference: one process, the whole batch, one AdamW step.
    reference = build()
    logits_ref, loss_ref = reference(x, y)
    loss_ref.backward()
    ref_grads = {n: p.grad.numpy().copy() for n, p in reference.named_parameters()}
    ref_opt = optim.AdamW(reference.parameters(), lr=1e-3)
    ref_opt.step()
    ref_params = {n: p.numpy().copy() for n, p in reference.named_parameters()}

    # Data parallelism: every process its 4 rows; small buckets, so that the 0.9 MB of gradients make several.
    parallel = distributed.init(1)
    rank, size = parallel.rank, parallel.world_size
    model = build()
    ddp = distributed.DistributedDataParallel(model, comm=parallel.data, bucket_mb=0.25, first_bucket_mb=0.0625)
    rows = ROWS // size
    mine = slice(rank * rows, (rank + 1) * rows)
    _, loss = ddp(x[mine], y[mine])
    loss.backward()
    dp_loss = float(parallel.data.all_reduce(np.array([loss.item()]), op="mean")[0])
    dp_grad_diff = max(float(np.max(np.abs(p.grad.numpy() - ref_grads[n]))) for n, p in model.named_parameters())
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    opt.step()
    dp_param_diff = max(float(np.max(np.abs(p.numpy() - ref_params[n]))) for n, p in model.named_parameters())
    dp = {"loss_diff": abs(dp_loss - float(loss_ref.item())), "grad_max_abs_diff": dp_grad_diff,
          "param_max_abs_diff_after_adamw": dp_param_diff, "buckets": len(ddp.buckets),
          "reductions": ddp.stats["reductions"], "bytes_all_reduced": ddp.stats["bytes"],
          "gradient_bytes": int(sum(p.data.nbytes for p in model.parameters())),
          "parameters_held": int(sum(p.numel() for p in model.parameters())),
          "bucket_bytes": [int(b.flat.nbytes) for b in ddp.buckets]}

    # Tensor parallelism: the same batch on both processes, each with half of every block's heads and MLP.
    parallel = distributed.init(2)
    group = parallel.tensor
    counted = {"forward": [], "backward": []}
    phase = ["forward"]
    plain = group.all_reduce

    def counting_all_reduce(array, op="sum"):
        counted[phase[0]].append(int(array.nbytes))
        return plain(array, op)

    group.all_reduce = counting_all_reduce
    split = build(tensor_parallel=2)
    logits, loss = split(x, y)
    phase[0] = "backward"
    loss.backward()
    group.all_reduce = plain
    grads = {n: distributed.gather_parameter(p.grad.data, p, group) for n, p in split.named_parameters()}
    tp = {"logits_max_abs_diff": float(np.max(np.abs(logits.numpy() - logits_ref.numpy()))),
          "loss_diff": abs(float(loss.item()) - float(loss_ref.item())),
          "grad_max_abs_diff": max(float(np.max(np.abs(grads[n] - ref_grads[n]))) for n in ref_grads),
          "all_reduces_forward": len(counted["forward"]), "bytes_forward": sum(counted["forward"]),
          "all_reduces_backward": len(counted["backward"]), "bytes_backward": sum(counted["backward"]),
          "all_reduce_sizes": sorted(set(counted["forward"] + counted["backward"])),
          "parameters_held": int(sum(p.numel() for p in split.parameters())),
          "block_parameters_held": int(sum(p.numel() for p in split.h.parameters())),
          "block_parameters_dense": int(sum(p.numel() for p in reference.h.parameters()))}
    everyone = parallel.world.all_gather_object({"rank": rank, "dp": dp, "tp": tp})
    if rank == 0:
        out.write_text(json.dumps(everyone, indent=1))


# ---------------------------------------------------------------- the formulas
def gpt_parameters(vocab_padded: int, block: int, layers: int, width: int) -> int:
    """Parameters of a GPT-2-layout model with tied embeddings, learned positions and biases."""
    per_block = 12 * width * width + 13 * width  # qkv, proj, fc, fc-proj weights and biases, two LayerNorms
    return vocab_padded * width + block * width + layers * per_block + 2 * width


def ring_bytes(payload: float, p: int) -> float:
    """Bytes each process sends in a ring all-reduce of ``payload`` bytes over ``p`` processes."""
    return 2 * (p - 1) / p * payload


def main() -> None:
    if "--worker" in sys.argv:
        worker(Path(sys.argv[sys.argv.index("--worker") + 1]))
        return
    started = time.perf_counter()
    venv = Path(sys.executable).parent
    mpiexec = venv / "mpiexec" if (venv / "mpiexec").exists() else Path("mpiexec")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "HYDRA_LAUNCHER": "fork"}
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        subprocess.run([str(mpiexec), "-n", "2", sys.executable, __file__, "--worker", str(result)],
                       cwd=_common.ROOT, env=env, check=True, timeout=170)
        ranks = json.loads(result.read_text())
    dp, tp = ranks[0]["dp"], ranks[0]["tp"]
    worst = lambda part, key: max(r[part][key] for r in ranks)  # noqa: E731

    from tinygrad_llm.model import GPT, GPTConfig

    config = GPTConfig(**CONFIG)
    b, t, d, L = ROWS, config.block_size, config.n_embd, config.n_layer  # noqa: N806
    activation = b * t * d * 8  # one float64 activation tensor (B, T, d)
    predicted_tp = 2 * L * activation
    rows = [
        ["what is split", f"the batch: {ROWS // 2} of {ROWS} rows each", "every block's heads and MLP width"],
        ["parameters held per process", f"{dp['parameters_held']:,}",
         f"{tp['parameters_held']:,} (blocks: {tp['block_parameters_held']:,} of {tp['block_parameters_dense']:,})"],
        ["all-reduces in forward", "0", f"{tp['all_reduces_forward']} (2 per block)"],
        ["all-reduces in backward", f"{dp['reductions']} (one per bucket)",
         f"{tp['all_reduces_backward']} (2 per block)"],
        ["bytes all-reduced, forward", "0", f"{tp['bytes_forward']:,} = 2 L B T d x 8"],
        ["bytes all-reduced, backward", f"{dp['bytes_all_reduced']:,} = every gradient",
         f"{tp['bytes_backward']:,} = 2 L B T d x 8"],
        ["loss, max abs diff from 1 process", f"{worst('dp', 'loss_diff'):.1e}", f"{worst('tp', 'loss_diff'):.1e}"],
        ["logits, max abs diff", "(each process its own rows)", f"{worst('tp', 'logits_max_abs_diff'):.1e}"],
        ["gradients, max abs diff", f"{worst('dp', 'grad_max_abs_diff'):.1e}",
         f"{worst('tp', 'grad_max_abs_diff'):.1e} (gathered)"],
        ["parameters after AdamW, max abs diff", f"{worst('dp', 'param_max_abs_diff_after_adamw'):.1e}", "(not run)"],
    ]
    _common.write_table("ch4_parallel.md", ["2 processes, float64", "data parallel (DDP)", "tensor parallel"],
                        rows, align="lll", left_marked=True)
    checks = {"dp_bytes_equal_gradient_bytes": dp["bytes_all_reduced"] == dp["gradient_bytes"],
              "tp_forward_bytes_as_predicted": tp["bytes_forward"] == predicted_tp,
              "tp_backward_bytes_as_predicted": tp["bytes_backward"] == predicted_tp}

    # The same formulas for real sizes, float32, per optimizer step of one micro-batch per replica.
    small = GPTConfig.preset("small")
    counted = GPT(small).num_parameters()
    formula_small = gpt_parameters(small.padded_vocab_size, small.block_size, small.n_layer, small.n_embd)
    checks["parameter_formula_matches_small"] = counted == formula_small
    models = [("small", small, 16, formula_small),
              ("gpt2-124m", GPTConfig.preset("gpt2-124m"), 8, None)]
    brows, scale = [], {}
    for name, c, batch, n in models:
        n = n or gpt_parameters(c.padded_vocab_size, c.block_size, c.n_layer, c.n_embd)
        dp_payload = 4 * n
        tp_payload = 4 * c.n_layer * 4 * batch * c.block_size * c.n_embd  # 4 all-reduces per block, fwd + bwd
        for p in (2, 8):
            dp_sent, tp_sent = ring_bytes(dp_payload, p), ring_bytes(tp_payload, p)
            brows.append([name, f"{n / 1e6:.1f}M", f"{batch} x {c.block_size}", p, f"{dp_sent / MiB:,.1f}",
                          f"{tp_sent / MiB:,.1f}", f"{tp_sent / dp_sent:.1f}"])
            scale[f"{name} p={p}"] = {"parameters": n, "dp_MiB_sent": dp_sent / MiB, "tp_MiB_sent": tp_sent / MiB}
    _common.write_table("ch4_parallel_bytes.md",
                        ["model", "parameters", "micro-batch B x T", "processes p", "DP: MiB sent per process",
                         "TP: MiB sent per process", "TP / DP"], brows, align="lrrrrrr", left_marked=True)
    data = {"ranks": ranks, "checks": checks, "predicted_tp_bytes_each_way": predicted_tp, "formulas": scale,
            "small_parameters": counted, "config": CONFIG, "rows": ROWS,
            "seconds": round(time.perf_counter() - started, 1)}
    _common.record(__file__, data, sources=["nn/distributed.py", "tinygrad_llm/model.py"])
    print(f"ch4_parallel: {data['seconds']} s; checks {checks}")
    if not all(checks.values()):
        raise SystemExit(f"a measurement disagrees with its formula: {checks}")


if __name__ == "__main__":
    main()
