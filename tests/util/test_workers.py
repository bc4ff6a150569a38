"""The worker pool: results in input order, the function installed once per process,
lazy reading of the input, errors raised in the caller, and no process for one worker."""

from __future__ import annotations

import functools
import os

import pytest

from util.workers import IN_FLIGHT_PER_WORKER, WorkerPool


def scaled(factor: int, x: int) -> int:
    return factor * x


def fail_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError("seven")
    return x


class CallCounter:
    """Returns (process id, how many calls this copy of the object has had)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, item: int) -> tuple[int, int]:
        self.calls += 1
        return os.getpid(), self.calls


@pytest.mark.parametrize(("workers", "chunk_size"), [(1, 1), (2, 1), (2, 3)])
def test_results_come_back_in_input_order(workers, chunk_size):
    with WorkerPool(functools.partial(scaled, 3), workers) as pool:
        assert list(pool.map(range(50), chunk_size=chunk_size)) == [3 * x for x in range(50)]
        assert list(pool.map(iter([5, 6]))) == [15, 18]  # a pool serves several streams


def test_the_function_is_installed_once_per_process_not_sent_with_each_chunk():
    with WorkerPool(CallCounter(), workers=2) as pool:
        results = list(pool.map(range(40), chunk_size=2))
    calls_by_process: dict[int, list[int]] = {}
    for pid, calls in results:
        calls_by_process.setdefault(pid, []).append(calls)
    assert os.getpid() not in calls_by_process
    for calls in calls_by_process.values():
        assert sorted(calls) == list(range(1, len(calls) + 1))  # one copy per process kept counting


def test_one_worker_runs_in_the_calling_process():
    counter = CallCounter()
    with WorkerPool(counter, workers=1) as pool:
        assert list(pool.map([0, 0])) == [(os.getpid(), 1), (os.getpid(), 2)]
    assert counter.calls == 2


def test_the_input_is_read_only_a_few_chunks_ahead():
    pulled = []

    def items():
        for x in range(1000):
            pulled.append(x)
            yield x

    with WorkerPool(functools.partial(scaled, 1), workers=2) as pool:
        results = pool.map(items(), chunk_size=5)
        assert next(results) == 0
        assert len(pulled) == IN_FLIGHT_PER_WORKER * 2 * 5


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_in_the_function_is_raised_in_the_caller(workers):
    with WorkerPool(fail_on_seven, workers) as pool, pytest.raises(ValueError, match="seven"):
        list(pool.map(range(10), chunk_size=2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers must be at least 1"):
        WorkerPool(abs, workers=0)
    with WorkerPool(abs, workers=1) as pool, pytest.raises(ValueError, match="chunk_size must be at least 1"):
        list(pool.map([1], chunk_size=0))
