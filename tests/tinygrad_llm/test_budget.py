"""The time budget is a wall-clock promise, the schedule reaches its end, and the BLAS threads follow the load.

The budget tests run the real loop on a simulated clock: each training step
and each evaluation advances it by a chosen number of seconds, so a machine
that suddenly gets ten times slower is a line of the test, not a hope about
the CI machine.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from nn.optim import learning_rate
from tinygrad_llm.train import Trainer, pretraining
from tinygrad_llm.train.hardware import ThreadGovernor, available_cores, peak_flops
from tinygrad_llm.train.run_state import Plan


class SimulatedClock:
    """``time.monotonic`` that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> SimulatedClock:
    fake = SimulatedClock()
    monkeypatch.setattr(time, "monotonic", fake)
    return fake


def slow_down(trainer: Trainer, clock: SimulatedClock, step_seconds, eval_seconds: float = 0.5) -> None:
    """Make each step take ``step_seconds(step)`` and each evaluation ``eval_seconds`` on the clock."""
    train_step, validate = trainer.train_step, trainer.setup.validate

    def timed_step():
        result = train_step()
        clock.now += step_seconds(trainer.step)
        return result

    def timed_validate():
        clock.now += eval_seconds
        return validate()

    trainer.train_step = timed_step
    trainer.setup.validate = timed_validate


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_a_budget_holds_when_the_machine_slows_down_tenfold(tmp_path, train_config, clock, schedule):
    budget = 40.0
    fields, config = train_config(tmp_path / "run", "eval_interval=20", "checkpoint_interval=1000",
                                  f"schedule={schedule}", "lr=0.01", time_budget=budget)
    trainer = pretraining(fields, config, stream=io.StringIO())
    start = clock.now
    slow_down(trainer, clock, lambda step: 0.1 if step < 50 else 1.0)  # a busy machine from step 50 on
    summary = trainer.fit()
    assert summary["status"] == "time budget reached"
    assert clock.now - start <= budget * 1.05
    assert clock.now - start > budget * 0.85  # and it used the budget, not a pessimistic plan made at the start
    lrs = [r["lr"] for r in trainer.files.records() if "lr" in r]
    steps = [r["step"] for r in trainer.files.records() if "lr" in r]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 60
    assert max(lrs) == pytest.approx(0.01, rel=0.02)                 # warmup reached the peak
    assert lrs[-1] == pytest.approx(0.001, rel=0.1)                   # and the decay reached its floor
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # falling all the way


def test_a_budget_holds_when_the_machine_is_slow_from_the_start(tmp_path, train_config, clock):
    fields, config = train_config(tmp_path / "run", "eval_interval=5", time_budget=20.0)
    trainer = pretraining(fields, config, stream=io.StringIO())
    start = clock.now
    slow_down(trainer, clock, lambda step: 3.0, eval_seconds=2.0)
    assert trainer.fit()["status"] == "time budget reached"
    assert clock.now - start <= 20.0 * 1.05
    lrs = [r["lr"] for r in trainer.files.records() if "lr" in r]
    assert len(lrs) >= 3 and lrs[-1] == pytest.approx(1e-4, rel=0.1)


def test_a_step_plan_ends_its_schedule_at_the_last_step():
    plan = Plan(max_steps=11)
    lrs = [learning_rate("cosine", plan.step_progress(s), s, max_lr=1.0, min_lr=0.1, warmup_steps=2)
           for s in range(11)]
    assert lrs[0] == pytest.approx(0.5)  # warmup: (0 + 1) / 2 of the peak
    assert lrs[1] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 10)) / 2)  # warm, and decaying
    assert lrs[5] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 2)) / 2)
    assert lrs[-1] == pytest.approx(0.1)


# ---------------------------------------------------------------------- threads


def blas_threads() -> int:
    return next(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


def test_fixed_threads_are_set_and_restored():
    before = blas_threads()
    with ThreadGovernor(threads=1) as governor:
        assert blas_threads() == 1 and governor.describe().startswith("1 BLAS thread of")
        assert not governor.update()
    assert blas_threads() == before


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.skipif(available_cores() < 2, reason="needs two cores: one to keep busy, one to train on")
def test_threads_leave_the_core_another_program_keeps_busy():
    spinner = multiprocessing.get_context("spawn").Process(target=spin, args=(30.0,))
    spinner.start()
    try:
        time.sleep(1.0)  # let it get going
        with ThreadGovernor(threads=None, interval=0.5) as governor:
            assert governor.threads <= available_cores() - 1
            assert blas_threads() == governor.threads
    finally:
        spinner.terminate()
        spinner.join()


def test_the_governor_follows_the_measured_load():
    with ThreadGovernor(threads=None) as governor:
        cores = governor.cores
        assert governor._adapt(float(cores)) in (True, False) and governor.threads == 1  # all busy: still one
        governor._adapt(0.0)
        assert governor.threads == cores and blas_threads() == cores
        assert governor._adapt(None) is False  # no measurement (no /proc/stat): no change


def test_the_cpu_peak_is_computed_not_timed():
    a = peak_flops("cpu")
    spinner = multiprocessing.get_context("spawn").Process(target=spin, args=(3.0,))
    spinner.start()
    try:
        b = peak_flops("cpu")
    finally:
        spinner.terminate()
        spinner.join()
    assert a == b and a.flops > 1e9 and "GFLOP/s" in a.source
    assert np.isfinite(a.flops)
