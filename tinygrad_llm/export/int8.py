"""Weight-only int8 quantization for inference: the model's matrices in a quarter of the bytes.

    model, tokenizer = load_model("runs/small")            # tinygrad_llm.checkpoint
    quantize_model(model)                                  # in place: every matrix becomes int8
    save_int8("runs/small/int8.safetensors", model, read_info("runs/small/best.safetensors"))
    model, tokenizer = load_int8_model("runs/small/int8.safetensors")   # generate, eval, chat as usual

or in one call, ``quantize_checkpoint("runs/small", "runs/small/int8.safetensors")``.

**The scheme.** Each row i of a weight matrix W (out, in), the weights of one
output channel, gets its own scale, the absolute maximum over the row mapped
to 127 ("absmax" quantization):

    s_i = max_j |W_ij| / 127,        q_ij = round(W_ij / s_i)  in  [-127, 127],

and W is stored as the int8 matrix q plus the float32 vector s; it stands for
Ŵ = diag(s) q. The range is symmetric (-128 is never used), so zero is exact
and no zero point is needed: weights are centred on zero.

**The error bound.** Since |W_ij / s_i| <= 127, rounding stays in range, and
rounding moves a number by at most one half:

    |W_ij - s_i q_ij| = s_i |W_ij / s_i - round(W_ij / s_i)| <= s_i / 2.

(A zero row has s_i = 0 and q = 0: exact.) For a Linear layer y = x W^T + b
the output error then follows by the triangle inequality,

    |y_i - ŷ_i| = |sum_j x_j (W_ij - s_i q_ij)| <= (s_i / 2) ||x||_1,

a worst case that needs every rounding error to line up with the sign of its
input. Rounding errors behave instead like independent uniform noise on
[-s_i/2, s_i/2] (variance s_i^2 / 12), so typically

    |y_i - ŷ_i| ~ s_i ||x||_2 / sqrt(12),

while the output itself is about sigma_i ||x||_2 for a row with weights of
standard deviation sigma_i. The relative error of an output is therefore about
s_i / (sqrt(12) sigma_i) = (max_j |W_ij| / sigma_i) / (127 sqrt(12)): for a
Gaussian row of 64 to 4096 weights the maximum is about 2.4 to 3.6 sigma,
giving 0.55 % to 0.8 % per layer (an outlier weight raises its row's s and
so its row's error, which is why the scale is per row and not per matrix).
The errors of the 4 L matrices of the blocks and of the head add up as
independent noise in the residual stream and the logits. Measured
(``benchmarks/int8.py``, the small model): the logits' RMS error is 0.7 % of
their spread and the validation perplexity moves by 0.003 % (the target was
under 1 %); the tests hold random tiny GPTs to 2 %.

**Why one scale per output channel.** llama.cpp's ``Q8_0`` stores a float16
scale for every block of 32 weights along the input dimension; a matrix
product then has to apply a different scale to every 32-term partial sum,
which its hand-written int8 kernels do inside the dot product. Our product is
a NumPy (BLAS) float32 matmul, which cannot be interrupted every 32 terms.
With one scale per output row the scale factors out of the sum,

    ŷ_i = sum_j x_j s_i q_ij = s_i (sum_j x_j q_ij),   i.e.  ŷ = (x q^T) * s + b,

so the layer multiplies the raw product by the (out,) vector s after the
matmul: out multiplies per input row, instead of materialising s_i q_ij as a
float matrix. tinygrad's ``Int8Linear`` (``examples/llama3.py``) uses the
same per-output-channel absmax scheme, with float16 scales, and writes the
product as ``x.dot(q.cast(half).T * scale)``, leaving its graph compiler to
fuse the scaling into the kernel; without a compiler we apply s after the
product. PyTorch's dynamic quantization offers the scheme as
``per_channel_dynamic_qconfig`` (its default is one scale per matrix). The
price against Q8_0 is accuracy when a row has an outlier: its whole row of
256 to 4096 weights shares the coarser step, not just 32 of them.

**The matmul.** BLAS multiplies floats, so q is converted to float for every
product. Three ways, measured in ``benchmarks/int8.py`` (one thread, the
small model's (4096, 256) head): keeping a float32 copy of q beside it makes
the product as fast as the float model's but keeps the float model's memory,
which is what quantization is there to save; NumPy's mixed-type ``x @ q.T``
(the int8 matrix as it is) is 5x slower than casting first for one row
(0.82 ms against 0.16 ms; it converts through a slow generic loop) and no
faster for 1024 rows; casting q to the input's dtype and calling BLAS is what
:class:`Int8Linear` does. It casts block of rows by block of rows, at most
``CHUNK_ELEMENTS`` weights (4 MiB of float32) at a time, BLAS writing each
block's outputs in place: the temporary stays small whatever the layer (a
GPT-2 head, 50304 x 768, would need a 154 MB float copy per call, and
measured 30 ms per one-row product cast whole against 6 ms in 4 MiB blocks:
page faults on the big temporary; blocks of 1 MiB or less were slower
again). For a batch of many tokens (a prompt, perplexity) the cast is small
against the matmul (+6 % for 1024 rows of the head). For one row at a time,
in isolation with the weight hot in the cache, the cast is most of the work
(the head: 0.16 ms against 0.06 ms in float32). Decoding a whole model is
different: each token reads every weight once, from memory rather than from
a warm cache, and the int8 model reads a quarter of the bytes (its float
block is small and reused). Profiled on the small model, a decoding step's
matrix products averaged 54 us per layer in int8, cast included, against
62 us in float32, and the int8 model generated about 10 % faster
(``benchmarks/int8.py``): less memory traffic is why int8 weights are the
usual choice for LLM decoding.

**Which tensors.** Every ``Linear`` of the model: per block attn.c_attn,
attn.c_proj, mlp.c_fc, mlp.c_proj, and the output head lm_head. The token
embedding wte too: with tied weights (the presets) the head *is* wte, and it
is a quarter of a small model's weights. Its rows are tokens, so one scale per
row is one scale per output channel of the head and one per token of the
embedding: :class:`Int8Embedding` dequantizes only the looked-up rows, and the
head (an :class:`Int8Linear` sharing wte's int8 matrix and scales) multiplies
by the int8 matrix. Left in their dtype, because they are small and
quantizing them would save almost nothing: the biases (added after the
scaling), the norms' weights, and the position table wpe (block_size x n_embd,
0.8 % of the small preset's weights).

**The file.** A checkpoint as ``tinygrad_llm.checkpoint`` writes it (format
``tinygrad-llm-checkpoint/1``, checksummed, written atomically by
``nn.state.save``), with no optimizer and with the int8 tensors under
``<layer>.qweight`` (int8, safetensors dtype I8) and ``<layer>.scale``
(float32). The info gains ``"quantization": {"scheme":
"int8-per-channel-absmax", ...}``, which is how :func:`is_int8_checkpoint`
tells the file apart. A tied head's tensors are wte's and are stored once.
The tokenizer is ``tokenizer.txt`` beside the file, checked against the
hash in the info, as for any checkpoint.

**Inference only.** There is no gradient for an int8 weight; an int8 layer in
training mode, or given an input that requires grad while autograd is on, is
a :class:`QuantizationError`. (Training on top of a frozen quantized model,
QLoRA, would need the input's gradient g (s q) through these layers; it is
not done here.) Quantizing twice, or a model holding any other kind of
matrix layer (LoRA adapters not yet merged with ``merge_lora``, a
tensor-parallel slice), is refused.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nn import backend
from nn.allocator import release_freed_memory
from nn.layers import Embedding, Linear
from nn.module import Module
from nn.tensor import Tensor, is_grad_enabled
from tinygrad_llm.checkpoint import (
    TOKENIZER_FILE,
    Checkpoint,
    load_model,
    read_info,
    resolve_checkpoint,
    save_checkpoint,
)
from tinygrad_llm.model import GPT, GPTConfig
from tokenizer import Tokenizer
from util.files import atomic_write, file_sha256

__all__ = ["SCHEME", "CHUNK_ELEMENTS", "QuantizationError", "quantize_per_channel", "Int8Linear", "Int8Embedding",
           "quantize_model", "is_quantized", "save_int8", "is_int8_checkpoint", "load_int8_model",
           "quantize_checkpoint", "release_freed_memory"]

SCHEME = "int8-per-channel-absmax"
"""The ``info["quantization"]["scheme"]`` of the files written here."""

CHUNK_ELEMENTS = 1 << 20
"""The most int8 weights an :class:`Int8Linear` converts to float at once (4 MiB of float32)."""


class QuantizationError(ValueError):
    """A model or file that cannot be quantized or loaded as int8; the message says why, in one line."""


def quantize_per_channel(weight: Any) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 (out, in), s float32 (out,)) with s_i = max_j |w_ij| / 127 and q = round(w / s), per row.

    ``|w - s[:, None] * q| <= s[:, None] / 2`` elementwise (see the module's
    docstring); a zero row has scale 0. The division is done in float64 by the
    float32 scale that is stored, so the bound holds for the stored pair. The
    weights must be finite (an infinite maximum has no finite scale).
    """
    w = np.asarray(backend.to_numpy(weight.data if isinstance(weight, Tensor) else weight), dtype=np.float64)
    if w.ndim != 2:
        raise QuantizationError(f"per-channel quantization needs a matrix (out, in), not shape {w.shape}")
    if not np.isfinite(w).all():
        raise QuantizationError("cannot quantize a matrix holding inf or NaN")
    scale = (np.abs(w).max(axis=1, initial=0.0) / 127).astype(np.float32)
    divisor = np.where(scale > 0, scale, 1).astype(np.float64)[:, None]
    return np.rint(w / divisor).astype(np.int8), scale


