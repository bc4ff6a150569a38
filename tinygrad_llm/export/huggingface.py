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

The other direction, ``export_huggingface`` (a model and its tokenizer) and
``export_checkpoint`` (one of our runs), writes a directory that
``transformers.AutoModelForCausalLM`` and ``AutoTokenizer`` load, computing our
logits and our token ids. Our switches pick the architecture
(``ARCHITECTURES``): GPT-2's design is exported as GPT-2, rotary positions with
LayerNorm and GELU as GPT-NeoX, rotary positions with RMSNorm and SwiGLU as
Llama; other mixes are refused.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from nn import state
from nn.state import StateFileError
from tinygrad_llm.model import GPT, GPTConfig
from tokenizer import Tokenizer
from tokenizer.bpe import ENDOFTEXT
from tokenizer.huggingface import huggingface_files, load_huggingface, save_huggingface
from util.files import umask

__all__ = ["HuggingFaceError", "is_huggingface_directory", "gpt_from_huggingface", "load_huggingface_model",
           "ARCHITECTURES", "huggingface_architecture", "huggingface_config", "huggingface_weights",
           "export_huggingface", "export_checkpoint"]

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


# ---------------------------------------------------------------------- export

ARCHITECTURES = {  # (pos, norm, mlp) -> Hugging Face model_type
    ("learned", "layernorm", "gelu"): "gpt2",
    ("rope", "layernorm", "gelu"): "gpt_neox",
    ("rope", "rmsnorm", "swiglu"): "llama",
}
"""Which Hugging Face architecture computes exactly what our GPT computes, by its three switches.

Biases, tied or untied output weights and the number of key/value heads are
free within each: where the architecture always has a bias (GPT-2's and
GPT-NeoX's norms and MLP) ours, absent, is written as zeros, and where it has
one key/value head per query head (GPT-2, GPT-NeoX) each of our shared
key/value heads is written once per query head it serves, which is what
grouped-query attention computes. Every other mix of switches (learned
positions with RMSNorm or SwiGLU, rotary positions with only one of RMSNorm
and SwiGLU) has no Hugging Face counterpart and is refused."""

_ACTIVATION_NAMES = {"tanh": "gelu_new", "none": "gelu"}  # our GELU approximation -> Hugging Face's name


def huggingface_architecture(config: GPTConfig) -> str:
    """The Hugging Face ``model_type`` our ``config`` is exported as; ``HuggingFaceError`` if none fits."""
    key = (config.pos, config.norm, config.mlp)
    if key not in ARCHITECTURES:
        raise HuggingFaceError(f"no Hugging Face architecture has pos={config.pos}, norm={config.norm} and "
                               f"mlp={config.mlp} together (exportable: learned+layernorm+gelu as GPT-2, "
                               "rope+layernorm+gelu as GPT-NeoX, rope+rmsnorm+swiglu as Llama)")
    if config.tensor_parallel != 1:
        raise HuggingFaceError("a model split by tensor parallelism is exported whole: load it with "
                               "tensor_parallel=1 (load_model does)")
    return ARCHITECTURES[key]


