"""Writes a Docker container root byte for byte as dockerd's json-file log driver would."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

if TYPE_CHECKING:
    import random

__all__ = [
    "ACCESS_LOG_SHARE",
    "DEFAULT_ENV",
    "DEFAULT_START_NS",
    "DEFAULT_STEP_NS",
    "JSON_PAYLOAD_SHARE",
    "MAX_ENTRY_BYTES",
    "SEQ_PATTERN",
    "STACK_TRACE_SHARE",
    "Clock",
    "Compression",
    "ContainerLog",
    "DockerRootWriter",
    "FakeClock",
    "Stream",
    "encode_attrs",
    "encode_entry",
    "encode_json_string",
    "format_docker_time",
    "realistic_lines",
    "split_output",
]

Stream = Literal["stdout", "stderr"]
Compression = Literal["sync", "thread", "manual"]
"""When a rotated file of a `compress=true` container is gzipped: see `ContainerLog`."""
Clock = Callable[[], int]
"""Returns the current time in nanoseconds since the epoch (`time.time_ns` is the wall clock)."""

# dockerd's log copier reads a stream into a 16 KiB buffer; a buffer full of bytes without a
# newline is logged as one entry (daemon/logger/copier.go).
MAX_ENTRY_BYTES = 16 * 1024

DEFAULT_START_NS = 1_714_564_800_000_000_000  # 2024-05-01T12:00:00Z
# An odd step, so that consecutive fake times have 9 fraction digits most of the time and fewer
# now and then, as wall-clock times do: a reader must parse every length.
DEFAULT_STEP_NS = 1_234_567

DEFAULT_ENV: tuple[str, ...] = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    # Env is where real secrets live; the demo carries a fake one so that leaking env is visible.
    "SECRET_TOKEN=demo-not-a-secret",
)

SEQ_PATTERN = re.compile(r"\bseq=(\d{6,})\b")
"""Finds the sequence number `realistic_lines` puts in every message; group 1 is the number."""

_GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # how Go marshals a time.Time never set (FinishedAt)
_ID_PATTERN = re.compile(r"[0-9a-f]{64}")
_NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")  # Docker's rule for container names
_LOG_FILE_MODE = 0o640  # what the json-file driver passes to NewLogFile
_CONFIG_MODE = 0o600  # config.v2.json holds Env, so secrets
_HOSTCONFIG_MODE = 0o644


class FakeClock:
    """A deterministic clock: the first reading is `start_ns`, each later one `step_ns` later."""

    def __init__(self, start_ns: int = DEFAULT_START_NS, step_ns: int = DEFAULT_STEP_NS) -> None:
        if step_ns <= 0:
            raise ValueError("step_ns must be positive, or the clock would not be monotonic")
        self._next = start_ns
        self.step_ns = step_ns

    def __call__(self) -> int:
        now = self._next
        self._next += self.step_ns
        return now


# --- the bytes of one entry -------------------------------------------------------------------

# dockerd does not use encoding/json for the log line but its own ffjson-derived escaper
# (daemon/logger/jsonfilelog/jsonlog/jsonlogbytes.go): only `\n`, `\r`, `\\` and `\"` get short
# escapes, so TAB, BS and FF come out as \u0009, \u0008, \u000c; `<`, `>`, `&`, U+2028 and U+2029
# are escaped as \u...; DEL and all other non-ASCII text are written raw.
_ESCAPES: dict[str, str] = {chr(c): f"\\u{c:04x}" for c in range(0x20)}
_ESCAPES.update(
    {
        "\n": "\\n",
        "\r": "\\r",
        '"': '\\"',
        "\\": "\\\\",
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)
# Decoding with "surrogateescape" turns each byte that is not part of well-formed UTF-8 into one
# surrogate U+DC80..U+DCFF. Go's utf8.DecodeRune also rejects exactly one byte at a time (and both
# follow the same well-formedness table), so one surrogate here is one `\ufffd` from dockerd: a
# 3-byte character cut after its first byte gives one `\ufffd` on one side and two on the other.
_ESCAPES.update({chr(0xDC00 + b): "\\ufffd" for b in range(0x80, 0x100)})
_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\udc80-\udcff]')


def _escape(match: re.Match[str]) -> str:
    return _ESCAPES[match.group()]


def encode_json_string(data: bytes) -> bytes:
    """`data` as the quoted JSON string dockerd writes for it, invalid UTF-8 included."""
    text = data.decode("utf-8", "surrogateescape")
    return b'"' + _NEEDS_ESCAPE.sub(_escape, text).encode("utf-8") + b'"'


@lru_cache(maxsize=4096)
def _format_seconds(seconds: int) -> str:
    # Explicit fields rather than strftime("%Y"), which does not zero-pad years below 1000.
    t = datetime.fromtimestamp(seconds, UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"


def format_docker_time(time_ns: int) -> str:
    """`time_ns` as Go's RFC3339Nano in UTC: fraction trimmed of trailing zeros, no dot if zero."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    if nanos == 0:
        return _format_seconds(seconds) + "Z"
    return f"{_format_seconds(seconds)}.{nanos:09d}".rstrip("0") + "Z"


