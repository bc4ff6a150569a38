"""One fine-tuning step, full fine-tuning against LoRA, ours against PyTorch, on the CPU.

What is compared. Fine-tuning can train every weight of the model (full
fine-tuning) or freeze them all and train small low-rank adapters beside some
matrices (LoRA, ``tinygrad_llm/chat/lora.py``: y = x W^T + b + (alpha/r)
(x A^T) B^T with W frozen). This script measures what one step of each costs,
in time and in memory, for our engine and for PyTorch on the same model, the
same batch and the same LoRA configuration, so that four numbers come out:
LoRA's saving on each side, and our speed against PyTorch's for each method.

What to expect, and why. A step is forward + loss + backward + gradient
clipping + AdamW update + zero_grad, as in ``Trainer.train_step``. The forward
pass is nearly the same for both methods: LoRA adds x A^T and its product with
B^T, r (in + out) multiply-adds per token against in * out for the frozen
matrix (about 1 % of the model's matmul work here), and one elementwise add of
a (B, T, out) array per adapted layer. The backward pass is where LoRA saves: for every Linear
layer a full step forms both the gradient of the input, dX = dY W, which the
layers below need, and the gradient of the weight, dW = dY^T X, which only the
optimizer needs; each is as costly as the forward matmul. With the base frozen
the weight gradients are skipped (the input gradients must still flow down to
the first block's adapter), so the backward pass's matmuls are roughly halved,
the output head's included (tied to the token embedding, the largest matrix
here). Backward being about twice the forward, the matmul work of a LoRA step
is about (1 + 1) / (1 + 2) = 2/3 of a full one; what does not shrink (softmax,
layer norm, GELU, the loss, the interpreter's per-op cost) keeps the real
ratio above that. Gradient clipping and the AdamW update touch every
trainable number and shrink with them: here to 1.2 % of the parameters.

Memory. Training keeps, besides the weights, a gradient per trainable
parameter and AdamW's two moments (exp_avg, exp_avg_sq) of the same size:
3 x 4 bytes per trainable float32 number. These are counted exactly, from the
sizes of the tensors that exist after the first step (the gradients before
zero_grad, the moments in the optimizer's state), by the same formula
(elements x bytes per element) on both sides, and must agree between them.
What a step also allocates (the activations kept for backward, temporaries)
is measured for ours with ``tracemalloc``, to which NumPy reports every array
buffer it allocates: the peak of traced allocations during one step of ours,
(i) the first step, which also creates the AdamW moments, and (ii) a
steady-state step after the timed ones, whose moments already exist (so
(ii) is the activations, gradients and temporaries). PyTorch's allocator does
not report to tracemalloc, so this one is ours only. It need not be smaller
with LoRA: the activations are still needed for the input gradients, and
each adapted layer adds arrays of its own. In our engine a recorded op keeps
its input Tensors, and so their arrays, until backward (``nn/function.py``),
saved or not, so the base layer's output and the adapter's, both inputs of
the add that joins them, stay alive beside their sum: two more (B, T, out)
float32 arrays per adapted layer, against a few hundred KB of adapter
gradients saved. (PyTorch keeps only the tensors an op saves for backward.)

The setup. The ``small`` preset of our GPT (4 layers, 4 heads, width 256,
context 128) with the fine-tuning vocabulary, 4096 + 6 chat tokens = 4102
(padded to 4160 rows), float32. One fixed batch of 16 x 128 tokens, random
ids; the targets are -100 (ignored) on about 70 % of the positions, in runs as
the answer-only mask of packed conversations gives them (each simulated
conversation of 16-64 tokens, the last of a row taking what is left: the first
70 % prompt, the rest answer). Full:
``nn.optim.AdamW`` over all parameters in the two groups of
``param_groups_for_weight_decay``; LoRA: ``apply_lora(model, rank=8,
alpha=16)`` on the default targets (every block's ``attn.c_attn`` and
``attn.c_proj``), AdamW over the adapters only with weight decay 0, as
``chat/finetune.py`` builds them. Hyperparameters are the fine-tuning
defaults of ``tinygrad_llm.cli`` (lr 3e-4 full, 2e-3 LoRA; the rest from
``TrainConfig``, clipping at 1.0). PyTorch runs the GPT of
``tests/tinygrad_llm/torch_gpt.py`` holding our weights (``copy_weights``),
with :func:`apply_torch_lora` below wrapping the same layers the same way (the
frozen base Linear's weight and bias, A uniform in +-1/sqrt(in), B = 0, scale
alpha/r applied to the (..., r) activation, the same parameter names), after
which our adapters' values are copied in by name too; ``torch.optim.AdamW``
with its default implementation over the same groups, and
``torch.nn.utils.clip_grad_norm_``.

The timing. Each side runs in its own worker process (``harness.PipeWorker``)
with the same number of threads: ``OMP/OPENBLAS/MKL_NUM_THREADS`` set before
NumPy or torch load, ``torch.set_num_threads``, and the counts each library
reports are recorded. Each worker holds both of its models (full and LoRA).
After the first step (the checks below) and a warm-up, the parent runs rounds:
a round is one block of each of the four configurations (ours full, torch
full, ours LoRA, torch LoRA), in an order rotated by one from round to round
and reversed in rounds 5-8, 13-16, ..., so that noise on this shared machine
falls on all alike. A block is one untimed lead-in step (it follows another process's
block, with this one idle, and runs slower) and ``--block`` timed steps, back
to back, the block after ``--gap`` seconds of quiet (OpenBLAS threads
busy-wait for about 0.1 s after a call and would take a core from it).
A configuration's step time is the median of its ``--steps`` timed steps; a
ratio (LoRA/full on one side, ours/torch for one method) is the median over
rounds of the ratio of the two blocks' medians in that round, so each ratio
compares steps run seconds apart. Each block also records the CPU other
processes used meanwhile (/proc/stat), and the ratios are also given over the
quiet rounds alone.

The check. Same weights and batch, so the first step's loss must agree
within 1e-4 relative between the sides, for full and for LoRA. With B = 0 the
LoRA model computes the base model, so its first loss equals the full one; the
first step's gradient norm (of the adapters' gradients, nonzero for B only)
and the losses of the warm-up steps, which follow the first updates, check
LoRA's backward and update as well.

    python benchmarks/finetune_step.py [--steps 40] [--block 2] [--warmup 2] [--threads 1] [--rank 8]
                                       [--alpha 16] [--out benchmarks/results/finetune_step.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from harness import THREAD_VARS, PipeWorker, cpu_model, import_from_repository, write_json

ROOT = Path(__file__).resolve().parent.parent
PRESET, VOCAB_SIZE, BATCH_SIZE = "small", 4102, 16
TRAINED_FRACTION = 0.3     # of each simulated conversation, the answer (the rest is prompt, target -100)
CONVERSATION = (16, 64)    # shortest and longest simulated conversation, in tokens
LOSS_RTOL = 1e-4
QUIET_CORES = 0.1          # a round is quiet when other processes used less CPU than this during each block
SIDES, MODES = ("ours", "torch"), ("full", "lora")
CONFIGS = [f"{side}/{mode}" for mode in MODES for side in SIDES]


# ---------------------------------------------------------------- the shared setting
def hyperparameters(mode: str) -> dict[str, Any]:
    """The fine-tuning optimizer settings of ``tinygrad-llm finetune`` for ``mode`` ("full" or "lora")."""
    import dataclasses

    from tinygrad_llm.cli import FINETUNE_DEFAULTS, LORA_LR
    from tinygrad_llm.train.config import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {"lr": LORA_LR if mode == "lora" else FINETUNE_DEFAULTS["lr"],
            "betas": (defaults["beta1"], defaults["beta2"]), "eps": defaults["eps"],
            "weight_decay": 0.0 if mode == "lora" else FINETUNE_DEFAULTS["weight_decay"],
            "grad_clip": defaults["grad_clip"]}


def finetune_batch(vocab_size: int, batch_size: int, block_size: int, seed: int = 0) -> tuple[Any, Any]:
    """Random ids x (B, T) and next-token targets y (B, T) with -100 on the prompts of simulated conversations.

    Each row is cut into conversations of 16-64 tokens (the last one of a row
    takes what is left, up to 79); the first 70 % of each is prompt (target
    -100, as the answer-only mask of packed conversations gives), the rest answer.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, size=(batch_size, block_size + 1))
    x, y = np.ascontiguousarray(ids[:, :-1]), np.ascontiguousarray(ids[:, 1:])
    for row in y:
        start = 0
        while start < block_size:
            length = int(rng.integers(CONVERSATION[0], CONVERSATION[1] + 1))
            if block_size - start - length < CONVERSATION[0]:  # too little left for another: this one takes it
                length = block_size - start
            row[start:start + round(length * (1 - TRAINED_FRACTION))] = -100
            start += length
    return x, y


