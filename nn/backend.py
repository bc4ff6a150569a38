"""Devices, array modules, dtypes and the random state.

A tensor's data is an array of one *array module*: ``numpy`` on the CPU, ``cupy``
on a CUDA GPU. Every op asks :func:`xp_of` for the module of its inputs and then
writes ``xp.exp(x)`` instead of ``np.exp(x)``, so one implementation serves both
devices. CuPy is optional; asking for ``"cuda"`` without it fails with one line.
"""

from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any

import numpy as np

DEFAULT_DTYPE = np.dtype(np.float32)
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

_DTYPE_NAMES = {
    "float16": np.float16, "half": np.float16,
    "float32": np.float32, "float": np.float32,
    "float64": np.float64, "double": np.float64,
    "int32": np.int32, "int64": np.int64, "long": np.int64,
    "uint8": np.uint8, "bool": np.bool_,
}


def as_dtype(dtype: Any) -> np.dtype:
    """Turn ``"float32"``, ``np.float32`` or ``np.dtype('float32')`` into a NumPy dtype."""
    if isinstance(dtype, str):
        if dtype not in _DTYPE_NAMES:
            raise TypeError(f"unknown dtype {dtype!r}; known: {', '.join(sorted(_DTYPE_NAMES))}")
        dtype = _DTYPE_NAMES[dtype]
    return np.dtype(dtype)


def is_float(dtype: np.dtype) -> bool:
    """True for the floating dtypes the engine differentiates (float16/32/64)."""
    return np.dtype(dtype).kind == "f"


def _cupy() -> ModuleType:
    """Import CuPy, or fail with the single line a user needs to read."""
    try:
        import cupy
    except ImportError:
        raise RuntimeError(
            "device 'cuda' needs CuPy and a CUDA GPU: pip install 'cupy-cuda13x[ctk]' "
            "(or, in a clone, pip install -e '.[gpu]')"
        ) from None
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception:
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is visible to CuPy") from None
    return cupy


def array_module(device: str) -> ModuleType:
    """The array module that holds data on ``device`` (``"cpu"`` or ``"cuda"``)."""
    if device == "cpu":
        return np
    if device == "cuda" or device.startswith("cuda:"):
        return _cupy()
    raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")


def xp_of(array: Any) -> ModuleType:
    """The array module of ``array``: NumPy unless it is a CuPy array."""
    if type(array).__module__.startswith("cupy"):
        return _cupy()
    return np


def device_of(array: Any) -> str:
    """``"cuda"`` for CuPy arrays, ``"cpu"`` otherwise."""
    return "cuda" if type(array).__module__.startswith("cupy") else "cpu"


def to_device(array: Any, device: str) -> Any:
    """Copy ``array`` to ``device`` (no copy when it is already there)."""
    if device_of(array) == ("cuda" if device.startswith("cuda") else device):
        return array
    if device == "cpu":
        return array.get()
    return array_module(device).asarray(array)


def to_numpy(array: Any) -> np.ndarray:
    """A host NumPy array with the same values."""
    return array if isinstance(array, np.ndarray) else np.asarray(to_device(array, "cpu"))


# ---------------------------------------------------------------- random state
# One generator for the whole engine (randn, dropout, initialisation), so a
# single manual_seed makes a run repeatable, and get/set_rng_state let training
# checkpoints resume the exact random stream.

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reset the engine's random stream; the same seed gives the same numbers."""
    global _generator
    _generator = np.random.default_rng(seed)


def rng() -> np.random.Generator:
    """The engine's random generator (NumPy's PCG64)."""
    return _generator


def get_rng_state() -> dict:
    """A copy of the generator's state, to save in a checkpoint."""
    return _generator.bit_generator.state


def set_rng_state(state: dict) -> None:
    """Restore a state returned by :func:`get_rng_state`."""
    _generator.bit_generator.state = state


def special(xp: ModuleType) -> ModuleType:
    """``scipy.special`` for NumPy arrays, ``cupyx.scipy.special`` for CuPy (erf for exact GELU)."""
    if xp is np:
        import scipy.special

        return scipy.special
    import cupyx.scipy.special

    return cupyx.scipy.special


def quiet_float_errors(xp: ModuleType):
    """Silence divide/invalid warnings in a formula that masks its own NaN/inf (a no-op on CuPy)."""
    return np.errstate(divide="ignore", invalid="ignore") if xp is np else contextlib.nullcontext()
