"""Tests for multiline joining (shipper.processing.multiline) on real record groups.

Lines are written as dockerd writes them (shipper.docker_writer.encode_entry) and decoded by
docker_json.decode_chunk, so every group is what the follower hands the joiner. Python traces
are produced by running the interpreter; Java and Go traces (neither is installed here) are kept
verbatim in tests/data/stacktraces. Holds are a counting fake (to pin what is held from where)
or real AckTracker tickets (to pin what the checkpoint may do).
"""

from __future__ import annotations

import json
import logging
import random
import re
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from shipper.config import MultilineConfig
from shipper.docker_writer import (
    DEFAULT_START_NS,
    Stream,
    encode_attrs,
    encode_entry,
    split_output,
)
from shipper.model import Chunk, Hold, LogFile, RangeClaim, RecordGroup
from shipper.pipeline.acks import AckTracker
from shipper.processing.multiline import (
    FLAG_MULTILINE_SPLIT,
    MultilineJoiner,
    MultilineParser,
    build_parsers,
    choose_parser,
)
from shipper.sources.docker_json import (
    FLAG_INVALID_JSON,
    FLAG_INVALID_TIME,
    decode_chunk,
    format_time_ns,
)
from shipper.sources.partials import PartialJoiner

DATA = Path(__file__).resolve().parent.parent / "data" / "stacktraces"
READ_TIME = "2030-01-01T00:00:00.000000000Z"
T0 = DEFAULT_START_NS
MAX_LINES = 500
MAX_BYTES = 1024 * 1024
PARSERS = build_parsers(MultilineConfig())

FILE_OLD = LogFile(
    source="docker",
    container_id="c0ffee",
    path="/var/lib/docker/containers/c0ffee/c0ffee-json.log.1",
    handle="docker:1:11:1",
    fingerprint="a" * 64,
)
FILE_NEW = LogFile(
    source="docker",
    container_id="c0ffee",
    path="/var/lib/docker/containers/c0ffee/c0ffee-json.log",
    handle="docker:1:12:2",
    fingerprint="b" * 64,
)

Line = str | tuple[Stream, str]


# --- helpers ------------------------------------------------------------------------------------


class CountingHold:
    """A stand-in for an AckTracker ticket that records what the joiner holds of it."""

    def __init__(self, name: str = "hold") -> None:
        self.name = name
        self.holds = 0
        self.releases = 0
        self.held_from: list[int] = []

    def hold_from(self, offset: int) -> Hold:
        self.holds += 1
        self.held_from.append(offset)
        return _Tail(self)

    def release(self) -> None:
        self.releases += 1

    def __repr__(self) -> str:
        return f"CountingHold({self.name!r})"


class _Tail:
    def __init__(self, parent: CountingHold) -> None:
        self.parent = parent

    def release(self) -> None:
        self.parent.releases += 1


def owners(holds: list[Hold]) -> list[CountingHold]:
    """The stand-in tickets the holds in `holds` were taken from."""
    return [hold.parent if isinstance(hold, _Tail) else hold for hold in holds]  # type: ignore[misc]


def t(ms: int) -> str:
    """The normalized time of an entry written `ms` milliseconds after T0."""
    return format_time_ns(T0 + ms * 1_000_000)


def entries(lines: Sequence[Line], *, first_ms: int = 0, attrs: bytes = b"") -> list[bytes]:
    """The json-file entries of `lines` (default stream stdout), one millisecond apart."""
    result = []
    for n, line in enumerate(lines):
        stream, text = line if isinstance(line, tuple) else ("stdout", line)
        time_ns = T0 + (first_ms + n) * 1_000_000
        result.append(encode_entry(text.encode() + b"\n", stream, time_ns, attrs))
    return result


def offsets_of(parts: Sequence[bytes], start: int = 0) -> list[int]:
    """The file offset of each entry, the first at `start`."""
    result, position = [], start
    for part in parts:
        result.append(position)
        position += len(part)
    return result


def ends_of(parts: Sequence[bytes], start: int = 0) -> list[int]:
    """The file offset after each entry (after its newline), the first entry at `start`."""
    return [
        offset + len(part) for offset, part in zip(offsets_of(parts, start), parts, strict=True)
    ]


def decode(
    file: LogFile,
    start: int,
    parts: Sequence[bytes],
    *,
    hold: RangeClaim | None = None,
    partials: PartialJoiner | None = None,
) -> RecordGroup:
    return decode_chunk(
        Chunk(file, start, b"".join(parts)), read_time=READ_TIME, joiner=partials, hold=hold
    )


def joiner(parser: str | MultilineParser, **limits: int) -> MultilineJoiner:
    chosen = PARSERS[parser] if isinstance(parser, str) else parser
    return MultilineJoiner(
        chosen,
        max_lines=limits.get("max_lines", MAX_LINES),
        max_bytes=limits.get("max_bytes", MAX_BYTES),
    )


def run(parser: str | MultilineParser, lines: Sequence[Line], **limits: int) -> list[str]:
    """Every record the joiner makes of `lines` in one chunk, the ones left open included."""
    join = joiner(parser, **limits)
    out = join.apply(decode(FILE_NEW, 0, entries(lines)), None, 0.0)
    rest = join.take_all()
    assert not join.pending
    return out.messages + (rest.messages if rest is not None else [])


def settle(group: RecordGroup, own: Hold | None = None) -> None:
    """What the pipeline does when every output settled a group: release its range and held."""
    for hold in [*([own] if own is not None else []), *group.held]:
        hold.release()


def trace_lines(name: str) -> list[str]:
    return (DATA / name).read_text(encoding="utf-8").splitlines()


# Lines around a trace that are records of their own for every preset.
SPRING_STARTED = (
    "2024-05-01 12:00:00.001  INFO 1 --- [           main] c.e.shop.ShopApplication"
    "                 : Started ShopApplication in 3.2 seconds (JVM running for 3.9)"
)
SPRING_SAVED = (
    "2024-05-01 12:00:09.000  INFO 1 --- [nio-8080-exec-4] c.e.shop.web.OrderController"
    "             : order 4712 saved"
)
GO_LISTENING = "2024/05/01 12:00:00 listening on :8080"
GO_RESTARTED = "2024/05/01 12:00:09 listening on :8080 (restarted)"