def ours_models(rank: int, alpha: float) -> tuple[Any, Any, list[tuple[str, Any]]]:
    """Our GPT twice with the same weights (``nn.manual_seed(0)``): (full, LoRA-adapted, its adapters)."""
    import nn
    from tinygrad_llm.chat.lora import DEFAULT_TARGETS, apply_lora
    from tinygrad_llm.model import GPT, GPTConfig

    config = GPTConfig.preset(PRESET, vocab_size=VOCAB_SIZE)
    nn.manual_seed(0)
    full = GPT(config)
    nn.manual_seed(0)
    adapted = GPT(config)
    nn.manual_seed(1)  # the adapters' A, drawn after the base as finetune.build_model does
    adapters = apply_lora(adapted, rank, alpha, DEFAULT_TARGETS)
    return full, adapted, adapters


def apply_torch_lora(model: Any, rank: int, alpha: float, targets: tuple[str, ...]) -> list[tuple[str, Any]]:
    """PyTorch's twin of ``chat.lora.apply_lora``: freeze ``model``, wrap the target Linears, return the adapters.

    A target names every module whose dotted name is it or ends with ``"." + target``.
    The wrapper keeps the base layer's own ``weight`` and ``bias`` (frozen) under
    those names and adds ``lora_A`` (r, in), uniform in +-1/sqrt(in), and
    ``lora_B`` (out, r), zero; it computes x W^T + b + ((x A^T) * alpha/r) B^T,
    in that order, as ours does.
    """
    import torch
    import torch.nn.functional as TF

    class TorchLoRALinear(torch.nn.Module):
        def __init__(self, base: torch.nn.Linear) -> None:
            super().__init__()
            self.weight = base.weight.requires_grad_(False)
            self.bias = None if base.bias is None else base.bias.requires_grad_(False)
            self.scaling = alpha / rank
            bound = 1 / math.sqrt(base.in_features)
            w = base.weight
            self.lora_A = torch.nn.Parameter(torch.empty(rank, base.in_features, dtype=w.dtype).uniform_(-bound, bound))
            self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            update = TF.linear(TF.linear(x, self.lora_A) * self.scaling, self.lora_B)
            return TF.linear(x, self.weight, self.bias) + update

    model.requires_grad_(False)
    chosen = [name for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]
    for name in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, TorchLoRALinear(getattr(parent, attr)))
    return [(name, p) for name, p in model.named_parameters() if name.endswith((".lora_A", ".lora_B"))]


