"""The backfill's progress display: a bar on a terminal, plain lines otherwise, and its numbers."""

from __future__ import annotations

import io
import logging

import pytest

from shipper.backfill import Backlog, Progress, human_bytes, human_count, human_duration
from shipper.telemetry.counters import Telemetry


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress(*, tty: bool) -> tuple[Progress, Backlog, Telemetry, io.StringIO, Clock]:
    backlog, telemetry, stream, clock = Backlog(), Telemetry(), io.StringIO(), Clock()
    return (
        Progress(backlog, telemetry, stream, tty=tty, clock=clock),
        backlog,
        telemetry,
        stream,
        clock,
    )


def test_nothing_is_said_until_every_source_has_discovered_its_files() -> None:
    shown, backlog, _, stream, _ = progress(tty=False)
    shown.tick()
    assert stream.getvalue() == ""  # the app has not even built its sources
    backlog.expect(2)
    backlog.plan(1000)
    backlog.sources_pending -= 1
    shown.tick()
    assert stream.getvalue() == ""  # one source still discovering: the total is not known
    backlog.sources_pending -= 1
    shown.tick()
    assert stream.getvalue() == "progress: 0% 0 B of 1.0 kB, 0 lines/s\n"


def test_plain_lines_at_every_ten_percent_step_and_every_few_seconds_between() -> None:
    shown, backlog, telemetry, stream, clock = progress(tty=False)
    backlog.expect(0)
    backlog.plan(2_700_000_000)
    shown.tick()
    for settled, seconds in ((100_000_000, 1), (200_000_000, 1), (300_000_000, 1)):
        clock.now += seconds
        backlog.settle(settled - backlog.settled)
        telemetry.inc("shipper_lines_read_total", 120_000, source="docker")
        shown.tick()
    # 0 %, then 11 % (a new 10 % step); 3 % and 7 % are in the first step: nothing said.
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("progress: 0% 0 B of 2.7 GB")
    assert lines[1:] == ["progress: 11% 300.0 MB of 2.7 GB, 120k lines/s, ETA 24s"]
    clock.now += 5  # no new step, but a long backfill says it is alive
    shown.tick()
    assert stream.getvalue().splitlines()[-1].startswith("progress: 11% ")
    backlog.settle(backlog.total - backlog.settled)
    shown.finished()
    assert stream.getvalue().splitlines()[-1].startswith("progress: 100% 2.7 GB of 2.7 GB")
    assert "\r" not in stream.getvalue()


def test_finished_says_100_percent_once() -> None:
    shown, backlog, _, stream, _ = progress(tty=False)
    backlog.expect(0)
    backlog.plan(10)
    backlog.settle(10)
    shown.tick()
    shown.finished()
    assert stream.getvalue().count("progress: 100%") == 1


def test_a_terminal_gets_one_line_redrawn_in_place_and_cleared_for_log_lines() -> None:
    logger = logging.getLogger("shipper")
    handler_stream = io.StringIO()
    handler = logging.StreamHandler(handler_stream)
    logger.addHandler(handler)
    try:
        shown, backlog, telemetry, stream, clock = progress(tty=True)
        shown.tick()
        assert stream.getvalue() == "\r\x1b[Kdiscovering files..."
        backlog.expect(0)
        backlog.plan(2000)
        shown.tick()
        clock.now += 1
        backlog.settle(1000)
        telemetry.inc("shipper_lines_read_total", 50, source="docker")
        shown.tick()
        last = stream.getvalue().rsplit("\r\x1b[K", 1)[1]
        assert last == "[############------------]  50%  1.0 kB / 2.0 kB  50 lines/s  ETA 1.0s"
        assert "\n" not in stream.getvalue()
        logging.getLogger("shipper.test").warning("something")
        assert stream.getvalue().endswith("\r\x1b[K")  # the bar is cleared off its line first
        shown.close()
        assert handler.filters == []
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1_234_567, "1.2 MB"), (2.7e9, "2.7 GB")],
)
def test_human_bytes(size: float, text: str) -> None:
    assert human_bytes(size) == text


def test_human_count_and_duration() -> None:
    assert [human_count(n) for n in (950, 12_345, 120_000, 1_200_000)] == [
        "950",
        "12.3k",
        "120k",
        "1.2M",
    ]
    assert [human_duration(s) for s in (0.42, 12, 185, 7440)] == ["0.4s", "12s", "3m05s", "2h04m"]


def test_backlog_fraction() -> None:
    backlog = Backlog()
    assert backlog.fraction == 0.0  # not known yet
    backlog.expect(0)
    assert backlog.fraction == 1.0  # nothing to do is done
    backlog.plan(100)
    backlog.settle(40)
    assert backlog.fraction == 0.4
    backlog.extend(100)  # a line finished past the end at start
    assert backlog.fraction == 0.2
