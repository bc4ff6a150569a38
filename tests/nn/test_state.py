"""nn.state: safetensors files that other tools read, written atomically, with one clear error for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import nn
from nn.state import StateFileError, load, load_metadata, save


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
