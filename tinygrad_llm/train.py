"""The training loop: from token shards to a checkpointed GPT.

    model_config, train_config = resolve_config("small", toml_path=None, overrides=["lr=3e-4"])
    Trainer(model_config, train_config).fit()

One optimizer step = ``accum`` micro-batches whose gradients add up to one
batch of ``total_batch_tokens`` tokens; then clipping at ``grad_clip``, the
learning rate from the schedule, and AdamW with weight decay on matrices only.
Every ``eval_interval`` steps the validation loss, perplexity and bits per
byte are measured; every ``checkpoint_interval`` steps (and at the end, and on
Ctrl-C) a checkpoint is written atomically. A resumed run restores the model,
the optimizer, the step, the data position and the random state, so it
continues with exactly the losses the uninterrupted run would have had.

Under ``mpiexec -n N`` the same code trains on N processes (``nn.distributed``):
each data-parallel process reads its own slice of every batch and DDP averages
the gradients, so a step equals one process's step on the whole batch; with
``tensor_parallel=T`` each group of T processes splits every block. Process 0
alone logs, shows progress and writes checkpoints, which always hold the whole
model, so a run resumes on any number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import nn
from nn import distributed, optim
from nn import functional as F
from tinygrad_llm.checkpoint import (
    TOKENIZER_FILE,
    Checkpoint,
    CheckpointError,
    file_sha256,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    step_checkpoints,
)
from tinygrad_llm.data.loader import BatchLoader, TokenShards, eval_windows, read_meta
from tinygrad_llm.files import atomic_write
from tinygrad_llm.model import GPT, ConfigError, GPTConfig, estimate_mfu, peak_flops
from tinygrad_llm.progress import Progress
from tokenizer import Tokenizer

__all__ = ["TrainConfig", "Trainer", "TrainingError", "resolve_config", "parse_duration", "evaluate"]


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. the loss stayed non-finite); reported as one line."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the model's shape lives in GPTConfig)."""

    data: str = "data/stdlib"                # directory written by `tinygrad-llm prepare`
    out_dir: str = "runs/small"              # checkpoints, log.jsonl, loss.png
    batch_size: int = 16                     # sequences per micro-batch (per process)
    total_batch_tokens: int | None = None    # tokens per optimizer step, all processes; None = one micro-batch each
    max_steps: int | None = None             # optimizer steps; None = as many as time_budget allows
    time_budget: float | None = None         # seconds of training, evaluation included
    lr: float = 1e-3
    min_lr: float | None = None              # floor of the decay; None = lr / 10
    warmup_steps: int = 100                  # capped at a tenth of max_steps
    schedule: str = "cosine"                 # "cosine", "constant" or "wsd"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0                   # 0 turns clipping off
    eval_interval: int = 100
    eval_batches: int = 20
    checkpoint_interval: int = 200
    keep_last: int = 2                       # step checkpoints kept (best.safetensors is extra)
    log_interval: int = 10
    seed: int = 1337
    device: str = "cpu"
    dtype: str = "float32"
    max_bad_steps: int = 5                   # non-finite losses in a row before the run stops

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_interval", "eval_batches", "checkpoint_interval", "keep_last",
                     "log_interval", "max_bad_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        for name in ("max_steps", "total_batch_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ConfigError(f"time_budget must be positive, not {self.time_budget!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, not {self.lr!r}")
        if self.max_steps is None and self.time_budget is None:
            raise ConfigError("give max_steps or time_budget (or both)")
        if self.schedule not in ("cosine", "constant", "wsd"):
            raise ConfigError(f"schedule must be cosine, constant or wsd, not {self.schedule!r}")
        if self.device != "cpu":
            # The CUDA backend (CuPy arrays end to end, our kernels) is the GPU issue's work; until it
            # lands, say so in one line instead of failing deep inside the first step.
            raise ConfigError(f"device {self.device!r}: training runs on the CPU only for now (use --device cpu)")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be float32 or float64, not {self.dtype!r}")


# ---------------------------------------------------------------- configuration
def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"10m"`` or ``"1.5h"``."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = str(text).strip().lower()
    scale = units.get(text[-1:], None)
    try:
        value = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 600, 90s, 10m, 1.5h)") from None
    if not value > 0:
        raise ConfigError(f"a time budget must be positive, not {text!r}")
    return value