LOG_ERROR = "2024-05-01 12:00:03.456 ERROR 1 --- [nio-8080-exec-7] c.e.shop.Checkout : failed"
HEADER = "java.lang.IllegalStateException: inventory reservation failed"
FRAMES = [
    "\tat com.example.shop.Inventory.reserve(Inventory.java:88)",
    "\tat com.example.shop.Checkout.run(Checkout.java:41)",
    "\tat java.base/java.lang.Thread.run(Thread.java:833)",
]
INFO_A = "2024-05-01 12:00:01.000  INFO 1 --- [main] c.e.shop.Checkout : checking out"
INFO_B = "2024-05-01 12:00:04.000  INFO 1 --- [main] c.e.shop.Checkout : next order"


# --- presets on real traces ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["java_spring_npe.txt", "java_caused_by.txt", "java_uncaught_suppressed.txt"]
)
def test_java_trace_is_one_record(name: str) -> None:
    event = trace_lines(name)
    lines = [SPRING_STARTED, *event, SPRING_SAVED]
    parts = entries(lines)
    join = joiner("java")

    out = join.apply(decode(FILE_NEW, 0, parts), None, 0.0)

    # The line after the trace may still be followed by a trace of its own: it waits.
    assert out.messages == [SPRING_STARTED, "\n".join(event)]
    assert out.offsets == offsets_of(parts)[:2]
    # A joined record ends where its last line does: after that line's newline.
    ends = ends_of(parts)
    assert out.ends == [ends[0], ends[len(event)]]
    assert out.timestamps == [t(0), t(1)]
    assert out.streams == ["stdout", "stdout"]
    assert out.flags == {}
    rest = join.take_all()
    assert rest is not None
    assert rest.messages == [SPRING_SAVED]
    assert rest.ends == [ends[-1]]


def test_java_log_line_joins_the_header_after_it() -> None:
    """logback writes the log line and the trace in one write: one record (see JAVA)."""
    event = trace_lines("java_caused_by.txt")
    assert event[0].startswith("2024-05-01 12:00:03.456 ERROR")
    assert event[1].startswith("org.springframework.dao.DataIntegrityViolationException:")
    assert run("java", [SPRING_STARTED, *event])[1].startswith(event[0] + "\n" + event[1])


def test_java_spring_blank_line_between_log_line_and_trace_joins() -> None:
    event = trace_lines("java_spring_npe.txt")
    assert event[1] == ""  # Spring Boot's "with root cause", a blank line, then the trace
    assert run("java", event) == ["\n".join(event)]


def test_java_jvm_header_starts_its_own_record() -> None:
    event = trace_lines("java_uncaught_suppressed.txt")
    assert event[0].startswith('Exception in thread "main"')
    assert run("java", [SPRING_STARTED, *event]) == [SPRING_STARTED, "\n".join(event)]


def test_java_traces_back_to_back_are_two_records() -> None:
    first = trace_lines("java_uncaught_suppressed.txt")
    second = [HEADER, *FRAMES]
    assert run("java", [*first, *second]) == ["\n".join(first), "\n".join(second)]


def test_java_blank_lines_not_followed_by_a_trace_are_records_of_their_own() -> None:
    lines = [INFO_A, "", "", INFO_B, LOG_ERROR, HEADER, *FRAMES, "", INFO_A]
    assert run("java", lines) == [
        INFO_A,
        "",
        "",
        INFO_B,
        "\n".join([LOG_ERROR, HEADER, *FRAMES]),
        "",
        INFO_A,
    ]


def test_blank_line_with_nothing_to_join_is_a_record_of_its_own() -> None:
    """A tentative line with no record before it (the stream's first line, or the first after
    a timeout) cannot wait to join one: the header after it starts the trace."""
    assert run("java", ["", HEADER, *FRAMES]) == ["", "\n".join([HEADER, *FRAMES])]
    join = joiner("java")
    join.apply(decode(FILE_NEW, 0, entries([INFO_A])), None, 0.0)
    assert join.expired(5.0, 2.0) is not None
    out = join.apply(decode(FILE_NEW, 300, entries(["", HEADER, INFO_B], first_ms=1)), None, 6.0)
    assert out.messages == ["", HEADER]


def test_java_frames_after_an_unknown_header_join_it() -> None:
    header = "com.example.shop.Failure: payment provider said no"
    assert run("java", [INFO_A, header, *FRAMES, INFO_B]) == [
        INFO_A,
        "\n".join([header, *FRAMES]),
        INFO_B,
    ]


@pytest.mark.parametrize(
    "name",
    [
        "go_nil_map.txt",
        "go_nil_pointer.txt",
        "go_http_panic.txt",
        "go_recovered_panic.txt",
        "go_fatal_deadlock.txt",
    ],
)
def test_go_panic_is_one_record(name: str) -> None:
    event = trace_lines(name)
    lines = [("stderr", line) for line in [GO_LISTENING, *event, GO_RESTARTED]]
    parts = entries(lines)

    assert run("go", lines) == [GO_LISTENING, "\n".join(event), GO_RESTARTED]

    join = joiner("go")
    out = join.apply(decode(FILE_NEW, 0, parts), None, 0.0)
    assert out.offsets[:2] == offsets_of(parts)[:2]
    assert out.timestamps[:2] == [t(0), t(1)]


def test_go_dump_keeps_every_goroutine() -> None:
    event = trace_lines("go_nil_map.txt")
    assert sum(line.startswith("goroutine ") for line in event) == 4
    assert event[-1] == "exit status 2"
    (record,) = run("go", event)
    assert record.count("\n\ngoroutine ") == 4  # after the panic, and between goroutines


def test_go_exit_status_ends_the_record_at_once() -> None:
    event = trace_lines("go_nil_map.txt")
    join = joiner("go")
    out = join.apply(decode(FILE_NEW, 0, entries(event)), None, 0.0)
    assert out.messages == ["\n".join(event)]
    assert not join.pending


def test_go_blank_line_after_a_dump_is_a_record_of_its_own() -> None:
    event = trace_lines("go_nil_pointer.txt")
    assert run("go", [*event, "", GO_RESTARTED]) == ["\n".join(event), "", GO_RESTARTED]


# Python: real tracebacks, from running the interpreter.

PY_SIMPLE = """
import json

def load(text):
    return json.loads(text)

def handle(body):
    order = load(body)
    return order["items"][0]["sku"]

handle('{"items": []}')
"""

