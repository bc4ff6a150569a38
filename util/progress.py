"""A small progress bar for long runs (cleaning, tokenizing, training), with no dependencies.

``Progress`` counts work done (documents, bytes, steps) and shows it with a rate, an
ETA and any extra ``key=value`` fields the caller passes (``loss=3.21``,
``tok/s=1234``).  It adapts to where it writes:

- on a terminal it redraws one line in place with ``\\r``, at most every
  ``min_interval`` seconds, so a tight loop pays almost nothing for it.  The line is
  cut to the terminal's width: a longer one would wrap, and ``\\r`` returns only to
  the start of the last row, leaving a copy of the line behind at every redraw;
- anywhere else (a log file, a pipe, CI) a carriage return would pile up into one
  huge line, so it prints ordinary lines instead, and only a few: one each time the
  count crosses another ``1 / LOG_STEPS`` of the total, or when ``LOG_EVERY_SECONDS``
  have passed since the last line (whichever comes first), never more often than
  ``min_interval``.

``close`` (or leaving the ``with`` block) shows the final state, unless the last line
drawn already shows it.  A bar may start part-way (``initial``, e.g. a resumed
training run at its step): the rate is the work done since the bar was created
divided by the time since, and the ETA is the remaining count at that rate.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import Any, TextIO

LOG_STEPS = 10
"""Off a terminal: print a line each time another tenth of the total is done..."""

LOG_EVERY_SECONDS = 30.0
"""...or when this many seconds have passed since the last line."""


class Progress:
    """Count work done and show it, with rate and ETA, on ``stream``.

    Args:
        total: the count at which the work is complete, or ``None`` if unknown (then
            no percentage or ETA is shown).
        unit: what is counted, shown after the count and in the rate (``"B"``, ``"tok"``).
        desc: a label at the start of the line.
        stream: where to write (a terminal gets the one-line redraw); default
            ``sys.stderr`` as it is when the bar is created.
        min_interval: the shortest time between two redraws or lines, in seconds.
        initial: the count to start from (work done before this bar existed); it is
            shown but not counted in the rate.
        enabled: with ``False`` the bar counts but writes nothing.

    Example::

        with Progress(total=steps, unit="step", desc="train", initial=resumed_step) as bar:
            for step in range(resumed_step, steps):
                ...
                bar.update(loss=loss, **{"tok/s": rate})
    """

    def __init__(self, total: int | None, unit: str = "it", desc: str = "", stream: TextIO | None = None,
                 min_interval: float = 0.5, initial: int = 0, enabled: bool = True) -> None:
        self.total = total
        self.unit = unit
        self.desc = desc
        self.stream = sys.stderr if stream is None else stream
        self.min_interval = min_interval
        self.initial = initial
        self.enabled = enabled
        self.count = initial
        self.fields: dict[str, Any] = {}
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.start = time.monotonic()
        # A terminal shows the first update at once; a log's first line waits for progress or time.
        self._last_draw = -float("inf") if self.tty else self.start
        self._last_log_step = initial * LOG_STEPS // total if total else 0
        self._drawn_state: tuple[int, dict[str, Any]] | None = None
        self._width = 0
        self._closed = False

    def update(self, n: int = 1, **fields: Any) -> None:
        """Add ``n`` to the count, replace the given fields, and redraw if it is time to."""
        self.count += n
        self.fields.update(fields)
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw < self.min_interval:
            return
        if self.tty or self._log_line_due(now):
            self._draw(now)

    def set_fields(self, **fields: Any) -> None:
        """Replace the given ``key=value`` fields; they show at the next redraw."""
        self.fields.update(fields)

    def close(self) -> None:
        """Show the final state if not already shown (and end the terminal line); later calls do nothing."""
        if self._closed or not self.enabled:
            return
        self._closed = True
        if self._drawn_state != (self.count, self.fields):
            self._draw(time.monotonic())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _log_line_due(self, now: float) -> bool:
        """Off a terminal: has the count crossed another tenth of the total, or has time passed?"""
        if self.total:
            log_step = self.count * LOG_STEPS // self.total
            if log_step > self._last_log_step:
                self._last_log_step = log_step
                return True
        return now - self._last_draw >= LOG_EVERY_SECONDS

    def _draw(self, now: float) -> None:
        line = self.format(now - self.start)
        self._last_draw = now
        self._drawn_state = (self.count, dict(self.fields))
        if self.tty:
            columns = _terminal_columns(self.stream)
            if columns is not None:
                line = line[:columns - 1]  # the last column would wrap on some terminals
            padding = " " * max(0, self._width - len(line))
            self._width = len(line)
            self.stream.write(f"\r{line}{padding}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def format(self, elapsed: float) -> str:
        """The status line after ``elapsed`` seconds, e.g.
        ``train: 450/1000 step 45% | 12.3 step/s | 0:36 elapsed, ETA 0:44 | loss=3.21``."""
        head = f"{self.desc}: " if self.desc else ""
        rate = (self.count - self.initial) / elapsed if elapsed > 0 else 0.0
        if self.total:
            parts = [f"{head}{_si(self.count)}/{_si(self.total)} {self.unit} {100 * self.count / self.total:.0f}%"]
        else:
            parts = [f"{head}{_si(self.count)} {self.unit}"]
        parts.append(f"{_si(rate)} {self.unit}/s")
        timing = f"{_clock(elapsed)} elapsed"
        if self.total and rate > 0:
            timing += f", ETA {_clock(max(self.total - self.count, 0) / rate)}"
        parts.append(timing)
        if self.fields:
            parts.append(" ".join(f"{key}={_value(value)}" for key, value in self.fields.items()))
        return " | ".join(parts)


def _terminal_columns(stream: TextIO) -> int | None:
    """The width of the terminal ``stream`` writes to, or None if that cannot be told."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return None


def _si(x: float) -> str:
    """A count or rate, short: ``999``, ``12.3``, ``45.6k``, ``7.9M``, ``1.2G``."""
    for threshold, scale, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(x) >= threshold:
            return f"{x / scale:.1f}{suffix}"
    return f"{x:.0f}" if x == int(x) or abs(x) >= 100 else f"{x:.3g}"


def _clock(seconds: float) -> str:
    """Seconds as ``m:ss`` (or ``h:mm:ss`` from an hour on)."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _value(value: Any) -> str:
    """A field value: floats with 4 significant digits, everything else as ``str``."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