# The `attrs` object is made once per container by encoding/json (json.Marshal of a
# map[string]string, jsonfilelog.New), not by the log-line escaper above: the same escapes except
# that TAB is `\t`. (Go 1.22+ also writes `\b` and `\f`; Debian 12's docker.io 20.10 is built with
# Go 1.19, which writes \u0008 and \u000c, as here.)
_GO_JSON_ESCAPES = {**_ESCAPES, "\t": "\\t"}


def _go_json_escape(match: re.Match[str]) -> str:
    return _GO_JSON_ESCAPES[match.group()]


def _go_json_string(text: str) -> bytes:
    decoded = _to_bytes(text).decode("utf-8", "surrogateescape")
    return b'"' + _NEEDS_ESCAPE.sub(_go_json_escape, decoded).encode("utf-8") + b'"'


def encode_attrs(attrs: Mapping[str, str]) -> bytes:
    """The raw `attrs` JSON dockerd puts in every entry, b"" when there are none.

    dockerd builds it once, with json.Marshal of a map[string]string: keys sorted (by their UTF-8
    bytes), compact, HTML-escaped (`<` is \u003c). An empty map gives no `attrs` key at all.
    """
    if not attrs:
        return b""
    items = sorted((_to_bytes(key), key, value) for key, value in attrs.items())
    return (
        b"{"
        + b",".join(_go_json_string(key) + b":" + _go_json_string(value) for _, key, value in items)
        + b"}"
    )


def encode_entry(log: bytes, stream: Stream, time_ns: int, attrs: bytes = b"") -> bytes:
    """One json-file line, newline included, in dockerd's key order: log, stream, attrs, time.

    `attrs` is raw JSON from `encode_attrs` (dockerd's RawAttrs); when empty there is no key.
    """
    return b"".join(
        (
            b'{"log":',
            encode_json_string(log),
            b',"stream":"',
            stream.encode("ascii"),
            b'",',
            b'"attrs":' + attrs + b"," if attrs else b"",
            b'"time":"',
            format_docker_time(time_ns).encode("ascii"),
            b'"}\n',
        )
    )


def split_output(data: bytes) -> list[bytes]:
    """The `log` values dockerd makes of `data` written to a container stream that then ends.

    As the copier does: each line (its `\\n` kept) is one entry, a line longer than 16 KiB is cut
    into entries of exactly 16384 bytes without `\\n` (so a 16384-byte line gives a full part and
    then a part that is only `\\n`), and bytes after the last newline become entries without `\\n`.
    """
    parts: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        newline = data.find(b"\n", pos, pos + MAX_ENTRY_BYTES)
        stop = newline + 1 if newline >= 0 else min(pos + MAX_ENTRY_BYTES, end)
        parts.append(data[pos:stop])
        pos = stop
    return parts


def _to_bytes(message: str | bytes) -> bytes:
    if isinstance(message, bytes):
        return message
    try:
        # surrogateescape: U+DC80..U+DCFF stand for the raw bytes 0x80..0xFF (os.fsdecode's
        # convention), so a str can carry invalid UTF-8 to the file.
        return message.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Any other lone surrogate is written as its 3-byte form, which is not UTF-8 either:
        # dockerd shows it as three U+FFFD.
        return b"".join(_char_bytes(ch) for ch in message)


def _char_bytes(ch: str) -> bytes:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        return bytes((code - 0xDC00,))
    return ch.encode("utf-8", "surrogatepass")


# --- files ------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` as Docker's AtomicFileWriter does: a `.tmp-<name>*` sibling, fsync, rename.

    A reader therefore sees the old file or the new one, never a half-written one.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}", dir=path.parent)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_all(fd: int, data: bytes) -> None:
    # One os.write puts a whole entry in an O_APPEND file at once, so a concurrent reader sees
    # whole lines; the loop only matters if the kernel ever writes short (disk full, signal).
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _size_option(size: int) -> str:
    # As a user would type it ("10m"); Docker parses it with units.RAMInBytes (k/m/g = 1024**n).
    for suffix, unit in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _compact_json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --- compression of rotated files (compress=true) ---------------------------------------------

_COPY_CHUNK = 32 * 1024  # pools.Copy's buffer
_GZIP_LEVEL = 6  # gzip.NewWriter uses DefaultCompression, which compress/flate runs as level 6


