"""nn.state: safetensors files that other tools read, written atomically, with one clear error for bad files."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import nn
from nn.state import CHECKSUMS_KEY, StateFileError, load, load_metadata, save


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((4, 6))
    return {
        "float32": rng.standard_normal((3, 5)).astype(np.float32),
        "float64": matrix,
        "int64": rng.integers(-(2**40), 2**40, size=(7,)),
        "uint16": rng.integers(0, 2**16, size=(2, 3), dtype=np.uint16),
        "transposed": matrix.T,  # non-contiguous views must be written as their values
        "strided": matrix[::2, 1::3],
        "scalar": np.array(2.5, dtype=np.float32),  # 0-d stays 0-d
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def test_round_trip_keeps_values_dtypes_and_shapes(tmp_path):
    arrays = _arrays()
    path = tmp_path / "weights.safetensors"
    save(path, {**arrays, "tensor": nn.tensor(arrays["float32"], requires_grad=True)})
    loaded = load(path)
    assert set(loaded) == {*arrays, "tensor"}
    for name, array in {**arrays, "tensor": arrays["float32"]}.items():
        assert isinstance(loaded[name], nn.Tensor) and not loaded[name].requires_grad
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        np.testing.assert_array_equal(loaded[name].numpy(), array, err_msg=name)


def test_the_file_is_standard_safetensors(tmp_path):
    arrays = _arrays()
    path = tmp_path / "weights.safetensors"
    save(path, arrays)
    by_safetensors = safetensors.numpy.load_file(path)
    by_torch = safetensors.torch.load_file(path)
    for name, array in arrays.items():
        np.testing.assert_array_equal(by_safetensors[name], array, err_msg=name)
        np.testing.assert_array_equal(by_torch[name].numpy(), array, err_msg=name)


def test_tied_weights_are_saved_under_each_name(tmp_path):
    shared = nn.tensor(np.arange(6.0).reshape(2, 3))
    save(tmp_path / "tied.safetensors", {"wte.weight": shared, "lm_head.weight": shared})
    loaded = load(tmp_path / "tied.safetensors")
    np.testing.assert_array_equal(loaded["wte.weight"].numpy(), loaded["lm_head.weight"].numpy())


def test_metadata_round_trip(tmp_path):
    path = tmp_path / "m.safetensors"
    save(path, {"x": np.ones(2)}, metadata={"step": "100", "config": '{"n_layer": 2}'})
    assert load_metadata(path) == {"step": "100", "config": '{"n_layer": 2}'}
    save(path, {"x": np.ones(2)})
    assert load_metadata(path) == {}
    with pytest.raises(TypeError, match="str to str"):
        save(path, {"x": np.ones(2)}, metadata={"step": 100})


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    save(path, {"x": np.arange(4.0)})
    before = path.read_bytes()

    def write_half_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save(path, {"x": np.zeros(1000)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def _bad_files(tmp_path) -> dict[str, object]:
    good = tmp_path / "good.safetensors"
    save(good, {"x": np.arange(10.0)}, metadata={"a": "b"})
    data = good.read_bytes()
    files = {"truncated": data[:-5], "header_only": data[:20], "empty": b"", "garbage": b"not a checkpoint " * 10}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        paths[name].write_bytes(content)
    paths["missing"] = tmp_path / "missing.safetensors"
    paths["directory"] = tmp_path
    paths["bfloat16"] = tmp_path / "bf16.safetensors"  # a valid file NumPy has no dtype for
    safetensors.torch.save_file({"w": torch.ones(2, dtype=torch.bfloat16)}, paths["bfloat16"])
    return paths


@pytest.mark.parametrize("reader", [load, load_metadata])
def test_bad_files_raise_one_state_file_error_naming_the_path(tmp_path, reader):
    for kind, path in _bad_files(tmp_path).items():
        if reader is load_metadata and kind == "bfloat16":
            continue  # its header is fine, only its tensors are foreign
        with pytest.raises(StateFileError) as info:
            reader(path)
        assert str(path) in str(info.value), kind
        assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------- checksums


def _header(path) -> tuple[int, dict]:
    """Where the tensor data starts in a safetensors file, and its parsed JSON header."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return 8 + size, json.loads(data[8:8 + size])


