"""The time budget is a wall-clock promise, the schedule reaches its end, and the BLAS threads follow the load.

The budget tests run the real loop on a simulated clock: each training step
and each evaluation advances it by a chosen number of seconds, so a machine
that suddenly gets ten times slower is a line of the test, not a hope about
the CI machine.
"""

from __future__ import annotations

import io
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from nn.optim import learning_rate
from tinygrad_llm.model import ConfigError
from tinygrad_llm.train import Trainer, hardware, pretraining
from tinygrad_llm.train.hardware import ThreadGovernor, peak_flops
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


def slow_down(trainer: Trainer, clock: SimulatedClock, step_seconds, eval_seconds: float = 0.5,
              save_seconds: float = 0.3) -> None:
    """Make each step take ``step_seconds(step)``, each evaluation ``eval_seconds``, each save ``save_seconds``."""
    train_step, validate, save = trainer.train_step, trainer.setup.validate, trainer.files.save

    def timed_step():
        result = train_step()
        clock.now += step_seconds(trainer.step)
        return result

    def timed_validate():
        clock.now += eval_seconds
        return validate()

    def timed_save(*args, **kwargs):
        clock.now += save_seconds
        return save(*args, **kwargs)

    trainer.train_step = timed_step
    trainer.setup.validate = timed_validate
    trainer.files.save = timed_save


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


@pytest.mark.parametrize("phase", [0, 1])
def test_a_budget_holds_when_steps_alternate_fast_and_slow(tmp_path, train_config, clock, phase):
    """A shared machine: every other step takes four times as long. The slow step after a fast one must fit too."""
    budget = 30.0
    fields, config = train_config(tmp_path / "run", "eval_interval=1000", "checkpoint_interval=1000",
                                  time_budget=budget)
    trainer = pretraining(fields, config, stream=io.StringIO())
    start = clock.now
    slow_down(trainer, clock, lambda step: 4.0 if step % 2 == phase else 1.0)
    assert trainer.fit()["status"] == "time budget reached"
    assert clock.now - start <= budget  # the margin for what the clock does not see is left whole
    assert clock.now - start > budget - 9  # and it did not stop a whole slow step pair early


def test_a_budget_run_is_extended_by_the_same_budget_and_resumes_with_its_reserve(tmp_path, train_config, clock):
    out = tmp_path / "run"
    first = pretraining(*train_config(out, "eval_interval=1000", time_budget=10.0), stream=io.StringIO())
    slow_down(first, clock, lambda step: 0.5)
    assert first.fit()["status"] == "time budget reached"
    steps = first.step
    with pytest.raises(ConfigError, match="already finished its plan"):
        pretraining(*train_config(out, "eval_interval=1000", time_budget=10.0), resume=True, stream=io.StringIO())

    start = clock.now  # `--resume --time-budget 10s` again: ten more seconds, even though it is the same number
    second = pretraining(*train_config(out, "eval_interval=1000", time_budget=10.0), resume=True, replan=True,
                         stream=io.StringIO())
    assert second.state.eval_seconds == pytest.approx(0.5) and second.state.save_seconds == pytest.approx(0.3)
    slow_down(second, clock, lambda step: 0.5)
    assert second.fit()["status"] == "time budget reached"
    assert steps + 5 < second.step and clock.now - start <= 10.0 * 1.05


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


