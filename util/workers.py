"""A pool of worker processes that applies one function to a stream of items, in order.

Three jobs share this shape: cleaning documents, tokenizing a corpus, ``encode_batch``.
Each has one heavy, read-only object (a tokenizer, the cleaning stage with its hash
tables) and many small items (texts, documents), and wants the results in input
order, so that the output does not depend on the number of processes.

:class:`WorkerPool` does it the same way for all of them:

- processes, not threads: the work is Python code, which threads cannot run in
  parallel;
- the function (with the heavy object it holds: a bound method or a
  ``functools.partial``) is sent to each process once, by the pool's initializer, which
  keeps it in a per-process global; the items then travel alone;
- items go out in chunks of ``chunk_size``, so that the cost of a round trip
  between processes is paid once per chunk, not once per item;
- at most ``IN_FLIGHT_PER_WORKER`` chunks per process are submitted ahead of the one
  being returned, so a stream (a corpus read file by file) is read lazily and memory
  holds a few chunks, not the whole input and output;
- with one worker nothing is started and the function runs in the calling process
  (no pickling: simplest to debug, and fastest on small inputs).

Processes start with the platform's default method (``fork`` on Linux; ``spawn`` on
macOS and Windows), so the function must be picklable, and a script that makes a pool
needs the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType
from typing import Any, Generic, TypeVar

__all__ = ["IN_FLIGHT_PER_WORKER", "WorkerPool", "default_workers"]

Item = TypeVar("Item")
Result = TypeVar("Result")

IN_FLIGHT_PER_WORKER = 2
"""Chunks submitted per process ahead of the results read: one being worked on, one waiting."""


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class WorkerPool(Generic[Item, Result]):
    """Apply ``function`` to items in ``workers`` processes; results come back in input order.

    Args:
        function: a picklable callable of one item; sent to each process once.
        workers: the number of processes (default: :func:`default_workers`); with 1 the
            function runs in the calling process.

    Use it as a context manager, which stops the processes on leaving::

        with WorkerPool(functools.partial(encode, tokenizer), workers=4) as pool:
            for tokens in pool.map(texts, chunk_size=64):
                ...

    An exception raised by ``function`` is raised again by ``map`` in the caller.
    """

    def __init__(self, function: Callable[[Item], Result], workers: int | None = None) -> None:
        self.function = function
        self.workers = default_workers() if workers is None else workers
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        self._executor = (None if self.workers == 1 else
                          ProcessPoolExecutor(self.workers, initializer=_install, initargs=(function,)))

    def map(self, items: Iterable[Item], chunk_size: int = 1) -> Iterator[Result]:
        """``function(item)`` for every item, in order, computed ``chunk_size`` items per task."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if self._executor is None:
            yield from map(self.function, items)
            return
        pending: deque[Future[list[Result]]] = deque()
        for chunk in _chunks(items, chunk_size):
            pending.append(self._executor.submit(_apply, chunk))
            if len(pending) >= IN_FLIGHT_PER_WORKER * self.workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()

    def close(self) -> None:
        """Stop the processes, cancelling chunks not yet started; later calls do nothing."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> WorkerPool[Item, Result]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive lists of ``size`` items (the last one shorter), read lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


_function: Callable[[Any], Any] | None = None
"""In a worker process: the pool's function, installed once by the initializer."""


def _install(function: Callable[[Any], Any]) -> None:
    """Process-pool initializer: keep ``function`` for every chunk this process will get."""
    global _function
    _function = function


def _apply(chunk: list[Any]) -> list[Any]:
    """In a worker process: the function applied to every item of ``chunk``."""
    assert _function is not None, "WorkerPool's initializer has not run in this process"
    return [_function(item) for item in chunk]
