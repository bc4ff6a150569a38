"""CuPy launchers for the CUDA kernels in this folder (``*.cu``), one per NumPy kernel beside it.

Each function here takes and returns the same things as its NumPy
counterpart (``gelu.gelu_forward``, ``norm.norm_forward``, ...), with CuPy
arrays in place of NumPy ones; the NumPy functions call these when they are
handed CuPy arrays of a dtype the kernels support, so the engine's ops run
our kernels on the GPU without knowing it.

Sources are compiled with NVRTC, the CUDA runtime compiler: by CuPy
(``cupy.RawModule``) for the GPU in use the first time a kernel is launched,
and by :func:`compile_all` for any architecture without a GPU at all (CI uses
it to prove every source compiles). ``#include "common.cuh"`` is pasted in
here, so the compiled program and CuPy's cache key cover the shared header.

dtypes: float32, float16 and bfloat16, always computed in float32. CuPy has
no bfloat16 dtype, so bfloat16 data travels as ``uint16`` arrays holding the
bit patterns, and bfloat16 results come back the same way. Other dtypes
(float64) are left to the NumPy code, which runs on CuPy arrays as it is.

CuPy is imported only when a kernel is launched or compiled: importing this
module needs nothing beyond NumPy.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KERNEL_DIR = Path(__file__).resolve().parent
OPTIONS = ("--std=c++17",)
"""NVRTC options shared by CuPy's compile and :func:`compile_all` (the architecture is added per target)."""

SUFFIXES = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.uint16): "bf16"}
"""Kernel name suffix per storage dtype; uint16 stands for bfloat16 bit patterns."""

HEAD_DIMS = (32, 64, 128)
"""Head-dim sizes the attention kernels are compiled for; D is rounded up to the next one."""

ATTENTION_TILE = 32
ATTENTION_THREADS = 128
"""TILE and THREADS in attention.cu: query (or key) rows per block, threads per block."""

_INCLUDE = re.compile(r'^#include "([\w.]+)"\s*$', re.MULTILINE)
_ENTRY = re.compile(r"\.entry\s+(\w+)")


def kernel_names() -> dict[str, tuple[str, ...]]:
    """Every entry point the launchers below may use, by source file name."""
    suffixes = tuple(SUFFIXES.values())

    def each(*bases: str) -> tuple[str, ...]:
        return tuple(f"{base}_{s}" for base in bases for s in suffixes)

    attention_dims = tuple(f"{base}_{s}_d{d}" for base in ("attention_forward", "attention_backward_dq",
                                                           "attention_backward_dkdv")
                           for s in suffixes for d in HEAD_DIMS)
    return {
        "adamw.cu": each("adamw_step", "sum_squares", "scale"),
        "cross_entropy.cu": each("cross_entropy_forward", "cross_entropy_backward"),
        "norm.cu": each("norm_forward", "norm_backward_input", "norm_backward_params"),
        "gelu.cu": each("gelu_forward", "gelu_backward"),
        "attention.cu": attention_dims + each("attention_row_dot"),
    }


def source(name: str) -> str:
    """The text of ``nn/kernels/<name>`` with each ``#include "file"`` of this folder pasted in."""
    text = (KERNEL_DIR / name).read_text()
    return _INCLUDE.sub(lambda match: source(match.group(1)), text)


# ------------------------------------------------------------ compile without a GPU


class CompileError(RuntimeError):
    """NVRTC rejected a source; the message is its log (file, line and error)."""


@dataclass(frozen=True)
class Compiled:
    """One source compiled for one architecture."""

    ptx: str  # PTX assembly text
    cubin: bytes  # the machine code (ELF) for the architecture
    entries: frozenset[str]  # names of the kernels it defines (``.entry`` in the PTX)
    log: str  # NVRTC's log (warnings; ptxas' register report)


def _arch_number(arch: str) -> str:
    number = arch.removeprefix("sm_").removeprefix("compute_")
    if not number.isdigit():
        raise ValueError(f"architecture {arch!r}: expected e.g. 'sm_80' or '90'")
    return number


def compile_source(code: str, arch: str, name: str = "kernel.cu", options: tuple[str, ...] = OPTIONS) -> Compiled:
    """Compile CUDA source text with NVRTC for ``arch`` (``"sm_80"``, ``"90"``, ...); no GPU needed."""
    from cupy_backends.cuda.libs import nvrtc

    flags = [*options, f"--gpu-architecture=sm_{_arch_number(arch)}", "--ptxas-options=-v"]
    program = nvrtc.createProgram(code, name, (), ())
    try:
        try:
            nvrtc.compileProgram(program, flags)
        except nvrtc.NVRTCError as error:
            raise CompileError(f"{name} (sm_{_arch_number(arch)}): {error}\n{nvrtc.getProgramLog(program)}") from None
        ptx = nvrtc.getPTX(program)
        ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
        return Compiled(ptx=ptx.rstrip("\0"), cubin=bytes(nvrtc.getCUBIN(program)),
                        entries=frozenset(_ENTRY.findall(ptx)),
                        log=nvrtc.getProgramLog(program).rstrip("\0"))
    finally:
        nvrtc.destroyProgram(program)


