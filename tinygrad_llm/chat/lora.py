"""LoRA: fine-tune a large model by training a small low-rank correction to some of its matrices.

Low-Rank Adaptation (Hu et al. 2021, https://arxiv.org/abs/2106.09685)::

    adapters = apply_lora(model, rank=8, alpha=16.0)          # freezes the model, returns the new parameters
    optimizer = nn.optim.AdamW([p for _, p in adapters], lr=1e-3)
    ...                                                        # train as usual
    save_adapter("adapter.safetensors", model, {"steps": 1000})  # a few MB, not the whole model
    merge_lora(model)                                          # fold the adapters in: a plain GPT again

The idea. Fine-tuning changes a pretrained weight W (out, in) by some
update dW. Hu et al. observe that the useful dW has low "intrinsic rank", so
they write it as a product of two thin matrices,

    dW = (alpha / r) B A,        A (r, in),  B (out, r),  r << min(in, out),

keep W frozen and train only A and B. A Linear layer y = x W^T + b becomes

    y = x W^T + b + (alpha / r) (x A^T) B^T.

Why this is cheap. Per adapted matrix there are r (in + out) trainable
numbers instead of in * out: for a 768 x 2304 matrix and r = 8, 24,576 instead
of 1,769,472 (1.4 %). The optimizer keeps its two moments for those only, and
no gradient of W is ever formed. The extra forward work is also small: x A^T
costs r * in multiply-adds per token and its product with B^T r * out, against
in * out for x W^T; computing (x A^T) B^T in this order never forms the
(out, in) matrix B A.

Why it starts exactly at the pretrained model. B starts at zero, so dW = 0 and
the adapted model computes precisely what the base model does: fine-tuning
starts from the pretrained function, not from a perturbed one. A must then be
random, because the gradients are

    dL/dB = (alpha / r) g^T (x A^T)      dL/dA = (alpha / r) (g B)^T x

with g = dL/dy (N, out) and x (N, in) the rows of the batch: with B = 0 only B
receives a gradient at the first step, and it is nonzero only because A is.
(Both at zero would stay at zero forever.)

The scale alpha / r. Hu et al. fix alpha when they try different ranks: with
Adam, whose steps have a size set by the learning rate and not by the gradient's
magnitude, doubling r roughly doubles the size of dW after a step, and dividing
by r undoes that, so the learning rate found for one rank stays good for
another. alpha itself then acts like a learning rate multiplier for the
adapters; the paper sets it to the first r it tries (alpha = r, scale 1) and
never tunes it. alpha = 2r, a common choice, doubles the adapters' effect.

The merged model. Since x W^T + (alpha/r) x A^T B^T = x (W + (alpha/r) B A)^T,
a trained adapter can be folded into its matrix, W' = W + (alpha/r) B A
(:func:`merge_lora`), after which the model is an ordinary GPT with no extra
inference cost. Unmerged, one base model can serve many small adapters
(:func:`save_adapter`, :func:`load_adapter`, :func:`attach_adapter`).

Parameter names. A :class:`LoRALinear` keeps the base layer's ``weight`` and
``bias`` under those very names and adds ``lora_A`` and ``lora_B`` beside
them, so the state_dict of an adapted GPT holds every key of the plain GPT
(``h.0.attn.c_attn.weight`` stays ``h.0.attn.c_attn.weight``) plus
``h.0.attn.c_attn.lora_A`` and ``h.0.attn.c_attn.lora_B``. A base checkpoint
therefore loads into an adapted model with ``strict=False`` (the missing keys
are exactly the adapters), and code that addresses weights by name keeps working.

Only single-process models: under tensor parallelism (``tensor_parallel > 1``)
each process holds a slice of every block's matrices, and an adapter would
have to be split the same way; that is not done here, so it is refused.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from nn import backend, state
from nn import functional as F
from nn.layers import Linear
from nn.module import Module, Parameter
from nn.state import StateFileError
from nn.tensor import Tensor, zeros

__all__ = ["FORMAT", "TARGETS", "DEFAULT_TARGETS", "LoRAError", "LoRALinear", "apply_lora", "merge_lora",
           "lora_state_dict", "lora_config", "save_adapter", "load_adapter", "attach_adapter"]

FORMAT = "tinygrad-llm-lora/1"
"""The format tag in an adapter file's metadata."""

TARGETS = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj", "lm_head")
"""The layers of a GPT that may be adapted, named by the end of their module name.

``c_attn``: the fused query/key/value projection (C -> (H + 2G) d);
``attn.c_proj``: the attention output projection (W_o); ``c_fc`` and
``mlp.c_proj``: the MLP's two matrices; ``lm_head``: the output head (only
with ``tie_weights`` off: a tied head is the token embedding, see
:func:`apply_lora`). A target names every layer whose dotted name is it or
ends with ``"." + target``, in every block.

On the fused ``c_attn``: one adapter spans the stacked [W_q; W_k; W_v], so the
three updates share one r-dimensional input subspace A (their B rows differ).
The paper adapts W_q and W_v as separate matrices, each with its own A.
"""

