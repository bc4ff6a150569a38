"""The training loop: batches in, optimizer steps out, with checkpoints, logs, progress and a time budget.

    trainer = pretraining(model_fields, config)     # tinygrad_llm.train.pretraining builds the pieces
    summary = trainer.fit()

:class:`Trainer` knows nothing about where batches come from: it takes a
:class:`Setup` (model, optimizer, a batch source with a ``state_dict``, a
validation function, the processes) and runs the loop, which reads top to
bottom in :meth:`Trainer.fit`, like nanoGPT's train.py:

1. before each step: stop if Ctrl-C was pressed, the planned steps are done,
   or the time budget would not hold one more step plus the final
   evaluation and checkpoint;
2. the learning rate from the plan's progress (``run_state.Plan``, ``nn.optim.learning_rate``);
3. ``accum`` micro-batches whose gradients add up (``train_step``), then
   clipping, then the optimizer step (skipped if the loss or gradient is
   not finite; ``max_bad_steps`` in a row stop the run);
4. every ``log_interval`` steps a JSON line with loss, learning rate,
   gradient norm, tokens/s and MFU; every ``eval_interval`` the validation
   metrics (and ``best.safetensors``); every ``checkpoint_interval`` a
   checkpoint; every few seconds the BLAS threads follow the machine's load.

At the end (or at Ctrl-C, or when the budget is spent) it evaluates, writes a
checkpoint and draws the loss plot. A checkpoint holds the model, the
optimizer and the :class:`RunState`, so a resumed run continues exactly.

Under ``mpiexec -n N`` the same loop runs on N processes (``nn.distributed``):
each data-parallel process reads its own slice of every batch and DDP averages
the gradients; process 0 alone logs, shows progress and writes checkpoints,
which hold the whole model, so a run resumes on any number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

import nn
from nn import distributed, optim
from tinygrad_llm.checkpoint import Checkpoint, CheckpointError, latest_checkpoint, load_checkpoint, step_checkpoints
from tinygrad_llm.model import GPT, ConfigError, estimate_mfu
from tinygrad_llm.train.config import TrainConfig
from tinygrad_llm.train.hardware import ThreadGovernor, available_cores, peak_flops, threads_from_environment
from tinygrad_llm.train.plot import plot_losses
from tinygrad_llm.train.run_state import Plan, RunDirectory, RunState
from util.progress import Progress

__all__ = ["Batches", "Setup", "Trainer", "TrainingError", "replica_seed", "FINAL_MARGIN_SECONDS"]

# Model fields that choose how the model is laid out in memory, not what it computes: a run may resume with others.
_LAYOUT_FIELDS = ("checkpoint_activations", "tensor_parallel")

FINAL_MARGIN_SECONDS = 1.0
"""Kept free at the end of a time budget for what is not measured (the loss plot, closing files)."""

STEP_TIME_WINDOW = 8
"""The next step is expected to take as long as the longest of the last this many.

On a shared machine consecutive steps differ by a quarter or more (190 or 240 ms
for the same step of ``small`` at two threads here), and a budget must hold for
the slow one: with the last step alone as the estimate, one 90-second run in
eight ended 0.3 s late."""


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. the loss stayed non-finite); reported as one line."""


class Batches(Protocol):
    """Where training batches come from: pretraining's token windows, fine-tuning's conversations, ..."""

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets, both (B, T) token ids; a target of -100 is not trained on."""

    def state_dict(self) -> dict[str, Any]:
        """The position in the data, saved in every checkpoint."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Setup:
    """Everything the loop trains with; :func:`tinygrad_llm.train.pretraining` builds one from token shards."""

    model: GPT
    optimizer: optim.Optimizer
    batches: Batches
    validate: Callable[[], dict[str, float]]   # -> {"val_loss": ..., ...}; every process calls it
    parallel: distributed.ParallelState
    accum: int                                 # micro-batches per optimizer step
    tokens_per_step: int                       # all processes together
    tokenizer_path: Path                       # copied into the run directory
    tokenizer_sha256: str
    ddp: distributed.DistributedDataParallel | None = None
    title: str = "GPT"                         # for the loss plot
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # more facts every checkpoint records


def replica_seed(seed: int, replica: int, step: int = 0) -> int:
    """The random seed of data-parallel replica ``replica`` > 0 (its dropout masks differ from the others')."""
    return int(np.random.SeedSequence([seed, replica, step]).generate_state(1)[0])