class FakeMachine:
    """What the governor reads: the cores' busy seconds (/proc/stat) and this process's CPU seconds (os.times)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, clock: SimulatedClock) -> None:
        self.clock, self.busy, self.own = clock, 0.0, 0.0
        monkeypatch.setattr(hardware, "cores_busy_seconds", lambda cpus=None: self.busy)
        monkeypatch.setattr(hardware.os, "times", lambda: os.times_result((self.own, 0.0, 0.0, 0.0, 0.0)))
        monkeypatch.setattr(hardware.time, "sleep", self.run)

    def run(self, seconds: float, others: float | None = None, ours: float = 1.0) -> None:
        """``seconds`` pass with ``others`` cores busy with other programs (default: the last value) and ours."""
        self.others = getattr(self, "others", 0.0) if others is None else others
        self.clock.now += seconds
        self.busy += (self.others + ours) * seconds
        self.own += ours * seconds


def test_fixed_threads_are_set_and_restored():
    before = blas_threads()
    with ThreadGovernor(threads=1) as governor:
        assert blas_threads() == 1 and governor.describe().startswith("1 BLAS thread of")
        assert not governor.update()
    assert blas_threads() == before


def test_threads_back_off_at_once_and_come_back_when_two_looks_agree(monkeypatch, clock):
    machine = FakeMachine(monkeypatch, clock)
    machine.others = 1.0  # another program keeps one core busy from the start
    with ThreadGovernor(threads=None, interval=5.0, cores=2) as governor:
        assert governor.threads == 1 and blas_threads() == 1  # the first look, before the first step
        machine.run(5.0, others=0.0)
        assert not governor.update() and governor.threads == 1  # the core is free: one look is not enough
        machine.run(5.0)
        assert governor.update() and governor.threads == 2 and blas_threads() == 2  # two looks agree
        machine.run(2.0, others=1.0)
        assert not governor.update()  # not yet time to look
        machine.run(3.0)
        assert governor.update() and governor.threads == 1 and blas_threads() == 1  # load: back off at once
        machine.run(5.0, others=0.4)
        assert not governor.update() and governor.threads == 1  # 0.4 of a core rounds to none, once ...
        machine.run(5.0, others=0.6)
        assert not governor.update() and governor.threads == 1  # ... 0.6 to one: no flapping
        machine.run(5.0, others=3.0)
        assert not governor.update() and governor.threads == 1  # never fewer than one


def test_its_own_cpu_time_is_not_load(monkeypatch, clock):
    machine = FakeMachine(monkeypatch, clock)
    machine.others = 0.0
    with ThreadGovernor(threads=None, interval=5.0, cores=2) as governor:
        machine.run(5.0, ours=2.0)  # both cores busy, all of it ours
        machine.run(5.0, ours=2.0)
        governor.update()
        assert governor.threads == 2


def test_without_proc_stat_the_threads_stay(monkeypatch, clock):
    monkeypatch.setattr(hardware, "cores_busy_seconds", lambda cpus=None: None)
    with ThreadGovernor(threads=None, cores=2) as governor:
        clock.now += 10
        assert not governor.update() and governor.threads == 2


def test_only_this_process_cpus_and_its_cgroup_quota_count(monkeypatch, tmp_path):
    stat = "cpu  9 9 9 9 9 9 9 9\ncpu0 100 0 0 500 0 0 0 0\ncpu1 300 0 0 500 0 0 0 0\ncpu2 700 0 0 0 0 0 0 0\n"
    monkeypatch.setattr(hardware, "Path", lambda name: tmp_path / "stat" if name == "/proc/stat" else Path(name))
    (tmp_path / "stat").write_text(stat)
    ticks = os.sysconf("SC_CLK_TCK")
    assert hardware.cores_busy_seconds({0, 1}) == pytest.approx(400 / ticks)  # cpu2 is another job's
    assert hardware.cores_busy_seconds({2}) == pytest.approx(700 / ticks)


@pytest.mark.parametrize(("cpu_max", "expected"), [("max 100000", None), ("200000 100000", 2.0),
                                                   ("150000 100000", 1.5)])
def test_a_container_cpu_quota_caps_the_cores(monkeypatch, tmp_path, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    monkeypatch.setattr(hardware, "Path", lambda name: tmp_path / "cpu.max" if name.endswith("cpu.max")
                        else tmp_path / "missing")
    assert hardware._cgroup_cpu_quota() == expected
    monkeypatch.setattr(hardware, "default_workers", lambda: 16)
    assert hardware.available_cores() == (16 if expected is None else math.ceil(expected))


def test_blas_threads_set_in_the_environment_are_a_choice(monkeypatch):
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert hardware.threads_from_environment() is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.threads_from_environment() == 3
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert hardware.threads_from_environment() == 1


def test_the_cpu_peak_is_computed_from_cpuinfo_never_timed(monkeypatch):
    def no_timing(*args, **kwargs):
        raise AssertionError("the peak must not be measured")

    monkeypatch.setattr(np, "matmul", no_timing)
    monkeypatch.setattr(time, "perf_counter", no_timing)
    info = {"vendor_id": "GenuineIntel", "cpu MHz": "2000.000", "flags": "sse2 avx2 fma avx512f"}
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: info)
    monkeypatch.setattr(hardware, "_clock_ghz", lambda info: float(info["cpu MHz"]) / 1000)
    peak = peak_flops("cpu", cores=4)
    assert peak.flops == 4 * 2.0e9 * 64 and "AVX-512" in peak.source
    info.update(vendor_id="AuthenticAMD")  # Zen 4 runs AVX-512 on 256-bit units
    assert peak_flops("cpu", cores=4).flops == 4 * 2.0e9 * 32
    info.update(flags="sse2")
    assert peak_flops("cpu", cores=1).flops == 2.0e9 * 16
