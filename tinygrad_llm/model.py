"""The GPT: a decoder-only transformer, configured by name or field by field.

    config = GPTConfig.preset("small", vocab_size=4096)
    model = GPT(config)
    logits, loss = model(idx, targets)      # idx, targets: (B, T) integer token ids

The block is pre-norm (GPT-2 and every model since): x + attn(norm(x)), then
x + mlp(norm(x)). Switches select the GPT-2 design (learned positions,
LayerNorm, GELU MLP) or the Llama design (rotary positions, RMSNorm, SwiGLU,
grouped-query attention), and any mix of them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

import nn
from nn import functional as F
from nn.attention import CausalSelfAttention, KVCache, RaggedKVCache
from nn.layers import Dropout, Embedding, LayerNorm, Linear, ModuleList, RMSNorm
from nn.module import Module
from nn.tensor import Tensor

__all__ = ["GPTConfig", "GPT", "PRESETS", "ConfigError", "check_field_types", "estimate_mfu"]


class ConfigError(ValueError):
    """An unknown preset or field, or a value the model cannot be built with."""


def check_field_types(config: Any) -> None:
    """Check every field of the (frozen) dataclass ``config`` against its annotation, in place.

    Values come from TOML files and ``--set key=value``, so ``lr=abc`` arrives as
    the string ``"abc"``: it must fail here, in one line naming the field, not
    later inside arithmetic. An ``int`` is accepted where a ``float`` is
    declared (and stored as a float); ``True`` is not a number; a float must be
    finite. Annotations may be ``X`` or ``X | None`` with X one of bool, int,
    float, str.
    """
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    for field, hint in typing.get_type_hints(type(config)).items():
        if field not in {f.name for f in dataclasses.fields(config)}:
            continue
        value = getattr(config, field)
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if value is None and type(None) in allowed:
            continue
        kind = next(t for t in allowed if t is not type(None))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # an integer too large for a float: not a usable number either
                raise ConfigError(f"{field} must be a finite number, not {value}") from None
            object.__setattr__(config, field, value)
        valid = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if valid and kind is float and not math.isfinite(value):
            valid = False
        if not valid:
            optional = " (or omitted)" if type(None) in allowed else ""
            finite = "a finite number" if kind is float else names[kind]
            raise ConfigError(f"{field} must be {finite}{optional}, not {value!r}")


@dataclass(frozen=True)
class GPTConfig:
    """Every architectural choice of the GPT. Defaults are GPT-2 124M's."""

    vocab_size: int = 50257
    block_size: int = 1024          # longest context, in tokens
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None    # key/value heads; None = n_head (fewer = grouped-query attention)
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True               # biases in Linear and LayerNorm (GPT-2: yes; Llama: no)
    pos: str = "learned"            # "learned" absolute embeddings or "rope"
    norm: str = "layernorm"         # "layernorm" or "rmsnorm"
    mlp: str = "gelu"               # "gelu" (4x wide) or "swiglu"
    gelu_approximate: str = "tanh"  # GPT-2 used the tanh approximation
    tie_weights: bool = True        # the output head reuses the token embedding
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    vocab_multiple: int = 64        # pad the embedding rows to a multiple of this (faster matmuls)
    checkpoint_activations: bool = False  # recompute each block in backward to save memory
    tensor_parallel: int = 1        # split each block's heads and MLP across this many processes (mpiexec)

    def __post_init__(self) -> None:
        check_field_types(self)
        choices = {"pos": ("learned", "rope"), "norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu"),
                   "gelu_approximate": ("none", "tanh")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ConfigError(f"{field} must be one of {', '.join(allowed)}, not {getattr(self, field)!r}")
        positive = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "vocab_multiple")
        for field in positive:
            if not isinstance(getattr(self, field), int) or getattr(self, field) <= 0:
                raise ConfigError(f"{field} must be a positive integer, not {getattr(self, field)!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.kv_heads:
            raise ConfigError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.kv_heads})")
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(f"rotary positions need an even head dimension, not {self.head_dim}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), not {self.dropout}")
        tp = self.tensor_parallel
        if not isinstance(tp, int) or tp < 1:
            raise ConfigError(f"tensor_parallel must be a positive integer, not {tp!r}")
        if self.n_head % tp or self.kv_heads % tp or self.mlp_hidden % tp:
            raise ConfigError(f"tensor_parallel={tp} must divide n_head ({self.n_head}), the key/value heads "
                              f"({self.kv_heads}) and the MLP width ({self.mlp_hidden})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @property
    def mlp_hidden(self) -> int:
        """4C for GELU; for SwiGLU 8C/3 (same parameter count with three matrices), rounded up to 64."""
        if self.mlp == "gelu":
            return 4 * self.n_embd
        return -(-8 * self.n_embd // 3 // 64) * 64

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named configuration, with any field overridden: ``GPTConfig.preset("small", dropout=0.1)``."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GPTConfig:
        """Build from a dict, naming any key that is not a field."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(f"unknown model config key(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # The GPT-2 family (Radford et al. 2019), context 1024, vocabulary 50257.
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-355m": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-774m": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-1558m": dict(n_layer=48, n_head=25, n_embd=1600),
    # Small CPU models for a 4096-token BPE vocabulary.
    "tiny": dict(vocab_size=4096, block_size=64, n_layer=2, n_head=2, n_embd=64),
    # small is the main job's model, the winner of its sweep at its nine-minute budget on two cores (issue 20,
    # benchmarks/results/main_job_sweep.json): rotary positions and width 128 (1.3M parameters) beat learned
    # positions and width 192 or 256; a smaller model sees more tokens in the same time.
    "small": dict(vocab_size=4096, block_size=128, n_layer=4, n_head=2, n_embd=128, pos="rope"),
}


class MLP(Module):
    """The position-wise feed-forward network: c_proj(act(c_fc(x))), widening to ``mlp_hidden`` in between.

    SwiGLU: c_fc makes [gate; up] in one matmul and the activation is silu(gate) * up.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden, self.kind, self.approximate = config.mlp_hidden, config.mlp, config.gelu_approximate
        width = hidden if config.mlp == "gelu" else 2 * hidden
        self.c_fc = Linear(config.n_embd, width, bias=config.bias)
        self.c_proj = Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        if self.kind == "gelu":
            h = h.gelu(approximate=self.approximate)
        else:
            gate, up = h.chunk(2, dim=-1)
            h = gate.silu() * up
        return self.dropout(self.c_proj(h))


def _norm(config: GPTConfig) -> Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.norm_eps)
    return LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class Block(Module):
    """One transformer layer, pre-norm: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = CausalSelfAttention(config.n_embd, config.n_head, config.n_kv_head, config.block_size,
                                        pos=config.pos, dropout=config.dropout, bias=config.bias,
                                        rope_theta=config.rope_theta)
        self.ln_2 = _norm(config)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size), and the loss when targets are given."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = Embedding(config.padded_vocab_size, config.n_embd)
        if config.pos == "learned":
            self.wpe = Embedding(config.block_size, config.n_embd)
        self.drop = Dropout(config.dropout)
        self.h = ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = _norm(config)
        self.lm_head = Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()
        if config.tensor_parallel > 1:
            self._split_for_tensor_parallel()

    def _split_for_tensor_parallel(self) -> None:
        """Keep this process's slice of every block's attention heads and MLP width (Megatron's layout).

        Called after initialisation, so every process first builds the whole
        model from the same seed: the split model is exactly the dense one, cut.
        Per block: c_attn column-parallel (each process its heads' q, k, v),
        c_proj row-parallel; c_fc column-parallel, c_proj row-parallel. The
        embeddings, norms and the output head stay whole on every process.
        """
        from nn import distributed

        try:
            comm = distributed.init(self.config.tensor_parallel).tensor
        except ValueError as exc:
            raise ConfigError(f"{exc}; launch with mpiexec -n <a multiple of it>") from None
        for block in self.h:
            attn, mlp = block.attn, block.mlp
            h, g, d = attn.n_head, attn.n_kv_head, attn.head_dim
            attn.c_attn = distributed.ColumnParallelLinear.from_linear(attn.c_attn, comm, (h * d, g * d, g * d))
            attn.c_proj = distributed.RowParallelLinear.from_linear(attn.c_proj, comm)
            attn.n_head, attn.n_kv_head = h // comm.size, g // comm.size
            hidden = mlp.c_proj.in_features
            sections = (hidden,) if mlp.kind == "gelu" else (hidden, hidden)  # SwiGLU: [gate; up]
            mlp.c_fc = distributed.ColumnParallelLinear.from_linear(mlp.c_fc, comm, sections)
            mlp.c_proj = distributed.RowParallelLinear.from_linear(mlp.c_proj, comm)

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: weights N(0, 0.02), biases 0, norm weights 1.

        The projections that write into the residual stream (attn.c_proj, mlp.c_proj)
        get std 0.02 / sqrt(2 n_layer): the stream is a sum of 2 n_layer such
        outputs, so its variance at the top stays that of one layer.
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                p.normal_(0.0, residual_std)
            elif p.ndim == 2:
                p.normal_(0.0, 0.02)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.fill_(1.0)

    # ------------------------------------------------------------ forward
    def forward(self, idx: Tensor | np.ndarray, targets: Tensor | np.ndarray | None = None,
                caches: list[KVCache] | None = None,
                logits_at: np.ndarray | None = None,
                logits_rows: np.ndarray | None = None) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) -> (logits (B, T, vocab_size), mean cross-entropy against targets (B, T) or None).

        With ``caches`` (one per layer, see :meth:`make_caches`) idx holds only the new
        tokens; their positions continue after the cached ones. Targets equal to -100 are ignored.
        ``logits_at`` (B,), one index into T per row, asks for that position's logits only, (B, 1,
        vocab_size): reading a prompt needs just the last position's, and the output layer is the
        largest matrix product of a small model. ``logits_rows`` (R,) asks for the last position's logits
        of those rows only, (R, 1, vocab_size): in a packed batch (:class:`~nn.attention.PackedKVCache`)
        each row is one token, and only each sequence's last token predicts.
        """
        ids = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        b, t = ids.shape
        if caches and isinstance(caches[0], RaggedKVCache):  # batched decoding: row r continues at its own position
            positions = caches[0].positions(t)
        else:
            positions = np.arange(t) + (caches[0].length if caches else 0)
        if int(positions.max()) + 1 > self.config.block_size:
            raise ValueError(f"sequence of {int(positions.max()) + 1} tokens is longer than the context "
                             f"({self.config.block_size})")
        x = self.wte(ids)
        if self.config.pos == "learned":
            x = x + self.wpe(positions)
        x = self.drop(x)
        for i, block in enumerate(self.h):
            cache = caches[i] if caches else None
            if self.config.checkpoint_activations and self.training and cache is None:
                x = nn.checkpoint(block, x)
            else:
                x = block(x, cache)
        if (logits_at is not None or logits_rows is not None) and targets is not None:
            raise ValueError("logits_at/logits_rows and targets exclude each other (the loss needs every position)")
        if logits_at is not None:
            x = x[np.arange(b), np.asarray(logits_at)].unsqueeze(1)  # (B, 1, C)
        elif logits_rows is not None:
            x = x[np.asarray(logits_rows), t - 1:]  # (R, 1, C)
        logits = self.lm_head(self.ln_f(x))
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., :self.config.vocab_size]  # padding rows are never predicted
        if targets is None:
            return logits, None
        target_ids = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
        loss = F.cross_entropy(logits.reshape(b * t, -1), target_ids.reshape(b * t))
        return logits, loss

    def make_caches(self, batch_size: int, max_length: int | None = None,
                    ragged: bool = False) -> list[KVCache] | list[RaggedKVCache]:
        """Empty KV caches, one per layer, holding up to ``max_length`` (default: the context) positions;
        ``ragged``: :class:`~nn.attention.RaggedKVCache` rows, each of its own length (batched decoding)."""
        c = self.config
        dtype, device = self.ln_f.weight.dtype, self.ln_f.weight.device  # (wte may hold int8 weights)
        kv_heads = self.h[0].attn.n_kv_head  # this process's share under tensor parallelism
        kind = RaggedKVCache.empty if ragged else KVCache
        return [kind(batch_size, kv_heads, max_length or c.block_size, c.head_dim, dtype, device)
                for _ in range(c.n_layer)]

    def grow_vocabulary(self, vocab_size: int) -> GPT:
        """A copy of this model with room for ``vocab_size`` tokens: the new ids get new embedding rows.

        Adding special tokens to a trained tokenizer (the chat markers) appends
        ids after the last one, so the model needs more rows in ``wte`` (the
        input embedding) and ``lm_head`` (the output projection, one row per
        token's logit). Everything else is copied unchanged, and so are the old
        rows: on the old ids the grown model computes exactly the old logits,
        plus one logit per new token.

        Each new row starts as the mean of the old real token rows (0 ..
        vocab_size-1; the padding rows, never trained, are left out). As an
        input the new token then looks like an "average" token, not a random
        direction the network never saw; as an output its logit ``h . mean(w)``
        is the mean of the old logits, so the new token starts out neither
        likely nor impossible and the softmax over old tokens barely changes. A
        random row would give it an arbitrary logit, which can be large. This
        is what Hugging Face's ``resize_token_embeddings`` does by default.

        The rows are padded to a multiple of ``vocab_multiple``
        (``padded_vocab_size``): the new ids may fall within the old padding,
        which then becomes real rows, or beyond it, which adds rows. Old padding
        rows that stay padding are copied; padding rows that did not exist
        before are zero (they are never read: forward cuts the logits to
        ``vocab_size`` and no input id reaches them). With tied weights
        ``lm_head`` is ``wte``, grown once. The copy has this model's dtype,
        device, training mode and ``requires_grad`` flags, and building it does
        not consume the engine's random numbers.
        """
        old = self.config
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < old.vocab_size:
            raise ValueError(f"vocab_size must be an integer of at least {old.vocab_size} (the current one), "
                             f"not {vocab_size!r}")
        rng_state = nn.backend.get_rng_state()
        grown = GPT(GPTConfig.from_dict({**old.to_dict(), "vocab_size": vocab_size}))
        nn.backend.set_rng_state(rng_state)  # the fresh initialisation is overwritten below
        rows = grown.config.padded_vocab_size
        params = dict(self.named_parameters())
        for name, p in grown.named_parameters():
            source = params[name].data
            if name in ("wte.weight", "lm_head.weight"):
                p.data = nn.backend.xp_of(source).zeros((rows, source.shape[1]), dtype=source.dtype)
                p.data[:source.shape[0]] = source
                p.data[old.vocab_size:vocab_size] = source[:old.vocab_size].mean(axis=0)
            else:
                p.data = source.copy()
            p.requires_grad = params[name].requires_grad
        buffers = dict(self.named_buffers())
        for name, b in grown.named_buffers():
            b.data = buffers[name].data.copy()
        return grown.train(self.training)

    # ------------------------------------------------------------ accounting
    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), as the PaLM appendix and nanoGPT count them.

        6N for the matmuls of N parameters (2 forward, 4 backward; position
        embeddings excluded, they are a lookup) plus 12 L C T for the attention
        scores and their weighted sum over a context of T.
        """
        c = self.config
        # The whole model's parameters: under tensor parallelism this process holds 1/tp of each split one.
        n = sum(p.numel() * (c.tensor_parallel if getattr(p, "tensor_parallel", None) else 1)
                for p in self.parameters()) - (self.wpe.weight.numel() if c.pos == "learned" else 0)
        return 6 * n + 12 * c.n_layer * c.n_embd * (seq_len or c.block_size)


# ---------------------------------------------------------------- model FLOPs utilisation
def estimate_mfu(flops_per_token: float, tokens_per_second: float, peak: float) -> float:
    """Model FLOPs utilisation: the fraction of ``peak`` FLOP/s that the model's own arithmetic used."""
    return flops_per_token * tokens_per_second / peak