PY_DURING = """
def price(sku, table):
    return table[sku]

def checkout(sku):
    try:
        return price(sku, {})
    except KeyError:
        raise RuntimeError(f"no price for {sku}")

checkout("SKU-1")
"""

PY_CAUSE = """
class PaymentError(Exception):
    pass

def charge(amount):
    try:
        return 100 / amount
    except ZeroDivisionError as exc:
        raise PaymentError("amount must not be zero") from exc

charge(0)
"""

PY_GROUP = """
def fetch(url):
    raise ConnectionError(f"cannot reach {url}")

def fetch_all(urls):
    errors = []
    for url in urls:
        try:
            fetch(url)
        except ConnectionError as exc:
            errors.append(exc)
    raise ExceptionGroup("fetch failed", errors)

try:
    {}["cache"]
except KeyError:
    try:
        fetch_all(["http://a.internal", "http://b.internal"])
    except ExceptionGroup as group:
        raise SystemError("giving up") from group
"""

PY_LOGGING = """
import logging

logging.basicConfig(
    level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
log = logging.getLogger("shop")
log.info("worker started")
try:
    {"qty": "3"}["sku"]
except KeyError:
    log.exception("request %s failed", 17)
log.info("next request")
try:
    int("three")
except ValueError:
    log.error("could not parse quantity", exc_info=True)
log.warning("shutting down")
"""


