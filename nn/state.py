"""Save and load named tensors as safetensors files (never pickle).

    nn.state.save("model.safetensors", model.state_dict(), metadata={"step": "1000"})
    model.load_state_dict(nn.state.load("model.safetensors"))

safetensors is a flat format: an 8-byte header length, a JSON header (names,
dtypes, shapes, byte offsets, string metadata), then the raw little-endian
bytes. Loading it runs no code, unlike a pickle, so a checkpoint from a
stranger is safe to open, and other tools (PyTorch, Hugging Face) read it.

A save is atomic: the file is written under a temporary name in the same
directory, flushed to disk, then renamed over the target. A crash or an error
mid-write leaves the previous file as it was, never a half-written one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError, safe_open

from nn import backend
from nn.tensor import Tensor

__all__ = ["StateFileError", "save", "load", "load_metadata"]


class StateFileError(ValueError):
    """A tensor file is missing, truncated, corrupt or not a safetensors file."""


def save(path: str | os.PathLike, tensors: dict[str, Tensor | Any], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> Tensor or array, any device) and optional string ``metadata`` to ``path``.

    Every tensor is copied to the host as a C-contiguous NumPy array (the
    format stores dense bytes). Tensors that share memory, such as tied
    weights, are written once per name.
    """
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("safetensors metadata must map str to str")
    arrays = {name: _host_array(t) for name, t in tensors.items()}
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        safetensors.numpy.save_file(arrays, temporary, metadata=metadata)
        os.chmod(temporary, _file_mode())  # the writer creates 0600 files; give the usual umask-based mode
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync(path.parent)  # make the rename itself durable


def _file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def load(path: str | os.PathLike, device: str = "cpu") -> dict[str, Tensor]:
    """Read every tensor of a safetensors file into Tensors on ``device`` (which do not require grad)."""
    arrays = _read(path, lambda f: f.get_tensors())
    return {name: Tensor(backend.to_device(array, device)) for name, array in arrays.items()}


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors file ({} when there is none), without reading the tensors."""
    return _read(path, lambda f: f.metadata() or {})


def _host_array(t: Tensor | Any) -> np.ndarray:
    array = backend.to_numpy(t.data if isinstance(t, Tensor) else t)
    # safetensors copies ``nbytes`` bytes from the data pointer, so a strided view must be made dense first.
    return array if array.flags.c_contiguous else array.copy(order="C")


def _read(path: str | os.PathLike, read: Callable[[Any], Any]) -> Any:
    """Open ``path`` with safetensors and apply ``read`` to it; any failure becomes one StateFileError."""
    if not os.path.isfile(path):
        raise StateFileError(f"{os.fspath(path)}: no such file")
    try:
        with safe_open(path, framework="np") as f:
            return read(f)
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as error:
        raise StateFileError(f"{os.fspath(path)}: not a readable safetensors file ({error})") from error


def _fsync(path: Path) -> None:
    """Flush a file's (or a directory's) contents from the OS cache to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
