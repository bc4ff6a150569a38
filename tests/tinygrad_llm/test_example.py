"""examples/train_gpt.py, the main job `make train` runs, end to end on a small corpus, twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tinygrad_llm.data.sources import StdlibCorpus

ROOT = Path(__file__).resolve().parents[2]


def run_example(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / "train_gpt.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_the_main_job_trains_samples_and_reuses_a_finished_run(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stdlib = StdlibCorpus("all")
    for name in stdlib.files[:60]:
        (corpus / name.replace("/", "_")).write_bytes((stdlib.root / name).read_bytes())
    options = ["--source", str(corpus), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
               "--preset", "tiny", "--budget", "15s", "--samples", "1", "--set", "block_size=32",
               "--set", "eval_batches=2", "--set", "eval_interval=50"]
    first = run_example(*options, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "time budget reached" in first.stderr and "validation: loss" in first.stdout
    assert "tinygrad-llm generate --checkpoint" in first.stdout  # the command to type next ...
    hint = [line for line in first.stdout.splitlines() if line.startswith("try:         ")]  # not a sample's try:
    assert len(hint) == 1
    typed = hint[0].split()[1]
    assert Path(tmp_path / typed).exists() or Path(typed).exists()  # ... names a program that exists

    second = run_example(*options, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "already holds a finished run; reusing it" in second.stdout
    assert "validation: loss" in second.stdout
