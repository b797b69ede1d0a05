"""shipper's own logs: one JSON object a line on stderr (or plain text when asked), with repeated
messages rate limited."""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

import orjson

if TYPE_CHECKING:
    from shipper.config import LogRateLimitConfig

# Attributes every LogRecord has; anything else came in through `extra=` and is a field of ours.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

SUMMARY_MESSAGE = "Suppressed %d similar log lines."
"""The line that ends an interval in which some lines of one kind were not written."""


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    """Renders a record as `{"time", "level", "logger", "message", ...extra fields}`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """A line for people at a terminal: time, level, message, then key=value fields."""

    LEVELS: ClassVar[dict[str, str]] = {"WARNING": "WARN", "CRITICAL": "CRIT"}

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        level = self.LEVELS.get(record.levelname, record.levelname)
        line = f"{_utc(record.created)} {level:<5} {record.getMessage()}"
        if extra:
            line = f"{line}  {extra}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _utc(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


# -- rate limiting ---------------------------------------------------------------------------------

# (logger name, level number, message text): what "the same message" means.
_Kind = tuple[str, int, str]


@dataclass(slots=True)
class _Window:
    end: float  # on the limiter's clock
    written: int = 1
    suppressed: int = 0


class LogRateLimiter:
    """At most `messages` records of one kind (same logger, level and message text) are written
    per `interval` seconds; the rest are counted, and when the interval ends one summary line
    ("Suppressed N similar log lines.", at the same level, naming the message) says how many.

    A per-record warning (a file gone, a record dead-lettered) can otherwise repeat thousands of
    times a second and bury everything else. Errors are limited too: a flood of one error is one
    problem. Summaries themselves are never limited, and are written even if nothing is logged
    afterwards: a timer thread, started at the first suppressed record, writes each when its
    interval ends (`timer=False` leaves that to the next record or to `flush_due`, for tests
    with a fake clock); `close` writes the pending ones at once.

    Cost per record: one clock read, one lock, one dict lookup. Thread-safe: the watchdog thread
    logs too.
    """

    # Kinds whose window has ended are forgotten when this many are kept: messages that carry
    # varying text (a library's warning naming a path) must not grow memory without end.
    PRUNE_AT = 1024

    def __init__(
        self,
        messages: int,
        interval: float,
        *,
        emit: Callable[[logging.LogRecord], object],
        on_suppressed: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timer: bool = True,
    ) -> None:
        if messages < 1 or interval <= 0:
            raise ValueError("a rate limit needs messages >= 1 and interval > 0")
        self.messages = messages
        self.interval = interval
        self._emit = emit
        self._on_suppressed = on_suppressed
        self._clock = clock
        self._use_timer = timer
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._windows: dict[_Kind, _Window] = {}
        # The windows with suppressed records: each owes a summary when it ends.
        self._owing: dict[_Kind, _Window] = {}
        self._next_due = math.inf  # the earliest end among self._owing
        self._prune_at = self.PRUNE_AT
        self._timer: threading.Thread | None = None
        self._closed = False

    def admit(self, record: logging.LogRecord) -> bool:
        """Whether `record` is written; if not, it is counted towards its kind's summary."""
        # A record with arguments is told apart by its text; shipper's own messages are constant
        # (their details ride in fields), so their template is the cheaper key.
        text = record.msg if isinstance(record.msg, str) and not record.args else None
        kind: _Kind = (record.name, record.levelno, text or record.getMessage())
        now = self._clock()
        due: list[logging.LogRecord] = []
        with self._lock:
            if now >= self._next_due:
                due = self._take_due(now)
            window = self._windows.get(kind)
            if window is None or now >= window.end:
                if len(self._windows) >= self._prune_at:
                    self._prune(now)
                self._windows[kind] = _Window(now + self.interval)
                admitted = True
            elif window.written < self.messages:
                window.written += 1
                admitted = True
            else:
                window.suppressed += 1
                admitted = False
                if window.suppressed == 1:
                    self._owe(kind, window)
        for summary in due:
            self._emit(summary)
        if not admitted and self._on_suppressed is not None:
            self._on_suppressed(record.levelname.lower())
        return admitted

    def flush_due(self) -> None:
        """Write the summaries of the intervals that have ended."""
        with self._lock:
            due = self._take_due(self._clock())
        for summary in due:
            self._emit(summary)

    def close(self) -> None:
        """Write every pending summary now and stop the timer; later records pass unlimited."""
        with self._lock:
            self._closed = True
            due = self._take_due(math.inf)
            self._windows.clear()
            self._wakeup.notify_all()
        for summary in due:
            self._emit(summary)

    @property
    def closed(self) -> bool:
        return self._closed

    def _owe(self, kind: _Kind, window: _Window) -> None:
        # Called with the lock held.
        self._owing[kind] = window
        if window.end < self._next_due:
            self._next_due = window.end
            if self._timer is not None:
                self._wakeup.notify()
        if self._use_timer and self._timer is None and not self._closed:
            self._timer = threading.Thread(
                target=self._write_summaries_on_time, name="log-summaries", daemon=True
            )
            self._timer.start()

    def _take_due(self, now: float) -> list[logging.LogRecord]:
        # Called with the lock held: the summaries of windows ended by `now`, which are forgotten
        # so that the next record of their kind opens a new window.
        due: list[logging.LogRecord] = []
        next_due = math.inf
        for kind, window in list(self._owing.items()):
            if window.end <= now:
                del self._owing[kind]
                if self._windows.get(kind) is window:
                    del self._windows[kind]
                due.append(self._summary(kind, window.suppressed))
            else:
                next_due = min(next_due, window.end)
        self._next_due = next_due
        return due

    def _prune(self, now: float) -> None:
        # Called with the lock held; windows that owe a summary stay until it is written.
        self._windows = {
            kind: window
            for kind, window in self._windows.items()
            if window.end > now or window.suppressed
        }
        # Amortised: when most kinds are still live, prune again only after as many new ones.
        self._prune_at = max(self.PRUNE_AT, 2 * len(self._windows))

    def _summary(self, kind: _Kind, suppressed: int) -> logging.LogRecord:
        name, level, text = kind
        record = logging.LogRecord(name, level, __file__, 0, SUMMARY_MESSAGE, (suppressed,), None)
        record.suppressed_message = text
        record.suppressed = suppressed
        record.interval_s = self.interval
        return record

    def _write_summaries_on_time(self) -> None:
        while True:
            with self._wakeup:
                while not self._closed:
                    delay = self._next_due - self._clock()
                    if delay <= 0:
                        break
                    self._wakeup.wait(None if delay == math.inf else delay)
                if self._closed:
                    return
                due = self._take_due(self._clock())
            for summary in due:
                self._emit(summary)