class Trainer:
    """The loop over one :class:`Setup`, writing into the run directory ``config.out_dir``."""

    def __init__(self, setup: Setup, config: TrainConfig, resume: bool = False, replan: bool = False,
                 stream: TextIO | None = None, started: float | None = None) -> None:
        """``resume``: continue the run in ``config.out_dir``. ``replan`` (with ``resume``): ``config.max_steps``
        and ``config.time_budget`` (seconds from now on) replace the saved plan, to extend a run.
        ``started``: when the budget's clock started (default: now)."""
        self.stream = sys.stderr if stream is None else stream  # looked up now, so a redirected stderr is honoured
        self.setup, self.config = setup, config
        self.model, self.optimizer = setup.model, setup.optimizer
        self.model_config = setup.model.config
        self.parallel = setup.parallel
        self.accum = setup.accum
        self.files = RunDirectory(config.out_dir, config.keep_last)
        self.started = time.monotonic() if started is None else started  # this process's share of `elapsed`
        self.state = RunState(plan=Plan(max_steps=config.max_steps, time_budget=config.time_budget))
        self.on_step: Callable[[Trainer], None] | None = None  # called after every step (tests, tools)
        self.last_eval: dict[str, float] | None = None
        self._stop_requested = False
        self._recent_steps: deque[float] = deque(maxlen=STEP_TIME_WINDOW)  # wall times of the last steps
        self._progress = 0.0          # the plan's progress, agreed by all processes at the last stop check
        self._steps_here, self._loop_started = 0, 0.0  # steps taken by this process's loop, and when it began
        if resume:
            self._resume(replan)
        elif step_checkpoints(self.files.path):
            raise ConfigError(f"{self.files.path} already holds checkpoints; pass --resume to continue that run "
                              "or choose another --out")
        elif self.is_main and self.files.log_path.exists():  # a run stopped before its first checkpoint
            self.files.log_path.unlink()
            self.say(f"{self.files.path}: removed the log of an earlier run that saved no checkpoint")

    # ------------------------------------------------------------ the loop
    @property
    def step(self) -> int:
        return self.state.step

    @step.setter
    def step(self, value: int) -> None:
        self.state.step = value

    @property
    def max_steps(self) -> int | None:
        return self.state.plan.max_steps

    @property
    def is_main(self) -> bool:
        return self.parallel.rank == 0

    def fit(self) -> dict[str, Any]:
        """Train until the plan is done (or Ctrl-C, or the budget); returns a summary."""
        c, plan = self.config, self.state.plan
        self.files.path.mkdir(parents=True, exist_ok=True)
        # Processes of one job on one machine share its cores; BLAS threads set in the environment are a choice.
        hosts = self.parallel.world.all_gather_object(socket.gethostname())
        share = max(1, available_cores() // hosts.count(socket.gethostname()))
        with ThreadGovernor(c.threads or threads_from_environment(), cores=share) as threads, self._ctrl_c_saves():
            peak = self._describe(threads, hosts)
            if self.step == 0:
                self.evaluate()
            bad_steps = 0
            progress = self._progress_bar()
            window_seconds, window_tokens = 0.0, 0  # training steps only: evaluations and saves are not in tokens/s
            try:
                self._loop_started = time.monotonic()
                status = self._stop_reason()
                while status is None:
                    step_start = time.monotonic()
                    lr = self.learning_rate()
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
                    step_seconds = time.monotonic() - step_start
                    self._recent_steps.append(step_seconds)
                    self._steps_here += 1
                    window_tokens += self.setup.tokens_per_step
                    window_seconds += step_seconds
                    if self.step % c.log_interval == 0 or self.step in (1, plan.max_steps):
                        tps = window_tokens / window_seconds if window_seconds > 0 else 0.0
                        mfu = estimate_mfu(self.model.flops_per_token(), tps, peak)
                        self.log({"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm, "tokens_per_s": tps,
                                  "mfu": mfu, "threads": threads.threads, "time": time.time()})
                        progress.set_fields(loss=f"{loss:.3f}", **{"tok/s": f"{tps:,.0f}"}, mfu=f"{mfu:.1%}")
                        window_seconds, window_tokens = 0.0, 0
                    progress.total = self._planned_steps()
                    progress.update(1)
                    if self.on_step is not None:
                        self.on_step(self)
                    status = self._stop_reason()
                    if status in (None, "interrupted") and self.step % c.eval_interval == 0:
                        self.evaluate()  # (at the plan's end the final evaluation follows the loop)
                    if status is None and self.step % c.checkpoint_interval == 0:
                        self.save()
                    if threads.update():
                        self.say(f"machine load changed: now {threads.describe()}")
            finally:
                progress.close()
            if status != "interrupted":
                self.state.done = True
                if self.last_eval is None or self.last_eval.get("step") != self.step:
                    self.evaluate()  # the plan's last numbers, whether steps or time ended it
            path = self.save()
        if self.is_main:
            plot_losses(self.files.records(), self.files.path / "loss.png",
                        f"{self.model.num_parameters():,}-parameter {self.setup.title}")
        summary = {"status": status, "step": self.step, "max_steps": plan.max_steps, "checkpoint": str(path),
                   "best_val_loss": self.state.best_val_loss, "seconds": self._elapsed()}
        self.say(self._closing_line(summary))
        return summary

    @staticmethod
    def _closing_line(summary: dict[str, Any]) -> str:
        """``finished at step 500/500 in 412s; best validation loss 4.3913; checkpoint runs/small/ckpt_...``."""
        best = summary["best_val_loss"]
        best_text = "no validation yet" if best is None else f"best validation loss {best:.4f}"
        planned = f"/{summary['max_steps']}" if summary["max_steps"] is not None else ""
        hint = "; continue with --resume" if summary["status"] == "interrupted" else ""
        return (f"{summary['status']} at step {summary['step']}{planned} in {summary['seconds']:.0f}s; {best_text}; "
                f"checkpoint {summary['checkpoint']}{hint}")

    def train_step(self) -> tuple[float, float]:
        """One optimizer step's gradients over ``accum`` micro-batches; returns (mean loss, gradient norm)."""
        total_loss = 0.0
        ddp = self.setup.ddp
        model = ddp or self.model
        for i in range(self.accum):
            x, y = self.setup.batches.next_batch()
            # Under DDP only the last micro-batch's backward talks to the other processes.
            quiet = ddp is not None and i < self.accum - 1
            with ddp.no_sync() if quiet else contextlib.nullcontext():
                _, loss = model(x, y)
                (loss * (1.0 / self.accum)).backward()
            total_loss += float(loss.item()) / self.accum
        if ddp is not None:  # the loss of the whole batch, for the log (the gradients already are)
            total_loss = float(self.parallel.data.all_reduce(np.array([total_loss]), op="mean")[0])
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        tensor_group = self.parallel.tensor if self.parallel.tensor.size > 1 else None
        norm = optim.clip_grad_norm_(params, max_norm, comm=tensor_group)
        return total_loss, float(norm)

    def learning_rate(self) -> float:
        """The learning rate of the next step: the schedule at the plan's progress (agreed in :meth:`_stop_reason`)."""
        c = self.config
        return optim.learning_rate(c.schedule, self._progress, self.step, max_lr=c.lr,
                             min_lr=c.lr / 10 if c.min_lr is None else c.min_lr, warmup_steps=c.warmup_steps)

    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint and return from :meth:`fit` (what Ctrl-C does)."""
        self._stop_requested = True

    # ------------------------------------------------------------ the plan and the clock
    def _elapsed(self) -> float:
        """Wall-clock seconds of the whole run so far: earlier processes plus this one."""
        return self.state.elapsed + time.monotonic() - self.started

    @property
    def _step_seconds(self) -> float:
        """What the next step is expected to take: the longest of the last ``STEP_TIME_WINDOW`` (0 before any)."""
        return max(self._recent_steps, default=0.0)

    def _start_deadline(self) -> float | None:
        """The plan's second by which the next step must start for the budget to hold (None: no budget).

        The budget must hold the step (as long as the last one took), the final
        evaluation and the final checkpoints, a step one and maybe a new best
        (as long as the last ones took; remembered across a resume) and a margin.
        """
        plan = self.state.plan
        if plan.time_budget is None:
            return None
        reserve = self.state.eval_seconds + 2 * self.state.save_seconds + FINAL_MARGIN_SECONDS
        return plan.time_budget - reserve - self._step_seconds

    def _progress_fraction(self) -> float:
        """How far the plan has got, 0 at its first step and 1 at its last: by steps or by time, the further."""
        plan = self.state.plan
        fraction = plan.step_progress(self.step)
        deadline = self._start_deadline()
        if deadline is not None:
            spent = self._elapsed()
            last = deadline - spent < self._step_seconds  # the step after this one will not fit: this is the last
            fraction = max(fraction, 1.0 if last or deadline <= 0 else min(1.0, spent / deadline))
        return fraction

    def _planned_steps(self) -> int | None:
        """The step at which the plan will end, as far as can be told now (for the progress bar's ETA)."""
        plan = self.state.plan
        estimate = plan.max_steps
        deadline = self._start_deadline()
        if deadline is not None and self._steps_here:
            # Wall time per step so far, evaluations included: steadier than the last step's time, for the ETA.
            mean_step = (time.monotonic() - self._loop_started) / self._steps_here
            by_time = self.step + 1 + max(0, int((deadline - self._elapsed()) / mean_step))
            estimate = by_time if estimate is None else min(estimate, by_time)
        return estimate

    def _stop_reason(self) -> str | None:
        """Why the loop ends before the next step (None: go on), and the next step's progress.

        Both are agreed by all processes (the maximum of each): if one stops,
        all stop together, and every process uses the same learning rate, though
        each measures its own clock. Progress never goes back.
        """
        plan = self.state.plan
        deadline = self._start_deadline()
        flags = np.array([self._stop_requested, plan.max_steps is not None and self.step >= plan.max_steps,
                          deadline is not None and self._elapsed() > deadline,
                          max(self._progress, self._progress_fraction())], dtype=np.float64)
        self.parallel.world.all_reduce(flags, op="max")
        self._progress = float(flags[3])
        reasons = ("interrupted", "finished", "time budget reached")
        return next((reason for reason, flag in zip(reasons, flags[:3], strict=True) if flag), None)

    # ------------------------------------------------------------ evaluation, messages, files
    def evaluate(self) -> dict[str, float]:
        """Validation metrics at this step, logged; a new best writes ``best.safetensors``."""
        start = time.monotonic()
        metrics = self.setup.validate()
        self.state.eval_seconds = time.monotonic() - start
        self.log({"step": self.step, **metrics, "time": time.time()})
        parts = [f"val loss {metrics['val_loss']:.4f}"]
        if "val_ppl" in metrics:
            parts.append(f"perplexity {metrics['val_ppl']:.2f}")
        if "val_bpb" in metrics:
            parts.append(f"{metrics['val_bpb']:.3f} bits/byte")
        self.say(f"step {self.step}: " + ", ".join(parts))
        self.last_eval = {**metrics, "step": self.step}
        best = self.state.best_val_loss
        is_best = self.step > 0 and (best is None or metrics["val_loss"] < best)
        # Saving is collective: process 0's verdict decides for all, so a last-bit difference cannot split them.
        if self.parallel.world.broadcast_object(is_best):
            self.state.best_val_loss = metrics["val_loss"]
            self.save(best=True)
        return metrics

    def say(self, message: str) -> None:
        if self.is_main:
            print(message, file=self.stream, flush=True)

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``out_dir/log.jsonl`` (main process only)."""
        if self.is_main:
            self.files.log(record)

    def save(self, best: bool = False) -> Path:
        """Write ``ckpt_<step>.safetensors`` (or ``best.safetensors``); every process must call it."""
        start = time.monotonic()
        # Collectives first (every process takes part), then process 0 writes the whole model.
        model_state = distributed.full_state_dict(self.model, self.parallel.tensor)
        optimizer_state = distributed.full_optimizer_state(self.optimizer, self.parallel.tensor)
        self.state.rng_by_rank = self.parallel.world.all_gather_object(nn.get_rng_state())
        self.state.loader = self.setup.batches.state_dict()
        self.state.elapsed, self.started = self._elapsed(), time.monotonic()
        path = self.files.path / ("best.safetensors" if best else f"ckpt_{self.step:07d}.safetensors")
        if self.is_main:
            info = self.state.to_info(self.model_config.to_dict(), dataclasses.asdict(self.config),
                                      self.setup.tokenizer_sha256) | self.setup.info
            path = self.files.save(Checkpoint(model_state, info, optimizer_state), self.step, best,
                                   self.setup.tokenizer_path, self.setup.tokenizer_sha256)
        self.state.save_seconds = time.monotonic() - start
        return path

    def _resume(self, replan: bool) -> None:
        path = latest_checkpoint(self.files.path)
        if path is None:
            raise CheckpointError(f"{self.files.path}: no checkpoint to resume from")
        ckpt = load_checkpoint(path)
        info = ckpt.info
        if info.get("tokenizer_sha256") != self.setup.tokenizer_sha256:
            raise CheckpointError(f"{path}: trained with another tokenizer than the one in {self.config.data}")
        saved, ours = info["model_config"], self.model_config.to_dict()
        differ = [f"{k} (checkpoint {saved.get(k)!r}, now {v!r})" for k, v in ours.items()
                  if k not in _LAYOUT_FIELDS and saved.get(k) != v]
        if differ:
            raise CheckpointError(f"{path}: model config does not match: " + ", ".join(differ))
        try:
            tensor = self.parallel.tensor
            self.model.load_state_dict(distributed.shard_state_dict(self.model, ckpt.model, tensor))
            self.optimizer.load_state_dict(distributed.shard_optimizer_state(self.optimizer, ckpt.optimizer, tensor))
            state = RunState.from_info(info)
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        self.setup.batches.load_state_dict(state.loader)
        world, data = self.parallel.world, self.parallel.data
        if len(state.rng_by_rank) == world.size:  # the same layout: every process continues its own stream
            nn.set_rng_state(state.rng_by_rank[world.rank])
        elif data.rank == 0:
            nn.set_rng_state(state.rng_by_rank[0])
        else:  # a new layout: fresh streams for the new replicas (only dropout uses them)
            nn.manual_seed(replica_seed(self.config.seed, data.rank, state.step))
        processes = len(state.rng_by_rank)
        moved = f" (saved by {processes} process{'es' if processes > 1 else ''})" \
            if processes != self.parallel.world_size else ""
        if state.done and not replan:
            raise ConfigError(f"{path}: this run already finished its plan at step {state.step}; to train on, "
                              "give --resume a larger --max-steps or a --time-budget")
        self.state = state
        if replan:
            self.say(f"resumed from {path} at step {self.step}{moved}")
            self._extend(path)
        else:
            self.say(f"resumed from {path} at step {self.step}{moved}; continuing its plan{self._plan_text()}")

    def _extend(self, path: Path) -> None:
        """Replace the plan by ``config``'s step count and budget (from now on): see ``run_state.Plan``."""
        c = self.config
        if c.max_steps is not None and c.max_steps <= self.step:
            raise ConfigError(f"--max-steps {c.max_steps} is not beyond the checkpoint's step {self.step}")
        budget = None if c.time_budget is None else self.state.elapsed + c.time_budget  # the plan counts from 0
        self.state.plan = Plan(max_steps=c.max_steps, time_budget=budget)
        self.config = dataclasses.replace(c, time_budget=budget)  # what the checkpoints will record
        self.state.done = False
        self.say(f"extending the run:{self._plan_text()}; the schedule continues as if the run had been "
                 "planned that long from the start")

    def _plan_text(self) -> str:
        """`` to step 500``, `` for 420s of wall-clock time (300s left)``, or both joined by "or"."""
        plan = self.state.plan
        parts = [f"to step {plan.max_steps}"] if plan.max_steps is not None else []
        if plan.time_budget is not None:
            left = plan.time_budget - self.state.elapsed
            parts.append(f"for {plan.time_budget:.0f}s of wall-clock time"
                         + (f" ({left:.0f}s left)" if self.state.elapsed else ""))
        return " " + " or ".join(parts) if parts else ""

    def _describe(self, threads: ThreadGovernor, hosts: list[str]) -> float:
        """Say what is trained how; return the peak FLOP/s of the hardware of all processes (on ``hosts``)."""
        s = self.setup
        peak = peak_flops(self.config.device)
        # CPU processes on one machine share its cores; each GPU process has its own card.
        units = len(set(hosts)) if self.config.device == "cpu" else len(hosts)
        self.say(f"model: {self.model.num_parameters():,} parameters, {self.model_config.n_layer} layers, "
                 f"context {self.model_config.block_size}; {s.tokens_per_step:,} tokens per step "
                 f"({self.accum} micro-batch{'es' if self.accum > 1 else ''}); "
                 f"{self.parallel.world_size} process{'es' if self.parallel.world_size > 1 else ''}; "
                 f"training{self._plan_text()}")
        self.say(f"threads: {threads.describe()}; MFU against the {peak.source}")
        self.log({"step": self.step, "peak_flops": peak.flops * units, "peak_source": peak.source,
                  "threads": threads.threads, "time": time.time()})
        return peak.flops * units

    def _progress_bar(self) -> Progress:
        """The progress bar (process 0 only draws; the others get one writing nowhere)."""
        import io

        stream = self.stream if self.is_main else io.StringIO()
        return Progress(total=self._planned_steps(), unit="step", desc="train", stream=stream, initial=self.step)

    @contextlib.contextmanager
    def _ctrl_c_saves(self) -> Iterator[None]:
        """While training, Ctrl-C finishes the step and saves; a second Ctrl-C aborts at once."""
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.say("\nCtrl-C: finishing this step and saving a checkpoint (press again to abort)")
        self.request_stop()
