"""How to train: the ``TrainConfig`` fields, and how presets, TOML files and ``--set`` combine into them.

    model_fields, config = resolve_config("small", toml_path="run.toml", overrides=["lr=3e-4"])

Every value is checked when the config is built, so a mistake (``lr=abc``,
``warmup_steps=-10``) fails at once in one line that names the field, before a
model is built or a run directory is made.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nn.optim import SCHEDULES
from tinygrad_llm.model import PRESETS, ConfigError, GPTConfig, check_field_types

__all__ = ["TrainConfig", "resolve_config", "parse_duration", "parse_set", "PRESET_RECIPES"]

PRESET_RECIPES: dict[str, dict[str, Any]] = {
    # The main job's preset: the learning rate that won the sweep at its own time budget (issue 20,
    # benchmarks/results/main_job_sweep.json; a 1M-parameter model takes a higher rate than GPT-2's 6e-4).
    "small": dict(lr=2e-3),
}
"""Training settings that go with a preset (under the TOML file, ``--set`` and keywords, like the preset's shape)."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the model's shape lives in GPTConfig)."""

    data: str = "data/stdlib"                # directory written by `tinygrad-llm prepare`
    out_dir: str = "runs/small"              # checkpoints, log.jsonl, loss.png
    batch_size: int = 16                     # sequences per micro-batch (per process)
    total_batch_tokens: int | None = None    # tokens per optimizer step, all processes; None = one micro-batch each
    max_steps: int | None = None             # optimizer steps; None = as many as time_budget allows
    time_budget: float | None = None         # wall-clock seconds for the whole run, evaluation and saving included
    lr: float = 1e-3
    min_lr: float | None = None              # floor of the decay; None = lr / 10
    warmup_steps: int = 100                  # ends early at a tenth of the run
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
    threads: int | None = None               # BLAS threads; None = the cores other programs leave free
    device: str = "cpu"
    dtype: str = "float32"
    max_bad_steps: int = 5                   # non-finite losses in a row before the run stops

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("batch_size", "eval_interval", "eval_batches", "checkpoint_interval", "keep_last",
                     "log_interval", "max_bad_steps", "max_steps", "total_batch_tokens", "threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        for name in ("warmup_steps", "seed", "weight_decay", "grad_clip", "min_lr"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must not be negative, not {value!r}")
        for name in ("time_budget", "lr", "eps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, not {value!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), not {getattr(self, name)!r}")
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ConfigError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr}): the decay would rise")
        if self.seed >= 2**63:
            raise ConfigError(f"seed must be below 2**63, not {self.seed}")
        if self.max_steps is None and self.time_budget is None:
            raise ConfigError("give max_steps or time_budget (or both)")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.device != "cpu":
            # The CUDA backend (CuPy arrays end to end, our kernels) is the GPU issue's work; until it
            # lands, say so in one line instead of failing deep inside the first step.
            raise ConfigError(f"device {self.device!r}: training runs on the CPU only for now (use --device cpu)")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be float32 or float64, not {self.dtype!r}")


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"10m"`` or ``"1.5h"``."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = str(text).strip().lower()
    scale = units.get(text[-1:], None)
    try:
        value = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 600, 90s, 10m, 1.5h)") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"a time budget must be positive (a finite number of seconds), not {text!r}")
    return value


def _parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax when it parses (3e-4, true, 12), else the bare string (rope)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set(item: str) -> tuple[str, Any]:
    """One ``--set key=value``: the key and its value (TOML syntax when it parses, else the bare string)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set needs key=value, got {item!r}")
    return key.strip(), _parse_value(value.strip())


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

    A preset brings its shape (``model.PRESETS``) and its recipe (``PRESET_RECIPES``).

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
        _place(*parse_set(item), model, train)
    if "vocab_size" in model:
        raise ConfigError("vocab_size comes from the data's tokenizer and cannot be set; choose it with "
                          "`tinygrad-llm prepare --vocab-size N`")
    for key, value in train_fields.items():
        if value is not None:
            _place(key, value, model, train)
    name = preset or file_preset or (None if resume_from else "small")
    if name is not None and name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    base = PRESETS[name] if name is not None else resume_from["model_config"]
    model_fields = {**base, **model}
    GPTConfig.from_dict({**model_fields})  # validate now, so a bad key fails before any work
    if not resume_from:
        train = {**PRESET_RECIPES.get(name, {}), **train}
    return model_fields, TrainConfig(**train)