def _replace_once(path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))


def test_checksums_are_stored_in_the_metadata_and_kept_out_of_its_result(tmp_path):
    path = tmp_path / "m.safetensors"
    save(path, _arrays(), metadata={"step": "100"})
    stored = safetensors.safe_open(path, framework="np").metadata()
    record = json.loads(stored[CHECKSUMS_KEY])
    assert record["algorithm"] == "crc32" and set(record["tensors"]) == set(_arrays())
    assert load_metadata(path) == {"step": "100"}
    with pytest.raises(ValueError, match="reserved"):
        save(path, _arrays(), metadata={CHECKSUMS_KEY: "{}"})


@pytest.mark.parametrize("name", sorted(n for n, a in _arrays().items() if a.size))
def test_a_damaged_byte_in_a_tensor_is_an_error_naming_the_file_and_the_tensor(tmp_path, name):
    path = tmp_path / "ckpt.safetensors"
    save(path, _arrays(), metadata={"step": "100"})
    start, header = _header(path)
    begin, end = header[name]["data_offsets"]
    data = bytearray(path.read_bytes())
    data[start + (begin + end) // 2] ^= 0x10  # one bit of one byte: still a valid number
    path.write_bytes(bytes(data))
    with pytest.raises(StateFileError) as info:
        load(path)
    assert str(info.value) == f"{path}: tensor {name!r} is damaged (its CRC-32 checksum does not match)"
    assert load_metadata(path) == {"step": "100"}  # the header is intact
    assert set(load(path, verify=False)) == set(_arrays())


def test_a_damaged_metadata_value_is_an_error(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save(path, {"x": np.ones(3)}, metadata={"step": "100", "config": '{"n_layer": 12}'})
    _replace_once(path, b"12", b"13")
    for reader in (load, load_metadata):
        with pytest.raises(StateFileError, match=f"^{path}: the metadata is damaged"):
            reader(path)


@pytest.mark.parametrize("old, new, message", [
    (b'"F32"', b'"I32"', "tensor 'weights' is damaged"),  # same size, another dtype
    (b'"weights"', b'"weighty"', "tensor 'weighty' has no checksum"),
    (b"algorithm", b"algorithx", "the checksum record in the metadata is damaged"),
])
def test_a_damaged_header_is_an_error(tmp_path, old, new, message):
    path = tmp_path / "ckpt.safetensors"
    save(path, {"weights": np.ones((2, 3), np.float32), "steps": np.arange(3)})
    _replace_once(path, old, new)
    with pytest.raises(StateFileError, match=f"^{path}: {message}"):
        load(path)


def test_files_without_checksums_still_load(tmp_path):
    """Files written before checksums existed, or by other tools, have none: nothing to check."""
    arrays = {name: np.ascontiguousarray(a) for name, a in _arrays().items()}
    path = tmp_path / "old.safetensors"
    safetensors.numpy.save_file(arrays, path, metadata={"step": "7"})
    assert load_metadata(path) == {"step": "7"}
    loaded = load(path)
    for name, array in arrays.items():
        np.testing.assert_array_equal(loaded[name].numpy(), array, err_msg=name)


def test_big_endian_arrays_round_trip_with_their_checksums(tmp_path):
    path = tmp_path / "be.safetensors"
    big = np.arange(6, dtype=">f4").reshape(2, 3)
    save(path, {"big": big})
    np.testing.assert_array_equal(load(path)["big"].numpy(), big)


def test_a_full_disk_is_an_os_error_naming_the_file(small_tmpfs):
    path = small_tmpfs / "ckpt.safetensors"
    save(path, {"x": np.arange(4.0)})
    before = path.read_bytes()
    with pytest.raises(OSError) as info:
        save(path, {"x": np.zeros(1 << 18)})  # 2 MiB of float64
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert str(info.value) == f"[Errno 28] No space left on device: '{path}'"
    assert path.read_bytes() == before
    assert [p.name for p in small_tmpfs.iterdir()] == ["ckpt.safetensors"]