class _Handler(logging.StreamHandler[TextIO]):
    """The stream handler, with the rate limit applied before formatting."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.limiter: LogRateLimiter | None = None

    def handle(self, record: logging.LogRecord) -> bool:
        limiter = self.limiter
        if limiter is not None and not limiter.closed and not limiter.admit(record):
            return False
        return self._write(record)

    def _write(self, record: logging.LogRecord) -> bool:
        return bool(super().handle(record))

    def close(self) -> None:
        # Also run by logging.shutdown() at exit: the last summaries are not lost.
        if self.limiter is not None:
            self.limiter.close()
        super().close()


def setup_logging(
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    *,
    rate_limit: LogRateLimitConfig | None = None,
    on_suppressed: Callable[[str], None] | None = None,
) -> None:
    """Route every `shipper.*` logger to `stream` (stderr) in the chosen format; idempotent.

    `rate_limit` (logging.rate_limit; None or 0 messages: no limit) caps repeated messages;
    `on_suppressed(level)` is called for each line the limit holds back (the runner counts them
    in shipper_log_messages_suppressed_total), so no caller of `log.warning` needs telemetry.
    Calling it again (a reload) writes the previous limiter's pending summaries first.
    """
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if rate_limit is not None and rate_limit.messages > 0:
        handler.limiter = LogRateLimiter(
            rate_limit.messages,
            rate_limit.interval,
            emit=handler._write,  # summaries bypass the limit
            on_suppressed=on_suppressed,
        )
    root = logging.getLogger("shipper")
    old_handlers = list(root.handlers)
    for old in old_handlers:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    # Libraries' warnings (watchdog's among them) become log records in the same format, so
    # stderr stays one JSON object a line.
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    for old in list(warnings_logger.handlers):
        warnings_logger.removeHandler(old)
    warnings_logger.addHandler(handler)
    warnings_logger.propagate = False
    for old in old_handlers:
        old.close()  # the old limiter's summaries, now that the new handler is in place
