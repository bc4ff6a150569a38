"""The progress bar: its line format, rate and ETA, how often it writes on and off a terminal,
a bar that starts part-way, a disabled bar, and the terminal's width.

A fake clock replaces ``time`` inside the module, so the rates and the throttling are
exact and no test waits or depends on the machine's speed.
"""

from __future__ import annotations

import io
import types

import pytest

import util.progress as progress_module
from util.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture()
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_line_shows_count_percent_rate_eta_and_fields(clock):
    stream = io.StringIO()
    bar = Progress(total=100, unit="step", desc="train", stream=stream, min_interval=0)
    clock.now += 10
    bar.update(25, loss=3.21, **{"tok/s": 1234})
    assert stream.getvalue() == ("train: 25/100 step 25% | 2.5 step/s | 0:10 elapsed, ETA 0:30 "
                                 "| loss=3.21 tok/s=1234\n")


def test_off_a_terminal_one_line_per_tenth_then_the_final_state(clock):
    stream = io.StringIO()
    with Progress(total=95, desc="tok", stream=stream, min_interval=0) as bar:
        for _ in range(95):
            clock.now += 0.1
            bar.update()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split()[1] for line in lines] == [f"{n}/95" for n in (10, 19, 29, 38, 48, 57, 67, 76, 86, 95)]
    assert lines[-1].startswith("tok: 95/95 it 100% | 10 it/s | 0:09 elapsed, ETA 0:00")


def test_off_a_terminal_unknown_total_prints_every_thirty_seconds(clock):
    stream = io.StringIO()
    bar = Progress(total=None, unit="B", stream=stream, min_interval=0)
    for _ in range(10):
        clock.now += 10
        bar.update(1000)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["3000 B", "6000 B", "9000 B", "10.0k B"]
    assert all("%" not in line and "ETA" not in line for line in lines)
    assert lines[0] == "3000 B | 100 B/s | 0:30 elapsed"


def test_on_a_terminal_redraws_one_line_at_most_every_min_interval(clock):
    stream = Terminal()
    bar = Progress(total=1000, desc="d", stream=stream, min_interval=0.5)
    for _ in range(1000):
        clock.now += 0.0007
        bar.update()
    bar.close()
    out = stream.getvalue()
    assert out.endswith("\n") and out.count("\n") == 1
    frames = out[:-1].split("\r")[1:]
    assert len(frames) == 3  # the first update, one 0.5 s later, and close (0.7 s in all)
    assert frames[0].startswith("d: 1/1000 it 0%")
    assert frames[-1].rstrip().startswith("d: 1000/1000 it 100%")


def test_terminal_line_is_padded_over_a_longer_previous_one(clock):
    stream = Terminal()
    bar = Progress(total=None, stream=stream, min_interval=0)
    bar.update(1, note="a long field value")
    bar.set_fields(note="x")
    bar.update(1)
    first, second = stream.getvalue().split("\r")[1:]
    assert len(second) == len(first) and second.rstrip().endswith("note=x")


def test_set_fields_shows_at_next_draw_and_close_is_idempotent(clock):
    stream = io.StringIO()
    bar = Progress(total=10, stream=stream, min_interval=0)
    bar.set_fields(lr=0.001)
    assert stream.getvalue() == ""
    bar.update(10)
    bar.close()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("lr=0.001")


def test_large_counts_are_abbreviated(clock):
    stream = io.StringIO()
    bar = Progress(total=30_000_000, unit="B", stream=stream, min_interval=0)
    clock.now += 2
    bar.update(12_345_678)
    assert stream.getvalue().startswith("12.3M/30.0M B 41% | 6.2M B/s | 0:02 elapsed, ETA 0:02")


def test_default_stream_is_stderr_at_construction(clock, capsys):
    with Progress(total=2) as bar:
        bar.update(2)
    assert capsys.readouterr().err.startswith("2/2 it 100%")


def test_a_bar_started_part_way_counts_only_new_work_in_rate_and_eta(clock):
    stream = io.StringIO()
    bar = Progress(total=1000, unit="step", desc="train", stream=stream, min_interval=0, initial=600)
    clock.now += 10
    bar.update(20)  # 20 steps in 10 s since the resume, not 620
    bar.close()
    assert stream.getvalue() == "train: 620/1000 step 62% | 2 step/s | 0:10 elapsed, ETA 3:10\n"


def test_a_bar_started_part_way_logs_from_the_next_tenth_on(clock):
    stream = io.StringIO()
    bar = Progress(total=100, stream=stream, min_interval=0, initial=45)
    clock.now += 1
    bar.update(4)  # 49: still in the fifth tenth, where the run was resumed
    assert stream.getvalue() == ""
    bar.update(1)
    assert stream.getvalue().startswith("50/100 it 50% | 5 it/s")


def test_on_a_terminal_close_does_not_redraw_a_line_already_shown(clock):
    stream = Terminal()
    with Progress(total=10, desc="tokenizing val", stream=stream, min_interval=0.5) as bar:
        bar.update(10, tokens="1,234")  # one update reaches the end: drawn at once
    assert stream.getvalue().count("tokenizing val") == 1 and stream.getvalue().endswith("\n")


def test_close_draws_fields_set_after_the_last_line(clock):
    stream = io.StringIO()
    with Progress(total=10, stream=stream, min_interval=0) as bar:
        bar.update(10)
        bar.set_fields(loss=2.5)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].endswith("loss=2.5")


def test_on_a_terminal_the_line_is_cut_to_its_width(clock, monkeypatch):
    monkeypatch.setattr(progress_module, "_terminal_columns", lambda stream: 30)
    stream = Terminal()
    bar = Progress(total=None, stream=stream, min_interval=0)
    bar.update(1, note="a long field that would wrap")
    (frame,) = stream.getvalue().split("\r")[1:]
    assert frame == "1 it | 0 it/s | 0:00 elapsed |"[:29]  # 29 columns: the 30th would wrap on some terminals


def test_a_disabled_bar_counts_but_writes_nothing(clock):
    stream = Terminal()
    with Progress(total=10, stream=stream, min_interval=0, enabled=False) as bar:
        bar.update(7)
    assert bar.count == 7 and stream.getvalue() == ""