def python_stderr(tmp_path: Path, source: str) -> list[str]:
    """The lines a real interpreter writes to stderr running `source`."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    return result.stderr.splitlines()


PY_SCRIPTS = {
    "simple": PY_SIMPLE,
    "during handling": PY_DURING,
    "direct cause": PY_CAUSE,
    "exception group": PY_GROUP,
}


@pytest.mark.parametrize("case", list(PY_SCRIPTS))
def test_python_traceback_is_one_record(case: str, tmp_path: Path) -> None:
    if case == "exception group" and sys.version_info < (3, 11):
        pytest.skip("exception groups came with Python 3.11")
    trace = python_stderr(tmp_path, PY_SCRIPTS[case])
    assert trace[0] == "Traceback (most recent call last):"
    if case == "simple" and sys.version_info >= (3, 11):
        assert any(set(line.strip()) <= {"^", "~"} for line in trace)  # caret lines
    if case == "during handling":
        assert "During handling of the above exception, another exception occurred:" in trace
    if case in ("direct cause", "exception group"):
        assert "The above exception was the direct cause of the following exception:" in trace
    if case == "exception group":
        assert "  + Exception Group Traceback (most recent call last):" in trace
        assert any(line.startswith("    +----") for line in trace)
    assert "" in trace or case == "simple"  # chained tracebacks have blank lines inside
    # The application's output goes to stdout; the crash to stderr, then a supervisor's line.
    exited = "supervisor: worker 1 exited with status 1"
    lines: list[Line] = [
        ("stdout", "worker 1 ready"),
        *[("stderr", line) for line in trace],
        ("stdout", "worker 1 gone"),
        ("stderr", exited),
    ]

    assert run("python", lines) == ["worker 1 ready", "\n".join(trace), "worker 1 gone", exited]


def test_python_logging_exception_joins_its_message(tmp_path: Path) -> None:
    lines = python_stderr(tmp_path, PY_LOGGING)
    # Independent of the parser: each logging record begins with its asctime.
    starts = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
    expected: list[list[str]] = []
    for line in lines:
        if starts.match(line):
            expected.append([line])
        else:
            expected[-1].append(line)
    assert [len(record) > 1 for record in expected] == [False, True, False, True, False]
    assert expected[1][1] == "Traceback (most recent call last):"

    assert run("python", [("stderr", line) for line in lines]) == [
        "\n".join(record) for record in expected
    ]


def test_python_blank_line_after_a_traceback_joins_only_a_chained_one(tmp_path: Path) -> None:
    trace = python_stderr(tmp_path, PY_SIMPLE)
    assert run("python", [*trace, "", "", "INFO:root:next"]) == [
        "\n".join(trace),
        "",
        "",
        "INFO:root:next",
    ]


def test_python_tracebacks_back_to_back(tmp_path: Path) -> None:
    first = python_stderr(tmp_path, PY_SIMPLE)
    second = python_stderr(tmp_path, PY_CAUSE)
    assert run("python", [*first, *second]) == ["\n".join(first), "\n".join(second)]


def test_python_unrelated_line_right_before_a_crash_joins_it(tmp_path: Path) -> None:
    """The documented cost of joining logging.exception's message: a crash's traceback
    joins the line of its stream right before it, if no flush timeout passed in between."""
    trace = python_stderr(tmp_path, PY_SIMPLE)
    assert run("python", ["INFO:root:tick", *trace]) == ["\n".join(["INFO:root:tick", *trace])]
    assert run("python", ["INFO:root:tick", "", *trace]) == ["INFO:root:tick", "", "\n".join(trace)]


# --- records across chunks, files and streams -------------------------------------------------


def test_interleaved_streams_are_joined_independently_in_first_line_order() -> None:
    lines: list[Line] = [
        ("stdout", "GET /a 200"),
        ("stderr", LOG_ERROR),
        ("stderr", HEADER),
        ("stdout", "GET /b 200"),
        ("stderr", FRAMES[0]),
        ("stdout", "GET /c 500"),
        ("stderr", FRAMES[1]),
        ("stderr", INFO_B),
        ("stdout", "GET /d 200"),
    ]
    parts = entries(lines)
    offsets = offsets_of(parts)
    join = joiner("java")

    out = join.apply(decode(FILE_NEW, 0, parts), None, 0.0)

    assert out.messages == [
        "GET /a 200",
        "\n".join([LOG_ERROR, HEADER, FRAMES[0], FRAMES[1]]),
        "GET /b 200",
        "GET /c 500",
    ]
    assert out.streams == ["stdout", "stderr", "stdout", "stdout"]
    assert out.offsets == [offsets[0], offsets[1], offsets[3], offsets[5]]
    assert out.timestamps == [t(0), t(1), t(3), t(5)]
    rest = join.take_all()
    assert rest is not None
    assert rest.messages == [INFO_B, "GET /d 200"]
    assert rest.offsets == [offsets[7], offsets[8]]


def test_record_open_at_a_chunk_end_completes_in_the_next_group() -> None:
    chunk1 = entries([INFO_A, LOG_ERROR, HEADER, FRAMES[0]])
    chunk2 = entries([FRAMES[1], FRAMES[2], INFO_B], first_ms=4)
    start2 = sum(map(len, chunk1))
    hold1, hold2 = CountingHold("1"), CountingHold("2")
    join = joiner("java")

    out1 = join.apply(decode(FILE_NEW, 0, chunk1), hold1, 1.0)
    out2 = join.apply(decode(FILE_NEW, start2, chunk2), hold2, 2.0)

    assert out1.messages == [INFO_A]
    assert out1.held == []
    assert hold1.held_from == [len(chunk1[0])]  # from the record's first line
    assert out2.messages == ["\n".join([LOG_ERROR, HEADER, *FRAMES])]
    assert out2.offsets == [len(chunk1[0])]
    assert out2.ends == [ends_of(chunk2, start2)[1]]  # its last line's, in the later chunk
    assert out2.timestamps == [t(1)]
    assert out2.heads == {}
    assert owners(out2.held) == [hold1]
    assert hold2.held_from == [offsets_of(chunk2, start2)[2]]  # INFO_B waits for its next line
    assert join.oldest() == 2.0


@pytest.mark.parametrize("order", ["earlier group first", "later group first"])
def test_checkpoint_never_passes_an_open_record(order: str) -> None:
    """With real tickets: the settled offset may reach the first line of a record still open,
    never pass it, until the group that ships the record settles."""
    chunk1 = entries([INFO_A, LOG_ERROR, HEADER, FRAMES[0]])
    chunk2 = entries([FRAMES[1], FRAMES[2], INFO_B], first_ms=4)
    end1 = sum(map(len, chunk1))
    end2 = end1 + sum(map(len, chunk2))
    trace_start = len(chunk1[0])
    info_b = offsets_of(chunk2, end1)[2]
    tracker = AckTracker()
    advanced: list[int] = []
    tracker.track(FILE_NEW.handle, 0, advanced.append)
    join = joiner("java")

    ticket1 = tracker.register(FILE_NEW.handle, end1)
    out1 = join.apply(decode(FILE_NEW, 0, chunk1, hold=ticket1), ticket1, 1.0)
    ticket2 = tracker.register(FILE_NEW.handle, end2)
    out2 = join.apply(decode(FILE_NEW, end1, chunk2, hold=ticket2), ticket2, 2.0)
    assert out2.offsets == [trace_start]

    if order == "earlier group first":
        settle(out1, ticket1)
        assert advanced == [trace_start]  # INFO_A delivered; the trace is not
        settle(out2, ticket2)
    else:
        settle(out2, ticket2)
        assert advanced == []  # the earlier range is still in flight
        settle(out1, ticket1)
    assert tracker.settled_offset(FILE_NEW.handle) == info_b  # INFO_B still waits

    rest = join.take_all()
    assert rest is not None
    assert rest.messages == [INFO_B]
    assert (rest.start, rest.end) == (0, 0)
    settle(rest)
    assert tracker.settled_offset(FILE_NEW.handle) == end2
    assert tracker.unsettled(FILE_NEW.handle) == 0


def test_record_across_a_rotation_holds_both_files() -> None:
    """The trace starts at the end of `.log.1` and goes on in the new file over two chunks:
    one hold in each file, the record's head is the old file, and each file's checkpoint waits
    at the record's first line in it."""
    old_start = 5000
    old = entries([INFO_A, LOG_ERROR, HEADER])
    new1 = entries([FRAMES[0], FRAMES[1]], first_ms=3)
    new2 = entries([FRAMES[2], INFO_B], first_ms=5)
    old_end = old_start + sum(map(len, old))
    new1_end = sum(map(len, new1))
    new2_end = new1_end + sum(map(len, new2))
    tracker = AckTracker()
    tracker.track(FILE_OLD.handle, old_start, lambda _: None)
    tracker.track(FILE_NEW.handle, 0, lambda _: None)
    join = joiner("java")

    ticket_old = tracker.register(FILE_OLD.handle, old_end)
    out_old = join.apply(decode(FILE_OLD, old_start, old, hold=ticket_old), ticket_old, 1.0)
    ticket_new1 = tracker.register(FILE_NEW.handle, new1_end)
    out_new1 = join.apply(decode(FILE_NEW, 0, new1, hold=ticket_new1), ticket_new1, 2.0)
    ticket_new2 = tracker.register(FILE_NEW.handle, new2_end)
    out_new2 = join.apply(decode(FILE_NEW, new1_end, new2, hold=ticket_new2), ticket_new2, 3.0)

    assert out_old.messages == [INFO_A]
    assert out_new1.messages == []
    assert out_new2.messages == ["\n".join([LOG_ERROR, HEADER, *FRAMES])]
    assert out_new2.offsets == [old_start + len(old[0])]
    assert out_new2.heads == {0: FILE_OLD}
    assert out_new2.file == FILE_NEW
    assert len(out_new2.held) == 2  # one hold in each file

    settle(out_old, ticket_old)
    settle(out_new1, ticket_new1)
    assert tracker.settled_offset(FILE_OLD.handle) == old_start + len(old[0])
    assert tracker.settled_offset(FILE_NEW.handle) == 0
    settle(out_new2, ticket_new2)
    assert tracker.settled_offset(FILE_OLD.handle) == old_end
    assert tracker.settled_offset(FILE_NEW.handle) == new1_end + len(new2[0])  # INFO_B waits


def test_blank_line_waits_across_chunks_for_the_next_goroutine() -> None:
    event = trace_lines("go_nil_map.txt")
    cut = event.index("goroutine 18 [chan receive]:")
    assert event[cut - 1] == ""
    chunk1 = entries([("stderr", line) for line in event[:cut]])
    chunk2 = entries([("stderr", line) for line in event[cut:]], first_ms=cut)
    join = joiner("go")

    out1 = join.apply(decode(FILE_NEW, 0, chunk1), None, 0.0)
    out2 = join.apply(decode(FILE_NEW, sum(map(len, chunk1)), chunk2), None, 0.0)

    assert out1.messages == []
    assert out2.messages == ["\n".join(event)]


