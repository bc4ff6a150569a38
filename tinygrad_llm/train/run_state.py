"""What a training checkpoint saves and restores, and where the files of a run live.

A run directory (``--out``) holds:

    ckpt_<step>.safetensors   every checkpoint_interval steps and at the end; the last keep_last are kept
    best.safetensors          the lowest validation loss so far
    tokenizer.txt             a copy of the data's tokenizer: the directory is self-contained
    log.jsonl                 one JSON object per line (training records and evaluations)
    loss.png                  the loss curves, drawn at the end

:class:`RunState` is everything beyond the tensors that a resumed run needs to
continue exactly: the step, the plan it is following, the seconds already
spent, the data position, the random streams, the best validation loss. It
travels as the checkpoint's ``info`` document.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinygrad_llm.checkpoint import TOKENIZER_FILE, Checkpoint, save_checkpoint, step_checkpoints
from util.files import atomic_write, file_sha256

__all__ = ["Plan", "RunState", "RunDirectory"]


@dataclass(frozen=True)
class Plan:
    """How long the run trains: to step ``max_steps``, for ``time_budget`` wall-clock seconds, or both.

    A run is planned in steps (``--max-steps``), in wall-clock seconds
    (``--time-budget``), or both. Either way the schedule
    (:func:`nn.optim.learning_rate`) reads one number,
    ``progress`` from 0 (the first step) to 1 (the last), so a time-budgeted run
    decays its learning rate to the end whatever the machine's speed does
    half-way: if a busy machine halves the step rate, the schedule stretches over
    the steps that fit, instead of being cut off part-way down.

    - in steps: progress = steps done / (steps planned - 1), exact and repeatable;
    - in time: progress = seconds spent / seconds by which the last step must
      start (the budget less the final evaluation and checkpoint, and one step);
    - both: whichever is further along.

    Warmup counts steps (``warmup_steps``) but also ends once a tenth of the run
    is done, so a short run still reaches the peak learning rate.

    Extending a finished run (``--resume`` with a larger ``--max-steps`` or a new
    ``--time-budget``) replaces its plan by a longer one that starts where the run
    started: the schedule continues as if the run had been planned that long from
    the beginning, as nanoGPT's does when ``max_iters`` grows. The learning rate
    rises from the floor it had reached to where the longer run would be now.
    """

    max_steps: int | None = None
    time_budget: float | None = None

    def step_progress(self, step: int) -> float:
        """Progress by steps of the step taken after ``step`` steps (0 when the plan has no step limit)."""
        if self.max_steps is None:
            return 0.0
        return 1.0 if self.max_steps <= 1 else min(1.0, step / (self.max_steps - 1))


@dataclass
class RunState:
    """The counters of a run; with the model and optimizer tensors, all a checkpoint holds."""

    step: int = 0
    plan: Plan = field(default_factory=Plan)
    elapsed: float = 0.0                  # wall-clock seconds of every earlier process of the run
    best_val_loss: float | None = None
    done: bool = False                    # the plan ran to its end (steps or budget); False after Ctrl-C
    eval_seconds: float = 0.0             # the last evaluation's and checkpoint's wall time: what the budget
    save_seconds: float = 0.0             # keeps in reserve for the final ones
    loader: dict[str, Any] = field(default_factory=dict)
    rng_by_rank: list[dict] = field(default_factory=list)  # one random state per process

    def to_info(self, model_config: dict, train_config: dict, tokenizer_sha256: str) -> dict[str, Any]:
        """The checkpoint's info document (strict JSON: no infinities)."""
        return {"model_config": model_config, "train_config": train_config, "tokenizer_sha256": tokenizer_sha256,
                "step": self.step, "plan": dataclasses.asdict(self.plan), "elapsed": self.elapsed,
                "best_val_loss": self.best_val_loss, "done": self.done, "eval_seconds": self.eval_seconds,
                "save_seconds": self.save_seconds, "loader": self.loader,
                "rng_by_rank": self.rng_by_rank, "processes": len(self.rng_by_rank)}

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> RunState:
        """The state saved in ``info``; checkpoints from before plans existed had one plan of ``max_steps``."""
        best = info.get("best_val_loss")
        plan = info.get("plan") or {"max_steps": info.get("max_steps"),
                                    "time_budget": info["train_config"].get("time_budget")}
        return cls(step=info["step"], plan=Plan(**plan), elapsed=info.get("elapsed", 0.0),
                   best_val_loss=None if best is None or not math.isfinite(best) else best,
                   done=info.get("done", False), eval_seconds=info.get("eval_seconds", 0.0),
                   save_seconds=info.get("save_seconds", 0.0), loader=info["loader"],
                   rng_by_rank=info.get("rng_by_rank") or [info["rng"]])


class RunDirectory:
    """The files of one run: checkpoints (with pruning), the tokenizer copy and the JSON Lines log."""

    def __init__(self, path: str | Path, keep_last: int) -> None:
        self.path = Path(path)
        self.keep_last = keep_last
        self.log_path = self.path / "log.jsonl"

    def save(self, checkpoint: Checkpoint, step: int, best: bool, tokenizer_path: Path, tokenizer_sha256: str) -> Path:
        """Write ``ckpt_<step>.safetensors`` (or ``best.safetensors``) atomically; prune old step checkpoints."""
        self.path.mkdir(parents=True, exist_ok=True)
        tokenizer_copy = self.path / TOKENIZER_FILE
        if not tokenizer_copy.exists() or file_sha256(tokenizer_copy) != tokenizer_sha256:
            atomic_write(tokenizer_copy, lambda tmp: shutil.copyfile(tokenizer_path, tmp))
        path = self.path / ("best.safetensors" if best else f"ckpt_{step:07d}.safetensors")
        save_checkpoint(path, checkpoint)
        if not best:
            for _, old in step_checkpoints(self.path)[:-self.keep_last]:
                old.unlink(missing_ok=True)
        return path

    def log(self, record: dict[str, Any]) -> None:
        """Append one strict-JSON line (non-finite numbers become null)."""
        self.path.mkdir(parents=True, exist_ok=True)
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