# ---------------------------------------------------------------- worker: one side, both methods, one process
class _Side:
    """One library's two models (full, LoRA), their optimizers and trainable parameters, the batch; a timed step."""

    models: dict[str, Any]
    opts: dict[str, Any]
    params: dict[str, list[Any]]
    x: Any
    y: Any

    def clip(self, params: list[Any], max_norm: float) -> float:
        raise NotImplementedError

    def nbytes(self, t: Any) -> int:
        """Elements x bytes per element of one tensor."""
        raise NotImplementedError

    def step(self, mode: str, inspect: bool = False) -> dict[str, Any]:
        """One fine-tuning step of ``mode``: wall seconds of each phase, CPU seconds, loss, gradient norm.

        With ``inspect``, also the bytes of the gradients (after backward) and of
        AdamW's moments (after the update), and how many tensors had a gradient.
        """
        model, opt, params = self.models[mode], self.opts[mode], self.params[mode]
        extra: dict[str, Any] = {}
        cpu, start = time.process_time(), time.perf_counter()
        _, loss = model(self.x, self.y)
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        norm = self.clip(params, self.grad_clip[mode])
        if inspect:
            grads = [p.grad for p in self.every_parameter(mode) if p.grad is not None]
            extra = {"tensors_with_grad": len(grads), "grad_bytes": sum(self.nbytes(g) for g in grads)}
        opt.step()
        if inspect:
            moments = [s[k] for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")]
            extra["moment_bytes"] = sum(self.nbytes(m) for m in moments)
        opt.zero_grad()
        end = time.perf_counter()
        return {"forward": forward - start, "backward": backward - forward, "update": end - backward,
                "total": end - start, "cpu": time.process_time() - cpu, "loss": float(loss.item()),
                "grad_norm": float(norm), **extra}

    def every_parameter(self, mode: str) -> list[Any]:
        """Every parameter of the model, trainable or frozen (to see that frozen ones get no gradient)."""
        return list(self.models[mode].parameters())


class _Ours(_Side):
    def __init__(self, rank: int, alpha: float) -> None:
        import nn

        self.nn = nn
        full, adapted, adapters = ours_models(rank, alpha)
        self.models = {"full": full.train(), "lora": adapted.train()}
        self.x, self.y = finetune_batch(VOCAB_SIZE, BATCH_SIZE, full.config.block_size)
        settings = {mode: hyperparameters(mode) for mode in MODES}
        self.grad_clip = {mode: s["grad_clip"] for mode, s in settings.items()}
        groups = {"full": nn.optim.param_groups_for_weight_decay(full.named_parameters(),
                                                                  settings["full"]["weight_decay"]),
                  "lora": [{"params": [p for _, p in adapters], "weight_decay": settings["lora"]["weight_decay"]}]}
        self.opts = {mode: nn.optim.AdamW(groups[mode], lr=settings[mode]["lr"], betas=settings[mode]["betas"],
                                          eps=settings[mode]["eps"]) for mode in MODES}
        self.params = {mode: [p for g in groups[mode] for p in g["params"]] for mode in MODES}
        self.info = {"optimizer": "nn.optim.AdamW (per-parameter in-place NumPy update)",
                     "adapted_layers": sorted({name.rsplit(".", 1)[0] for name, _ in adapters}),
                     "block_size": full.config.block_size, "padded_vocab_size": full.config.padded_vocab_size}

    def clip(self, params: list[Any], max_norm: float) -> float:
        return self.nn.optim.clip_grad_norm_(params, max_norm)

    def nbytes(self, t: Any) -> int:
        data = t.data if isinstance(t, self.nn.Tensor) else t
        return int(data.size) * data.itemsize

    def traced_step(self, mode: str, inspect: bool = False) -> dict[str, Any]:
        """One step under ``tracemalloc``: the step's result plus the peak of what it allocated, and what it kept."""
        tracemalloc.start()
        try:
            result = self.step(mode, inspect)
            kept, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return {**result, "traced_peak_bytes": peak, "traced_kept_bytes": kept}


class _Torch(_Side):
    def __init__(self, rank: int, alpha: float, threads: int) -> None:
        import torch

        sys.path.insert(0, str(ROOT / "tests" / "tinygrad_llm"))
        from torch_gpt import TorchGPT, copy_weights

        from tinygrad_llm.chat.lora import DEFAULT_TARGETS

        torch.set_num_threads(threads)
        self.torch = torch
        full_ours, adapted_ours, _ = ours_models(rank, alpha)
        full = copy_weights(full_ours, TorchGPT(full_ours.config))
        adapted = TorchGPT(adapted_ours.config)
        adapters = apply_torch_lora(adapted, rank, alpha, tuple(DEFAULT_TARGETS))
        copy_weights(adapted_ours, adapted)  # strict, by name: the base weights and our adapters' A and B
        self.models = {"full": full.train(), "lora": adapted.train()}
        x, y = finetune_batch(VOCAB_SIZE, BATCH_SIZE, full_ours.config.block_size)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        settings = {mode: hyperparameters(mode) for mode in MODES}
        self.grad_clip = {mode: s["grad_clip"] for mode, s in settings.items()}
        trainable = [p for p in full.parameters() if p.requires_grad]
        groups = {"full": [{"params": [p for p in trainable if p.ndim >= 2],
                            "weight_decay": settings["full"]["weight_decay"]},
                           {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}],
                  "lora": [{"params": [p for _, p in adapters], "weight_decay": settings["lora"]["weight_decay"]}]}
        self.opts = {mode: torch.optim.AdamW(groups[mode], lr=settings[mode]["lr"], betas=settings[mode]["betas"],
                                             eps=settings[mode]["eps"]) for mode in MODES}
        self.params = {mode: [p for g in groups[mode] for p in g["params"]] for mode in MODES}
        self.info = {"optimizer": f"torch.optim.AdamW (default: {self._adamw_impl(trainable)})",
                     "adapted_layers": sorted({name.rsplit(".", 1)[0] for name, _ in adapters})}

    @staticmethod
    def _adamw_impl(params: list[Any]) -> str:
        """Which AdamW kernel torch picks by default for these tensors: foreach (multi-tensor) or a for-loop."""
        from torch.optim.optimizer import _default_to_fused_or_foreach

        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        return "foreach multi-tensor" if foreach else "single-tensor for-loop"

    def clip(self, params: list[Any], max_norm: float) -> float:
        return float(self.torch.nn.utils.clip_grad_norm_(params, max_norm))

    def nbytes(self, t: Any) -> int:
        return t.numel() * t.element_size()


def _thread_report(side: str, worker: _Side) -> dict[str, Any]:
    """The thread counts the libraries report: BLAS pools (threadpoolctl) and, for torch, its intra-op threads."""
    report: dict[str, Any] = {}
    try:
        import threadpoolctl

        report["threadpools"] = [{"api": p["internal_api"], "threads": p["num_threads"]}
                                 for p in threadpoolctl.threadpool_info()]
    except ImportError:
        report["threadpools"] = None
    if side == "torch":
        report["torch_threads"] = worker.torch.get_num_threads()
    return report


def _worker(args: argparse.Namespace) -> int:
    """Build one side, then answer commands on stdin with one JSON line each on stdout.

    ``first MODE``: the first step, inspected (ours: under tracemalloc);
    ``steps MODE N``: N steps; ``trace MODE``: one step of ours under tracemalloc.
    """
    import platform

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but our replies may reach the pipe
    side = _Ours(args.rank, args.alpha) if args.worker == "ours" else _Torch(args.rank, args.alpha, args.threads)
    import numpy as np

    versions = {"python": sys.version.split()[0], "numpy": np.__version__}
    if args.worker == "torch":
        versions["torch"] = side.torch.__version__

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    modes = {mode: {"trainable_parameters": sum(int(np.prod(p.shape)) for p in side.params[mode]),
                    "parameters": sum(int(np.prod(p.shape)) for p in side.every_parameter(mode)),
                    "hyperparameters": hyperparameters(mode)} for mode in MODES}
    target_fraction = float((np.asarray(side.y) != -100).mean())
    reply({"ready": True, "versions": versions, "platform": platform.platform(), "target_fraction": target_fraction,
           "threads": _thread_report(args.worker, side), "modes": modes, **side.info})
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "first":
            mode = rest[0]
            reply(side.traced_step(mode, inspect=True) if isinstance(side, _Ours) else side.step(mode, inspect=True))
        elif command == "steps":
            reply({"steps": [side.step(rest[0]) for _ in range(int(rest[1]))]})
        elif command == "trace":
            reply(side.traced_step(rest[0]))
        elif command == "quit":
            break
    return 0


# ---------------------------------------------------------------- parent: drive both, pair the blocks
class _Worker(PipeWorker):
    def __init__(self, side: str, args: argparse.Namespace) -> None:
        super().__init__(side, __file__, ["--threads", str(args.threads), "--rank", str(args.rank),
                                          "--alpha", str(args.alpha)], args.threads)

    def block(self, mode: str, steps: int, gap: float) -> dict[str, Any]:
        """After ``gap`` seconds of quiet, an untimed lead-in step and ``steps`` timed ones, back to back.

        Returns the timed steps, their median and ``foreign_cores``: the CPU other
        processes used meanwhile, in cores (machine busy time from /proc/stat minus
        the steps' own CPU time, over their wall time), or None without /proc/stat.
        """
        time.sleep(gap)
        from tinygrad_llm.train.hardware import cores_busy_seconds  # this process's cores, busy
        before = cores_busy_seconds()
        lead, *timed = self.ask(f"steps {mode} {steps + 1}")["steps"]
        after = cores_busy_seconds()
        foreign = None
        if before is not None and after is not None:
            every = [lead, *timed]
            foreign = max(0.0, after - before - sum(s["cpu"] for s in every)) / sum(s["total"] for s in every)
        return {"steps": timed, "median": statistics.median(s["total"] for s in timed), "foreign_cores": foreign}

    def close(self) -> None:
        super().close(goodbye="quit")


def _round_order(i: int) -> list[str]:
    """Round i's order of the four configurations: rotated by i, reversed every fourth round."""
    order = CONFIGS[i % 4:] + CONFIGS[:i % 4]
    return order[::-1] if (i // 4) % 2 else order


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else abs(a - b)


def _parent(args: argparse.Namespace) -> int:
    import platform
    from datetime import UTC, datetime

    load_before = os.getloadavg()
    rounds_n = math.ceil(args.steps / args.block)
    workers = {side: _Worker(side, args) for side in SIDES}
    hello = {side: w.hello for side, w in workers.items()}
    try:
        first = {c: workers[c.split("/")[0]].ask(f"first {c.split('/')[1]}", args.gap) for c in CONFIGS}
        warm = {c: workers[c.split("/")[0]].ask(f"steps {c.split('/')[1]} {args.warmup}", args.gap)["steps"]
                for c in CONFIGS}
        rounds = []
        for i in range(rounds_n):
            got = {c: workers[c.split("/")[0]].block(c.split("/")[1], args.block, args.gap) for c in _round_order(i)}
            rounds.append(got)
            print(f"round {i + 1:>3}/{rounds_n}: " + "  ".join(f"{c} {got[c]['median'] * 1e3:7.1f} ms"
                                                             for c in CONFIGS), flush=True)
        traced = {mode: workers["ours"].ask(f"trace {mode}", args.gap) for mode in MODES}
    finally:
        for w in workers.values():
            w.close()

    quiet = [r for r in rounds if all(b["foreign_cores"] is not None and b["foreign_cores"] < QUIET_CORES
                                      for b in r.values())]

    def paired(num: str, den: str, among: list[dict[str, Any]]) -> float | None:
        return round(statistics.median(r[num]["median"] / r[den]["median"] for r in among), 3) if among else None

    ratios = {}
    for name, num, den in [("lora_over_full_ours", "ours/lora", "ours/full"),
                           ("lora_over_full_torch", "torch/lora", "torch/full"),
                           ("ours_over_torch_full", "ours/full", "torch/full"),
                           ("ours_over_torch_lora", "ours/lora", "torch/lora")]:
        ratios[name] = {"all_rounds": paired(num, den, rounds), "quiet_rounds": paired(num, den, quiet)}

    configs: dict[str, Any] = {}
    for c in CONFIGS:
        side, mode = c.split("/")
        steps = [s for r in rounds for s in r[c]["steps"]]
        f = first[c]
        configs[c] = {
            "step_ms": round(statistics.median(s["total"] for s in steps) * 1e3, 2),
            **{f"{ph}_ms": round(statistics.median(s[ph] for s in steps) * 1e3, 2)
               for ph in ("forward", "backward", "update")},
            "cpu_ms": round(statistics.median(s["cpu"] for s in steps) * 1e3, 2),
            "tokens_per_s": round(BATCH_SIZE * hello["ours"]["block_size"] / statistics.median(
                s["total"] for s in steps), 1),
            "step_ms_all": [round(s["total"] * 1e3, 2) for s in steps],
            "block_median_ms_all": [round(r[c]["median"] * 1e3, 2) for r in rounds],
            "other_load_cores_all": [None if r[c]["foreign_cores"] is None else round(r[c]["foreign_cores"], 2)
                                     for r in rounds],
            "trainable_parameters": hello[side]["modes"][mode]["trainable_parameters"],
            "parameters": hello[side]["modes"][mode]["parameters"],
            "tensors_with_grad": f["tensors_with_grad"],
            "grad_bytes": f["grad_bytes"],
            "adamw_moment_bytes": f["moment_bytes"],
            "grads_and_moments_bytes": f["grad_bytes"] + f["moment_bytes"],
            "first_step_loss": f["loss"],
            "first_step_grad_norm": f["grad_norm"],
            "warmup_losses": [s["loss"] for s in warm[c]],
            "optimizer": hello[side]["optimizer"],
        }

    def gap_of(mode: str, key: str) -> float:
        return _rel(configs[f"ours/{mode}"][key], configs[f"torch/{mode}"][key])

    checks = {}
    for mode in MODES:
        warm_gap = max((_rel(a, b) for a, b in zip(configs[f"ours/{mode}"]["warmup_losses"],
                                                   configs[f"torch/{mode}"]["warmup_losses"], strict=True)),
                       default=0.0)
        checks[mode] = {"first_step_loss_rel_diff": gap_of(mode, "first_step_loss"),
                        "first_step_loss_agrees": gap_of(mode, "first_step_loss") <= LOSS_RTOL,
                        "first_step_grad_norm_rel_diff": gap_of(mode, "first_step_grad_norm"),
                        "warmup_losses_max_rel_diff": warm_gap,
                        "grads_and_moments_bytes_equal": configs[f"ours/{mode}"]["grads_and_moments_bytes"]
                        == configs[f"torch/{mode}"]["grads_and_moments_bytes"]}

    full_bytes = configs["ours/full"]["grads_and_moments_bytes"]
    lora_bytes = configs["ours/lora"]["grads_and_moments_bytes"]
    weight_bytes = hello["ours"]["modes"]["full"]["parameters"] * 4
    traced_first = {mode: first[f"ours/{mode}"]["traced_peak_bytes"] for mode in MODES}
    traced_steady = {mode: traced[mode]["traced_peak_bytes"] for mode in MODES}
    memory = {
        "weights_bytes": weight_bytes,
        "grads_and_moments_bytes": {"full": full_bytes, "lora": lora_bytes, "saved": full_bytes - lora_bytes,
                                    "lora_over_full": round(lora_bytes / full_bytes, 5)},
        "ours_tracemalloc_peak_bytes": {
            "first_step": {**traced_first, "saved": traced_first["full"] - traced_first["lora"],
                           "lora_over_full": round(traced_first["lora"] / traced_first["full"], 3)},
            "steady_step": {**traced_steady, "saved": traced_steady["full"] - traced_steady["lora"],
                            "lora_over_full": round(traced_steady["lora"] / traced_steady["full"], 3)},
            "first_step_kept": {mode: first[f"ours/{mode}"]["traced_kept_bytes"] for mode in MODES},
        },
        "method": ("grads_and_moments: sum over the tensors that exist after the first step (the gradients before "
                   "zero_grad, AdamW's exp_avg and exp_avg_sq) of elements x bytes per element, the same formula on "
                   "both sides (equal: see checks); the weights (and LoRA's adapters, 4 bytes per trainable "
                   "parameter) are not in it. ours_tracemalloc_peak: the peak of the allocations traced by "
                   "tracemalloc (NumPy reports its array buffers) during one step of ours, started just before it: "
                   "first_step creates the AdamW moments as well; steady_step runs after the timed steps, its "
                   "moments already exist; first_step_kept: what the first step left allocated (the moments, "
                   "and modules that the first step imports lazily)."),
    }

    c0 = hello["ours"]
    report = {
        "benchmark": "finetune_step: one fine-tuning step, full vs LoRA, ours vs PyTorch eager CPU",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "threads": args.threads, "threads_reported": {s: hello[s]["threads"] for s in SIDES},
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "versions": hello["torch"]["versions"],
        "settings": {"preset": PRESET, "vocab_size": VOCAB_SIZE, "padded_vocab_size": c0["padded_vocab_size"],
                     "batch_size": BATCH_SIZE, "block_size": c0["block_size"],
                     "tokens_per_step": BATCH_SIZE * c0["block_size"],
                     "target_fraction": round(c0["target_fraction"], 4),
                     "dtype": "float32", "lora": {"rank": args.rank, "alpha": args.alpha,
                                                  "adapted_layers": c0["adapted_layers"]},
                     "hyperparameters": {mode: c0["modes"][mode]["hyperparameters"] for mode in MODES},
                     "step": "forward + loss + backward + clip_grad_norm_ + AdamW step + zero_grad"},
        "timing": {"steps": rounds_n * args.block, "rounds": rounds_n, "block": args.block, "warmup": args.warmup,
                   "gap_s": args.gap, "quiet_rounds": len(quiet),
                   "statistic": ("step_ms and phases: median over the timed steps of a configuration; a ratio: "
                                 "median over rounds of the ratio of the two blocks' median step times in that "
                                 "round (time ratios: below 1 means the numerator is faster); quiet rounds: other "
                                 f"processes used under {QUIET_CORES} cores during each block of the round")},
        "ratios": ratios,
        "configs": configs,
        "memory": memory,
        "checks": checks,
    }
    out = Path(args.out)
    write_json(out, report)
    _print_table(report)
    print(f"wrote {out}")
    return 0 if all(ch["first_step_loss_agrees"] for ch in checks.values()) else 1


def _print_table(report: dict[str, Any]) -> None:
    s, m, t, cfg = report["settings"], report["machine"], report["timing"], report["configs"]
    ratios, memory = report["ratios"], report["memory"]
    print(f"\n{s['preset']} GPT ({cfg['ours/full']['parameters']:,} parameters, vocab {s['vocab_size']}), batch "
          f"{s['batch_size']}x{s['block_size']} ({100 * s['target_fraction']:.0f}% of targets trained), float32, "
          f"{m['threads']} thread(s) a side; LoRA r={s['lora']['rank']} alpha={s['lora']['alpha']:g} on "
          f"{len(s['lora']['adapted_layers'])} layers (attn.c_attn, attn.c_proj)")
    print(f"median of {t['steps']} timed steps each; ratios: median over {t['rounds']} rounds "
          f"({t['quiet_rounds']} quiet)\n")
    print(f"{'':12}{'step ms':>9}{'fwd':>8}{'bwd':>8}{'update':>8}{'trainable':>12}{'grads+AdamW':>13}"
          f"{'first loss':>12}")
    for c in CONFIGS:
        r = cfg[c]
        print(f"{c.replace('/', ' '):<12}{r['step_ms']:9.1f}{r['forward_ms']:8.1f}{r['backward_ms']:8.1f}"
              f"{r['update_ms']:8.1f}{r['trainable_parameters']:12,}{_size(r['grads_and_moments_bytes']):>13}"
              f"{r['first_step_loss']:12.6f}")
    print()
    labels = {"lora_over_full_ours": "LoRA/full time, ours ", "lora_over_full_torch": "LoRA/full time, torch",
              "ours_over_torch_full": "ours/torch time, full", "ours_over_torch_lora": "ours/torch time, LoRA"}
    for key, label in labels.items():
        q = ratios[key]["quiet_rounds"]
        print(f"{label}  {ratios[key]['all_rounds']:.3f}" + (f"   (quiet rounds {q:.3f})" if q is not None else ""))
    g = memory["grads_and_moments_bytes"]
    print(f"\ngrads + AdamW moments (both sides, exact): full {_size(g['full'])}, LoRA {_size(g['lora'])}, saved "
          f"{_size(g['saved'])} ({100 * (1 - g['lora_over_full']):.2f}%); weights {_size(memory['weights_bytes'])}")
    tm = memory["ours_tracemalloc_peak_bytes"]
    for label, key in [("first step ", "first_step"), ("steady step", "steady_step")]:
        p = tm[key]
        change = f"saved {_size(p['saved'])}" if p["saved"] >= 0 else f"LoRA {_size(-p['saved'])} more"
        print(f"ours tracemalloc peak, {label}: full {_size(p['full'])}, LoRA {_size(p['lora'])}, {change} "
              f"(LoRA/full {p['lora_over_full']:.3f})")
    for mode, ch in report["checks"].items():
        print(f"check {mode:<4}: first-step loss rel. diff {ch['first_step_loss_rel_diff']:.1e} "
              f"({'ok' if ch['first_step_loss_agrees'] else 'FAIL'}, tol {LOSS_RTOL:g}), grad norm "
              f"{ch['first_step_grad_norm_rel_diff']:.1e}, warm-up losses {ch['warmup_losses_max_rel_diff']:.1e}, "
              f"memory counts equal: {ch['grads_and_moments_bytes_equal']}")


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per configuration (median over them)")
    parser.add_argument("--block", type=int, default=2, help="timed steps per block (after one untimed lead-in)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each configuration after the first")
    parser.add_argument("--threads", type=int, default=1, help="BLAS / torch threads, the same for both sides")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    parser.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (scale alpha / r)")
    parser.add_argument("--gap", type=float, default=0.3,
                        help="seconds of idle before each step (OpenBLAS threads spin ~0.1 s after a call)")
    parser.add_argument("--out", default="benchmarks/results/finetune_step.json")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import_from_repository()  # benchmarks/tokenizer.py would shadow the tokenizer package
    if args.worker:
        os.environ.update({v: str(args.threads) for v in THREAD_VARS})  # before NumPy or torch is imported
        return _worker(args)
    return _parent(args)


if __name__ == "__main__":
    sys.exit(main())
