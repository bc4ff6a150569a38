"""``with nn.profile() as p:`` times every op's forward and backward and counts what it saved.

    with nn.profile() as p:
        loss = model(x).sum()
        loss.backward()
    print(p.table())

The bytes column is the size of the arrays each op kept for its backward
(references to inputs included), i.e. the activation memory it is
responsible for until backward releases it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from nn import function


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


class profile:
    """Context manager that records per-op time and saved memory while it is active."""

    def __init__(self) -> None:
        self.stats: dict[str, OpStats] = {}

    def __enter__(self) -> profile:
        if function._profiler is not None:
            raise RuntimeError("nn.profile() blocks cannot be nested")
        function._profiler = self
        return self

    def __exit__(self, *exc: Any) -> None:
        function._profiler = None

    def _entry(self, fn: function.Function) -> OpStats:
        name = fn.name
        if name not in self.stats:
            self.stats[name] = OpStats(name)
        return self.stats[name]

    def record_forward(self, fn: function.Function, seconds: float) -> None:
        entry = self._entry(fn)
        entry.calls += 1
        entry.forward_s += seconds
        entry.saved_bytes += sum(int(getattr(a, "nbytes", 0)) for a in fn.saved_arrays if a is not None)

    def timed_backward(self, fn: function.Function, grad: Any) -> Any:
        start = time.perf_counter()
        result = fn.backward(grad)
        self._entry(fn).backward_s += time.perf_counter() - start
        return result

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