def compile_all(arch: str) -> dict[str, Compiled]:
    """Every ``*.cu`` in this folder compiled for ``arch``, by file name (what CI runs)."""
    return {path.name: compile_source(source(path.name), arch, path.name)
            for path in sorted(KERNEL_DIR.glob("*.cu"))}


# ---------------------------------------------------------------- launching


def _cupy():
    import cupy

    return cupy


@functools.cache
def _module(name: str):
    return _cupy().RawModule(code=source(name), options=OPTIONS, backend="nvrtc")


def _kernel(source_name: str, entry: str):
    """The compiled kernel ``entry`` of ``source_name`` (compiled for this GPU on first use, then cached)."""
    if entry not in kernel_names()[source_name]:
        raise KeyError(f"{entry} is not an entry point of {source_name}")
    return _module(source_name).get_function(entry)


def _suffix(array: Any) -> str:
    try:
        return SUFFIXES[np.dtype(array.dtype)]
    except KeyError:
        raise TypeError(f"no CUDA kernel for dtype {array.dtype}; supported: float32, float16, "
                        "bfloat16 (as uint16 bits)") from None


def supports(*arrays: Any) -> bool:
    """True when every array is a CuPy array of a dtype the kernels take (float32, float16, uint16 = bfloat16)."""
    return all(type(a).__module__.startswith("cupy") and np.dtype(a.dtype) in SUFFIXES for a in arrays)


def _threads_for_row(n: int) -> int:
    """Threads for one block per row: about 8 elements each, a whole number of warps, 32 to 1024."""
    return min(1024, max(32, 32 * math.ceil(n / 8 / 32)))


def _grid_for(n: int, threads: int = 256, cap: int = 65536) -> int:
    """Blocks for a grid-stride loop over n elements: one element per thread, at most ``cap`` blocks."""
    return max(1, min(cap, math.ceil(n / threads)))


def _contiguous_inplace(*arrays: Any) -> None:
    for a in arrays:
        if not a.flags.c_contiguous:
            raise ValueError("in-place CUDA kernels need C-contiguous arrays")


# ---------------------------------------------------------------- adamw.cu


def adamw_step(param, grad, exp_avg, exp_avg_sq, step: int, lr: float, beta1: float, beta2: float, eps: float,
               weight_decay: float, grad_scale: float = 1.0) -> None:
    """One AdamW step in place over float32 ``param``, ``exp_avg``, ``exp_avg_sq``; see ``adamw.adamw_step``."""
    from nn.kernels.adamw import adamw_constants  # here: adamw.py imports this module

    cp = _cupy()
    _contiguous_inplace(param, exp_avg, exp_avg_sq)
    for a in (param, exp_avg, exp_avg_sq):
        if a.dtype != cp.float32 or a.shape != param.shape:
            raise TypeError("param, exp_avg and exp_avg_sq must be float32 arrays of one shape")
    grad = cp.ascontiguousarray(grad)
    if param.size == 0:
        return
    decay, step_size, bias_correction2_sqrt = adamw_constants(step, lr, beta1, beta2, weight_decay)
    _kernel("adamw.cu", f"adamw_step_{_suffix(grad)}")(
        (_grid_for(param.size),), (256,),
        (param, grad, exp_avg, exp_avg_sq, np.int64(param.size), np.float32(decay), np.float32(beta1),
         np.float32(beta2), np.float32(step_size), np.float32(bias_correction2_sqrt), np.float32(eps),
         np.float32(grad_scale)))


def sum_of_squares(x) -> float:
    """sum(x ** 2) as a Python float (partial sums in double, in a fixed order)."""
    cp = _cupy()
    x = cp.ascontiguousarray(x)
    if x.size == 0:
        return 0.0
    blocks = _grid_for(x.size, cap=1024)
    partial = cp.empty(blocks, dtype=cp.float64)
    _kernel("adamw.cu", f"sum_squares_{_suffix(x)}")((blocks,), (256,), (x, np.int64(x.size), partial))
    return float(partial.sum())


def scale_(x, factor: float) -> None:
    """x *= factor in place (x C-contiguous)."""
    _contiguous_inplace(x)
    if x.size:
        _kernel("adamw.cu", f"scale_{_suffix(x)}")((_grid_for(x.size),), (256,),
                                                   (x, np.int64(x.size), np.float32(factor)))


# ---------------------------------------------------------------- cross_entropy.cu


