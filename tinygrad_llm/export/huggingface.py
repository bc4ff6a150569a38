"""A Hugging Face GPT-2 directory as a model we can evaluate, generate with and chat to.

A directory written by ``transformers``' ``save_pretrained`` (or downloaded by a
user from the hub; we never download) holds ``config.json``,
``model.safetensors`` and the tokenizer (``tokenizer.json``, or ``vocab.json``
and ``merges.txt``). GPT-2's architecture is our ``gpt2`` variant: learned
positions, pre-LayerNorm with biases, tanh-approximated GELU, tied embeddings.
Two differences of layout remain:

- Hugging Face's GPT-2 keeps its projections in ``Conv1D`` modules whose weight
  is (in, out); our ``Linear`` is (out, in), so those four matrices are
  transposed;
- our embedding tables have a vocabulary padded to a multiple of 64 rows (for
  fast matrix multiplies); the extra rows are zeros and no token id reaches them.

``load_huggingface_model`` returns the same ``(GPT, Tokenizer)`` pair as
``tinygrad_llm.checkpoint.load_model``, so every command takes either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nn import state
from nn.state import StateFileError
from tinygrad_llm.model import GPT, GPTConfig
from tokenizer import Tokenizer
from tokenizer.huggingface import huggingface_files, load_huggingface

__all__ = ["HuggingFaceError", "is_huggingface_directory", "gpt_from_huggingface", "load_huggingface_model"]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}  # HF's name -> our approximation
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class HuggingFaceError(ValueError):
    """A Hugging Face directory that is incomplete, damaged, or not a GPT-2."""


def is_huggingface_directory(path: str | Path) -> bool:
    """Whether ``path`` is a directory with a Hugging Face ``config.json`` (and so is not one of our runs)."""
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def _config(path: Path) -> GPTConfig:
    try:
        hf = json.loads((path / CONFIG).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise HuggingFaceError(f"{path / CONFIG}: not a readable JSON file ({exc})") from None
    if not isinstance(hf, dict) or hf.get("model_type", "gpt2") != "gpt2":
        kind = hf.get("model_type") if isinstance(hf, dict) else None
        raise HuggingFaceError(f"{path}: not a GPT-2 model (model_type {kind!r})")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS:
        raise HuggingFaceError(f"{path}: activation {activation!r} is not one GPT-2 uses")
    try:
        return GPTConfig.from_dict({
            "vocab_size": hf["vocab_size"], "block_size": hf.get("n_positions", hf.get("n_ctx")),
            "n_layer": hf["n_layer"], "n_head": hf["n_head"], "n_embd": hf["n_embd"],
            "norm_eps": hf.get("layer_norm_epsilon", 1e-5), "gelu_approximate": _ACTIVATIONS[activation],
            "dropout": 0.0, "tie_weights": hf.get("tie_word_embeddings", True)})
    except (KeyError, TypeError, ValueError) as exc:
        raise HuggingFaceError(f"{path / CONFIG}: unusable GPT-2 config ({exc})") from None


def _our_weights(tensors: dict[str, Any], config: GPTConfig) -> dict[str, np.ndarray]:
    """Hugging Face's GPT-2 tensors under our names, in our layout."""
    weights = {}
    for key, value in tensors.items():
        key = key.removeprefix("transformer.")
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers saved by old transformers versions, not weights
        array = value.numpy().astype(np.float32, copy=False)
        weights[key] = array.T if key.endswith(_CONV1D) else array
    for key in ("wte.weight", "lm_head.weight"):
        if key in weights and weights[key].shape == (config.vocab_size, config.n_embd):
            padded = np.zeros((config.padded_vocab_size, config.n_embd), dtype=np.float32)
            padded[:config.vocab_size] = weights[key]
            weights[key] = padded
    if config.tie_weights:
        weights.pop("lm_head.weight", None)  # the same matrix as wte: our model shares one parameter
        weights["lm_head.weight"] = weights.get("wte.weight")
    return weights


def gpt_from_huggingface(path: str | Path) -> GPT:
    """The GPT-2 in a Hugging Face directory (``config.json`` + ``model.safetensors``), in our model."""
    path = Path(path)
    config = _config(path)
    if not (path / WEIGHTS).is_file():
        sharded = " (sharded checkpoints are not read)" if (path / f"{WEIGHTS}.index.json").exists() else ""
        raise HuggingFaceError(f"{path}: no {WEIGHTS}{sharded}")
    try:
        tensors = state.load(path / WEIGHTS)
    except StateFileError as exc:
        raise HuggingFaceError(str(exc)) from None
    model = GPT(config)
    try:
        model.load_state_dict(_our_weights(tensors, config))
    except (KeyError, ValueError) as exc:
        raise HuggingFaceError(f"{path / WEIGHTS}: does not fit its config.json ({exc})") from None
    return model


def load_huggingface_model(path: str | Path) -> tuple[GPT, Tokenizer]:
    """The model and its imported tokenizer from a Hugging Face GPT-2 directory."""
    path = Path(path)
    if huggingface_files(path) is None:
        raise HuggingFaceError(f"{path}: no tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    model = gpt_from_huggingface(path)
    tokenizer = load_huggingface(path)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise HuggingFaceError(f"{path}: the tokenizer has {tokenizer.vocab_size} ids, more than the model's "
                               f"{model.config.vocab_size}")
    return model, tokenizer