def _quantized_into(layer: Int8Linear | Int8Embedding, weight: Tensor) -> Int8Linear | Int8Embedding:
    """Fill ``layer``'s qweight and scale with ``weight`` quantized per row, on the weight's device."""
    q, s = quantize_per_channel(weight)
    layer.qweight.data, layer.scale.data = backend.to_device(q, weight.device), backend.to_device(s, weight.device)
    return layer


def _dequantized(qweight: Tensor, scale: Tensor) -> Tensor:
    return Tensor(qweight.data.astype(scale.dtype) * scale.data[:, None])


class Int8Linear(Module):
    """y = (x q^T) * s + b: a Linear layer whose weight (out, in) is int8 q with one float32 scale per row.

    Buffers (not trained): ``qweight`` int8 (out_features, in_features),
    ``scale`` float32 (out_features,), ``bias`` (out_features,) or None. The
    output has the input's dtype. ``weight`` is the dequantized matrix
    diag(s) q, computed on each access (for inspection, and for code that
    reads a layer's weight); the forward pass never forms it.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", Tensor(np.zeros((out_features, in_features), dtype=np.int8)))
        self.register_buffer("scale", Tensor(np.zeros(out_features, dtype=np.float32)))
        self.register_buffer("bias", Tensor(np.zeros(out_features, dtype=np.float32)) if bias else None)

    @classmethod
    def from_linear(cls, linear: Linear) -> Int8Linear:
        """The quantized copy of ``linear``: its weight quantized per row, its bias kept as it is (shared)."""
        layer = _quantized_into(cls(linear.in_features, linear.out_features, bias=False), linear.weight)
        layer.register_buffer("bias", Tensor(linear.bias.data) if linear.bias is not None else None)
        return layer

    def share_weights(self, embedding: Int8Embedding) -> Int8Linear:
        """Use ``embedding``'s int8 table and scales as this layer's (a tied output head); they are saved once.

        The shared tensors become non-persistent buffers here, so ``state_dict``
        lists them under the embedding's names only.
        """
        self.register_buffer("qweight", embedding.qweight, persistent=False)
        self.register_buffer("scale", embedding.scale, persistent=False)
        return self

    @property
    def weight(self) -> Tensor:
        return _dequantized(self.qweight, self.scale)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features), converting at most CHUNK_ELEMENTS weights at a time."""
        _check_inference(self, x)
        data = x.data
        xp = backend.xp_of(data)
        rows = data.reshape(-1, self.in_features)
        y = xp.empty((rows.shape[0], self.out_features), dtype=data.dtype)
        q = self.qweight.data
        step = max(1, CHUNK_ELEMENTS // max(1, self.in_features))
        for start in range(0, self.out_features, step):
            xp.matmul(rows, q[start:start + step].astype(data.dtype).T, out=y[:, start:start + step])
        y *= self.scale.data
        if self.bias is not None:
            y += self.bias.data
        return Tensor(y.reshape(*data.shape[:-1], self.out_features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Embedding(Module):
    """A lookup table stored as int8 rows with one float32 scale per row: ids (any shape) -> rows (..., dim).

    Buffers: ``qweight`` int8 (num_embeddings, embedding_dim), ``scale`` float32
    (num_embeddings,). Only the looked-up rows are dequantized, s_id * q_id.
    ``weight`` is the whole dequantized table, computed on each access
    (``GPT.make_caches`` reads its dtype and device).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("qweight", Tensor(np.zeros((num_embeddings, embedding_dim), dtype=np.int8)))
        self.register_buffer("scale", Tensor(np.zeros(num_embeddings, dtype=np.float32)))

    @classmethod
    def from_embedding(cls, embedding: Embedding) -> Int8Embedding:
        """The quantized copy of ``embedding``: one scale per row (per token)."""
        return _quantized_into(cls(embedding.num_embeddings, embedding.embedding_dim), embedding.weight)

    @property
    def weight(self) -> Tensor:
        return _dequantized(self.qweight, self.scale)

    def forward(self, indices: Tensor | Any) -> Tensor:
        """Integer ids of any shape (...) -> their dequantized rows (..., embedding_dim), float32."""
        _check_inference(self)
        ids = indices.data if isinstance(indices, Tensor) else indices
        rows = self.qweight.data[ids].astype(self.scale.dtype)
        rows *= self.scale.data[ids][..., None]
        return Tensor(rows)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


def _check_inference(layer: Module, x: Tensor | None = None) -> None:
    """Refuse training: an int8 weight has no gradient, so neither training mode nor a graph through it is possible."""
    if layer.training:
        raise QuantizationError(f"{type(layer).__name__} is for inference only: call model.eval() "
                                "(an int8 model cannot be trained)")
    if x is not None and x.requires_grad and is_grad_enabled():
        raise QuantizationError(f"{type(layer).__name__} is for inference only: its input requires grad "
                                "(run it under nn.no_grad())")


# ---------------------------------------------------------------- models
def is_quantized(model: Module) -> bool:
    """Whether ``model`` holds any int8 layer."""
    return any(isinstance(m, Int8Linear | Int8Embedding) for m in model.modules())


def _check_quantizable(model: GPT) -> None:
    """A QuantizationError unless every matrix of ``model`` sits in a plain Linear, or Embedding, not yet int8."""
    if not isinstance(model, GPT):
        raise QuantizationError(f"expected a GPT, not a {type(model).__name__}")
    if model.config.tensor_parallel > 1:
        raise QuantizationError("cannot quantize a tensor-parallel slice of a model; quantize the whole model")
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear | Int8Embedding):
            raise QuantizationError(f"this model is already quantized ({name} is an {type(module).__name__})")
        owns_matrix = any(p is not None and p.ndim == 2 for p in module._parameters.values())
        if owns_matrix and type(module) not in (Linear, Embedding):
            raise QuantizationError(f"{name} is a {type(module).__name__}, not a Linear: only plain layers are "
                                    "quantized (merge LoRA adapters with merge_lora first)")


def quantize_model(model: GPT) -> GPT:
    """Replace, in place, every Linear of ``model`` by an Int8Linear and wte by an Int8Embedding; returns model.

    With tied weights the head shares wte's int8 table (one copy, as the float
    model had one). The float matrices are dropped (freed unless something
    else holds them); what stays float (biases, norms, wpe) is frozen
    (``requires_grad`` off) and the model is left in eval mode: it is for
    inference only. The freed memory is handed back to the system
    (:func:`release_freed_memory`). A QuantizationError (nothing changed) for
    a model that is already quantized, holds LoRA adapters or other non-plain
    matrix layers, or is a tensor-parallel slice.
    """
    _check_quantizable(model)
    _replace_layers(model, Int8Linear.from_linear, Int8Embedding.from_embedding)
    release_freed_memory()
    return model


def _replace_layers(model: GPT, linear: Callable[[Linear], Int8Linear],
                    embedding: Callable[[Embedding], Int8Embedding]) -> GPT:
    """Put ``linear(layer)`` in place of every Linear and ``embedding(wte)`` in place of wte; tie, freeze, eval."""
    tied = model.lm_head.weight is model.wte.weight
    table = embedding(model.wte)
    replacements = [(name, linear(m)) for name, m in model.named_modules()
                    if type(m) is Linear and not (tied and name == "lm_head")]
    model.wte = table
    for name, layer in replacements:
        model.set_submodule(name, layer)
    if tied:
        model.lm_head = Int8Linear(table.embedding_dim, table.num_embeddings, bias=False).share_weights(table)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model


def _int8_skeleton(config: GPTConfig) -> GPT:
    """A GPT of ``config`` with empty int8 layers where :func:`quantize_model` puts them, for load_state_dict.

    GPT's constructor allocates and initialises the float weights first, so
    the peak memory while loading is the float model's; they are dropped here
    (without the wasted work of quantizing them), so what stays resident is
    the int8 model (see :func:`release_freed_memory`).
    """
    return _replace_layers(GPT(config), lambda m: Int8Linear(m.in_features, m.out_features, m.bias is not None),
                           lambda m: Int8Embedding(m.num_embeddings, m.embedding_dim))


# ---------------------------------------------------------------- files
def save_int8(path: str | Path, model: GPT, info: dict[str, Any]) -> None:
    """Write the quantized ``model`` to ``path`` as a checkpoint (atomically), with ``info`` as its info.

    ``info`` is normally the source checkpoint's (``read_info``): it must hold
    ``tokenizer_sha256`` for the file to load with its ``tokenizer.txt``.
    ``model_config`` is set from the model and ``quantization`` is added:
    ``{"scheme": SCHEME, "weight_dtype": "int8", "scale_dtype": "float32",
    "quantized": [the int8 layers' names]}``.
    """
    if not is_quantized(model):
        raise QuantizationError("the model is not quantized: call quantize_model(model) first")
    layers = [name for name, m in model.named_modules() if isinstance(m, Int8Linear | Int8Embedding)]
    record = {"scheme": SCHEME, "weight_dtype": "int8", "scale_dtype": "float32", "quantized": layers}
    arrays = {name: t.numpy() for name, t in model.state_dict().items()}
    full = {**info, "model_config": model.config.to_dict(), "quantization": record}
    save_checkpoint(path, Checkpoint(model=arrays, info=full))


def is_int8_checkpoint(path: str | Path) -> bool:
    """Whether the checkpoint at ``path`` (a file or a run directory) is int8; reads its metadata only.

    A missing or damaged file is the CheckpointError of ``read_info``.
    """
    return bool(read_info(resolve_checkpoint(path)).get("quantization"))


def load_int8_model(path: str | Path) -> tuple[GPT, Tokenizer]:
    """The int8 model (in eval mode) and the tokenizer of a file written by :func:`save_int8`.

    ``path`` is the file (or a run directory, resolved as ``load_model`` does).
    A damaged, foreign or mismatched file, or a missing or different
    ``tokenizer.txt`` beside it, is a CheckpointError (from ``load_model``); a
    checkpoint that is not int8, or of another scheme, a QuantizationError.
    """
    path = resolve_checkpoint(path)
    record = read_info(path).get("quantization")
    if not record:
        raise QuantizationError(f"{path}: not an int8 checkpoint (load it with load_model, or quantize it first)")
    if not isinstance(record, dict) or record.get("scheme") != SCHEME:
        scheme = record.get("scheme") if isinstance(record, dict) else record
        raise QuantizationError(f"{path}: unknown quantization scheme {scheme!r} (this version reads {SCHEME})")
    model, tokenizer = load_model(path, build=_int8_skeleton)
    release_freed_memory()
    return model, tokenizer


def quantize_checkpoint(source: str | Path, out_path: str | Path) -> Path:
    """Quantize the checkpoint ``source`` (a file or run directory) into ``out_path``; returns out_path.

    ``out_path`` is a ``.safetensors`` file; its directory is created if
    needed and gets a copy of the source's ``tokenizer.txt`` (an identical one
    already there is kept; a different one is a QuantizationError, since a
    checkpoint there may need it). The info keeps everything the source's had
    (config, training config, tokenizer hash, step, ...) and gains
    ``quantization`` and ``quantized_from`` (the source file's path). Refused, before
    anything is written: an int8 or LoRA checkpoint (merge the adapters
    first), an output that is the source itself or not a ``.safetensors``
    name. A damaged source is its CheckpointError.
    """
    source_file = resolve_checkpoint(source)
    out = Path(out_path)
    if out.suffix != ".safetensors" or out.is_dir():
        raise QuantizationError(f"{out}: the output must be a .safetensors file name")
    if out.exists() and out.resolve() == source_file.resolve():
        raise QuantizationError(f"{out}: is the checkpoint being quantized; choose another output file")
    info = read_info(source_file)
    if info.get("quantization"):
        raise QuantizationError(f"{source_file}: already an int8 checkpoint")
    if info.get("lora"):
        raise QuantizationError(f"{source_file}: a LoRA fine-tuning checkpoint; merge its adapters into a plain "
                                "checkpoint first, then quantize that")
    tokenizer_source = source_file.parent / TOKENIZER_FILE
    tokenizer_target = out.parent / TOKENIZER_FILE
    model, _ = load_model(source_file)  # also checks tokenizer_source against the checkpoint's hash
    if tokenizer_target.exists() and file_sha256(tokenizer_target) != file_sha256(tokenizer_source):
        raise QuantizationError(f"{tokenizer_target} is another tokenizer than {tokenizer_source}; "
                                "choose an output directory without one")
    quantize_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not tokenizer_target.exists():
        atomic_write(tokenizer_target, lambda temporary: shutil.copyfile(tokenizer_source, temporary))
    save_int8(out, model, {**info, "quantized_from": str(source_file)})
    return out