def _parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax when it parses (3e-4, true, 12), else the bare string (rope)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


_MODEL_FIELDS = {f.name for f in dataclasses.fields(GPTConfig)}
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _place(key: str, value: Any, model: dict, train: dict) -> None:
    """Put ``key`` into the model or train section; ``model.x`` / ``train.x`` force the section."""
    section, _, name = key.rpartition(".")
    if section == "model" or (not section and name in _MODEL_FIELDS and name not in _TRAIN_FIELDS):
        if name not in _MODEL_FIELDS:
            raise ConfigError(f"unknown model config key {name!r}")
        model[name] = value
    elif section in ("train", "") and name in _TRAIN_FIELDS:
        train[name] = value
    else:
        known = ", ".join(sorted(_MODEL_FIELDS | _TRAIN_FIELDS))
        raise ConfigError(f"unknown config key {key!r}; known keys: {known}")


def resolve_config(preset: str | None = None, toml_path: str | Path | None = None,
                   overrides: list[str] | tuple[str, ...] = (), resume_from: dict[str, Any] | None = None,
                   **train_fields: Any) -> tuple[dict, TrainConfig]:
    """Merge preset (or the resumed run's config) < TOML file < ``--set key=value`` < keyword arguments.

    Returns the model fields (a dict: the vocabulary size comes from the data
    later) and the TrainConfig. The TOML file may have ``preset = "small"``,
    a ``[model]`` and a ``[train]`` table, or bare keys. ``resume_from`` is a
    checkpoint's info: a resumed run starts from the configuration it was saved
    with, so ``--resume`` alone continues it unchanged.
    """
    model: dict[str, Any] = {}
    train: dict[str, Any] = dict(resume_from["train_config"]) if resume_from else {}
    file_preset = None
    if toml_path is not None:
        try:
            document = tomllib.loads(Path(toml_path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{toml_path}: no such config file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml_path}: not valid TOML ({exc})") from None
        file_preset = document.pop("preset", None)
        for section in ("model", "train"):
            table = document.pop(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{toml_path}: [{section}] must be a table")
            for key, value in table.items():
                _place(f"{section}.{key}", value, model, train)
        for key, value in document.items():
            _place(key, value, model, train)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set needs key=value, got {item!r}")
        _place(key.strip(), _parse_value(value.strip()), model, train)
    for key, value in train_fields.items():
        if value is not None:
            _place(key, value, model, train)
    name = preset or file_preset or (None if resume_from else "small")
    if name is not None and name not in _presets():
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(_presets())}")
    base = _presets()[name] if name is not None else resume_from["model_config"]
    model_fields = {**base, **model}
    GPTConfig.from_dict({**model_fields})  # validate now, so a bad key fails before any work
    return model_fields, TrainConfig(**train)


def _presets() -> dict[str, dict]:
    from tinygrad_llm.model import PRESETS

    return PRESETS


# Model fields that choose how the model is laid out in memory, not what it computes: a run may resume with others.
_LAYOUT_FIELDS = ("checkpoint_activations", "tensor_parallel")


def _replica_seed(seed: int, replica: int, step: int = 0) -> int:
    """The random seed of data-parallel replica ``replica`` > 0 (its dropout masks differ from the others')."""
    return int(np.random.SeedSequence([seed, replica, step]).generate_state(1)[0])


def _json_number(value: Any) -> Any:
    """Non-finite floats become null: strict JSON has no NaN or Infinity."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


# ---------------------------------------------------------------- evaluation
def evaluate(model: GPT, shards: TokenShards, token_bytes: np.ndarray, batch_size: int,
             max_batches: int | None, comm: distributed.Communicator | None = None) -> dict[str, float]:
    """Validation loss (nats per token), perplexity and bits per byte over the first ``max_batches`` batches.

    Bits per byte divides the total loss in bits by the UTF-8 bytes of the
    predicted tokens, which makes models with different tokenizers comparable.
    With ``comm`` (the data-parallel group) each process scores every N-th
    batch and the sums are added up, so all get the numbers of the whole set.
    """
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    was_training = model.training
    model.eval()
    totals = np.zeros(3)  # nats, tokens, bytes
    with nn.no_grad():
        for i, (x, y) in enumerate(eval_windows(shards, model.config.block_size, batch_size, max_batches)):
            if i % size != rank:
                continue
            logits, _ = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
            totals += (float(loss.item()), y.size, int(token_bytes[y].sum()))
    model.train(was_training)
    if comm is not None:
        comm.all_reduce(totals, op="sum")
    nats, tokens, text_bytes = float(totals[0]), int(totals[1]), int(totals[2])
    loss = nats / max(tokens, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700)),
            "val_bpb": nats / math.log(2) / max(text_bytes, 1)}


# ---------------------------------------------------------------- the trainer
class Trainer:
    """Owns the model, optimizer, data and files of one run (``out_dir``)."""

    def __init__(self, model_fields: dict[str, Any], config: TrainConfig, resume: bool = False,
                 stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream  # looked up now, so a redirected stderr is honoured
        self.out_dir = Path(config.out_dir)
        self.meta = read_meta(config.data)
        tokenizer_path = Path(config.data) / self.meta["tokenizer"]["file"]
        self.tokenizer = Tokenizer.load(tokenizer_path)
        self.tokenizer_path = tokenizer_path
        self.tokenizer_sha256 = file_sha256(tokenizer_path)
        vocab = self.tokenizer.vocab_size  # the vocabulary always comes from the data's tokenizer
        self.model_config = GPTConfig.from_dict({**model_fields, "vocab_size": vocab})
        try:
            self.parallel = distributed.init(self.model_config.tensor_parallel)
        except ValueError as exc:
            raise ConfigError(f"{exc}; launch with mpiexec -n <a multiple of it>") from None
        self.rank = self.parallel.rank
        data = self.parallel.data  # the processes that share the batch (tensor-parallel peers share data)
        self.token_bytes = np.array([len(self.tokenizer.token_bytes(i)) for i in range(vocab)], dtype=np.int64)
        self.token_bytes[list(self.tokenizer.special_tokens.values())] = 0  # a document boundary is not text

        block = self.model_config.block_size
        tokens_per_micro = config.batch_size * block * data.size
        if config.total_batch_tokens is None:  # fixed now, so a resume on other processes keeps the batch
            config = dataclasses.replace(config, total_batch_tokens=tokens_per_micro)
        total = config.total_batch_tokens
        if total % tokens_per_micro:
            fits = [b for b in range(config.batch_size, 0, -1) if total % (b * block * data.size) == 0]
            hint = f"; try --set batch_size={fits[0]}" if fits else ""
            raise ConfigError(f"total_batch_tokens ({total}) must be a multiple of batch_size x block_size x "
                              f"data-parallel processes ({config.batch_size} x {block} x {data.size} = "
                              f"{tokens_per_micro}){hint}")
        self.config = config
        self.accum = total // tokens_per_micro
        self.tokens_per_step = total

        self.train_shards = TokenShards(config.data, "train")
        self.val_shards = TokenShards(config.data, "val")
        self.loader = BatchLoader(self.train_shards, config.batch_size, self.model_config.block_size,
                                  seed=config.seed, rank=data.rank, world_size=data.size)
        eval_windows(self.val_shards, self.model_config.block_size, 1)  # a val split shorter than a window fails now

        nn.manual_seed(config.seed)  # the same on every process: a split model is the dense one, cut
        self.model = GPT(self.model_config).to(config.dtype)
        self.ddp = distributed.DistributedDataParallel(self.model, comm=data) if data.size > 1 else None
        if data.rank > 0:  # dropout: each replica its own stream; replica 0 keeps the single-process one
            nn.manual_seed(_replica_seed(config.seed, data.rank))
        self.optimizer = optim.AdamW(optim.param_groups_for_weight_decay(self.model.named_parameters(),
                                                                         config.weight_decay),
                                     lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
        self.step = 0
        self.max_steps = config.max_steps
        self.best_val_loss = math.inf
        self.elapsed = 0.0  # training seconds before this process (resumed runs)
        self._stop_requested = False
        self._started = time.perf_counter()
        self.on_step: Callable[[Trainer], None] | None = None  # called after every step (tests, tools)
        if resume:
            self._resume()
        elif step_checkpoints(self.out_dir):
            raise ConfigError(f"{self.out_dir} already holds checkpoints; pass --resume to continue that run "
                              "or choose another --out")

    # ------------------------------------------------------------ messages and files
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def say(self, message: str) -> None:
        if self.is_main:
            print(message, file=self.stream, flush=True)

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``out_dir/log.jsonl`` (main process only)."""
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({k: _json_number(v) for k, v in record.items()}) + "\n")

    def schedule(self) -> Callable[[int], float]:
        c = self.config
        arguments: dict[str, Any] = {"max_lr": c.lr, "warmup_steps": self.warmup_steps}
        if c.schedule != "constant":  # the decaying ones
            arguments.update(total_steps=self.max_steps, min_lr=c.lr / 10 if c.min_lr is None else c.min_lr)
        if c.schedule == "wsd":  # decay over the last fifth of the steps after warmup
            arguments["decay_steps"] = (self.max_steps - self.warmup_steps) // 5
        return optim.make_schedule(c.schedule, **arguments)

    @property
    def warmup_steps(self) -> int:
        return min(self.config.warmup_steps, max(self.max_steps // 10, 1))

    # ------------------------------------------------------------ checkpoints
    def _info(self, rng_states: list[dict]) -> dict[str, Any]:
        return {
            "model_config": self.model_config.to_dict(), "train_config": dataclasses.asdict(self.config),
            "step": self.step, "max_steps": self.max_steps, "loader": self.loader.state_dict(),
            "rng": rng_states[0], "tokenizer_sha256": self.tokenizer_sha256,
            "rng_by_rank": rng_states if len(rng_states) > 1 else None, "processes": len(rng_states),
            "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
            "elapsed": self.elapsed + time.perf_counter() - self._started,
        }

    def save(self, best: bool = False) -> Path:
        """Write ``ckpt_<step>.safetensors`` (or ``best.safetensors``) and prune old step checkpoints."""
        path = self.out_dir / ("best.safetensors" if best else f"ckpt_{self.step:07d}.safetensors")
        # Collectives first (every process takes part), then process 0 writes the whole model.
        model_state = distributed.full_state_dict(self.model, self.parallel.tensor)
        optimizer_state = distributed.full_optimizer_state(self.optimizer, self.parallel.tensor)
        rng_states = self.parallel.world.all_gather_object(nn.get_rng_state())
        if not self.is_main:
            return path
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer_copy = self.out_dir / TOKENIZER_FILE
        if not tokenizer_copy.exists() or file_sha256(tokenizer_copy) != self.tokenizer_sha256:
            atomic_write(tokenizer_copy, lambda tmp: shutil.copyfile(self.tokenizer_path, tmp))
        save_checkpoint(path, Checkpoint(model_state, self._info(rng_states), optimizer_state))
        if not best:
            for _, old in step_checkpoints(self.out_dir)[:-self.config.keep_last]:
                old.unlink(missing_ok=True)
        return path

    def _resume(self) -> None:
        path = latest_checkpoint(self.out_dir)
        if path is None:
            raise CheckpointError(f"{self.out_dir}: no checkpoint to resume from")
        ckpt = load_checkpoint(path)
        info = ckpt.info
        if info.get("tokenizer_sha256") != self.tokenizer_sha256:
            raise CheckpointError(f"{path}: trained with another tokenizer than the one in {self.config.data}")
        saved = info["model_config"]
        ours = self.model_config.to_dict()
        differ = [f"{k} (checkpoint {saved.get(k)!r}, now {v!r})" for k, v in ours.items()
                  if k not in _LAYOUT_FIELDS and saved.get(k) != v]
        if differ:
            raise CheckpointError(f"{path}: model config does not match: " + ", ".join(differ))
        try:
            tensor = self.parallel.tensor
            self.model.load_state_dict(distributed.shard_state_dict(self.model, ckpt.model, tensor))
            self.optimizer.load_state_dict(distributed.shard_optimizer_state(self.optimizer, ckpt.optimizer, tensor))
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        self.step = info["step"]
        self.max_steps = self.config.max_steps or info["max_steps"]  # an explicit max_steps may extend the run
        self.loader.load_state_dict(info["loader"])
        by_rank, world = info.get("rng_by_rank"), self.parallel.world
        if by_rank and len(by_rank) == world.size:  # the same layout: every process continues its own stream
            nn.set_rng_state(by_rank[world.rank])
        elif self.parallel.data.rank == 0:
            nn.set_rng_state(info["rng"])
        else:  # a new layout: fresh streams for the new replicas (only dropout uses them)
            nn.manual_seed(_replica_seed(self.config.seed, self.parallel.data.rank, self.step))
        self.best_val_loss = math.inf if info.get("best_val_loss") is None else info["best_val_loss"]
        self.elapsed = info.get("elapsed", 0.0)
        processes = info.get("processes", 1)
        moved = f" (saved by {processes} process{'es' if processes > 1 else ''})" \
            if processes != self.parallel.world_size else ""
        self.say(f"resumed from {path} at step {self.step}/{self.max_steps}{moved}")

    # ------------------------------------------------------------ one step
    def train_step(self) -> tuple[float, float]:
        """One optimizer step over ``accum`` micro-batches; returns (mean loss, gradient norm)."""
        total_loss = 0.0
        model = self.ddp or self.model
        for i in range(self.accum):
            x, y = self.loader.next_batch()
            # Under DDP only the last micro-batch's backward talks to the other processes.
            quiet = self.ddp is not None and i < self.accum - 1
            with self.ddp.no_sync() if quiet else contextlib.nullcontext():
                _, loss = model(x, y)
                (loss * (1.0 / self.accum)).backward()
            total_loss += float(loss.item()) / self.accum
        if self.ddp is not None:  # the loss of the whole batch, for the log (the gradients already are)
            total_loss = float(self.parallel.data.all_reduce(np.array([total_loss]), op="mean")[0])
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        if self.parallel.tensor.size > 1:
            norm = distributed.clip_grad_norm_(params, max_norm, self.parallel.tensor)
        else:
            norm = optim.clip_grad_norm_(params, max_norm)
        return total_loss, float(norm)

    def _calibrate(self, budget_left: float) -> None:
        """Choose max_steps so training plus evaluation fits ``budget_left`` seconds.

        Times two optimizer-free steps and one evaluation, then restores the data
        position, the random state and the gradients, so calibration changes nothing
        but the step count.
        """
        loader_state, rng_state = self.loader.state_dict(), nn.get_rng_state()
        times = []
        for _ in range(2):
            start = time.perf_counter()
            self.train_step()
            times.append(time.perf_counter() - start)
            self.optimizer.zero_grad()
        self.loader.load_state_dict(loader_state)
        nn.set_rng_state(rng_state)
        step_time = min(times)
        start = time.perf_counter()
        evaluate(self.model, self.val_shards, self.token_bytes, self.config.batch_size, self.config.eval_batches,
                 self.parallel.data)
        eval_time = time.perf_counter() - start
        per_step = step_time + eval_time / self.config.eval_interval
        # Process 0's measurement decides for all: every process must run the same number of steps.
        self.max_steps = self.parallel.world.broadcast_object(max(1, int((budget_left - eval_time) / per_step)))
        self.say(f"time budget {budget_left:.0f}s: {step_time:.2f}s per step, {eval_time:.1f}s per evaluation "
                 f"-> {self.max_steps} steps")

    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint and return from :meth:`fit` (what Ctrl-C does)."""
        self._stop_requested = True

    # ------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps`` (or the time budget); returns a summary. Ctrl-C saves and returns early."""
        c = self.config
        self._started = time.perf_counter()
        if self.max_steps is None:
            self._calibrate(c.time_budget - self.elapsed)
        schedule = self.schedule()
        peak = peak_flops(c.device) * self.parallel.world_size  # tokens/s below counts every process's tokens
        flops_per_token = self.model.flops_per_token(self.model_config.block_size)
        self.say(f"model: {self.model.num_parameters():,} parameters, {self.model_config.n_layer} layers, "
                 f"context {self.model_config.block_size}; {self.tokens_per_step:,} tokens per step "
                 f"({self.accum} micro-batch{'es' if self.accum > 1 else ''}); {self.max_steps} steps")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.step == 0:
            self._evaluate_and_log()
        previous_handler = signal.getsignal(signal.SIGINT)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._on_sigint)
        bad_steps, status = 0, "finished"
        progress = Progress(total=self.max_steps, unit="step", desc="train", stream=self.stream) \
            if self.is_main else None
        if progress is not None:
            progress.update(self.step)
        window_start, window_tokens = time.perf_counter(), 0
        try:
            while self.step < self.max_steps:
                stop, over = self._should_stop()
                if stop:
                    status = "interrupted"
                    break
                if over:
                    status = "time budget reached"
                    break
                lr = schedule(self.step)
                optim.set_lr(self.optimizer, lr)
                loss, norm = self.train_step()
                if math.isfinite(loss) and math.isfinite(norm):
                    self.optimizer.step()
                    bad_steps = 0
                else:
                    bad_steps += 1
                    self.say(f"warning: non-finite loss or gradient at step {self.step}; step skipped "
                             f"({bad_steps} in a row)")
                    if bad_steps >= c.max_bad_steps:
                        raise TrainingError(f"{bad_steps} non-finite steps in a row at step {self.step}; "
                                            "lower the learning rate or check the data")
                self.optimizer.zero_grad()
                self.step += 1
                window_tokens += self.tokens_per_step
                if self.step % c.log_interval == 0 or self.step == 1 or self.step == self.max_steps:
                    seconds = time.perf_counter() - window_start
                    tps = window_tokens / seconds
                    mfu = estimate_mfu(flops_per_token, tps, peak)
                    self.log({"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm,
                              "tokens_per_s": tps, "mfu": mfu, "time": time.time()})
                    if progress is not None:
                        progress.set_fields(loss=f"{loss:.3f}", **{"tok/s": f"{tps:,.0f}"}, mfu=f"{mfu:.0%}")
                    window_start, window_tokens = time.perf_counter(), 0
                if progress is not None:
                    progress.update(1)
                if self.step % c.eval_interval == 0 or self.step == self.max_steps:
                    self._evaluate_and_log()
                if self.step % c.checkpoint_interval == 0 and self.step != self.max_steps:
                    self.save()
                if self.on_step is not None:
                    self.on_step(self)
        finally:
            if progress is not None:
                progress.close()
            signal.signal(signal.SIGINT, previous_handler)
        if status == "time budget reached":
            self._evaluate_and_log()  # the last numbers of the run, even when it ended early
        path = self.save()
        if status == "interrupted":
            self.say(f"interrupted at step {self.step}; checkpoint {path}; continue with --resume")
        elif status == "time budget reached":
            self.say(f"time budget reached at step {self.step} of {self.max_steps}; checkpoint {path}")
        if self.is_main:
            self.plot()
        return {"status": status, "step": self.step, "max_steps": self.max_steps, "checkpoint": str(path),
                "best_val_loss": self.best_val_loss, "seconds": self.elapsed + time.perf_counter() - self._started}

    def _should_stop(self) -> tuple[bool, bool]:
        """(stop requested, time budget spent), agreed by all processes: if one stops, all stop together."""
        c = self.config
        over = c.time_budget is not None and self.elapsed + time.perf_counter() - self._started > c.time_budget
        flags = np.array([self._stop_requested, over], dtype=np.float64)
        self.parallel.world.all_reduce(flags, op="max")
        return bool(flags[0]), bool(flags[1])

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.say("\nCtrl-C: finishing this step and saving a checkpoint (press again to abort)")
        self.request_stop()

    def _evaluate_and_log(self) -> None:
        metrics = evaluate(self.model, self.val_shards, self.token_bytes, self.config.batch_size,
                           self.config.eval_batches, self.parallel.data)
        self.log({"step": self.step, **metrics, "time": time.time()})
        self.say(f"step {self.step}: val loss {metrics['val_loss']:.4f}, perplexity {metrics['val_ppl']:.2f}, "
                 f"{metrics['val_bpb']:.3f} bits/byte")
        self.last_eval = metrics
        if metrics["val_loss"] < self.best_val_loss and self.step > 0:
            self.best_val_loss = metrics["val_loss"]
            self.save(best=True)

    def plot(self) -> Path | None:
        """Draw ``loss.png`` (training and validation loss against step) from log.jsonl."""
        log = self.out_dir / "log.jsonl"
        if not log.exists():
            return None
        records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
        val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
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
        ax.set_title(f"{self.model.num_parameters():,}-parameter GPT on {Path(self.config.data).name}")
        ax.grid(alpha=0.3)
        ax.legend()
        path = self.out_dir / "loss.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
        plt.close(fig)
        return path
