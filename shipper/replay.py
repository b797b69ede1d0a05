"""`shipper replay-dead-letters`: sends dead-lettered records again once their cause is fixed."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from shipper.config import DEFAULT_ORIGIN, Config, OutputConfig, load_config
from shipper.errors import ConfigError, ShipperError
from shipper.fileio import fsync_directory
from shipper.model import Batch, LogFile, RecordGroup
from shipper.pipeline.sender import Rejected, Sender
from shipper.sinks import Sink
from shipper.sinks.dead_letter import DeadLetterFile
from shipper.telemetry.counters import Telemetry
from shipper.telemetry.logging import setup_logging

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

COMMAND = "shipper replay-dead-letters"

# A replay works in chunks of the file: everything a chunk held has its final place (delivered,
# or appended to the live dead-letter file) before the progress file moves past it, so an
# interrupted replay sends again at most one chunk. Each output still gets batches of its own
# `batch:` size.
CHUNK_LINES = 1000
CHUNK_BYTES = 8 * 1024 * 1024

ASIDE_MARK = ".replay-"  # dead-letter.ndjson -> dead-letter.ndjson.replay-<UTC time>
PROGRESS_SUFFIX = ".progress"  # <aside>.progress: how far the aside file is replayed

# Appenders hold the lock of a file for one write and fsync: a lock held longer is another
# replay working on the file.
LOCK_WAIT = 5.0

_MAX_LISTED_LINES = 20  # malformed line numbers shown in the report (more are in the log)
_MAX_LOGGED_LINES = 1000


def replay_dead_letters(
    path: Path | None, *, file: Path | None, output: str | None, dry_run: bool
) -> int:
    """Send the records of a dead-letter file again, each to the output that rejected it.

    Exit 0 when every record was delivered (or was there already), 1 when some was rejected
    again, kept (its output is not configured, its line is not a record) or the replay stopped,
    2 when the config or the command line is invalid.
    """
    setup_logging()
    try:
        config = load_config(path)
    except ConfigError as exc:
        _say(f"{COMMAND}: invalid config\n{exc}", err=True)
        return EXIT_CONFIG
    setup_logging(config.logging.level, config.logging.format)
    if output is not None and output not in config.outputs:
        origin = str(path) if path is not None else DEFAULT_ORIGIN
        defined = ", ".join(sorted(config.outputs))
        _say(
            f"{COMMAND}: {origin}: --output: no output of this name (defined: {defined})",
            err=True,
        )
        return EXIT_CONFIG
    live = config.dead_letter_path
    source = file if file is not None else live
    _mention_leftovers(live, source)
    if dry_run:
        return _dry_run(config, source, output)
    replay = _Replay(config, only=output)
    try:
        return asyncio.run(replay.run(source))
    except (KeyboardInterrupt, asyncio.CancelledError):
        replay.stopped("interrupted")
        return EXIT_FAILED


def _say(line: str, *, err: bool = False) -> None:
    """A line for the user: the report on stdout, problems on stderr (logs are JSON there)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()


# --- reading a dead-letter file -------------------------------------------------------------------


@dataclass(slots=True)
class _Line:
    number: int  # 1-based, in the file as it was set aside
    raw: bytes  # as read, with its newline (if it had one)
    end: int  # offset in the file just after it


@dataclass(slots=True)
class _Entry:
    """A dead-letter line understood: what is needed to send its document again."""

    line: _Line
    output: str
    cause: str  # the error type, for counting
    document: bytes  # the document's NDJSON line, newline included
    timestamp: str
    message: str
    stream: str
    log_file: str
    offset: int
    end: int  # -1: not known (lines written before shipper recorded it)
    fingerprint: str
    head_file: str | None