def huggingface_config(config: GPTConfig, eot_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` of our model in its Hugging Face architecture (``eot_id``: <|endoftext|>'s id)."""
    kind = huggingface_architecture(config)
    common = {"model_type": kind, "vocab_size": config.vocab_size, "bos_token_id": eot_id, "eos_token_id": eot_id,
              "tie_word_embeddings": config.tie_weights, "initializer_range": 0.02, "use_cache": True,
              "torch_dtype": "float32"}
    if kind == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], **common, "n_positions": config.block_size,
                "n_ctx": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
                "n_head": config.n_head, "n_inner": None, "activation_function":
                _ACTIVATION_NAMES[config.gelu_approximate], "layer_norm_epsilon": config.norm_eps,
                "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False}
    # Both spellings of the rotary settings: transformers 5 reads rope_parameters, 4 the flat keys.
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    shared = {**common, "hidden_size": config.n_embd, "num_hidden_layers": config.n_layer,
              "num_attention_heads": config.n_head, "intermediate_size": config.mlp_hidden,
              "max_position_embeddings": config.block_size, "attention_dropout": config.dropout,
              "rope_theta": config.rope_theta}
    if kind == "gpt_neox":
        return {"architectures": ["GPTNeoXForCausalLM"], **shared,
                "rope_parameters": {**rope, "partial_rotary_factor": 1.0}, "rotary_pct": 1.0,
                "rotary_emb_base": config.rope_theta, "hidden_act": _ACTIVATION_NAMES[config.gelu_approximate],
                "layer_norm_eps": config.norm_eps, "use_parallel_residual": False,
                "attention_bias": config.bias, "hidden_dropout": config.dropout}
    return {"architectures": ["LlamaForCausalLM"], **shared, "rope_parameters": rope, "rope_scaling": None,
            "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim, "hidden_act": "silu",
            "rms_norm_eps": config.norm_eps, "attention_bias": config.bias, "mlp_bias": config.bias,
            "pretraining_tp": 1}


def huggingface_weights(model: GPT) -> dict[str, np.ndarray]:
    """Our model's weights under the Hugging Face names and layouts of its architecture, float32, unpadded.

    The embedding and output rows beyond ``vocab_size`` (our padding) are cut.
    GPT-2's projections are ``Conv1D`` modules, weight (in, out): transposed.
    GPT-NeoX's fused projection holds each head's query, key and value rows
    together. Llama's are separate, and our SwiGLU's ``c_fc`` rows [gate; up]
    become ``gate_proj`` and ``up_proj``. With tied weights the output matrix
    is not written (it is the embedding).
    """
    config = model.config
    kind = huggingface_architecture(config)
    ours = {name: np.asarray(p.numpy(), dtype=np.float32) for name, p in model.state_dict().items()}
    c, h, g, d, v = config.n_embd, config.n_head, config.kv_heads, config.head_dim, config.vocab_size

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Our tensor ``name``, or zeros of ``shape`` for a bias or norm shift we do not have."""
        return ours[name] if name in ours else np.zeros(shape, dtype=np.float32)

    def qkv(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """c_attn's weight or bias split into q (H*d, ...), k and v (G*d, ...), each of our rows once."""
        array = get(name, ((h + 2 * g) * d,))
        return array[:h * d], array[h * d:(h + g) * d], array[(h + g) * d:]

    def every_head(array: np.ndarray) -> np.ndarray:
        """(G*d, ...) -> (H*d, ...): key/value head j once per query head it serves (j*H/G ... (j+1)*H/G - 1)."""
        return np.repeat(array.reshape(g, d, *array.shape[1:]), h // g, axis=0).reshape(h * d, *array.shape[1:])

    out: dict[str, np.ndarray] = {}
    if kind == "gpt2":
        out["transformer.wte.weight"] = ours["wte.weight"][:v]
        out["transformer.wpe.weight"] = ours["wpe.weight"]
    else:
        out["gpt_neox.embed_in.weight" if kind == "gpt_neox" else "model.embed_tokens.weight"] = ours["wte.weight"][:v]
    for i in range(config.n_layer):
        ln_1, ln_2, attn, mlp = f"h.{i}.ln_1", f"h.{i}.ln_2", f"h.{i}.attn", f"h.{i}.mlp"
        if kind == "gpt2":
            p = f"transformer.h.{i}."
            for part in ("weight", "bias"):
                q, k, val = qkv(f"{attn}.c_attn.{part}")
                fused = np.concatenate([q, every_head(k), every_head(val)])
                out[p + f"attn.c_attn.{part}"] = fused.T if part == "weight" else fused
                out[p + f"ln_1.{part}"] = get(f"{ln_1}.{part}", (c,))
                out[p + f"ln_2.{part}"] = get(f"{ln_2}.{part}", (c,))
            out[p + "attn.c_proj.weight"] = ours[f"{attn}.c_proj.weight"].T
            out[p + "attn.c_proj.bias"] = get(f"{attn}.c_proj.bias", (c,))
            out[p + "mlp.c_fc.weight"] = ours[f"{mlp}.c_fc.weight"].T
            out[p + "mlp.c_fc.bias"] = get(f"{mlp}.c_fc.bias", (config.mlp_hidden,))
            out[p + "mlp.c_proj.weight"] = ours[f"{mlp}.c_proj.weight"].T
            out[p + "mlp.c_proj.bias"] = get(f"{mlp}.c_proj.bias", (c,))
        elif kind == "gpt_neox":
            p = f"gpt_neox.layers.{i}."
            parts = ("weight", "bias") if config.bias else ("weight",)
            for part in parts:
                q, k, val = qkv(f"{attn}.c_attn.{part}")
                per_head = np.stack([a.reshape(h, d, *a.shape[1:]) for a in (q, every_head(k), every_head(val))],
                                    axis=1)  # (H, 3, d, ...): each head's query, key and value rows together
                out[p + f"attention.query_key_value.{part}"] = per_head.reshape(3 * c, *q.shape[1:])
                out[p + f"attention.dense.{part}"] = ours[f"{attn}.c_proj.{part}"]
            for part in ("weight", "bias"):
                out[p + f"input_layernorm.{part}"] = get(f"{ln_1}.{part}", (c,))
                out[p + f"post_attention_layernorm.{part}"] = get(f"{ln_2}.{part}", (c,))
            out[p + "mlp.dense_h_to_4h.weight"] = ours[f"{mlp}.c_fc.weight"]
            out[p + "mlp.dense_h_to_4h.bias"] = get(f"{mlp}.c_fc.bias", (config.mlp_hidden,))
            out[p + "mlp.dense_4h_to_h.weight"] = ours[f"{mlp}.c_proj.weight"]
            out[p + "mlp.dense_4h_to_h.bias"] = get(f"{mlp}.c_proj.bias", (c,))
        else:
            p = f"model.layers.{i}."
            out[p + "input_layernorm.weight"] = ours[f"{ln_1}.weight"]
            out[p + "post_attention_layernorm.weight"] = ours[f"{ln_2}.weight"]
            for part in ("weight", "bias") if config.bias else ("weight",):
                for proj, array in zip(("q_proj", "k_proj", "v_proj"), qkv(f"{attn}.c_attn.{part}"), strict=True):
                    out[p + f"self_attn.{proj}.{part}"] = array
                out[p + f"self_attn.o_proj.{part}"] = ours[f"{attn}.c_proj.{part}"]
                gate, up = np.split(ours[f"{mlp}.c_fc.{part}"], 2)
                out[p + f"mlp.gate_proj.{part}"], out[p + f"mlp.up_proj.{part}"] = gate, up
                out[p + f"mlp.down_proj.{part}"] = ours[f"{mlp}.c_proj.{part}"]
    final = {"gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm", "llama": "model.norm"}[kind]
    out[f"{final}.weight"] = ours["ln_f.weight"]
    if kind != "llama":
        out[f"{final}.bias"] = get("ln_f.bias", (c,))
    if not config.tie_weights:
        out["embed_out.weight" if kind == "gpt_neox" else "lm_head.weight"] = ours["lm_head.weight"][:v]
    return {name: np.ascontiguousarray(array) for name, array in out.items()}


def export_huggingface(model: GPT, tokenizer: Tokenizer, directory: str | Path,
                       info: dict[str, Any] | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face directory; returns its path.

    ``config.json``, ``model.safetensors`` (float32) and the tokenizer files of
    ``tokenizer.huggingface.save_huggingface``, such that
    ``transformers.AutoModelForCausalLM.from_pretrained(directory)`` computes our
    logits and ``AutoTokenizer.from_pretrained(directory)`` our token ids.
    ``info`` (a checkpoint's, say) adds its ``step`` to the provenance kept
    under ``config.json``'s ``tinygrad_llm`` key, with our model config.

    The files are written into a new directory beside ``directory`` that is
    then renamed to it, so a failed export leaves no half-written model. An
    existing ``directory`` must be empty or an earlier Hugging Face directory
    (which is replaced); anything else (a run directory, say) is refused.
    ``HuggingFaceError`` (one line) for what cannot be exported.
    """
    config = model.config
    directory = Path(directory)
    if directory.exists() and not (directory.is_dir() and (is_huggingface_directory(directory)
                                                           or not any(directory.iterdir()))):
        raise HuggingFaceError(f"{directory}: exists and is not an empty or Hugging Face directory; "
                               "choose another output directory")
    if tokenizer.vocab_size > config.vocab_size:
        raise HuggingFaceError(f"the tokenizer has {tokenizer.vocab_size} ids, more than the model's "
                               f"{config.vocab_size}")
    eot = tokenizer.special_tokens.get(ENDOFTEXT)
    hf_config = huggingface_config(config, eot)
    hf_config["tinygrad_llm"] = {"model_config": config.to_dict(), "step": (info or {}).get("step")}
    weights = huggingface_weights(model)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        try:
            save_huggingface(tokenizer, staging, model_max_length=config.block_size)
        except ValueError as exc:
            raise HuggingFaceError(f"the tokenizer cannot be exported: {exc}") from None
        (staging / CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        state.save(staging / WEIGHTS, weights, metadata={"format": "pt"})
        _replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _replace_directory(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, moving an existing ``target`` aside first and deleting it after."""
    new.chmod(0o777 & ~umask())  # mkdtemp makes a private directory; give the usual mode
    old = None
    if target.exists():
        old = target.with_name(f"{new.name}.old")
        target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_checkpoint(checkpoint: str | Path, directory: str | Path) -> Path:
    """Export one of our checkpoints (a file or a run directory) to a Hugging Face directory; returns its path.

    A LoRA fine-tuning run's adapters are folded into the weights first.
    ``CheckpointError`` for a checkpoint that does not load, ``HuggingFaceError``
    for a model that cannot be exported, both one line.
    """
    from tinygrad_llm.chat.finetune import load_merged

    model, tokenizer, info = load_merged(checkpoint)
    return export_huggingface(model.eval(), tokenizer, directory, info)