def test_tentative_blank_line_from_an_earlier_chunk_keeps_its_place(tmp_path: Path) -> None:
    trace = python_stderr(tmp_path, PY_SIMPLE)
    chunk1 = entries([("stderr", line) for line in [*trace, ""]] + [("stdout", "out 1")])
    chunk2 = entries([("stdout", "out 2"), ("stderr", "INFO:root:next")], first_ms=50)
    join = joiner("python")

    out1 = join.apply(decode(FILE_NEW, 0, chunk1), None, 0.0)
    out2 = join.apply(decode(FILE_NEW, sum(map(len, chunk1)), chunk2), None, 0.0)

    assert out1.messages == []
    # In order of first lines: the trace, its blank line (a record of its own), "out 1".
    assert out2.messages == ["\n".join(trace), "", "out 1"]
    offsets = offsets_of(chunk1)
    assert out2.offsets == [offsets[0], offsets[len(trace)], offsets[len(trace) + 1]]


def test_holds_of_rejoined_16k_parts_stay_with_the_open_record() -> None:
    """A 40 KiB log line whose first part is in chunk 1 starts a trace that is still open
    after chunk 2: the part's hold comes with chunk 2's group, and must not be released with
    it, or the checkpoint would pass the record's first byte."""
    long_line = "2024-05-01 12:00:03 ERROR request failed: " + "x" * 40_000
    info = entries([INFO_A])
    parts = [
        encode_entry(part, "stdout", T0 + 1_000_000)
        for part in split_output(long_line.encode() + b"\n")
    ]
    assert len(parts) == 3
    chunk1 = [*info, parts[0]]
    chunk2 = [parts[1], parts[2], *entries([HEADER, FRAMES[0]], first_ms=2)]
    chunk3 = entries([FRAMES[1], INFO_B], first_ms=4)
    end1 = sum(map(len, chunk1))
    end2 = end1 + sum(map(len, chunk2))
    end3 = end2 + sum(map(len, chunk3))
    tracker = AckTracker()
    tracker.track(FILE_NEW.handle, 0, lambda _: None)
    partials = PartialJoiner(MAX_BYTES)
    join = joiner("java")

    ticket1 = tracker.register(FILE_NEW.handle, end1)
    group1 = decode(FILE_NEW, 0, chunk1, hold=ticket1, partials=partials)
    out1 = join.apply(group1, ticket1, 1.0)
    ticket2 = tracker.register(FILE_NEW.handle, end2)
    group2 = decode(FILE_NEW, end1, chunk2, hold=ticket2, partials=partials)
    assert group2.offsets[0] == len(info[0])  # rejoined: starts at its first part, in chunk 1
    assert len(group2.held) == 1
    out2 = join.apply(group2, ticket2, 2.0)

    assert out1.messages == []
    assert out2.messages == [INFO_A]
    settle(out1, ticket1)
    settle(out2, ticket2)
    assert tracker.settled_offset(FILE_NEW.handle) == len(info[0])  # not past the long line

    ticket3 = tracker.register(FILE_NEW.handle, end3)
    out3 = join.apply(decode(FILE_NEW, end2, chunk3, hold=ticket3, partials=partials), ticket3, 3.0)
    assert out3.messages == ["\n".join([long_line, HEADER, FRAMES[0], FRAMES[1]])]
    assert out3.offsets == [len(info[0])]
    settle(out3, ticket3)
    assert tracker.settled_offset(FILE_NEW.handle) == end3 - len(chunk3[-1])  # INFO_B waits


def test_input_holds_shared_by_two_open_records_are_released_with_the_last() -> None:
    held = CountingHold("partials")
    group = decode(FILE_NEW, 0, entries([("stdout", INFO_A), ("stderr", LOG_ERROR)]))
    group.held.append(held)
    join = joiner("java")

    out = join.apply(group, None, 0.0)
    assert out.messages == []
    assert out.held == []

    later = join.apply(decode(FILE_NEW, 500, entries([("stdout", INFO_B)], first_ms=5)), None, 1.0)
    assert later.messages == [INFO_A]
    settle(later)
    assert held.releases == 0  # the stderr record still waits
    rest = join.take_all()
    assert rest is not None
    assert rest.messages == [LOG_ERROR, INFO_B]
    settle(rest)
    assert held.releases == 1


# --- limits -------------------------------------------------------------------------------------


def test_max_lines_splits_and_keeps_every_line() -> None:
    event = [
        LOG_ERROR,
        HEADER,
        *[f"\tat com.example.Step{n}.run(Step{n}.java:{n})" for n in range(10)],
    ]
    join = joiner("java", max_lines=5)

    out = join.apply(decode(FILE_NEW, 0, entries([*event, INFO_B])), None, 0.0)

    assert out.messages == ["\n".join(event[0:5]), "\n".join(event[5:10]), "\n".join(event[10:])]
    assert out.flags == {
        0: (FLAG_MULTILINE_SPLIT,),
        1: (FLAG_MULTILINE_SPLIT,),
        2: (FLAG_MULTILINE_SPLIT,),
    }
    parts = entries([*event, INFO_B])
    offsets = offsets_of(parts)
    assert out.offsets == [offsets[0], offsets[5], offsets[10]]
    rest = join.take_all()
    assert rest is not None
    assert rest.messages == [INFO_B]
    assert rest.flags == {}


def test_record_reaching_max_lines_ships_without_waiting() -> None:
    join = joiner("java", max_lines=3)
    out = join.apply(decode(FILE_NEW, 0, entries([LOG_ERROR, HEADER, FRAMES[0]])), None, 0.0)
    assert out.messages == ["\n".join([LOG_ERROR, HEADER, FRAMES[0]])]
    assert out.flags == {0: (FLAG_MULTILINE_SPLIT,)}
    assert not join.pending


def _pack(lines: list[str], max_bytes: int) -> list[list[str]]:
    """The reference for the byte limit: a line that would make the joined UTF-8 message
    longer than `max_bytes` starts the next record."""
    records: list[list[str]] = []
    size = 0
    for line in lines:
        length = len(line.encode())
        if records and size + 1 + length <= max_bytes:
            records[-1].append(line)
            size += 1 + length
        else:
            records.append([line])
            size = length
    return records