def _gzip_header(extra: bytes) -> bytes:
    """The header Go's gzip.Writer writes: FLG only FEXTRA (no name, no comment), MTIME 0 (the
    ModTime was never set), XFL 0 (neither best speed nor best compression), OS 255 (unknown).
    Header.Extra goes into FEXTRA as is, not as RFC 1952 subfields."""
    return b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff" + struct.pack("<H", len(extra)) + extra


class _GzipJob:
    """dockerd's compressFile(`<log>.1`, lastTimestamp), runnable in steps.

    compressFile opens `.1`, creates `.1.gz` directly (O_CREATE|O_TRUNC|O_RDWR, 0640; no
    temporary name), streams `.1` through a gzip.Writer whose Header.Extra is
    `{"lastTime":"<RFC3339Nano>"}`, closes the gzip stream and the file, and only then unlinks
    `.1`. Until that unlink, `.1` is complete and `.1.gz` is a growing, truncated gzip stream.

    The compressed bytes are zlib's at Go's level, not byte-identical to Go's compress/flate;
    every reader decodes them to the same content. Files are reopened at each step, so a job left
    pending holds no descriptor.
    """

    def __init__(self, source: Path, last_time_ns: int | None) -> None:
        self.source = source
        self.target = source.with_name(source.name + ".gz")
        # json.Marshal(rotateFileMetadata{LastTime}): time.Time marshals as RFC3339Nano, and the
        # copier's timestamps are UTC, so this is the entry's `time`. A logger reopened on an
        # existing file has no last timestamp yet: Go's zero time.
        last = _GO_ZERO_TIME if last_time_ns is None else format_docker_time(last_time_ns)
        self.extra = b'{"lastTime":"' + last.encode("ascii") + b'"}'
        self.started = False
        self.done = False
        self._offset = 0  # bytes of `.1` compressed so far
        self._crc = 0
        self._compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)

    def step(self, *, partial: bool = False) -> None:
        """Run to the end; with `partial`, create `.gz` if needed and copy half of what is left."""
        if self.done:
            return
        try:
            self._step(partial=partial)
        except BaseException:
            # As compressFile: a failed compression removes its .gz and keeps the source.
            self.done = True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.target)
            raise

    def _step(self, *, partial: bool) -> None:
        try:
            src = os.open(self.source, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not self.started:  # compressFile only logs this (at debug level) and returns
                self.done = True
                return
            raise
        try:
            if self.started:
                out = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            else:
                out = os.open(
                    self.target, os.O_CREAT | os.O_TRUNC | os.O_RDWR | os.O_CLOEXEC, _LOG_FILE_MODE
                )
                self.started = True
                # gzip.Writer writes its header with the first Write, i.e. at the first chunk.
                _write_all(out, _gzip_header(self.extra))
            try:
                size = os.fstat(src).st_size
                end = self._offset + (size - self._offset + 1) // 2 if partial else size
                self._copy(src, out, end)
                if not partial:
                    # gzip.Writer.Close: the end of the deflate stream, then CRC-32 and ISIZE.
                    _write_all(
                        out,
                        self._compressor.flush(zlib.Z_FINISH)
                        + struct.pack("<II", self._crc, self._offset & 0xFFFFFFFF),
                    )
            finally:
                os.close(out)
        finally:
            os.close(src)
        if not partial:
            # Deferred last in compressFile: the source goes only once the .gz is closed.
            os.unlink(self.source)
            self.done = True

    def _copy(self, src: int, out: int, end: int) -> None:
        while self._offset < end:
            chunk = os.pread(src, min(_COPY_CHUNK, end - self._offset), self._offset)
            if not chunk:
                break
            self._offset += len(chunk)
            self._crc = zlib.crc32(chunk, self._crc)
            compressed = self._compressor.compress(chunk)
            if compressed:
                _write_all(out, compressed)


class ContainerLog:
    """One container's directory: its json-file log (with rotation) and its metadata files.

    Made by `DockerRootWriter.add_container`. Not thread-safe: like one dockerd logger, it
    expects one writer at a time.

    With `compress` (moby's logger/loggerutils/logfile.go), a rotation closes the current file,
    deletes `.log.<max_file-1>.gz`, renames `.log.N.gz` to `.log.N+1.gz`, renames the current file
    to `.log.1`, creates a new empty `-json.log`, and then gzips `.log.1` into `.log.1.gz` in the
    background, unlinking `.log.1` only once `.log.1.gz` is complete (see `_GzipJob`). The
    current file is never compressed. `compression` says when that background work runs:

    - "sync": inline, before the write that caused the rotation returns.
    - "thread": in a thread, as dockerd's goroutine. dockerd serialises compressions: rotate()
      takes rotateMu, which the goroutine of the previous rotation releases only when its
      compressFile has returned, and Close() waits for it too. So a rotation here first waits
      for the previous compression (the write blocks, as in dockerd), and `close()`/`stop()` wait
      for a running one.
    - "manual": nothing runs until the test calls `compress_pending()`, which lets it hold the
      `.log.1` + incomplete `.log.1.gz` overlap as long as it wants. A rotation while a
      compression is pending first completes it (dockerd's writer would block on rotateMu until
      the goroutine finished); `close()`/`stop()` leave it pending.

    dockerd captures the last entry's time before starting the goroutine in current moby; 20.10
    read it inside the goroutine, racing with the next write, so there `lastTime` can be the time
    of the first entry of the new file. Here it is always the last entry of the rotated file.
    """

    def __init__(
        self,
        *,
        root: Path,
        container_id: str,
        name: str,
        image: str,
        labels: Mapping[str, str],
        env: Sequence[str],
        max_size: int | None,
        max_file: int | None,
        clock: Clock,
        compress: bool = False,
        compression: Compression = "thread",
        log_attrs: Mapping[str, str] | None = None,
    ) -> None:
        self.id = container_id
        self.name = name
        self.image = image
        self.labels = dict(labels)
        self.env = list(env)
        self.max_size = max_size
        self.max_file = max_file if max_file is not None else 1
        self._max_file_option = max_file
        self.compress = compress
        self.compression: Compression = compression
        self.log_attrs = dict(log_attrs or {})
        self._raw_attrs = encode_attrs(self.log_attrs)
        self._clock = clock
        self._last_time_ns: int | None = None  # LogFile.lastTimestamp
        self._job: _GzipJob | None = None  # the compression started by the last rotation
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self.directory = root / container_id
        self.log_path = self.directory / f"{container_id}-json.log"
        self.config_path = self.directory / "config.v2.json"
        self.hostconfig_path = self.directory / "hostconfig.json"
        # The image ID is a content digest in Docker; a digest of the name keeps it stable.
        self.image_id = "sha256:" + hashlib.sha256(image.encode("utf-8")).hexdigest()
        self._pid = 1000 + int(container_id[:4], 16) % 30000  # any plausible, stable PID
        self._created = format_docker_time(clock())

        self.directory.mkdir(mode=0o700)
        self._write_hostconfig()
        # dockerd opens the log before the container starts, and keeps appending to an existing one.
        self._fd: int | None = os.open(
            self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _LOG_FILE_MODE
        )
        self._size = os.fstat(self._fd).st_size
        self.running = True
        self.exit_code = 0
        self._started_at = format_docker_time(clock())
        self._finished_at = _GO_ZERO_TIME
        self._write_config()

    # -- logging --

    def write(
        self,
        message: str | bytes,
        *,
        stream: Stream = "stdout",
        time_ns: int | None = None,
        newline: bool = True,
    ) -> None:
        """Log what the container writes to `stream`: `message`, then a newline if `newline`.

        A `message` with newlines inside becomes one entry per line, as dockerd makes it.
        `newline=False` models the container's last output before its stream closed (dockerd logs
        an unterminated line only then, or when 16 KiB have piled up). Every entry of one call has
        the same time: `time_ns`, or one reading of the writer's clock.
        """
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        data = _to_bytes(message)
        if newline:
            data += b"\n"
        if not data:
            return
        when = self._clock() if time_ns is None else time_ns
        for part in split_output(data):
            self._write_entry(encode_entry(part, stream, when, self._raw_attrs), when)

    def _write_entry(self, entry: bytes, time_ns: int) -> None:
        fd = self._fd
        if fd is None:
            raise ValueError(f"container {self.name} is stopped: its log is closed")
        # dockerd checks the size before each write, not after one: the entry that crosses
        # max-size stays in the old file, and the rename happens only when the next entry comes.
        if self.max_size is not None and self._size >= self.max_size:
            fd = self._rotate(fd)
        _write_all(fd, entry)
        self._size += len(entry)
        self._last_time_ns = time_ns

    def _rotate(self, fd: int) -> int:
        # rotateMu: wait until the compression of the previous rotation is over.
        self._wait_compression()
        self._fd = None
        os.close(fd)
        current = str(self.log_path)
        compress = self.compress and self.max_file >= 2
        if self.max_file >= 2:
            ext = ".gz" if compress else ""
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{current}.{self.max_file - 1}{ext}")
            for i in range(self.max_file - 1, 1, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(f"{current}.{i - 1}{ext}", f"{current}.{i}{ext}")
            os.rename(current, f"{current}.1")
        # With max-file=1 there is nothing to rename to and O_TRUNC empties the same inode: Docker
        # 20.10's behaviour (23.0+ unlinks and recreates instead).
        fd = os.open(current, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, _LOG_FILE_MODE)
        self._fd = fd
        self._size = 0
        if compress:
            self._start_compression(_GzipJob(Path(f"{current}.1"), self._last_time_ns))
        return fd

    # -- compression --

    def _start_compression(self, job: _GzipJob) -> None:
        if self.compression == "sync":
            job.step()
            return
        self._job = job  # "manual": stays here until compress_pending() or the next rotation
        if self.compression == "thread":
            self._thread = threading.Thread(
                target=self._run_job, args=(job,), name=f"compress-{self.name}"
            )
            self._thread.start()

    def _run_job(self, job: _GzipJob) -> None:
        try:
            job.step()
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that joins
            self._thread_error = exc

    def _wait_compression(self) -> None:
        """Block until no compression is running or pending (complete a manual one)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._job = None
            error, self._thread_error = self._thread_error, None
            if error is not None:
                raise error
        elif self._job is not None:
            job, self._job = self._job, None
            job.step()

    @property
    def pending_compression(self) -> Path | None:
        """The `.log.1` being compressed (thread mode) or waiting to be ("manual"), else None."""
        if self._job is None or self._job.done:
            return None
        return self._job.source

    def compress_pending(self, *, partial: bool = False) -> bool:
        """Advance the compression of `.log.1` that the last rotation started, if any.

        In "manual" mode: create `.log.1.gz` if not yet done and, with `partial`, compress half
        of what is left of `.log.1` and stop there (`.log.1` stays, `.log.1.gz` is a truncated
        gzip stream: the overlap); without it, finish the stream and unlink `.log.1`. In
        "thread" mode wait for the thread (`partial` is refused); in "sync" mode nothing is ever
        pending. True if a compression was pending.
        """
        if partial and self.compression != "manual":
            raise ValueError("partial compression steps need compression='manual'")
        pending = self.pending_compression is not None
        if self.compression == "manual":
            if self._job is not None:
                job = self._job
                job.step(partial=partial)
                if job.done:
                    self._job = None
        else:
            self._wait_compression()
        return pending

    # -- files --

    def _rotated(self, generation: int, suffix: str = "") -> Path:
        return self.log_path.with_name(f"{self.log_path.name}.{generation}{suffix}")

    def log_files(self) -> list[Path]:
        """Every log file that exists now, oldest first: `.log.N[.gz]` … `.log.1[.gz]`, then
        `-json.log`.

        While `.log.1` is being compressed both `.log.1` and the incomplete `.log.1.gz` exist
        and both are listed, `.log.1` first: this is what is on disk (sizes, counts), not a list
        of contents to read. For that, see `generations()`.
        """
        rotated = [
            path
            for i in range(self.max_file - 1, 0, -1)
            for path in (self._rotated(i), self._rotated(i, ".gz"))
        ]
        return [path for path in [*rotated, self.log_path] if path.exists()]

    def generations(self) -> list[Path]:
        """For each generation of the log, oldest first, the file that holds it completely now.

        That is `.log.N` while it exists, else `.log.N.gz` (dockerd unlinks `.log.N` only once
        its `.gz` is complete, which is the rule a reader relies on), then `-json.log`. In
        "thread" mode a `.log.1` returned here can be unlinked a moment later: wait with
        `compress_pending()` or `close()` first, or open and fall back to the `.gz`.
        """
        found: list[Path] = []
        for i in range(self.max_file - 1, 0, -1):
            plain = self._rotated(i)
            if plain.exists():
                found.append(plain)
                continue
            compressed = self._rotated(i, ".gz")
            if compressed.exists():
                found.append(compressed)
        if self.log_path.exists():
            found.append(self.log_path)
        return found

    # -- lifecycle --

    def stop(self, *, exit_code: int = 0) -> None:
        """Close the log and record the exit in config.v2.json, which Docker rewrites atomically."""
        self.close()
        self.running = False
        self.exit_code = exit_code
        self._finished_at = format_docker_time(self._clock())
        self._write_config()

    def close(self) -> None:
        """Close the log file descriptor; metadata stays as it is.

        As dockerd's LogFile.Close, wait for a compression running in a thread; a "manual" one
        stays pending (the test still can and should run it with `compress_pending()`).
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._thread is not None:
            self._wait_compression()

    # -- metadata --

    def config(self) -> dict[str, object]:
        """The content of config.v2.json: a faithful subset of Docker's, in Docker's key order."""
        return {
            "StreamConfig": {},
            "State": {
                "Running": self.running,
                "Paused": False,
                "Restarting": False,
                "OOMKilled": False,
                "RemovalInProgress": False,
                "Dead": False,
                "Pid": self._pid if self.running else 0,
                "ExitCode": self.exit_code,
                "Error": "",
                "StartedAt": self._started_at,
                "FinishedAt": self._finished_at,
                "Health": None,
            },
            "ID": self.id,
            "Created": self._created,
            "Managed": False,
            "Path": "sh",
            "Args": ["-c", "exec app"],
            "Config": {
                "Hostname": self.id[:12],
                "Domainname": "",
                "User": "",
                "AttachStdin": False,
                "AttachStdout": True,
                "AttachStderr": True,
                "Tty": False,
                "OpenStdin": False,
                "StdinOnce": False,
                "Env": self.env,
                "Cmd": ["sh", "-c", "exec app"],
                "Image": self.image,
                "Volumes": None,
                "WorkingDir": "",
                "Entrypoint": None,
                "OnBuild": None,
                "Labels": self.labels,
            },
            "Image": self.image_id,
            "LogPath": str(self.log_path),
            "Name": "/" + self.name,
            "Driver": "overlay2",
            "OS": "linux",
            "RestartCount": 0,
            "HasBeenStartedBefore": False,
            "HasBeenManuallyStopped": False,
            "MountPoints": {},
        }

    def _write_config(self) -> None:
        _atomic_write(self.config_path, _compact_json(self.config()), _CONFIG_MODE)

    def _write_hostconfig(self) -> None:
        options: dict[str, str] = {}
        if self.max_size is not None:
            options["max-size"] = _size_option(self.max_size)
        if self._max_file_option is not None:
            options["max-file"] = str(self._max_file_option)
        if self.compress:
            options["compress"] = "true"
        hostconfig = {
            "Binds": None,
            "ContainerIDFile": "",
            # LogConfig.Config is a map[string]string: encoding/json writes its keys sorted.
            "LogConfig": {"Type": "json-file", "Config": dict(sorted(options.items()))},
            "NetworkMode": "none",
            "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
            "AutoRemove": False,
        }
        _atomic_write(self.hostconfig_path, _compact_json(hostconfig), _HOSTCONFIG_MODE)


def _check_compression(compression: str) -> None:
    if compression not in ("sync", "thread", "manual"):
        raise ValueError(f"compression must be 'sync', 'thread' or 'manual', not {compression!r}")


class DockerRootWriter:
    """A Docker `containers/` directory (e.g. /var/lib/docker/containers) that we fill ourselves.

    All its containers share one clock, so times are monotonic across the whole root.
    `compression` is the default for containers with `compress=True` (see `ContainerLog`).
    """

    def __init__(
        self, root: Path, *, clock: Clock | None = None, compression: Compression = "thread"
    ) -> None:
        _check_compression(compression)
        self.root = root
        self.clock: Clock = clock if clock is not None else FakeClock()
        self.compression: Compression = compression
        self.containers: dict[str, ContainerLog] = {}
        root.mkdir(parents=True, exist_ok=True)

    def add_container(
        self,
        name: str,
        *,
        image: str = "busybox:latest",
        labels: Mapping[str, str] | None = None,
        env: Sequence[str] = DEFAULT_ENV,
        max_size: int | None = None,
        max_file: int | None = None,
        container_id: str | None = None,
        compress: bool = False,
        log_attrs: Mapping[str, str] | None = None,
        compression: Compression | None = None,
    ) -> ContainerLog:
        """Create a running container `name`; `max_size` (bytes), `max_file` and `compress` are
        the log opts.

        `max_file` None means the option was not given (one file, as Docker defaults); it is
        written to hostconfig.json only when given. `compress` needs `max_size` and `max_file`
        >= 2, as dockerd requires. `log_attrs` is the `attrs` object dockerd adds to every entry
        when `--log-opt labels=/env=/tag=` select something (the selected label and env values,
        and "tag"); hostconfig.json does not record those options. `compression` overrides the
        writer's default.
        """
        if not _NAME_PATTERN.fullmatch(name):
            raise ValueError(f"invalid container name {name!r}")
        if name in self.containers:
            raise ValueError(f"container name {name!r} is already in use")
        if container_id is None:
            container_id = secrets.token_hex(32)
        elif not _ID_PATTERN.fullmatch(container_id):
            raise ValueError("container_id must be 64 lowercase hex characters")
        if max_size is not None and max_size <= 0:
            raise ValueError("max_size must be positive")
        if max_file is not None:
            if max_file < 1:
                raise ValueError("max_file must be at least 1")
            if max_file > 1 and max_size is None:
                raise ValueError("max_file needs max_size: without it the log never rotates")
        if compress and (max_file is None or max_file < 2 or max_size is None):
            # jsonfilelog.New's own check, word for word.
            raise ValueError(
                "compress cannot be true when max-file is less than 2 or max-size is not set"
            )
        if compression is None:
            compression = self.compression
        _check_compression(compression)
        container = ContainerLog(
            root=self.root,
            container_id=container_id,
            name=name,
            image=image,
            labels=labels or {},
            env=env,
            max_size=max_size,
            max_file=max_file,
            clock=self.clock,
            compress=compress,
            compression=compression,
            log_attrs=log_attrs,
        )
        self.containers[name] = container
        return container

    def close(self) -> None:
        """Close every container's log file (the files stay), waiting for compression threads."""
        for container in self.containers.values():
            container.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- realistic content ------------------------------------------------------------------------

# Share of log events (not of lines) of each kind; the rest are one-line application logs.
ACCESS_LOG_SHARE = 0.50
JSON_PAYLOAD_SHARE = 0.08
STACK_TRACE_SHARE = 0.02

_METHODS = ("GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE")
_PATHS = (
    "/",
    "/healthz",
    "/api/v1/orders",
    "/api/v1/orders/{n}",
    "/api/v1/orders/{n}/items?page=2&per_page=50",
    "/api/v1/users/{n}/cart",
    "/search?q=caf%C3%A9&sort=price&order=asc",
    "/static/js/app.{n}.js",
    "/login?next=%2Faccount&lang=de",
)
_STATUSES = (200, 200, 200, 200, 200, 200, 201, 204, 301, 304, 400, 401, 404, 500, 502)
_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "curl/8.5.0",
    "kube-probe/1.29",
    "python-httpx/0.27.0",
)
_LEVELS = ("INFO", "INFO", "INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR")
_LOGGERS = ("c.e.shop.OrderService", "c.e.shop.CartController", "c.e.shop.PaymentClient")
_USERS = ("alice", "bob", "Zoë", "Jürgen", "李雷", "Ana María", "o'brien")
_APP_MESSAGES = (
    "order {n} created for user {user} total=€{amount}",
    "cart of {user} has {n} items, total <= limit & no coupon",
    "payment authorised for order {n} in {ms} ms",
    "cache miss for key user:{n}:profile, loading from database",
    "retrying call to inventory (attempt 2/3) after {ms} ms: connection reset",
    "slow query took {ms} ms: SELECT * FROM orders WHERE user_id = {n}",
    'user "{user}" logged in from 10.0.{octet}.{octet2}',
)
_JAVA_FRAMES = (
    "com.example.shop.InventoryService.reserve(InventoryService.java:142)",
    "com.example.shop.OrderService.place(OrderService.java:88)",
    "com.example.shop.OrderController.create(OrderController.java:57)",
    "org.springframework.web.servlet.FrameworkServlet.service(FrameworkServlet.java:897)",
    "jakarta.servlet.http.HttpServlet.service(HttpServlet.java:658)",
    "org.apache.catalina.core.ApplicationFilterChain.doFilter(ApplicationFilterChain.java:166)",
    "org.apache.tomcat.util.net.NioEndpoint$SocketProcessor.doRun(NioEndpoint.java:1744)",
    "java.base/java.lang.Thread.run(Thread.java:1583)",
)
# Outermost call first, as Python prints them.
_PYTHON_FRAMES = (
    (
        '/usr/local/lib/python3.12/site-packages/django/core/handlers/base.py", line 197, in '
        "_get_response",
        "response = wrapped_callback(request, *callback_args, **callback_kwargs)",
    ),
    ('/app/shop/views.py", line 57, in create_order', "order = service.place(request.user, cart)"),
    ('/app/shop/service.py", line 88, in place', "inventory.reserve(order.items)"),
    ('/app/shop/inventory.py", line 142, in reserve', "raise OutOfStock(sku, wanted, left)"),
)


def realistic_lines(
    rng: random.Random, count: int, *, container: str, start_seq: int = 0
) -> Iterator[tuple[Stream, str]]:
    """`count` (stream, message) pairs such as a busy web service writes, without newlines.

    Mostly 80-300 byte access and application logs, some 1-4 KiB JSON payloads, and stack traces
    (Java or Python) written as consecutive stderr messages, one a line, as a real program writes
    them. Every message carries `seq=NNNNNN` (`SEQ_PATTERN`), numbered from `start_seq` up, so a
    test can check that each one was delivered once. The same `rng` state gives the same lines.
    """
    seq = start_seq
    end = start_seq + count
    while seq < end:
        kind = rng.random()
        if kind < STACK_TRACE_SHARE:
            lines = _stack_trace(rng, container, seq)
        elif kind < STACK_TRACE_SHARE + JSON_PAYLOAD_SHARE:
            lines = [("stdout", _json_payload(rng, container, seq))]
        elif kind < STACK_TRACE_SHARE + JSON_PAYLOAD_SHARE + ACCESS_LOG_SHARE:
            lines = [("stdout", _access_log(rng, seq))]
        else:
            lines = [_app_log(rng, container, seq)]
        for stream, message in lines[: end - seq]:
            yield stream, message
            seq += 1


def _content_time(seq: int) -> datetime:
    # Times inside messages follow the sequence, so the output does not depend on the wall clock.
    return datetime.fromtimestamp((DEFAULT_START_NS + seq * DEFAULT_STEP_NS) // 10**9, UTC)


def _app_time(seq: int) -> str:
    millis = (seq * DEFAULT_STEP_NS // 1_000_000) % 1000
    return f"{_content_time(seq):%Y-%m-%d %H:%M:%S}.{millis:03d}"


def _fill(rng: random.Random, template: str) -> str:
    return template.format(
        n=rng.randint(1, 99999),
        user=rng.choice(_USERS),
        amount=f"{rng.randint(1, 50000) / 100:.2f}",
        ms=rng.randint(1, 2500),
        octet=rng.randint(0, 255),
        octet2=rng.randint(1, 254),
    )


def _access_log(rng: random.Random, seq: int) -> str:
    ip = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    request = f"{rng.choice(_METHODS)} {_fill(rng, rng.choice(_PATHS))} HTTP/1.1"
    return (
        f'{ip} - - [{_content_time(seq):%d/%b/%Y:%H:%M:%S} +0000] "{request}" '
        f'{rng.choice(_STATUSES)} {rng.randint(0, 65536)} "-" "{rng.choice(_AGENTS)}" '
        f"rt={rng.randint(1, 3000) / 1000:.3f} seq={seq:06d}"
    )


def _app_log(rng: random.Random, container: str, seq: int) -> tuple[Stream, str]:
    level = rng.choice(_LEVELS)
    # Many apps send warnings and errors to stderr: both streams must be read.
    stream: Stream = "stderr" if level in ("WARN", "ERROR") else "stdout"
    thread = f"http-nio-8080-exec-{rng.randint(1, 20)}"
    message = _fill(rng, rng.choice(_APP_MESSAGES))
    return stream, (
        f"{_app_time(seq)} {level:<5} [{thread}] {rng.choice(_LOGGERS)} {container} - "
        f"{message} seq={seq:06d}"
    )


def _json_payload(rng: random.Random, container: str, seq: int) -> str:
    # Items are at most 100 bytes and the line stops short of the target: 1-4 KiB in all.
    target = rng.randint(1124, 4096)
    head = {
        "ts": _app_time(seq),
        "level": "info",
        "service": container,
        "msg": f"order snapshot seq={seq:06d}",
        "customer": rng.choice(_USERS),
    }
    # Items are formatted as text rather than json.dumps'd one by one: this line kind would
    # otherwise take most of the generation time of a benchmark's input.
    text = _compact_json(head).decode("utf-8")[:-1] + ',"items":['
    items: list[str] = []
    size = len(text.encode("utf-8")) + 2
    while True:
        cents = rng.randint(100, 99999)
        note = "gift <wrap> & card" if rng.random() < 0.1 else ""
        item = (
            f'{{"sku":"SKU-{rng.randint(0, 999999):06d}","qty":{rng.randint(1, 9)},'
            f'"price":{cents // 100}.{cents % 100:02d},"note":"{note}"}}'
        )
        if size + len(item) + 1 > target:
            break
        items.append(item)
        size += len(item) + 1
    return text + ",".join(items) + "]}"


def _stack_trace(rng: random.Random, container: str, seq: int) -> list[tuple[Stream, str]]:
    # The seq rides at the end of every line: a multiline joiner that glues the trace together
    # keeps every number, so a test can still count each line as delivered.
    lines: list[str]
    if rng.random() < 0.5:
        lines = [
            f"{_app_time(seq)} ERROR [http-nio-8080-exec-{rng.randint(1, 20)}] "
            f"c.e.shop.OrderController {container} - request failed",
            f"java.lang.IllegalStateException: inventory reservation failed for order "
            f"{rng.randint(1, 99999)}",
        ]
        depth = rng.randint(3, len(_JAVA_FRAMES))
        lines += [f"\tat {frame}" for frame in _JAVA_FRAMES[:depth]]
        if rng.random() < 0.5:
            lines.append("Caused by: java.net.SocketTimeoutException: Read timed out")
            lines += [f"\tat {frame}" for frame in _JAVA_FRAMES[:2]]
            lines.append(f"\t... {rng.randint(10, 60)} more")
    else:
        lines = ["Traceback (most recent call last):"]
        # The innermost frames are the ones always printed; a deeper stack adds outer ones.
        for location, code in _PYTHON_FRAMES[-rng.randint(2, len(_PYTHON_FRAMES)) :]:
            lines += [f'  File "{location}', f"    {code}"]
        lines.append(
            f"shop.inventory.OutOfStock: SKU-{rng.randint(0, 999999):06d}: wanted 3, left 1"
        )
    return [("stderr", f"{line} seq={seq + i:06d}") for i, line in enumerate(lines)]
