"""Training under ``mpiexec``: N processes train like one, resume across layouts, and fail together.

Each test launches real MPI jobs (the mpich wheel's ``mpiexec``) with a timeout, so a
hang fails the test instead of the suite. Runs use float64 so that "the same
training" can be checked to 1e-9: only the order of floating-point sums differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.mpi_programs import MPI_ENV
from tinygrad_llm.checkpoint import load_checkpoint, read_info

pytestmark = pytest.mark.mpi

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240
EXACT = ["--preset", "tiny", "--set=block_size=32", "--set=batch_size=2", "--set=eval_batches=2",
         "--set=log_interval=1", "--set=eval_interval=3", "--set=checkpoint_interval=100", "--set=dtype=float64",
         "--set=schedule=constant", "--set=total_batch_tokens=256"]
"""256 tokens per step = 4 micro-batches of 2 x 32 on one process, 2 on each of two, 1 on each of four."""


def run(command: list, processes: int | None = None, mpiexec: str | None = None,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``command`` (under ``mpiexec -n processes`` if given) from the repository root."""
    prefix = [mpiexec, "-n", str(processes)] if processes else []
    env = {**os.environ, **MPI_ENV}
    return subprocess.run([*prefix, *map(str, command)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def train(data: Path, out: Path, steps: int, *extra: str, processes: int | None = None,
          mpiexec: str | None = None) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).parent / "tinygrad-llm"
    result = run([cli, "train", "--data", data, "--out", out, "--max-steps", steps, *EXACT, *extra],
                 processes, mpiexec)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def val_losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in records if "val_loss" in r}


def final_weights(out: Path) -> dict[str, np.ndarray]:
    latest = sorted(out.glob("ckpt_*.safetensors"))[-1]
    return load_checkpoint(latest).model


def assert_close(ours: dict, reference: dict, tolerance: float) -> None:
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        assert np.allclose(ours[key], value, rtol=tolerance, atol=tolerance), key


@pytest.fixture(scope="module")
def one_process(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: 6 steps on one process (4 micro-batches per step)."""
    out = tmp_path_factory.mktemp("single") / "run"
    train(data_dir, out, 6)
    return out


def test_two_processes_train_exactly_like_one(data_dir, one_process, tmp_path, mpiexec):
    out = tmp_path / "two"
    result = train(data_dir, out, 6, processes=2, mpiexec=mpiexec)
    assert "2 micro-batches" in result.stderr  # 256 tokens = 2 processes x 2 micro-batches x 2 x 32
    assert result.stderr.count("val loss") == 3  # only process 0 reports (steps 0, 3, 6)
    reference, ours = losses(one_process), losses(out)
    assert list(ours) == list(range(1, 7))  # one log line per step, not one per process
    np.testing.assert_allclose(list(ours.values()), list(reference.values()), rtol=1e-10)
    np.testing.assert_allclose(list(val_losses(out).values()), list(val_losses(one_process).values()), rtol=1e-10)
    assert_close(final_weights(out), final_weights(one_process), 1e-9)
    info = read_info(out / "ckpt_0000006.safetensors")
    assert info["processes"] == 2 and len(info["rng_by_rank"]) == 2


def test_a_run_resumes_on_another_number_of_processes(data_dir, one_process, tmp_path, mpiexec):
    out = tmp_path / "moving"
    train(data_dir, out, 2, processes=2, mpiexec=mpiexec)
    resumed = train(data_dir, out, 4, "--resume", processes=4, mpiexec=mpiexec)
    assert "saved by 2 processes" in resumed.stderr and "4 micro-batch" not in resumed.stderr
    train(data_dir, out, 6, "--resume")  # and back to one process
    reference, ours = losses(one_process), losses(out)
    assert list(ours) == list(range(1, 7))
    np.testing.assert_allclose(list(ours.values()), list(reference.values()), rtol=1e-10)
    assert_close(final_weights(out), final_weights(one_process), 1e-9)


def test_tensor_and_data_parallel_on_four_processes_train_like_one(data_dir, one_process, tmp_path, mpiexec):
    out = tmp_path / "tp"
    train(data_dir, out, 6, "--set=tensor_parallel=2", processes=4, mpiexec=mpiexec)
    np.testing.assert_allclose(list(losses(out).values()), list(losses(one_process).values()), rtol=1e-10)
    weights = final_weights(out)  # gathered: the checkpoint holds the whole model
    assert_close(weights, final_weights(one_process), 1e-9)
    cli = Path(sys.executable).parent / "tinygrad-llm"  # so one process can generate from it
    result = run([cli, "generate", "--checkpoint", out, "--prompt", "def ", "--max-new-tokens", 5, "--seed", 0])
    assert result.returncode == 0 and result.stdout.startswith("def "), result.stderr


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_process_ends_the_whole_job(data_dir, tmp_path, mpiexec, how):
    result = run([sys.executable, "-m", "tests.mpi_programs.failing_rank", data_dir, tmp_path / "run", how],
                 processes=2, mpiexec=mpiexec, timeout=120)  # a job left hanging would raise TimeoutExpired
    assert result.returncode != 0
    steps = [r["step"] for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())]
    assert max(steps) < 10  # ended by the failure at step 2, not by the 1000 steps
    if how == "raise":
        assert "[rank 1/2] uncaught RuntimeError: rank 1 hit a bug in step 2; aborting all 2 processes" \
            in result.stderr, result.stderr[-2000:]


def test_a_time_budget_gives_every_process_the_same_steps_and_learning_rates(data_dir, tmp_path, mpiexec):
    result = run([sys.executable, "-m", "tests.mpi_programs.budget_agreement", data_dir, tmp_path / "run", 8],
                 processes=2, mpiexec=mpiexec, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AGREE" in result.stdout, result.stdout  # the replicas did not drift apart


def test_a_bad_layout_is_one_clear_line_on_every_process(data_dir, tmp_path, mpiexec):
    cli = Path(sys.executable).parent / "tinygrad-llm"
    result = run([cli, "train", "--data", data_dir, "--out", tmp_path / "run", "--max-steps", 2, *EXACT,
                  "--set=n_head=4", "--set=tensor_parallel=4"], processes=2, mpiexec=mpiexec, timeout=120)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "tinygrad-llm: error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr  # one line for the whole job
    assert "tensor_parallel=4 must divide the number of processes (2)" in errors[0]
    assert result.stderr.strip() == errors[0]  # and nothing else: no "Abort(2) on node 0 ..." from MPI
