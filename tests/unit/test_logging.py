"""Tests for shipper.telemetry.logging: stderr stays one JSON object a line, and a repeated
message is rate limited, counted and summed up."""

import io
import logging
import sys
import threading
import warnings

import orjson
import pytest

from shipper.config import LogRateLimitConfig
from shipper.telemetry.logging import LogRateLimiter, setup_logging
from tests.helpers import wait_until_sync


def test_a_library_warning_is_logged_as_json() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    try:
        # pytest turns warnings into errors; shown as a library's would be at run time.
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn_explicit(
                "WatchDescriptor for /x already exists", RuntimeWarning, "inotify.py", 365
            )
        lines = stream.getvalue().splitlines()
        assert len(lines) == 1
        record = orjson.loads(lines[0])
        assert record["level"] == "warning"
        assert "WatchDescriptor for /x already exists" in record["message"]
    finally:
        logging.captureWarnings(False)


# -- rate limiting ---------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A limiter's outlet and counter hook: what was written, what was counted."""

    def __init__(self) -> None:
        self.written: list[logging.LogRecord] = []
        self.counted: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.written.append(record)

    def count(self, level: str) -> None:
        self.counted.append(level)


def limiter(
    messages: int = 3, interval: float = 10.0
) -> tuple[LogRateLimiter, FakeClock, Recorder]:
    clock, recorder = FakeClock(), Recorder()
    rate_limiter = LogRateLimiter(
        messages,
        interval,
        emit=recorder.emit,
        on_suppressed=recorder.count,
        clock=clock,
        timer=False,
    )
    return rate_limiter, clock, recorder