def _check_targets(targets, classes: int, ignore_index: int):
    cp = _cupy()
    targets = cp.ascontiguousarray(targets, dtype=cp.int64)
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= classes))
    if bool(bad.any()):
        raise IndexError(f"target out of range for {classes} classes")
    return targets


def cross_entropy_forward(logits, targets, ignore_index: int = -100):
    """(loss (N,), lse (N,)) in float32 for logits (N, C); see ``cross_entropy.cross_entropy_forward``."""
    cp = _cupy()
    logits = cp.ascontiguousarray(logits)
    rows, classes = logits.shape
    targets = _check_targets(targets, classes, ignore_index)
    loss = cp.empty(rows, dtype=cp.float32)
    lse = cp.empty(rows, dtype=cp.float32)
    if rows:
        _kernel("cross_entropy.cu", f"cross_entropy_forward_{_suffix(logits)}")(
            (rows,), (_threads_for_row(classes),),
            (logits, targets, loss, lse, np.int32(classes), np.int64(ignore_index)))
    return loss, lse


def cross_entropy_backward(logits, targets, lse, row_grad, ignore_index: int = -100):
    """d logits (N, C) in logits' dtype; ``row_grad`` is a number or an (N,) array; see the NumPy version."""
    cp = _cupy()
    logits = cp.ascontiguousarray(logits)
    rows, classes = logits.shape
    targets = _check_targets(targets, classes, ignore_index)
    lse = cp.ascontiguousarray(lse, dtype=cp.float32)
    per_row = not np.isscalar(row_grad) and getattr(row_grad, "ndim", 0) > 0
    row_grads = cp.ascontiguousarray(row_grad, dtype=cp.float32) if per_row else cp.empty(1, dtype=cp.float32)
    scale = 1.0 if per_row else float(row_grad)
    dlogits = cp.empty_like(logits)
    if rows:
        _kernel("cross_entropy.cu", f"cross_entropy_backward_{_suffix(logits)}")(
            (rows,), (_threads_for_row(classes),),
            (logits, targets, lse, row_grads, np.int32(per_row), np.float32(scale), dlogits, np.int32(classes),
             np.int64(ignore_index)))
    return dlogits


# ---------------------------------------------------------------- norm.cu


def _float32_or_placeholder(a):
    cp = _cupy()
    return cp.empty(1, dtype=cp.float32) if a is None else cp.ascontiguousarray(a.reshape(-1), dtype=cp.float32)


def norm_forward(x, weight, bias, eps: float, centre: bool):
    """(y in x's dtype, xhat float32, rstd (rows, 1) float32) for x (rows, n); see ``norm.norm_forward``."""
    cp = _cupy()
    x = cp.ascontiguousarray(x)
    rows, n = x.shape
    y = cp.empty_like(x)
    xhat = cp.empty((rows, n), dtype=cp.float32)
    rstd = cp.empty((rows, 1), dtype=cp.float32)
    if rows:
        _kernel("norm.cu", f"norm_forward_{_suffix(x)}")(
            (rows,), (_threads_for_row(n),),
            (x, _float32_or_placeholder(weight), _float32_or_placeholder(bias), y, xhat, rstd, np.int32(n),
             np.float32(eps), np.int32(weight is not None), np.int32(bias is not None), np.int32(centre)))
    return y, xhat, rstd


def norm_backward(g, xhat, rstd, weight, centre: bool, want_weight: bool, want_bias: bool):
    """(dx, d weight or None, d bias or None) in float32; see ``norm.norm_backward``."""
    cp = _cupy()
    g = cp.ascontiguousarray(g)
    xhat = cp.ascontiguousarray(xhat, dtype=cp.float32)
    rstd = cp.ascontiguousarray(rstd, dtype=cp.float32)
    rows, n = xhat.shape
    dx = cp.empty((rows, n), dtype=cp.float32)
    suffix = _suffix(g)
    if rows:
        _kernel("norm.cu", f"norm_backward_input_{suffix}")(
            (rows,), (_threads_for_row(n),),
            (g, xhat, rstd, _float32_or_placeholder(weight), dx, np.int32(n), np.int32(weight is not None),
             np.int32(centre)))
    if not (want_weight or want_bias):
        return dx, None, None
    row_blocks = max(1, min(256, math.ceil(rows / 64)))  # partial sums: row_blocks x n floats each
    partial_weight = cp.zeros((row_blocks, n), dtype=cp.float32)
    partial_bias = cp.zeros((row_blocks, n), dtype=cp.float32)
    if rows and n:
        _kernel("norm.cu", f"norm_backward_params_{suffix}")(
            (math.ceil(n / 32), row_blocks), (32, 8),
            (g, xhat, partial_weight, partial_bias, np.int64(rows), np.int32(n)))
    return (dx, partial_weight.sum(axis=0) if want_weight else None,
            partial_bias.sum(axis=0) if want_bias else None)