def test_max_bytes_counts_utf8_and_splits_between_lines() -> None:
    frames = [f"\tat com.example.Zoë{n}.päy(Zoë.java:{n}) " + "é" * 140 for n in range(8)]
    event = [LOG_ERROR, HEADER, *frames]
    assert len(frames[0]) < 300 < len(frames[0].encode())  # characters are not bytes
    expected = _pack(event, 1024)
    assert len(expected) > 2

    records = run("java", [*event, INFO_B], max_bytes=1024)

    assert records == [*("\n".join(record) for record in expected), INFO_B]
    assert all(len(record.encode()) <= 1024 for record in records)


def test_line_longer_than_max_bytes_is_never_cut() -> None:
    huge = "\tat com.example.Huge.run(Huge.java:1) " + "z" * 3000
    assert run("java", [HEADER, huge, FRAMES[0], INFO_B], max_bytes=1024) == [
        HEADER,
        huge,
        FRAMES[0],
        INFO_B,
    ]


def test_split_flags_join_the_lines_own_flags() -> None:
    bad_time = b'{"log":"\\tat com.example.A.b(A.java:1)\\n","stream":"stdout","time":"soon"}\n'
    parts = [*entries([HEADER]), bad_time, *entries([FRAMES[0], FRAMES[1]])]
    join = joiner("java", max_lines=2)
    out = join.apply(decode(FILE_NEW, 0, parts), None, 0.0)
    rest = join.take_all()
    assert rest is None
    assert out.messages == [
        HEADER + "\n\tat com.example.A.b(A.java:1)",
        "\n".join(FRAMES[:2]),
    ]
    assert out.flags == {
        0: (FLAG_INVALID_TIME, FLAG_MULTILINE_SPLIT),
        1: (FLAG_MULTILINE_SPLIT,),
    }
    assert out.invalid_time == 1
    assert out.timestamps[0] == t(0)  # the first line's time, not the read time


# --- flush timeout ------------------------------------------------------------------------------


def test_expired_ships_records_whose_last_line_is_old_enough() -> None:
    hold = CountingHold()
    parts = entries([LOG_ERROR, HEADER, *FRAMES])
    join = joiner("java")

    out = join.apply(decode(FILE_NEW, 0, parts), hold, 10.0)

    assert out.messages == []
    assert join.pending
    assert join.oldest() == 10.0
    assert join.expired(11.9, 2.0) is None
    flushed = join.expired(12.0, 2.0)
    assert flushed is not None
    assert flushed.messages == ["\n".join([LOG_ERROR, HEADER, *FRAMES])]
    assert (flushed.file, flushed.start, flushed.end) == (FILE_NEW, 0, 0)
    assert flushed.offsets == [0]
    assert flushed.ends == [sum(map(len, parts))]
    assert flushed.timestamps == [t(0)]
    assert owners(flushed.held) == [hold]
    assert hold.held_from == [0]
    assert not join.pending
    assert join.oldest() is None
    assert join.expired(100.0, 2.0) is None


def test_expired_counts_from_the_last_line_per_stream() -> None:
    join = joiner("java")
    join.apply(
        decode(FILE_NEW, 0, entries([("stdout", LOG_ERROR), ("stdout", HEADER)])), None, 10.0
    )
    join.apply(decode(FILE_NEW, 900, entries([("stderr", INFO_A)], first_ms=2)), None, 11.0)
    join.apply(decode(FILE_NEW, 1200, entries([("stdout", FRAMES[0])], first_ms=3)), None, 11.5)
    assert join.oldest() == 11.0

    first = join.expired(13.0, 2.0)
    assert first is not None
    assert first.messages == [INFO_A]
    second = join.expired(13.5, 2.0)
    assert second is not None
    assert second.messages == ["\n".join([LOG_ERROR, HEADER, FRAMES[0]])]


def test_after_a_timeout_the_stream_starts_afresh() -> None:
    join = joiner("java")
    join.apply(decode(FILE_NEW, 0, entries([INFO_A])), None, 0.0)
    assert join.expired(5.0, 2.0) is not None
    # The header comes too late to join INFO_A, which has shipped.
    out = join.apply(
        decode(FILE_NEW, 300, entries([HEADER, *FRAMES, INFO_B], first_ms=1)), None, 6.0
    )
    assert out.messages == ["\n".join([HEADER, *FRAMES])]


def test_expired_splits_off_a_tentative_blank_line(tmp_path: Path) -> None:
    trace = python_stderr(tmp_path, PY_SIMPLE)
    join = joiner("python")
    join.apply(decode(FILE_NEW, 0, entries([*trace, ""])), None, 0.0)
    flushed = join.expired(2.0, 2.0)
    assert flushed is not None
    assert flushed.messages == ["\n".join(trace), ""]


def test_take_all_orders_records_and_marks_their_files() -> None:
    hold_old, hold_new = CountingHold("old"), CountingHold("new")
    join = joiner("java")
    join.apply(
        decode(FILE_OLD, 100, entries([("stderr", LOG_ERROR), ("stderr", HEADER)])), hold_old, 0.0
    )
    join.apply(decode(FILE_NEW, 0, entries([("stdout", INFO_A)], first_ms=5)), hold_new, 1.0)

    everything = join.take_all()

    assert everything is not None
    assert everything.messages == [LOG_ERROR + "\n" + HEADER, INFO_A]
    assert everything.file == FILE_OLD  # the first record's file
    assert everything.heads == {1: FILE_NEW}
    assert (everything.start, everything.end) == (0, 0)
    assert owners(everything.held) == [hold_old, hold_new]
    assert join.take_all() is None


# --- lines that are not joined ------------------------------------------------------------------


def test_single_lines_pass_unchanged_with_their_flags_and_attrs() -> None:
    attrs = encode_attrs({"service": "shop", "tag": "web"})
    parts = [
        *entries(["GET /a 200"], attrs=attrs),
        b'{"log":"GET /b 200\\n","stream":"stdout","time":"not a time"}\n',
        b"not json at all\n",
        *entries([("stderr", "warning: disk 91% full")], first_ms=3),
        *entries(["GET /c 200"], first_ms=4),
    ]
    group = decode(FILE_NEW, 0, parts)
    join = joiner("java")

    out = join.apply(group, None, 0.0)
    rest = join.take_all()

    assert rest is not None
    assert out.messages + rest.messages == group.messages
    assert out.offsets + rest.offsets == group.offsets
    assert out.timestamps + rest.timestamps == group.timestamps
    assert out.streams + rest.streams == group.streams
    assert out.messages == ["GET /a 200", "GET /b 200", "not json at all"]
    assert out.attrs == {0: {"service": "shop", "tag": "web"}}
    assert out.flags == {1: (FLAG_INVALID_TIME,), 2: (FLAG_INVALID_JSON,)}
    assert (out.invalid_json, out.invalid_time) == (1, 1)
    assert (out.file, out.start, out.end) == (FILE_NEW, group.start, group.end)


