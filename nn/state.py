"""Save and load named tensors as safetensors files (never pickle).

    nn.state.save("model.safetensors", model.state_dict(), metadata={"step": "1000"})
    model.load_state_dict(nn.state.load("model.safetensors"))

safetensors is a flat format: an 8-byte header length, a JSON header (names,
dtypes, shapes, byte offsets, string metadata), then the raw little-endian
bytes. Loading it runs no code, unlike a pickle, so a checkpoint from a
stranger is safe to open, and other tools (PyTorch, Hugging Face) read it.

Damage is detected: ``save`` stores a CRC-32 of every tensor (of its dtype,
shape and bytes) and one of the string metadata under the metadata key
``CHECKSUMS_KEY``, and ``load``/``load_metadata`` recompute them and raise a
StateFileError naming the file and the tensor on any mismatch. CRC-32 finds
every error burst of up to 32 bits (one damaged byte always) and, measured in
``benchmarks/checkpoint_checksum.py``, is the fastest of zlib's and hashlib's
checksums; it guards against accident, not against a forger, who could
recompute it. Files without checksums (older ones, other tools') still load.

A save is atomic (``util.files.atomic_write``): the file is written under a
temporary name in the same directory, flushed to disk, then renamed over the
target. A crash or an error mid-write leaves the previous file as it was,
never a half-written one.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError, safe_open

from nn import backend
from nn.tensor import Tensor
from util.files import atomic_write

__all__ = ["CHECKSUMS_KEY", "StateFileError", "save", "load", "load_metadata"]

CHECKSUMS_KEY = "nn.state.checksums"
"""The metadata key under which ``save`` stores the checksums, as JSON:
``{"algorithm": "crc32", "metadata": "<8 hex digits>", "tensors": {name: "<8 hex digits>"}}``."""


class StateFileError(ValueError):
    """A tensor file is missing, truncated, corrupt (a checksum does not match) or not a safetensors file."""


def save(path: str | os.PathLike, tensors: dict[str, Tensor | Any], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> Tensor or array, any device) and optional string ``metadata`` to ``path``.

    Every tensor is copied to the host as a C-contiguous NumPy array (the
    format stores dense bytes). Tensors that share memory, such as tied
    weights, are written once per name. The checksums go into the metadata
    under ``CHECKSUMS_KEY``, which is therefore not the caller's to use. A
    full disk (or any other failed write) is an OSError naming ``path``.
    """
    metadata = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("safetensors metadata must map str to str")
    if CHECKSUMS_KEY in metadata:
        raise ValueError(f"the metadata key {CHECKSUMS_KEY!r} is reserved for the checksums")
    arrays = {name: _host_array(t) for name, t in tensors.items()}
    checksums = {"algorithm": "crc32", "metadata": _metadata_checksum(metadata),
                 "tensors": {name: _tensor_checksum(array) for name, array in arrays.items()}}
    metadata[CHECKSUMS_KEY] = json.dumps(checksums)
    path = Path(path)
    atomic_write(path, lambda temporary: _write(arrays, Path(temporary), metadata, path))


def load(path: str | os.PathLike, device: str = "cpu", verify: bool = True) -> dict[str, Tensor]:
    """Read every tensor of a safetensors file into Tensors on ``device`` (which do not require grad).

    With ``verify`` (the default) the stored checksums are recomputed first, and
    a mismatch is a StateFileError naming the file and the tensor; ``verify=False``
    skips that work (its cost is measured in benchmarks/checkpoint_checksum.py).
    """
    arrays, metadata = _read(path, lambda f: (f.get_tensors(), f.metadata() or {}))
    if verify:
        _verify(path, metadata, arrays)
    return {name: Tensor(backend.to_device(array, device)) for name, array in arrays.items()}


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file ({} when there is none), checked, without reading the tensors.

    The checksums themselves (``CHECKSUMS_KEY``) are not part of the result.
    """
    metadata = _read(path, lambda f: f.metadata() or {})
    _verify(path, metadata)
    return _without_checksums(metadata)


def _host_array(t: Tensor | Any) -> np.ndarray:
    """``t`` as a C-contiguous little-endian host array: the very bytes the file will hold, for the checksum."""
    array = backend.to_numpy(t.data if isinstance(t, Tensor) else t)
    return array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)


def _tensor_checksum(array: np.ndarray) -> str:
    """The CRC-32 of a C-contiguous array's dtype, shape and bytes, as 8 hex digits."""
    layout = f"{array.dtype.name} {list(array.shape)}".encode()
    return f"{zlib.crc32(array, zlib.crc32(layout)):08x}"


def _metadata_checksum(metadata: dict[str, str]) -> str:
    """The CRC-32 of the metadata (without the checksums) as sorted-key JSON, as 8 hex digits."""
    return f"{zlib.crc32(json.dumps(metadata, sort_keys=True).encode()):08x}"


def _without_checksums(metadata: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in metadata.items() if key != CHECKSUMS_KEY}


def _verify(path: str | os.PathLike, metadata: dict[str, str], arrays: dict[str, np.ndarray] | None = None) -> None:
    """Check the stored checksum of ``metadata`` and, when given, of every array; a file without any passes.

    Raises a StateFileError naming ``path`` (and the tensor) on the first mismatch.
    """
    if CHECKSUMS_KEY not in metadata:
        return  # written before checksums existed, or by another tool
    where = os.fspath(path)
    try:
        record = json.loads(metadata[CHECKSUMS_KEY])
        algorithm, metadata_sum, tensor_sums = record["algorithm"], record["metadata"], dict(record["tensors"])
    except (ValueError, KeyError, TypeError):
        raise StateFileError(f"{where}: the checksum record in the metadata is damaged") from None
    if algorithm != "crc32":
        raise StateFileError(f"{where}: unknown checksum algorithm {algorithm!r}")
    if _metadata_checksum(_without_checksums(metadata)) != metadata_sum:
        raise StateFileError(f"{where}: the metadata is damaged (its CRC-32 checksum does not match)")
    for name, array in (arrays or {}).items():
        if name not in tensor_sums:
            raise StateFileError(f"{where}: tensor {name!r} has no checksum (is its name damaged?)")
        if _tensor_checksum(array) != tensor_sums[name]:
            raise StateFileError(f"{where}: tensor {name!r} is damaged (its CRC-32 checksum does not match)")
    if arrays is not None and len(arrays) != len(tensor_sums):
        missing = sorted(set(tensor_sums) - set(arrays))[0]
        raise StateFileError(f"{where}: tensor {missing!r} is missing")


def _read(path: str | os.PathLike, read: Callable[[Any], Any]) -> Any:
    """Open ``path`` with safetensors and apply ``read`` to it; any failure becomes one StateFileError."""
    if not os.path.isfile(path):
        raise StateFileError(f"{os.fspath(path)}: no such file")
    try:
        with safe_open(path, framework="np") as f:
            return read(f)
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as error:
        raise StateFileError(f"{os.fspath(path)}: not a readable safetensors file ({error})") from error


def _write(arrays: dict[str, np.ndarray], temporary: Path, metadata: dict[str, str], path: Path) -> None:
    """Write the safetensors file ``temporary``; a failed write (a full disk, ...) is an OSError naming ``path``.

    safetensors reports an I/O failure as a SafetensorError whose message ends
    with the OS error code, as in "No space left on device (os error 28)".
    """
    try:
        safetensors.numpy.save_file(arrays, temporary, metadata=metadata)
    except SafetensorError as error:
        code = re.search(r"\(os error (\d+)\)", str(error))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), os.fspath(path)) from error