# ---------------------------------------------------------------- gelu.cu


def gelu_forward(x, approximate: str):
    """GELU(x) in x's dtype; ``approximate`` is ``"tanh"`` or ``"none"`` (erf)."""
    cp = _cupy()
    x = cp.ascontiguousarray(x)
    y = cp.empty_like(x)
    if x.size:
        _kernel("gelu.cu", f"gelu_forward_{_suffix(x)}")(
            (_grid_for(x.size),), (256,), (x, y, np.int64(x.size), np.int32(approximate == "tanh")))
    return y


def gelu_backward(x, g, approximate: str):
    """g * GELU'(x) in x's dtype."""
    cp = _cupy()
    x = cp.ascontiguousarray(x)
    g = cp.ascontiguousarray(g, dtype=x.dtype)
    dx = cp.empty_like(x)
    if x.size:
        _kernel("gelu.cu", f"gelu_backward_{_suffix(x)}")(
            (_grid_for(x.size),), (256,), (x, g, dx, np.int64(x.size), np.int32(approximate == "tanh")))
    return dx


# ---------------------------------------------------------------- attention.cu


def head_dim_bucket(dim: int) -> int:
    """The compiled head-dim size (32, 64 or 128) that holds ``dim``; ValueError above 128."""
    for size in HEAD_DIMS:
        if dim <= size:
            return size
    raise ValueError(f"CUDA attention supports head dim up to {HEAD_DIMS[-1]}, not {dim}")


def _attention_shape(q, *others) -> tuple[tuple[int, ...], int]:
    """q's shape (..., T, D) and the compiled head-dim size for D; every other array must have that shape."""
    if any(tuple(a.shape) != tuple(q.shape) for a in others):
        raise ValueError(f"attention: q, k, v (and out, dout) must share one shape (..., T, D); q is {q.shape}")
    return tuple(q.shape), head_dim_bucket(q.shape[-1])


def _as_heads(*arrays):
    """Each (..., T, D) array as a contiguous (heads, T, D) array of the first one's dtype."""
    cp = _cupy()
    return [cp.ascontiguousarray(a, dtype=arrays[0].dtype).reshape(-1, *a.shape[-2:]) for a in arrays]


def _attention_launch(entry: str, heads: int, seq: int, args: tuple) -> None:
    grid = (math.ceil(seq / ATTENTION_TILE), heads)
    _kernel("attention.cu", entry)(grid, (ATTENTION_THREADS,), args)


def flash_attention_forward(q, k, v, scale: float | None = None):
    """(out (..., T, D) in q's dtype, lse (..., T) float32) of causal attention; see ``attention.py``."""
    cp = _cupy()
    shape, size = _attention_shape(q, k, v)
    seq, dim = shape[-2:]
    scale = 1 / math.sqrt(dim) if scale is None else scale
    qh, kh, vh = _as_heads(q, k, v)
    heads = qh.shape[0]
    out = cp.empty_like(qh)
    lse = cp.empty((heads, seq), dtype=cp.float32)
    if qh.size:
        _attention_launch(f"attention_forward_{_suffix(qh)}_d{size}", heads, seq,
                          (qh, kh, vh, out, lse, np.int32(seq), np.int32(dim), np.float32(scale)))
    return out.reshape(shape), lse.reshape(shape[:-1])


def flash_attention_backward(q, k, v, out, lse, dout, scale: float | None = None):
    """(dq, dk, dv) in q's dtype from the saved ``out`` and ``lse``; see ``attention.py``."""
    cp = _cupy()
    shape, size = _attention_shape(q, k, v, out, dout)
    seq, dim = shape[-2:]
    scale = 1 / math.sqrt(dim) if scale is None else scale
    qh, kh, vh, oh, doh = _as_heads(q, k, v, out, dout)
    heads = qh.shape[0]
    lse = cp.ascontiguousarray(lse, dtype=cp.float32).reshape(heads, seq)
    row_dot = cp.empty((heads, seq), dtype=cp.float32)
    dq, dk, dv = cp.empty_like(qh), cp.empty_like(qh), cp.empty_like(qh)
    if qh.size:
        suffix = _suffix(qh)
        sizes = (np.int32(seq), np.int32(dim))
        _attention_launch(f"attention_row_dot_{suffix}", heads, seq, (oh, doh, row_dot, *sizes))
        _attention_launch(f"attention_backward_dq_{suffix}_d{size}", heads, seq,
                          (qh, kh, vh, doh, lse, row_dot, dq, *sizes, np.float32(scale)))
        _attention_launch(f"attention_backward_dkdv_{suffix}_d{size}", heads, seq,
                          (qh, kh, vh, doh, lse, row_dot, dk, dv, *sizes, np.float32(scale)))
    return dq.reshape(shape), dk.reshape(shape), dv.reshape(shape)
