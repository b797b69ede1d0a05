"""`shipper run --once`: ships the backlog up to the files' current ends, then exits.

A backfill discovers the files once (no watch, no rescans, no Docker events), reads every file
and its rotated generations up to the end each had when it was opened (or the first end reached
after it, so a line being written is not cut short and a writer that never stops cannot keep the
backfill going), ships a last line that has no newline as it is, flushes the records still
waiting for a next part or line, and then waits, with no time limit, until every output has
given every record a final outcome. The checkpoints are written at the end, so a following
`shipper run` does not ship any of it again.

Progress goes to stderr, beside the logs: a bar redrawn in place on a terminal, plain lines
(`progress: 45% 1.2 GB of 2.7 GB, 120k lines/s, ETA 30s`) otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from shipper.errors import ShipperError
from shipper.model import Outcome

if TYPE_CHECKING:
    from shipper.app import App
    from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1

# A terminal's bar is redrawn this often; plain lines are written at every 10 % step, and at
# least this often in between, so a log collector sees that a long backfill is alive.
BAR_INTERVAL = 0.2
PLAIN_INTERVAL = 5.0
PLAIN_TICK = 0.25
# Rates (lines/s, and bytes/s for the ETA) are measured over this much recent time.
RATE_WINDOW = 5.0
BAR_WIDTH = 24


class Backlog:
    """What a backfill has to read and how much of it has settled, in bytes of file content.

    Filled in by the followers (shipper.sources.tailer) and read by the progress display: the
    total is the sum over the files of (end when opened - where reading began), grown by what
    is read past that end to finish a line; `settled` counts the bytes of it whose records have
    a final outcome at every output (the same offsets the checkpoints take).
    """

    __slots__ = ("_sources_known", "files", "settled", "sources_pending", "total", "unreadable")

    def __init__(self) -> None:
        self.total = 0
        self.settled = 0
        self.files = 0
        self.sources_pending = 0  # sources whose one discovery has not finished yet
        self._sources_known = False  # until the app has built its sources
        self.unreadable = 0  # files given up on after a read error: read again next time

    def expect(self, sources: int) -> None:
        """The app built `sources` sources: each discovers once, then the total is known."""
        self.sources_pending = sources
        self._sources_known = True

    @property
    def known(self) -> bool:
        """Whether every source has discovered its files, so the total is what there is."""
        return self._sources_known and self.sources_pending <= 0

    def plan(self, size: int) -> None:
        """A file opened with `size` bytes to read."""
        self.files += 1
        self.total += max(0, size)

    def extend(self, size: int) -> None:
        """Bytes read past a file's end at start: the rest of a line being written then."""
        self.total += max(0, size)

    def settle(self, size: int) -> None:
        self.settled += max(0, size)

    @property
    def fraction(self) -> float:
        if self.total <= 0:
            return 1.0 if self.known else 0.0
        return min(1.0, self.settled / self.total)


async def run_backfill(app: App, stop: asyncio.Event) -> int:
    """Run `app` (built with once=True) to the end of its backlog; the exit code: 0 when
    everything read has a final outcome at every output (dead-lettered records included) and
    the checkpoints are written, 1 when stopped first or something failed."""
    backlog = app.backlog
    if backlog is None:
        raise ValueError("run_backfill needs an App built with once=True")
    stream = sys.stderr
    progress = Progress(backlog, app.telemetry, stream, tty=_isatty(stream))
    started = time.monotonic()
    reporting = asyncio.create_task(progress.run(), name="backfill-progress")
    failure: str | None = None
    try:
        await app.run(stop)
    except ShipperError as exc:
        failure = str(exc)
    finally:
        reporting.cancel()
        await asyncio.gather(reporting, return_exceptions=True)
        done = failure is None and app.drained and backlog.unreadable == 0
        if done:
            progress.finished()
        progress.close()
    elapsed = time.monotonic() - started
    summary = summarize(app, elapsed)
    if done:
        _say(stream, f"backfill done: {summary}")
        log.info("Backfill finished.", extra=summary_fields(app, elapsed))
        return EXIT_OK
    if failure is not None:
        reason = failure
    elif not app.drained:
        reason = "stopped before everything was delivered"
    else:
        reason = f"{backlog.unreadable} file(s) could not be read to the end"
    _say(
        stream,
        f"backfill did not finish ({reason}); what was not delivered is read again at the next "
        f"run. So far: {summary}",
    )
    log.error(
        "Backfill did not finish; what was not delivered is read again at the next run.",
        extra={"reason": reason, **summary_fields(app, elapsed)},
    )
    return EXIT_FAILED


def summary_fields(app: App, elapsed: float) -> dict[str, object]:
    """The summary's numbers, exact, for the JSON log line."""
    telemetry = app.telemetry
    backlog = app.backlog
    return {
        "lines": int(telemetry.value("shipper_lines_read_total")),
        "bytes": int(telemetry.value("shipper_bytes_read_total")),
        "files": backlog.files if backlog is not None else 0,
        "records": {
            output.name: {
                outcome.value: int(
                    telemetry.value("shipper_records_total", output=output.name, outcome=outcome)
                )
                for outcome in (
                    Outcome.DELIVERED,
                    Outcome.DUPLICATE,
                    Outcome.DEAD_LETTERED,
                    Outcome.DROPPED,
                )
            }
            for output in app.outputs
        },
        "seconds": round(elapsed, 3),
    }


