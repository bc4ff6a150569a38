"""Damaged checkpoints: a flipped byte in the weights or the metadata is one clear error, never used silently.

The checkpoint is built directly (a tiny untrained GPT, a 260-token tokenizer
beside it), so these tests need no training run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from tinygrad_llm.checkpoint import (
    TOKENIZER_FILE,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_model,
    read_info,
    save_checkpoint,
)
from tinygrad_llm.model import GPT, GPTConfig
from tokenizer import Tokenizer
from util.files import file_sha256

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with best.safetensors (a tiny GPT) and the tokenizer.txt it was made for."""
    run = tmp_path_factory.mktemp("run")
    tokenizer = Tokenizer.train("def f(x):\n    return x + 1\n" * 20, vocab_size=260, progress=False)
    tokenizer.save(run / TOKENIZER_FILE)
    config = GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=16)
    model = {name: p.numpy() for name, p in GPT(config).state_dict().items()}
    info = {"model_config": config.to_dict(), "step": 0, "tokenizer_sha256": file_sha256(run / TOKENIZER_FILE)}
    save_checkpoint(run / "best.safetensors", Checkpoint(model=model, info=info))
    return run


@pytest.fixture()
def run(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of ``pristine`` that a test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "run"))


def flip_a_byte_of(path: Path, tensor: str) -> None:
    """Flip one bit in the middle of ``tensor``'s bytes in the safetensors file ``path``."""
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8:8 + size])[tensor]["data_offsets"]
    data[8 + size + (begin + end) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def generate(checkpoint: Path) -> subprocess.CompletedProcess:
    """``python -m tinygrad_llm generate --checkpoint FILE --prompt x`` as a user types it."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tinygrad_llm", "generate", "--checkpoint", str(checkpoint),
                           "--prompt", "x", "--max-new-tokens", "3"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_a_flipped_byte_in_the_weights_is_one_error_line_from_the_cli(run):
    path = run / "best.safetensors"
    assert generate(path).returncode == 0  # the intact checkpoint works
    flip_a_byte_of(path, "h.0.attn.c_attn.weight")
    result = generate(path)
    assert result.returncode != 0 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"tinygrad-llm: error: {path}: tensor 'h.0.attn.c_attn.weight' is damaged "
                                          "(its CRC-32 checksum does not match)"]


def test_a_damaged_tensor_is_a_checkpoint_error_naming_file_and_tensor(run):
    path = run / "best.safetensors"
    name = sorted(load_checkpoint(path).model)[-1]
    flip_a_byte_of(path, name)
    with pytest.raises(CheckpointError, match=f"^{path}: tensor '{name}' is damaged"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="is damaged"):
        load_model(run)


def test_a_damaged_metadata_value_is_a_checkpoint_error(run):
    """Without the checksum, this damage would be misread as "trained with another tokenizer"."""
    path = run / "best.safetensors"
    sha = read_info(path)["tokenizer_sha256"]
    other = ("0" if sha[0] != "0" else "1") + sha[1:]
    path.write_bytes(path.read_bytes().replace(sha.encode(), other.encode()))
    for reader in (read_info, load_checkpoint, load_model):
        with pytest.raises(CheckpointError, match=f"^{path}: the metadata is damaged"):
            reader(path)


def test_a_checkpoint_without_checksums_still_loads(run):
    """Checkpoints written before checksums existed have none; they load as before."""
    path = run / "best.safetensors"
    metadata = safetensors.safe_open(path, "np").metadata()
    tensors = safetensors.numpy.load_file(path)
    path.unlink()
    safetensors.numpy.save_file(tensors, path, metadata={"tinygrad_llm": metadata["tinygrad_llm"]})
    loaded = load_checkpoint(path)
    for name, array in loaded.model.items():
        np.testing.assert_array_equal(array, tensors[name], err_msg=name)
    model, _ = load_model(run)
    assert model.config.vocab_size == 260