def _parse(line: _Line) -> _Entry | None:
    """The entry of a line, or None when it is not a dead-letter record (kept as it is)."""
    try:
        record = orjson.loads(line.raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    output = record.get("output")
    document = record.get("document")
    if not isinstance(output, str) or not output or not isinstance(document, dict):
        return None
    log_info = document.get("log")
    log_info = log_info if isinstance(log_info, dict) else {}
    file_info = log_info.get("file")
    file_info = file_info if isinstance(file_info, dict) else {}
    log_file = _text(record.get("log_file")) or _text(file_info.get("path")) or ""
    offset = _integer(record.get("offset"))
    if offset is None:
        offset = _integer(log_info.get("offset")) or 0
    # Lines written before the record's end and file id were recorded have neither: their
    # records get an id from the file path, the offset and the message (record_ids' fallback),
    # not the one they were first sent with. A replay of such a line repeated is still a 409,
    # but one already indexed under its first id (sent again meanwhile) is indexed a second time.
    end = _integer(record.get("end"))
    message = document.get("message")
    stream = document.get("stream")
    return _Entry(
        line=line,
        output=output,
        cause=_cause(record),
        document=orjson.dumps(document, option=orjson.OPT_APPEND_NEWLINE),
        timestamp=_timestamp(document.get("@timestamp"), record.get("time")),
        message=message if isinstance(message, str) else "",
        stream=stream if isinstance(stream, str) else "",
        log_file=log_file,
        offset=offset,
        end=end if end is not None and end >= 0 else -1,
        fingerprint=_text(record.get("fingerprint")) or "",
        head_file=_text(record.get("head_file")),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _cause(record: dict[str, Any]) -> str:
    """The error type a line was rejected with, or what stands for it."""
    error_type = record.get("error_type")
    if isinstance(error_type, str) and error_type:
        return error_type
    reason = record.get("reason")
    if isinstance(reason, str) and reason.startswith("gave up after"):
        return "retries exhausted"
    status = _integer(record.get("status"))
    return f"status {status}" if status is not None else "other"


def _timestamp(value: Any, rejected_at: Any) -> str:
    """The record's @timestamp (which names a dated index, and HEC's `time`); the time it was
    rejected for a record whose processing removed it."""
    if isinstance(value, str) and len(value) >= 10:
        return value
    moment = rejected_at if isinstance(rejected_at, int | float) else time.time()
    try:
        when = datetime.fromtimestamp(moment, UTC)
    except (OverflowError, OSError, ValueError):  # a line edited by hand
        when = datetime.now(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _lines(stream: IO[bytes], start: int, first: int) -> Iterator[_Line]:
    """The lines of a file from byte `start`, numbered from `first`."""
    stream.seek(start)
    position = start
    number = first
    for raw in iter(stream.readline, b""):
        position += len(raw)
        yield _Line(number, raw, position)
        number += 1


def _chunks(lines: Iterator[_Line]) -> Iterator[list[_Line]]:
    chunk: list[_Line] = []
    size = 0
    for line in lines:
        chunk.append(line)
        size += len(line.raw)
        if len(chunk) >= CHUNK_LINES or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _with_newline(raw: bytes) -> bytes:
    return raw if raw.endswith(b"\n") else raw + b"\n"


# --- set-aside files and their progress -----------------------------------------------------------


def _is_aside(path: Path) -> bool:
    return ASIDE_MARK in path.name and not path.name.endswith(PROGRESS_SUFFIX)


def _progress_path(aside: Path) -> Path:
    return aside.with_name(aside.name + PROGRESS_SUFFIX)


def _read_progress(aside: Path) -> tuple[int, int]:
    """(byte offset, number of the next line) up to which `aside` was replayed; (0, 1) if not."""
    path = _progress_path(aside)
    try:
        progress = orjson.loads(path.read_bytes())
        offset, line = progress["offset"], progress["line"]
    except FileNotFoundError:
        return 0, 1
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        # Starting over sends again what was replayed already: duplicates, never a loss.
        log.warning(
            "Replay progress file unreadable; replaying the whole file.",
            extra={"progress": str(path), "error": str(exc)},
        )
        return 0, 1
    if not (isinstance(offset, int) and isinstance(line, int) and offset >= 0 and line >= 1):
        return 0, 1
    return offset, line


def _checked_progress(stream: IO[bytes], aside: Path) -> tuple[int, int]:
    """The progress of `aside`, if it describes this file: it must end at a line's end."""
    offset, line = _read_progress(aside)
    if offset == 0:
        return 0, 1
    size = os.fstat(stream.fileno()).st_size
    if offset <= size:
        stream.seek(offset - 1)
        if stream.read(1) == b"\n":
            return offset, line
    # Not this file's (replaced since?): all of it again rather than skip a line unsent.
    log.warning(
        "Replay progress does not match the file; replaying the whole file.",
        extra={"file": str(aside), "offset": offset, "size": size},
    )
    return 0, 1


def _nothing_in(source: Path) -> bool:
    """Whether `source` is missing or empty (then said so): nothing to set aside or send."""
    try:
        size = source.stat().st_size
    except FileNotFoundError:
        _say(f"nothing to replay: {source} does not exist")
        return True
    if size == 0 and not _is_aside(source):
        _say(f"nothing to replay: {source} is empty")
        return True
    return False


def _write_progress(aside: Path, offset: int, line: int) -> None:
    path = _progress_path(aside)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, orjson.dumps({"offset": offset, "line": line}))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent)


def _set_aside(source: Path) -> Path:
    """Rename `source` to `<name>.replay-<UTC time>` beside it (FileNotFoundError if gone)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = source.with_name(f"{source.name}{ASIDE_MARK}{stamp}")
    counter = 1
    while aside.exists():  # never rename over an earlier one
        aside = source.with_name(f"{source.name}{ASIDE_MARK}{stamp}-{counter}")
        counter += 1
    os.rename(source, aside)
    fsync_directory(aside.parent)
    return aside


def _lock(fd: int, wait: float) -> bool:
    """Take the file's exclusive lock, waiting up to `wait` seconds for appenders to finish."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        else:
            return True


def _locked_by_another(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if it was taken
    return False


def _leftovers(live: Path) -> list[Path]:
    """Files an earlier replay of `live` set aside and did not finish."""
    try:
        candidates = sorted(live.parent.glob(f"{live.name}{ASIDE_MARK}*"))
    except OSError:
        return []
    return [path for path in candidates if _is_aside(path) and not path.name.endswith(".tmp")]


def _mention_leftovers(live: Path, source: Path) -> None:
    for leftover in _leftovers(live):
        if leftover == source:
            continue
        if _locked_by_another(leftover):
            _say(f"{COMMAND}: another replay is working on {leftover}", err=True)
        else:
            _say(
                f"{COMMAND}: an earlier replay did not finish: {leftover} holds records not "
                f"replayed yet; replay them with --file {leftover}",
                err=True,
            )


# --- counting -------------------------------------------------------------------------------------


@dataclass
class _Counts:
    delivered: int = 0
    duplicate: int = 0
    dropped: int = 0
    rejected: int = 0
    kept: int = 0


@dataclass
class _Tally:
    """What became of each line, by output, as the report shows it."""

    config: Config
    only: str | None
    counts: dict[str, _Counts] = field(default_factory=lambda: defaultdict(_Counts))
    causes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    not_chosen: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    malformed: list[int] = field(default_factory=list)

    def sort(self, lines: Sequence[_Line]) -> tuple[dict[str, list[_Entry]], list[bytes]]:
        """The entries to send, by output, and the lines that go back as they are."""
        chosen: dict[str, list[_Entry]] = defaultdict(list)
        back: list[bytes] = []
        for line in lines:
            entry = _parse(line)
            if entry is None:
                self.malformed.append(line.number)
                back.append(_with_newline(line.raw))
            elif self.only is not None and entry.output != self.only:
                self.not_chosen[entry.output] += 1
                back.append(_with_newline(line.raw))
            elif entry.output not in self.config.outputs:
                self.unknown[entry.output] += 1
                back.append(_with_newline(line.raw))
            else:
                chosen[entry.output].append(entry)
                self.causes[entry.output][entry.cause] += 1
        return chosen, back

    def kept(self) -> int:
        return len(self.malformed) + sum(self.unknown.values())

    def warn(self) -> None:
        for output, count in sorted(self.unknown.items()):
            log.warning(
                "Dead-letter records kept: their output is not in the config.",
                extra={"output": output, "count": count},
            )
        if self.malformed:
            log.warning(
                "Dead-letter lines kept: not dead-letter records.",
                extra={"count": len(self.malformed), "lines": self.malformed[:_MAX_LOGGED_LINES]},
            )

    def kept_lines(self) -> list[str]:
        lines = [
            f"{output}: {count} kept (output not in the config)"
            for output, count in sorted(self.unknown.items())
        ]
        lines += [
            f"{output}: {count} left in the file (not --output {self.only})"
            for output, count in sorted(self.not_chosen.items())
        ]
        if self.malformed:
            shown = ", ".join(map(str, self.malformed[:_MAX_LISTED_LINES]))
            more = len(self.malformed) - _MAX_LISTED_LINES
            if more > 0:
                shown += f" and {more} more"
            word = "line" if len(self.malformed) == 1 else "lines"
            lines.append(f"malformed lines: {len(self.malformed)} kept ({word} {shown})")
        return lines


def _dry_run(config: Config, source: Path, only: str | None) -> int:
    """Count what a replay would send, by output and cause; send nothing, change no file."""
    tally = _Tally(config, only)
    start, first = _read_progress(source) if _is_aside(source) else (0, 1)
    try:
        with source.open("rb") as stream:
            for chunk in _chunks(_lines(stream, start, first)):
                tally.sort(chunk)
    except FileNotFoundError:
        _say(f"nothing to replay: {source} does not exist")
        return EXIT_OK
    except OSError as exc:
        _say(f"{COMMAND}: cannot read {source}: {exc.strerror}", err=True)
        return EXIT_FAILED
    _say(f"dry run: {source}; nothing is sent and no file is changed")
    total = 0
    for output, causes in sorted(tally.causes.items()):
        count = sum(causes.values())
        total += count
        detail = ", ".join(f"{cause}: {n}" for cause, n in causes.most_common())
        _say(f"{output}: {count} to send ({detail})")
    for line in tally.kept_lines():
        _say(line)
    _say(f"total: {total} to send, {tally.kept()} kept")
    return EXIT_OK


# --- replaying ------------------------------------------------------------------------------------


class _Replay:
    """One replay: sets the file aside, sends it chunk by chunk, puts back what is not sent."""

    def __init__(self, config: Config, *, only: str | None) -> None:
        self.config = config
        self.tally = _Tally(config, only)
        self.telemetry = Telemetry()
        self.live = DeadLetterFile(config.dead_letter_path)
        self.aside: Path | None = None
        self._senders: dict[str, tuple[Sink, Sender]] = {}
        self._rejected: dict[str, list[Rejected]] = defaultdict(list)
        self._started = False  # a chunk was taken on: there are counts to report
        self._reported = False

    async def run(self, source: Path) -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            # SIGTERM stops a replay as Ctrl-C does: what is not replayed stays set aside.
            # (Only the main thread may handle signals; a replay run in a thread does without.)
            with contextlib.suppress(ValueError, RuntimeError):
                loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await self._run(source)
        except Exception as exc:  # noqa: BLE001 - said, with where the records are; none lost
            # A sink that refuses to go on (FatalSinkError), a file that cannot be written, or
            # a bug: the first cause, not the task group that carried it.
            while isinstance(exc, ExceptionGroup) and exc.exceptions:
                exc = exc.exceptions[0]
            self.stopped(str(exc) if isinstance(exc, OSError | ShipperError) else repr(exc))
            return EXIT_FAILED
        finally:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal.SIGTERM)
            for sink, _ in self._senders.values():
                with contextlib.suppress(Exception):
                    await sink.close()

    async def _run(self, source: Path) -> int:
        if _nothing_in(source):
            return EXIT_OK
        self._remove_orphan_progress()
        with contextlib.ExitStack() as stack:
            if _is_aside(source):
                # A file an earlier replay set aside: lock it before anything else, as another
                # replay may be working on it.
                stream = stack.enter_context(source.open("rb"))
                if not self._take(stream, source):
                    return EXIT_FAILED
                start, first = _checked_progress(stream, source)
                await self._open_outputs(stream, start)
                aside = source
            else:
                # Connect to the outputs the file names before touching it: an output that
                # cannot be set up (a missing CA file, a server that is not Elasticsearch)
                # changes nothing.
                with source.open("rb") as peek:
                    await self._open_outputs(peek, 0)
                try:
                    aside = _set_aside(source)
                except FileNotFoundError:
                    _say(f"nothing to replay: {source} does not exist")
                    return EXIT_OK
                # New rejections of a running shipper go to a new file from now on; the lock
                # waits for an append that had opened the file before the rename.
                _say(f"set {source} aside as {aside}; new dead letters go to a new file")
                stream = stack.enter_context(aside.open("rb"))
                if not self._take(stream, aside):
                    return EXIT_FAILED
                start, first = 0, 1
            self.aside = aside
            for chunk in _chunks(_lines(stream, start, first)):
                self._started = True
                await self._replay_chunk(chunk)
                _write_progress(aside, chunk[-1].end, chunk[-1].number + 1)
            # Every line has its final place: the set-aside file has done its work.
            aside.unlink()
        with contextlib.suppress(FileNotFoundError):
            _progress_path(aside).unlink()
        fsync_directory(aside.parent)
        self.aside = None
        return self.report()

    @staticmethod
    def _take(stream: IO[bytes], aside: Path) -> bool:
        """Lock the set-aside file for this replay; False (said) if another replay has it, or
        finished it while this one waited (the path is gone or another file)."""
        fd = stream.fileno()
        if _lock(fd, LOCK_WAIT):
            try:
                there = aside.stat()
            except FileNotFoundError:
                there = None
            mine = os.fstat(fd)
            if there is not None and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
                return True
        _say(f"{COMMAND}: another replay is working on {aside}", err=True)
        return False

    async def _open_outputs(self, stream: IO[bytes], start: int) -> None:
        """Set up the configured (and chosen) outputs that lines of the file from `start` name."""
        names: set[str] = set()
        probe = _Tally(self.config, self.tally.only)
        for chunk in _chunks(_lines(stream, start, 1)):
            chosen, _ = probe.sort(chunk)
            names.update(chosen)
        for name in sorted(names):
            await self._sender(name)

    def _remove_orphan_progress(self) -> None:
        """Progress files whose set-aside file is gone (a replay stopped just after removing
        it): they describe nothing any more."""
        live = self.config.dead_letter_path
        with contextlib.suppress(OSError):
            for path in live.parent.glob(f"{live.name}{ASIDE_MARK}*{PROGRESS_SUFFIX}"):
                if not path.with_name(path.name.removesuffix(PROGRESS_SUFFIX)).exists():
                    path.unlink()

    async def _sender(self, name: str) -> Sender:
        found = self._senders.get(name)
        if found is not None:
            return found[1]
        # Imported here: app imports every source and sink, which the other paths of this
        # command (a dry run, a bad config) do without.
        from shipper.app import SINKS, build_sender  # noqa: PLC0415

        config: OutputConfig = self.config.outputs[name]
        sink = SINKS[config.type](name, config, self.telemetry)
        await sink.open()
        sender = build_sender(
            name, config, sink, dead_letter=self._collect, telemetry=self.telemetry
        )
        self._senders[name] = (sink, sender)
        return sender

    async def _collect(self, output: str, rejected: list[Rejected]) -> None:
        # Written with the chunk's other lines, before its progress is recorded.
        self._rejected[output].extend(rejected)

    async def _replay_chunk(self, chunk: list[_Line]) -> None:
        chosen, back = self.tally.sort(chunk)
        senders = {name: await self._sender(name) for name in chosen}
        async with asyncio.TaskGroup() as group:
            for name, entries in chosen.items():
                group.create_task(self._deliver(senders[name], entries))
        data = [self.live.encode(name, rejected) for name, rejected in self._rejected.items()]
        for name, rejected in self._rejected.items():
            self.tally.counts[name].rejected += len(rejected)
        self._rejected.clear()
        await self.live.append(b"".join(data) + b"".join(back))

    async def _deliver(self, sender: Sender, entries: list[_Entry]) -> None:
        """Send one output's entries of a chunk in batches of its configured size."""
        batch_config = self.config.outputs[sender.output].batch
        batch: list[_Entry] = []
        size = 0
        for entry in entries:
            if batch and (
                len(batch) >= batch_config.max_records
                or size + len(entry.document) > batch_config.max_bytes
            ):
                await sender.deliver(Batch.of(_groups(batch)))
                batch, size = [], 0
            batch.append(entry)
            size += len(entry.document)
        if batch:
            await sender.deliver(Batch.of(_groups(batch)))

    def _outcomes(self, output: str) -> _Counts:
        counts = self.tally.counts[output]
        value = self.telemetry.value
        counts.delivered = int(value("shipper_records_total", output=output, outcome="delivered"))
        counts.duplicate = int(value("shipper_records_total", output=output, outcome="duplicate"))
        counts.dropped = int(value("shipper_records_total", output=output, outcome="dropped"))
        return counts

    def report(self) -> int:
        """Print what became of every line; the exit code that says it."""
        if self._reported:
            return EXIT_FAILED
        self._reported = True
        self.tally.warn()
        total = _Counts()
        for output in sorted(set(self.tally.causes) | set(self.tally.counts)):
            counts = self._outcomes(output)
            _say(f"{output}: {_describe(counts)}")
            for name in ("delivered", "duplicate", "dropped", "rejected"):
                setattr(total, name, getattr(total, name) + getattr(counts, name))
        for line in self.tally.kept_lines():
            _say(line)
        total.kept = self.tally.kept()
        _say(f"total: {_describe(total)}")
        if total.rejected or total.kept:
            _say(f"rejected again and kept records are in {self.config.dead_letter_path}")
        return EXIT_FAILED if total.rejected or total.kept else EXIT_OK

    def stopped(self, why: str) -> None:
        """Say why the replay stopped and where what it did not replay is."""
        _say(f"{COMMAND}: replay stopped: {why}", err=True)
        if self.aside is not None and self.aside.exists():
            _say(
                f"{COMMAND}: nothing is lost: {self.aside} holds the records not replayed yet; "
                f"replay them with --file {self.aside}",
                err=True,
            )
        if self._started:
            self.report()


def _describe(counts: _Counts) -> str:
    text = (
        f"{counts.delivered} delivered, {counts.duplicate} duplicate (already there), "
        f"{counts.rejected} rejected again, {counts.kept} kept"
    )
    if counts.dropped:
        text += f", {counts.dropped} dropped (nothing to send)"
    return text


def _groups(entries: Sequence[_Entry]) -> list[RecordGroup]:
    """Record groups holding these entries' documents, laid out so that each record gets the id
    it was first sent with (record_ids): its start and end offsets, and the stable id (or the
    path) of the file it starts in."""
    groups: dict[tuple[str, str], RecordGroup] = {}
    for entry in entries:
        # A record that starts in an earlier file (joined across a rotation) carries that file
        # as its head; the group's own file is where it ends, as in the pipeline.
        shared = "" if entry.head_file is not None else entry.fingerprint
        key = (entry.log_file, shared)
        group = groups.get(key)
        if group is None:
            file = LogFile(
                source="", container_id="", path=entry.log_file, handle="replay", fingerprint=shared
            )
            group = groups[key] = RecordGroup(file, start=0, end=0, documents=[])
        index = len(group.messages)
        group.timestamps.append(entry.timestamp)
        group.messages.append(entry.message)
        group.streams.append(entry.stream)
        group.offsets.append(entry.offset)
        group.ends.append(entry.end)
        assert group.documents is not None  # noqa: S101 - set just above
        group.documents.append(entry.document)
        if entry.head_file is not None:
            group.heads[index] = LogFile(
                source="",
                container_id="",
                path=entry.head_file,
                handle="replay",
                fingerprint=entry.fingerprint,
            )
    return list(groups.values())