def record(
    msg: str = "File gone before it was read.",
    level: int = logging.WARNING,
    name: str = "shipper.sources.tailer",
    args: tuple[object, ...] = (),
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def admitted(rate_limiter: LogRateLimiter, records: list[logging.LogRecord]) -> int:
    return sum(rate_limiter.admit(r) for r in records)


def test_a_repeated_message_is_limited_and_summed_up_when_the_interval_ends() -> None:
    rate_limiter, clock, recorder = limiter(messages=3, interval=10)
    assert admitted(rate_limiter, [record() for _ in range(10)]) == 3
    assert recorder.counted == ["warning"] * 7
    clock.now += 9.9
    rate_limiter.flush_due()
    assert recorder.written == []  # the interval has not ended
    clock.now += 0.1
    rate_limiter.flush_due()
    [summary] = recorder.written
    assert summary.getMessage() == "Suppressed 7 similar log lines."
    assert summary.levelno == logging.WARNING  # at the level of what it stands for
    assert summary.name == "shipper.sources.tailer"
    assert summary.suppressed_message == "File gone before it was read."  # type: ignore[attr-defined]
    assert summary.suppressed == 7  # type: ignore[attr-defined]
    rate_limiter.flush_due()
    assert len(recorder.written) == 1  # said once
    # A new interval: the message is written again, up to the limit.
    assert admitted(rate_limiter, [record() for _ in range(5)]) == 3


def test_no_summary_when_nothing_was_suppressed() -> None:
    rate_limiter, clock, recorder = limiter(messages=3)
    assert admitted(rate_limiter, [record() for _ in range(3)]) == 3
    clock.now += 60
    rate_limiter.flush_due()
    assert recorder.written == []
    assert recorder.counted == []


def test_kinds_are_logger_level_and_message_text() -> None:
    rate_limiter, clock, recorder = limiter(messages=1)
    kinds = [
        record(),
        record(name="shipper.pipeline.sender"),
        record(level=logging.ERROR),
        record(msg="Another message."),
        # Told apart by their text once formatted: a library's warning has its text in args.
        record(msg="%s", args=("WatchDescriptor for /a already exists",), name="py.warnings"),
        record(msg="%s", args=("WatchDescriptor for /b already exists",), name="py.warnings"),
    ]
    assert admitted(rate_limiter, kinds) == len(kinds)
    assert admitted(rate_limiter, kinds) == 0
    assert sorted(recorder.counted) == ["error"] + ["warning"] * 5
    clock.now += 10
    rate_limiter.flush_due()
    assert len(recorder.written) == len(kinds)
    assert {r.suppressed_message for r in recorder.written} == {  # type: ignore[attr-defined]
        "File gone before it was read.",
        "Another message.",
        "WatchDescriptor for /a already exists",
        "WatchDescriptor for /b already exists",
    }


def test_errors_are_limited_but_their_summary_is_an_error() -> None:
    rate_limiter, clock, recorder = limiter(messages=2)
    errors = [record("Cannot write checkpoints.", logging.ERROR) for _ in range(50)]
    assert admitted(rate_limiter, errors) == 2
    assert recorder.counted == ["error"] * 48
    clock.now += 10
    rate_limiter.flush_due()
    [summary] = recorder.written
    assert summary.levelno == logging.ERROR
    assert summary.getMessage() == "Suppressed 48 similar log lines."


def test_a_due_summary_is_written_before_the_next_record_of_any_kind() -> None:
    rate_limiter, clock, recorder = limiter(messages=1)
    admitted(rate_limiter, [record(), record()])
    clock.now += 10
    assert rate_limiter.admit(record(msg="Something else."))  # no flush_due, no timer
    [summary] = recorder.written
    assert summary.getMessage() == "Suppressed 1 similar log lines."


def test_close_writes_pending_summaries_at_once() -> None:
    rate_limiter, _, recorder = limiter(messages=1)
    admitted(rate_limiter, [record() for _ in range(4)])
    rate_limiter.close()
    [summary] = recorder.written
    assert summary.suppressed == 3  # type: ignore[attr-defined]
    rate_limiter.close()
    assert len(recorder.written) == 1


def test_kinds_whose_interval_ended_are_forgotten() -> None:
    rate_limiter, clock, _ = limiter(messages=1, interval=1)
    for n in range(5 * LogRateLimiter.PRUNE_AT):
        rate_limiter.admit(record(msg="%s", args=(f"text {n}",)))
        clock.now += 0.01  # 100 new kinds a second, each live for a second
    assert len(rate_limiter._windows) <= 2 * LogRateLimiter.PRUNE_AT


def test_the_limit_holds_across_threads() -> None:
    rate_limiter, clock, recorder = limiter(messages=5)
    passed: list[int] = []
    start = threading.Barrier(8)

    def flood() -> None:
        start.wait()
        passed.append(admitted(rate_limiter, [record() for _ in range(2000)]))

    threads = [threading.Thread(target=flood) for _ in range(8)]
    # Threads switch every microsecond instead of every 5 ms: an unguarded check-then-count
    # would be cut in the middle often enough to show.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert sum(passed) == 5
    assert len(recorder.counted) == 8 * 2000 - 5
    clock.now += 10
    rate_limiter.flush_due()
    [summary] = recorder.written
    assert summary.suppressed == 8 * 2000 - 5  # type: ignore[attr-defined]


def test_the_timer_writes_the_summary_when_nothing_else_is_logged() -> None:
    recorder = Recorder()
    rate_limiter = LogRateLimiter(3, 0.05, emit=recorder.emit)  # the real clock and timer
    try:
        admitted(rate_limiter, [record() for _ in range(5)])
        wait_until_sync(lambda: len(recorder.written) == 1, timeout=10, what="the summary")
        assert recorder.written[0].getMessage() == "Suppressed 2 similar log lines."
        # A later flood in a later interval is summed up again by the same thread.
        admitted(rate_limiter, [record() for _ in range(4)])
        wait_until_sync(lambda: len(recorder.written) == 2, timeout=10, what="a second summary")
        assert recorder.written[1].getMessage() == "Suppressed 1 similar log lines."
    finally:
        rate_limiter.close()


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_setup_logging_limits_counts_and_sums_up_at_reconfiguration(fmt: str) -> None:
    stream = io.StringIO()
    counted: list[str] = []
    setup_logging(
        "info",
        fmt,
        stream,
        rate_limit=LogRateLimitConfig(messages=2, interval=3600),
        on_suppressed=counted.append,
    )
    log = logging.getLogger("shipper.test")
    for n in range(5):
        log.error("Output refused a record.", extra={"output": "es", "n": n})
    log.info("Something else.")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert counted == ["error"] * 3
    # A reload sets logging up again: what the old limiter held back is summed up first.
    setup_logging("info", fmt, stream, rate_limit=LogRateLimitConfig(messages=2, interval=3600))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    if fmt == "json":
        summary = orjson.loads(lines[3])
        assert summary["level"] == "error"
        assert summary["message"] == "Suppressed 3 similar log lines."
        assert summary["suppressed_message"] == "Output refused a record."
        assert summary["logger"] == "shipper.test"
    else:
        assert " ERROR Suppressed 3 similar log lines." in lines[3]
        assert "suppressed_message=Output refused a record." in lines[3]
    # The new limiter starts afresh.
    for _ in range(3):
        log.error("Output refused a record.")
    assert len(stream.getvalue().splitlines()) == 6


@pytest.mark.usefixtures("restore_logging")
def test_zero_messages_means_no_limit() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream, rate_limit=LogRateLimitConfig(messages=0, interval=1))
    log = logging.getLogger("shipper.test")
    for _ in range(100):
        log.warning("Same again.")
    assert len(stream.getvalue().splitlines()) == 100
