"""``with nn.profile() as p:`` times every op's forward and backward and counts what it saved.

    with nn.profile() as p:
        loss = model(x).sum()
        loss.backward()
    print(p.table())

The profiler is a :class:`nn.function.FunctionHook`: while its block runs it
is called before and after every op's forward and backward. The bytes column
is the size of the arrays each op kept for its backward (references to
inputs included), i.e. the activation memory it is responsible for until
backward releases it. An op that runs other ops inside its own forward or
backward (activation checkpointing does) is timed with them included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from nn.function import Function, FunctionHook


@dataclass
class OpStats:
    name: str
    calls: int = 0
    forward_s: float = 0.0
    backward_s: float = 0.0
    saved_bytes: int = 0

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_s


class profile(FunctionHook):
    """A function hook that records per-op time and saved memory while its ``with`` block is active.

    Entering the same profiler again later adds to its statistics.
    """

    def __init__(self) -> None:
        self.stats: dict[str, OpStats] = {}
        # When each running op's forward or backward started, by id(fn): ops nest (checkpointing).
        self._started: dict[int, float] = {}

    def _entry(self, fn: Function) -> OpStats:
        name = fn.name
        if name not in self.stats:
            self.stats[name] = OpStats(name)
        return self.stats[name]

    def _elapsed(self, fn: Function) -> float:
        return time.perf_counter() - self._started.pop(id(fn))

    def forward_preprocess(self, fn: Function, inputs: list[Any]) -> None:
        self._started[id(fn)] = time.perf_counter()

    def forward_postprocess(self, fn: Function, inputs: list[Any], output: Any) -> None:
        seconds = self._elapsed(fn)
        entry = self._entry(fn)
        entry.calls += 1
        entry.forward_s += seconds
        entry.saved_bytes += sum(int(getattr(a, "nbytes", 0)) for a in fn.saved_arrays if a is not None)

    def backward_preprocess(self, fn: Function, grad: Any) -> None:
        self._started[id(fn)] = time.perf_counter()

    def backward_postprocess(self, fn: Function, grad: Any, input_grads: tuple[Any, ...]) -> None:
        self._entry(fn).backward_s += self._elapsed(fn)

    def rows(self) -> list[OpStats]:
        """Per-op statistics, most total time first."""
        return sorted(self.stats.values(), key=lambda s: s.total_s, reverse=True)

    def table(self, top: int = 15) -> str:
        """A text table of the ``top`` ops by total time, with their share of the total."""
        rows = self.rows()
        total = sum(r.total_s for r in rows) or 1.0
        lines = [f"{'op':<28}{'calls':>7}{'forward ms':>12}{'backward ms':>13}{'share':>8}{'saved MB':>10}"]
        for r in rows[:top]:
            lines.append(f"{r.name:<28}{r.calls:>7}{r.forward_s * 1e3:>12.2f}{r.backward_s * 1e3:>13.2f}"
                         f"{100 * r.total_s / total:>7.1f}%{r.saved_bytes / 2**20:>10.2f}")
        return "\n".join(lines)