DEFAULT_TARGETS = ("c_attn", "attn.c_proj")
"""Every attention matrix (W_q, W_k, W_v through ``c_attn``, and W_o), none of the MLP.

Hu et al. (Table 5) adapt attention only; under a fixed budget of trainable
parameters, spreading it over W_q, W_k, W_v, W_o at a small rank did as well
as or better than W_q and W_v at twice the rank, and better than any single
matrix. Our W_q, W_k, W_v are one fused matrix, so "W_q and W_v only" is not
available without splitting it; all four is the choice that the paper found
best and that our layout gives for free.
"""


class LoRAError(ValueError):
    """A LoRA argument, model or adapter file that cannot be used; the message says why, in one line."""


class LoRALinear(Module):
    """A frozen Linear plus a trainable low-rank update: y = x W^T + b + (alpha / r) (x A^T) B^T.

    Shapes: x (..., in), W (out, in), b (out,), A (r, in), B (out, r), y (..., out).
    ``weight`` and ``bias`` are the base layer's own Parameter objects (not
    copies), frozen here; ``lora_A`` and ``lora_B`` are new and trainable.

    Initialisation. B = 0, so the layer starts as exactly the base layer. A is
    uniform in +-1/sqrt(in), the bound of Linear's default (PyTorch's
    kaiming_uniform_ with a = sqrt(5)), as Microsoft's ``loralib`` and Hugging
    Face's ``peft`` do. (The paper says "random Gaussian"; only A's scale
    matters.) Each entry then has variance 1/(3 in), so each of the r
    components of x A^T has variance |x|^2 / (3 in) = mean(x^2) / 3: the
    bottleneck carries activations of the input's own size whatever the layer's
    width, and B's first gradients are as large as a dense layer's would be.
    N(0, 1/r), the other usual choice, gives components of variance
    in * mean(x^2) / r instead, which grows with the width and shrinks with the
    rank; the alpha / r scale already handles the rank.
    """

    def __init__(self, base: Linear, rank: int, alpha: float, target: str = "") -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.target = rank, float(alpha), target
        self.scaling = self.alpha / rank
        self.weight = base.weight.requires_grad_(False)
        self.bias = base.bias.requires_grad_(False) if base.bias is not None else None
        w = base.weight
        bound = 1 / math.sqrt(self.in_features)
        self.lora_A = Parameter(zeros(rank, self.in_features, dtype=w.dtype, device=w.device).uniform_(-bound, bound))
        self.lora_B = Parameter(zeros(self.out_features, rank, dtype=w.dtype, device=w.device))
        # The base layer itself, so merge_lora can put it back (keeping its identity and drawing no new
        # random numbers); set past Module.__setattr__ so it is not a sub-module: its tensors are ours.
        object.__setattr__(self, "_base", base)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features); the scale multiplies the narrow (..., r) activation."""
        update = F.linear(F.linear(x, self.lora_A) * self.scaling, self.lora_B)
        return F.linear(x, self.weight, self.bias) + update

    def delta_weight(self) -> Any:
        """(alpha / r) B A as a raw (out, in) array, computed in float64 (at least) and rounded once to W's dtype."""
        wide = np.promote_types(self.weight.dtype, np.float64)
        return (self.scaling * (self.lora_B.data.astype(wide) @ self.lora_A.data.astype(wide))).astype(
            self.weight.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, rank={self.rank}, alpha={self.alpha:g}")


# ---------------------------------------------------------------- applying, merging
def apply_lora(model: Module, rank: int, alpha: float,
               targets: Iterable[str] | str = DEFAULT_TARGETS) -> list[tuple[str, Parameter]]:
    """Replace the ``targets`` Linear layers of ``model`` by LoRALinear, in place, and freeze everything else.

    Afterwards only the adapters (``...lora_A``, ``...lora_B``) require grad;
    they are returned as (dotted name, parameter) pairs, in the model's
    parameter order, and are what the optimizer should get. The model's output
    is unchanged until they are trained (B = 0).

    A LoRAError (nothing changed) for: rank not a positive integer, or above
    min(in, out) of a target (a product B A cannot have higher rank than that);
    alpha not a positive finite number; an unknown target (see :data:`TARGETS`)
    or one that matches no Linear layer; a target whose weight is shared with
    another parameter (a tied ``lm_head`` is the token embedding: merging would
    change the embedding too); a model that already has adapters; a
    tensor-parallel model.
    """
    _check_single_process(model)
    names = _check_config(rank, alpha, targets)
    applied = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if applied:
        raise LoRAError(f"this model already has LoRA adapters (on {applied[0]}); merge_lora() it or start from "
                        "a fresh model")
    owners: dict[int, list[str]] = {}
    for name, p in model.state_dict().items():
        owners.setdefault(id(p), []).append(name)
    chosen: list[tuple[str, str, Linear]] = []
    for target in names:
        found = [(name, m) for name, m in model.named_modules() if name == target or name.endswith("." + target)]
        if not found:
            raise LoRAError(f"LoRA target {target!r} matches no layer of this {type(model).__name__}")
        for name, m in found:
            if type(m) is not Linear:
                raise LoRAError(f"LoRA target {name} is a {type(m).__name__}, not a Linear")
            if rank > min(m.in_features, m.out_features):
                raise LoRAError(f"LoRA rank {rank} exceeds the smaller side of {name} "
                                f"({m.out_features} x {m.in_features}); use at most "
                                f"{min(m.in_features, m.out_features)}")
            shared = [other for other in owners[id(m.weight)] if other != f"{name}.weight"]
            if shared:
                raise LoRAError(f"{name}.weight is shared with {shared[0]} (tied weights); adapting it would "
                                f"change both (build the model with tie_weights off to adapt {target})")
            chosen.append((name, target, m))
    for p in model.parameters():
        p.requires_grad_(False)
    for name, target, m in chosen:
        model.set_submodule(name, LoRALinear(m, rank, alpha, target))
    return [(name, p) for name, p in model.named_parameters() if _is_adapter(name)]


def merge_lora(model: Module) -> Module:
    """Fold every adapter into its weight, W <- W + (alpha / r) B A, and put the plain Linear back; returns model.

    The weight is updated in place (the same Parameter object, so anything
    holding it sees the merged values) and the original Linear object returns
    to its place: the model is then a plain model whose state_dict has exactly
    the keys it had before :func:`apply_lora`, and computes what the adapted
    model computed (up to one rounding of W' to its dtype). Gradients are not
    switched back on: every parameter stays frozen (requires_grad False), as
    apply_lora left it; call ``p.requires_grad_(True)`` on what should train next.
    A model without adapters is a LoRAError.
    """
    layers = _lora_layers(model)
    for _, layer in layers:
        layer.weight.data[...] = layer.weight.data + layer.delta_weight()
    _restore_bases(model, layers)
    return model


def _restore_bases(model: Module, layers: list[tuple[str, LoRALinear]]) -> None:
    """Put each LoRALinear's base Linear back in its place, holding the LoRALinear's (current) weight and bias."""
    for name, layer in layers:
        base = layer._base
        base.weight, base.bias = layer.weight, layer.bias
        object.__setattr__(base, "training", layer.training)
        model.set_submodule(name, base)


# ---------------------------------------------------------------- reading adapters out of a model
def lora_state_dict(model: Module) -> dict[str, np.ndarray]:
    """The adapters only, dotted name -> host NumPy copy: ``{"h.0.attn.c_attn.lora_A": (r, in), ...}``."""
    _lora_layers(model)
    return {name: np.array(backend.to_numpy(p.data)) for name, p in model.named_parameters() if _is_adapter(name)}


def lora_config(model: Module) -> dict[str, Any]:
    """``{"rank": r, "alpha": alpha, "targets": [...]}``: what :func:`apply_lora` was called with."""
    layers = [layer for _, layer in _lora_layers(model)]
    targets = {layer.target for layer in layers}
    return {"rank": layers[0].rank, "alpha": layers[0].alpha, "targets": [t for t in TARGETS if t in targets]}


# ---------------------------------------------------------------- adapter files
def save_adapter(path: str | os.PathLike, model: Module, info: dict[str, Any]) -> None:
    """Write the adapters of ``model``, its LoRA config and ``info`` (JSON-serialisable) to a safetensors file.

    The tensors are named as in :func:`lora_state_dict`; the metadata key
    ``tinygrad_llm`` holds ``{"format": FORMAT, "lora": lora_config(model),
    "info": info}`` as JSON. The write is atomic and checksummed (nn.state.save).
    """
    try:
        meta = json.dumps({"format": FORMAT, "lora": lora_config(model), "info": info})
    except (TypeError, ValueError) as exc:
        raise LoRAError(f"adapter info must be JSON-serialisable: {exc}") from None
    state.save(path, lora_state_dict(model), metadata={"tinygrad_llm": meta})


def load_adapter(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read an adapter file: (arrays by name, ``{"rank", "alpha", "targets", "info"}``).

    A missing, truncated, damaged (checksum) or foreign file, or one whose
    config or tensor names make no sense, is a LoRAError of one line naming the file.
    """
    where = os.fspath(path)
    try:
        metadata = state.load_metadata(path)
        tensors = state.load(path)
    except StateFileError as exc:
        raise LoRAError(" ".join(str(exc).split())) from None
    try:
        meta = json.loads(metadata["tinygrad_llm"])
        if meta["format"] != FORMAT:
            raise KeyError("format")
        config, info = meta["lora"], meta["info"]
        rank, alpha, targets = config["rank"], config["alpha"], list(config["targets"])
    except (KeyError, ValueError, TypeError):
        raise LoRAError(f"{where}: not a tinygrad-llm LoRA adapter file") from None
    try:
        _check_config(rank, alpha, targets)
    except LoRAError as exc:
        raise LoRAError(f"{where}: the adapter's LoRA config is invalid ({exc})") from None
    arrays = {name: t.numpy() for name, t in tensors.items()}
    odd = [name for name, a in arrays.items() if not _is_adapter(name) or a.ndim != 2 or a.dtype.kind != "f"]
    if odd or not arrays:
        what = f"tensor {odd[0]!r} is not a LoRA matrix" if odd else "it holds no tensors"
        raise LoRAError(f"{where}: not a usable LoRA adapter ({what})")
    return arrays, {"rank": rank, "alpha": float(alpha), "targets": targets, "info": info}


def attach_adapter(model: Module, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> list[tuple[str, Parameter]]:
    """Apply LoRA to ``model`` with ``config`` (rank, alpha, targets) and load ``arrays`` into the adapters.

    ``arrays`` and ``config`` are what :func:`load_adapter` returns (other keys
    of config, such as ``info``, are ignored). Returns the adapter parameters,
    as :func:`apply_lora` does. If the arrays do not fit the model (a name
    missing or extra, a shape different: an adapter trained on another model),
    it is a LoRAError naming the first such tensor, and the model is left as it was.
    """
    try:
        rank, alpha, targets = config["rank"], config["alpha"], config["targets"]
    except (KeyError, TypeError):
        raise LoRAError("a LoRA config needs rank, alpha and targets") from None
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    adapters = apply_lora(model, rank, alpha, targets)
    try:
        own = dict(adapters)
        missing = [name for name in own if name not in arrays]
        unexpected = [name for name in arrays if name not in own]
        if missing:
            raise LoRAError(f"the adapter does not fit this model: it has no {missing[0]} "
                            f"({len(missing)} of the model's adapter tensors missing)")
        if unexpected:
            raise LoRAError(f"the adapter does not fit this model: it has {unexpected[0]}, which this model lacks")
        for name, p in own.items():
            shape = tuple(np.shape(arrays[name]))
            if shape != p.shape:
                raise LoRAError(f"the adapter does not fit this model: {name} is {shape} in the adapter and "
                                f"{p.shape} in the model (trained on another model size?)")
    except LoRAError:
        _restore_bases(model, _lora_layers(model))
        for p, flag in frozen:
            p.requires_grad = flag
        raise
    for name, p in own.items():
        p.copy_(np.asarray(arrays[name]).astype(p.dtype))
    return adapters


# ---------------------------------------------------------------- helpers
def _is_adapter(name: str) -> bool:
    return name.endswith((".lora_A", ".lora_B"))


def _check_config(rank: Any, alpha: Any, targets: Iterable[str] | str) -> list[str]:
    """Check rank and alpha; return ``targets`` as a list without repeats (a single string is one target)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoRAError(f"LoRA rank must be a positive integer, not {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
        raise LoRAError(f"LoRA alpha must be a positive number, not {alpha!r}")
    try:
        names = [targets] if isinstance(targets, str) else list(targets)
    except TypeError:
        raise LoRAError(f"LoRA targets must be a list of names, not {targets!r}") from None
    if not names:
        raise LoRAError(f"no LoRA targets given; choose from {', '.join(TARGETS)}")
    for target in names:
        if not isinstance(target, str) or target not in TARGETS:
            raise LoRAError(f"unknown LoRA target {target!r}; choose from {', '.join(TARGETS)}")
    return list(dict.fromkeys(names))


def _check_single_process(model: Module) -> None:
    tp = getattr(getattr(model, "config", None), "tensor_parallel", 1)
    if tp != 1:
        raise LoRAError(f"LoRA works only without tensor parallelism (tensor_parallel = 1), not {tp}")


def _lora_layers(model: Module) -> list[tuple[str, LoRALinear]]:
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise LoRAError(f"this {type(model).__name__} has no LoRA adapters (apply_lora first)")
    return layers