def summarize(app: App, elapsed: float) -> str:
    """`1,234 lines, 1,230 records delivered, 4 dead-lettered, 2.7 MB in 3.2s` (per output
    when there are several)."""
    telemetry = app.telemetry
    lines = int(telemetry.value("shipper_lines_read_total"))
    size = int(telemetry.value("shipper_bytes_read_total"))
    parts = []
    for output in app.outputs:

        def count(*outcomes: Outcome, name: str = output.name) -> int:
            return sum(
                int(telemetry.value("shipper_records_total", output=name, outcome=outcome))
                for outcome in outcomes
            )

        delivered = count(Outcome.DELIVERED, Outcome.DUPLICATE)
        text = f"{delivered:,} records delivered, {count(Outcome.DEAD_LETTERED):,} dead-lettered"
        dropped = count(Outcome.DROPPED)
        if dropped:
            text += f", {dropped:,} dropped"
        parts.append(f"{text} ({output.name})" if len(app.outputs) > 1 else text)
    records = "; ".join(parts) if parts else "no outputs"
    return f"{lines:,} lines, {records}, {human_bytes(size)} in {human_duration(elapsed)}"


class Progress:
    """The progress display on `stream`: a bar on a terminal, plain lines otherwise."""

    def __init__(
        self,
        backlog: Backlog,
        telemetry: Telemetry,
        stream: TextIO,
        *,
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backlog = backlog
        self._telemetry = telemetry
        self._stream = stream
        self._tty = tty
        self._clock = clock
        self._samples: deque[tuple[float, int, int]] = deque()  # (time, settled, lines)
        self._last_plain = -math.inf
        self._last_step = -1  # the 10 % step of the last plain line
        self._drawn = False  # a bar is on the terminal's last line
        self._filter: _ClearBar | None = None
        if tty:
            # A log line written while the bar is drawn would be glued to it: clear it first
            # (the next tick draws it again below the log line).
            self._filter = _ClearBar(self)
            for handler in logging.getLogger("shipper").handlers:
                handler.addFilter(self._filter)

    async def run(self) -> None:
        interval = BAR_INTERVAL if self._tty else PLAIN_TICK
        while True:
            self.tick()
            await asyncio.sleep(interval)

    def tick(self) -> None:
        backlog = self._backlog
        if not backlog.known:
            if self._tty:
                self._draw("discovering files...")
            return
        now = self._sample()
        if self._tty:
            self._draw(self.bar())
            return
        step = int(backlog.fraction * 10)
        if step > self._last_step or now - self._last_plain >= PLAIN_INTERVAL:
            self._plain(now, step)

    def finished(self) -> None:
        """Everything is delivered: a last plain line at 100 % (a bar is just cleared)."""
        if not self._tty and self._last_step < 10:
            self._sample()
            self._plain(self._clock(), 10)

    def close(self) -> None:
        if self._filter is not None:
            for handler in logging.getLogger("shipper").handlers:
                handler.removeFilter(self._filter)
            self._filter = None
        if self._tty:
            self._clear()

    def line(self) -> str:
        """`45% 1.2 GB of 2.7 GB, 120k lines/s, ETA 30s`."""
        backlog = self._backlog
        text = (
            f"{int(backlog.fraction * 100)}% {human_bytes(backlog.settled)} of "
            f"{human_bytes(backlog.total)}, {human_count(self._line_rate())} lines/s"
        )
        eta = self._eta()
        return text if eta is None else f"{text}, ETA {human_duration(eta)}"

    def bar(self) -> str:
        backlog = self._backlog
        filled = round(backlog.fraction * BAR_WIDTH)
        eta = self._eta()
        return (
            f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {int(backlog.fraction * 100):3d}%  "
            f"{human_bytes(backlog.settled)} / {human_bytes(backlog.total)}  "
            f"{human_count(self._line_rate())} lines/s  "
            f"ETA {human_duration(eta) if eta is not None else '?'}"
        )

    def _sample(self) -> float:
        now = self._clock()
        lines = int(self._telemetry.value("shipper_lines_read_total"))
        self._samples.append((now, self._backlog.settled, lines))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        return now

    def _plain(self, now: float, step: int) -> None:
        self._last_plain = now
        self._last_step = max(self._last_step, step)
        _say(self._stream, f"progress: {self.line()}")

    def _draw(self, text: str) -> None:
        self._stream.write(f"\r\x1b[K{text}")
        self._stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False

    def _line_rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, _, lines0), (t1, _, lines1) = self._samples[0], self._samples[-1]
        return (lines1 - lines0) / (t1 - t0) if t1 > t0 else 0.0

    def _eta(self) -> float | None:
        """Seconds left at the recent delivery rate; None while there is no rate yet."""
        remaining = self._backlog.total - self._backlog.settled
        if remaining <= 0:
            return 0.0
        if len(self._samples) < 2:
            return None
        (t0, settled0, _), (t1, settled1, _) = self._samples[0], self._samples[-1]
        rate = (settled1 - settled0) / (t1 - t0) if t1 > t0 else 0.0
        return remaining / rate if rate > 0 else None


class _ClearBar(logging.Filter):
    """Clears the progress bar off the terminal line before a log line is written."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self._progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self._progress._clear()
        return True


def human_bytes(size: float) -> str:
    """`512 B`, `1.2 kB`, `3.4 MB`, `1.2 GB` (powers of 1000, like `docker ps --size`)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def human_count(count: float) -> str:
    """`950`, `12.3k`, `120k`, `1.2M`."""
    if count < 1000:
        return f"{count:.0f}"
    if count < 100_000:
        return f"{count / 1000:.1f}k"
    if count < 1_000_000:
        return f"{count / 1000:.0f}k"
    return f"{count / 1_000_000:.1f}M"


def human_duration(seconds: float) -> str:
    """`0.4s`, `12s`, `3m05s`, `2h04m`."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _say(stream: TextIO, line: str) -> None:
    stream.write(line + "\n")
    stream.flush()
