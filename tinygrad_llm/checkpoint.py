"""Training checkpoints: one safetensors file holding everything a run needs to continue.

A checkpoint stores the model's tensors under their state_dict names, the
optimizer's arrays under ``optim/...``, and one JSON document in the file's
metadata: the format tag, the model config, the step, the optimizer's scalars,
the data loader's position, the random state and the tokenizer's hash.
Nothing is pickled, so a checkpoint from a stranger cannot run code.

Files are written atomically by ``nn.state.save`` (temporary file, fsync,
rename): a run killed while saving leaves the previous checkpoint intact. The
same function stores a CRC-32 checksum of every tensor and of the metadata,
which loading verifies: a byte damaged on disk is a CheckpointError naming the
file and the tensor, never a silently different model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nn import state
from nn.state import StateFileError
from tinygrad_llm.model import GPT, GPTConfig
from tokenizer import Tokenizer
from util.files import file_sha256

__all__ = ["FORMAT", "Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint", "step_checkpoints",
           "latest_checkpoint", "resolve_checkpoint", "read_info", "load_model", "TOKENIZER_FILE"]

FORMAT = "tinygrad-llm-checkpoint/1"
OPTIM_PREFIX = "optim/"
TOKENIZER_FILE = "tokenizer.txt"  # the run directory's copy of the data's tokenizer
_STEP_FILE = re.compile(r"^ckpt_(\d+)\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, truncated, foreign or does not fit the run."""


@dataclass
class Checkpoint:
    """What a checkpoint file holds, in memory."""

    model: dict[str, np.ndarray]
    info: dict[str, Any]            # config, step, loader, rng, tokenizer hash, metrics, ...
    optimizer: dict[str, Any] | None = None


def _split_arrays(obj: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """Replace every array inside ``obj`` by a reference ``{"__array__": name}`` and collect it in ``arrays``."""
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and not isinstance(obj, np.generic):
        name = prefix.removesuffix("/")  # optim/state/2/exp_avg
        arrays[name] = np.asarray(obj)
        return {"__array__": name}
    if isinstance(obj, dict):
        return {str(k): _split_arrays(v, f"{prefix}{k}/", arrays) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_split_arrays(v, f"{prefix}{i}/", arrays) for i, v in enumerate(obj)]
    return obj.item() if isinstance(obj, np.generic) else obj


def _join_arrays(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The inverse of :func:`_split_arrays`."""
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        return {k: _join_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_arrays(v, arrays) for v in obj]
    return obj


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically."""
    tensors = {name: np.asarray(a) for name, a in checkpoint.model.items()}
    optim_arrays: dict[str, np.ndarray] = {}
    optim_json = None
    if checkpoint.optimizer is not None:
        optim_json = _split_arrays(checkpoint.optimizer, OPTIM_PREFIX, optim_arrays)
    tensors.update(optim_arrays)
    meta = {"format": FORMAT, "info": checkpoint.info, "optimizer": optim_json}
    state.save(path, tensors, metadata={"tinygrad_llm": json.dumps(meta)})


def _read_meta(path: Path, metadata: dict[str, str] | None) -> dict[str, Any]:
    try:
        meta = json.loads((metadata or {})["tinygrad_llm"])
        if meta.get("format") != FORMAT:
            raise KeyError("format")
    except (KeyError, ValueError, TypeError, AttributeError):
        raise CheckpointError(f"{path}: not a tinygrad-llm training checkpoint") from None
    return meta


def read_info(path: str | Path) -> dict[str, Any]:
    """A checkpoint's info (config, step, ...) without reading its tensors."""
    try:
        return _read_meta(Path(path), state.load_metadata(path))["info"]
    except StateFileError as exc:
        raise CheckpointError(str(exc)) from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; anything else is a CheckpointError."""
    path = Path(path)
    try:
        metadata = state.load_metadata(path)
        tensors = state.load(path)
    except StateFileError as exc:
        raise CheckpointError(str(exc)) from None
    meta = _read_meta(path, metadata)
    arrays = {name: t.numpy() for name, t in tensors.items()}
    model = {k: v for k, v in arrays.items() if not k.startswith(OPTIM_PREFIX)}
    optimizer = None
    if meta["optimizer"] is not None:
        optimizer = _join_arrays(meta["optimizer"], arrays)
        optimizer["state"] = {int(k): v for k, v in optimizer["state"].items()}  # JSON keys are strings
    return Checkpoint(model=model, info=meta["info"], optimizer=optimizer)


def step_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """The ``ckpt_<step>.safetensors`` files of a run directory, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = step_checkpoints(directory)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its best checkpoint, else its latest)."""
    path = Path(path)
    if path.is_dir():
        best = path / "best.safetensors"
        chosen = best if best.exists() else latest_checkpoint(path)
        if chosen is None:
            raise CheckpointError(f"{path}: no checkpoint in this directory")
        return chosen
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    return path


def load_model(path: str | Path, build: Callable[[GPTConfig], GPT] = GPT) -> tuple[GPT, Tokenizer]:
    """The model and tokenizer of a checkpoint (a file or a run directory), ready for generation.

    The tokenizer is the ``tokenizer.txt`` the trainer copied beside the
    checkpoints; its hash must be the one the checkpoint was trained with.
    ``build`` makes the model the tensors are loaded into (a fine-tuning run
    with LoRA adapters passes one that adds them).
    """
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path)
    try:
        # Checkpoints always hold the whole model, whatever tensor parallelism trained it.
        config = GPTConfig.from_dict({**ckpt.info["model_config"], "tensor_parallel": 1})
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unusable model config ({exc})") from None
    model = build(config)
    try:
        model.load_state_dict(ckpt.model)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    tokenizer_path = path.parent / TOKENIZER_FILE
    if not tokenizer_path.exists():
        raise CheckpointError(f"{path}: no {TOKENIZER_FILE} beside the checkpoint")
    if file_sha256(tokenizer_path) != ckpt.info.get("tokenizer_sha256"):
        raise CheckpointError(f"{tokenizer_path} is not the tokenizer {path.name} was trained with")
    return model, Tokenizer.load(tokenizer_path)