def test_lines_left_open_mid_group_keep_the_others_columns_aligned() -> None:
    """A group in which no line joins another is copied a slice at a time: the records left
    open (the last of each stream) leave gaps that the sparse columns must follow."""
    attrs = encode_attrs({"service": "shop"})
    parts1 = [
        *entries(["GET /a 200"], attrs=attrs),
        *entries([("stderr", "warning: disk 91% full")], first_ms=1),
        b'{"log":"GET /b 200\\n","stream":"stdout","time":"not a time"}\n',
        b"not json at all\n",
        *entries(["GET /c 200"], first_ms=4, attrs=attrs),
    ]
    parts2 = [
        *entries(["GET /d 200"], first_ms=5),
        b'{"log":"GET /e 200\\n","stream":"stdout","time":"later"}\n',
        *entries(["GET /f 200"], first_ms=7, attrs=attrs),
    ]
    offsets = offsets_of([*parts1, *parts2])
    join = joiner("python")

    out1 = join.apply(decode(FILE_NEW, 0, parts1), None, 0.0)
    out2 = join.apply(decode(FILE_NEW, offsets[5], parts2), None, 0.0)

    assert out1.messages == ["GET /a 200", "GET /b 200", "not json at all"]
    assert out1.offsets == [offsets[0], offsets[2], offsets[3]]
    assert out1.attrs == {0: {"service": "shop"}}
    assert out1.flags == {1: (FLAG_INVALID_TIME,), 2: (FLAG_INVALID_JSON,)}
    assert out2.messages == ["GET /c 200", "GET /d 200", "GET /e 200"]
    assert out2.offsets == [offsets[4], offsets[5], offsets[6]]
    assert out2.attrs == {0: {"service": "shop"}}
    assert out2.flags == {2: (FLAG_INVALID_TIME,)}
    rest = join.take_all()
    assert rest is not None
    assert rest.messages == ["warning: disk 91% full", "GET /f 200"]
    assert rest.attrs == {1: {"service": "shop"}}


def test_invalid_json_line_is_never_joined() -> None:
    everything = MultilineConfig.model_validate({"parsers": {"all": {"continue": ".*"}}})
    parser = build_parsers(everything)["all"]
    parts = [*entries(["a", "b"]), b"\tat not.json(Entry.java:1)\n", *entries(["c"], first_ms=3)]
    join = joiner(parser)
    out = join.apply(decode(FILE_NEW, 0, parts), None, 0.0)
    rest = join.take_all()
    assert rest is not None
    assert out.messages == ["\tat not.json(Entry.java:1)"]
    assert rest.messages == ["a\nb\nc"]

    java = joiner("java")
    java_out = java.apply(
        decode(FILE_NEW, 0, [*entries([HEADER]), b"\tat raw.Line(L.java:1)\n"]), None, 0.0
    )
    assert java_out.messages == ["\tat raw.Line(L.java:1)"]


# --- custom parsers -----------------------------------------------------------------------------


def custom(**patterns: str) -> MultilineParser:
    config = MultilineConfig.model_validate({"parsers": {"mine": patterns}})
    return build_parsers(config)["mine"]


def test_custom_start_only_joins_every_line_that_is_not_a_start() -> None:
    parser = custom(start=r"^\d{4}-\d\d-\d\d ")
    lines = [
        "orphan",
        "still orphan",
        "2024-05-01 a",
        "  more",
        "cont",
        "2024-05-01 b",
        "2024-05-01 c",
        "x",
    ]
    assert run(parser, lines) == [
        "orphan\nstill orphan",
        "2024-05-01 a\n  more\ncont",
        "2024-05-01 b",
        "2024-05-01 c\nx",
    ]


def test_custom_continue_only_starts_a_record_at_every_other_line() -> None:
    parser = custom(**{"continue": r"^\s"})
    assert run(parser, ["a", " b", "\tc", "d", "e", " f"]) == ["a\n b\n\tc", "d", "e\n f"]


def test_custom_start_and_continue_a_line_matching_neither_stands_alone() -> None:
    parser = custom(start="^START", **{"continue": r"^\s"})
    lines = ["START a", " b", "loose", " c", "START d", " e"]
    assert run(parser, lines) == ["START a\n b", "loose", " c", "START d\n e"]


def test_custom_patterns_keep_their_groups_flags_and_are_searched() -> None:
    parser = custom(start=r"(?i)\b(error|warn)(ing)?\b")
    lines = ["boot", "12:00 ERROR one", "detail", "12:01 Warning two", "detail 2"]
    assert run(parser, lines) == ["boot", "12:00 ERROR one\ndetail", "12:01 Warning two\ndetail 2"]


# --- choosing a container's parser --------------------------------------------------------------


CHOICE = MultilineConfig.model_validate(
    {
        "default": "none",
        "parsers": {"nginx-error": {"start": r"^\d{4}/\d\d/\d\d "}},
        "rules": [
            {"match": {"images": ["shop/*"]}, "parser": "java"},
            {"match": {"labels": ["tier=batch-*"]}, "parser": "none"},
            {"match": {"names": ["worker-*"], "labels": ["team"]}, "parser": "python"},
        ],
    }
)
CHOICE_PARSERS = build_parsers(CHOICE)


def choose(name: str, image: str = "busybox", **labels: str) -> str | None:
    parser = choose_parser(CHOICE, CHOICE_PARSERS, name=name, image=image, labels=labels)
    return None if parser is None else parser.name


def label(value: str) -> dict[str, str]:
    return {"shipper.multiline": value}


def test_build_parsers_has_the_presets_and_the_configured_ones() -> None:
    assert set(CHOICE_PARSERS) == {"java", "python", "go", "nginx-error"}
    assert CHOICE_PARSERS["java"] is PARSERS["java"]  # compiled once, shared


