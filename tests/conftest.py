"""Hypothesis settings for the whole suite, and the ``mpiexec`` the multi-process tests launch.

No deadline (a first NumPy or regex call can be slow) and the failing example is
printed so it can be replayed. Under CI (CI=true) the examples are derandomized:
each run of CI tries the same examples, so its verdict is reproducible; local runs
keep drawing new ones, which is how new edge cases get found.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "project", deadline=None, print_blob=True, derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.load_profile("project")


@pytest.fixture(scope="session")
def mpiexec() -> str:
    """The MPI launcher of this environment (the mpich wheel's, installed by the test extra)."""
    found = Path(sys.executable).parent / "mpiexec"
    path = str(found) if found.exists() else shutil.which("mpiexec")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("mpiexec not found: `pip install mpi4py mpich` is part of the test extra")
        pytest.skip("mpiexec not found (pip install mpi4py mpich)")
    return path


@pytest.fixture()
def small_tmpfs(tmp_path: Path):
    """A real 1 MiB tmpfs (a disk that fills up), unmounted afterwards; skipped where mounting is not allowed."""
    import subprocess

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    directory = tmp_path / "tmpfs"
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    yield directory
    subprocess.run(["umount", str(directory)], check=True)



@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2-style byte-level BPE trained by Hugging Face's ``tokenizers``, saved in both of its formats.

    The directory holds ``vocab.json`` + ``merges.txt`` and ``tokenizer.json``
    (1,000 ids: ``<|endoftext|>`` first, the 256 bytes, then the merges), learned
    from part of the standard library's source and some non-English text.
    """
    import email
    import json as json_module

    tokenizers = pytest.importorskip("tokenizers")
    directory = tmp_path_factory.mktemp("hf-tokenizer")
    sources = sorted(Path(email.__file__).parent.glob("*.py")) + sorted(Path(json_module.__file__).parent.glob("*.py"))
    texts = [p.read_text(encoding="utf-8") for p in sources]
    texts.append("Größe, naïve café — 東京は日本の首都です。Привет, мир! 🙂🙂 ½ + ¼ = ¾\n" * 20)
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=1000, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    bpe.save_model(str(directory))
    bpe.save(str(directory / "tokenizer.json"))
    return directory