def test_rules_come_first_then_the_label_then_the_default() -> None:
    assert choose("api-1", "shop/api:1.4", **label("go")) == "java"
    assert (
        choose_parser(
            CHOICE,
            CHOICE_PARSERS,
            name="job-7",
            image="busybox",
            labels={"tier": "batch-nightly", "shipper.multiline": "java"},
        )
        is None
    )
    assert choose("/worker-3") == "python"  # Docker's leading slash is not part of the name
    assert choose("other", team="payments") == "python"  # "key" matches any value
    assert choose("other", **label("go")) == "go"
    assert choose("other", **label(" nginx-error ")) == "nginx-error"
    assert choose("other", **label("none")) is None
    assert choose("other") is None  # the default


def test_default_parser_applies_when_nothing_else_chooses() -> None:
    config = MultilineConfig.model_validate({"default": "go", "label": None})
    parsers = build_parsers(config)
    chosen = choose_parser(
        config, parsers, name="x", image="y", labels={"shipper.multiline": "java"}
    )
    assert chosen is parsers["go"]  # without a configured label key, labels choose nothing


def test_label_cannot_bring_a_regular_expression(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shipper.processing.multiline")
    pattern = r"^(a+)+$"  # what an attacker would like compiled

    assert choose("label-test-1", **label(pattern)) is None  # the default, "none"
    assert choose("label-test-1", **label(pattern)) is None
    assert choose("label-test-1", **label("Java")) is None  # names are exact

    warnings = [r for r in caplog.records if r.name == "shipper.processing.multiline"]
    assert len(warnings) == 2  # once per container and value
    assert warnings[0].levelno == logging.WARNING
    assert getattr(warnings[0], "container", None) == "label-test-1"
    assert getattr(warnings[0], "value", None) == pattern
    assert set(CHOICE_PARSERS) == {"java", "python", "go", "nginx-error"}  # nothing compiled


# --- any chunking, same records -----------------------------------------------------------------

_VOCABULARY = {
    "java": [INFO_A, INFO_B, LOG_ERROR, HEADER, *FRAMES, "Caused by: java.io.IOException: x", ""],
    "python": [
        "INFO:root:tick",
        "Traceback (most recent call last):",
        '  File "/app/x.py", line 3, in <module>',
        "    main()",
        "ValueError: boom",
        "",
        "During handling of the above exception, another exception occurred:",
    ],
    "go": [
        GO_LISTENING,
        "panic: boom",
        "",
        "goroutine 1 [running]:",
        "main.main()",
        "\t/app/main.go:5 +0x1d",
        "exit status 2",
    ],
}


def assert_each_ends_with_its_last_line(
    parts: list[bytes], records: list[tuple[int, str, str, tuple[str, ...], int]]
) -> None:
    """Each record (offset, stream, message, flags, end) ends where its last line (of its own
    stream) does: after that line's newline."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for offset, line in zip(offsets_of(parts), parts, strict=True):
        stream = json.loads(line)["stream"] if line.startswith(b"{") else ""
        spans.setdefault(stream, []).append((offset, offset + len(line)))
    for start, stream, message, _, end in records:
        starts = [span[0] for span in spans[stream]]
        last = starts.index(start) + message.count("\n")
        assert end == spans[stream][last][1]


@pytest.mark.parametrize("seed", range(12))
def test_records_do_not_depend_on_chunking_and_the_checkpoint_waits(seed: int) -> None:
    """Random lines of a preset's vocabulary on two streams, with raw (not JSON) lines among
    them, cut into random chunks and limited to few lines: every line is in exactly one record,
    in order within its stream; the records are those of the whole input in one chunk; and with
    real tickets, the settled offset never passes the first line of a record not yet shipped."""
    rng = random.Random(seed)
    preset = ("java", "python", "go")[seed % 3]
    words = _VOCABULARY[preset]
    parts: list[bytes] = []
    for n in range(300):
        if rng.random() < 0.03:
            parts.append(b"raw line %d\n" % n)
        else:
            stream: Stream = "stderr" if rng.random() < 0.3 else "stdout"
            parts.extend(entries([(stream, rng.choice(words))], first_ms=n))
    offsets = offsets_of(parts)
    end = offsets[-1] + len(parts[-1])

    def records(groups: list[RecordGroup]) -> list[tuple[int, str, str, tuple[str, ...], int]]:
        for group in groups:
            assert len(group.ends) == len(group)
        return sorted(
            (
                group.offsets[i],
                group.streams[i],
                group.messages[i],
                group.flags.get(i, ()),
                group.ends[i],
            )
            for group in groups
            for i in range(len(group))
        )

    whole = joiner(preset, max_lines=6)
    expected = records(
        [whole.apply(decode(FILE_NEW, 0, parts), None, 0.0), *filter(None, [whole.take_all()])]
    )
    by_stream: dict[str, list[str]] = {}
    for line in parts:
        try:
            entry = json.loads(line)
        except ValueError:
            by_stream.setdefault("", []).append(line.decode().rstrip("\n"))
        else:
            by_stream.setdefault(entry["stream"], []).append(entry["log"].rstrip("\n"))
    for stream, lines in by_stream.items():
        ordered = [message for _, s, message, *_ in expected if s == stream]
        assert "\n".join(ordered).split("\n") == lines
    assert_each_ends_with_its_last_line(parts, expected)

    tracker = AckTracker()
    tracker.track(FILE_NEW.handle, 0, lambda _: None)
    join = joiner(preset, max_lines=6)
    shipped: list[RecordGroup] = []
    first = 0
    while first < len(parts):
        last = min(len(parts), first + rng.randint(1, 40))
        ticket = tracker.register(FILE_NEW.handle, offsets[last - 1] + len(parts[last - 1]))
        out = join.apply(decode(FILE_NEW, offsets[first], parts[first:last]), ticket, 0.0)
        shipped.append(out)
        settle(out, ticket)
        unshipped = [record[0] for record in expected if record not in records(shipped)]
        assert tracker.settled_offset(FILE_NEW.handle) <= min(unshipped, default=end)
        first = last
    rest = join.take_all()
    if rest is not None:
        shipped.append(rest)
        settle(rest)
    assert records(shipped) == expected
    assert tracker.settled_offset(FILE_NEW.handle) == end
    assert tracker.unsettled(FILE_NEW.handle) == 0
