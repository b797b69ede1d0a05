"""Tests for the Docker json-file writer: entry bytes, times, 16 KiB splits, rotation,
compression, metadata."""

from __future__ import annotations

import gzip
import json
import os
import random
import stat
import struct
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shipper import docker_writer
from shipper.docker_writer import (
    DEFAULT_START_NS,
    DEFAULT_STEP_NS,
    MAX_ENTRY_BYTES,
    SEQ_PATTERN,
    ContainerLog,
    DockerRootWriter,
    FakeClock,
    encode_attrs,
    encode_entry,
    encode_json_string,
    format_docker_time,
    realistic_lines,
    split_output,
)

T0 = DEFAULT_START_NS + 123_456_789  # 2024-05-01T12:00:00.123456789Z
T0_TEXT = "2024-05-01T12:00:00.123456789Z"
ID = "0123456789abcdef" * 4


@pytest.fixture
def writer(tmp_path: Path) -> DockerRootWriter:
    return DockerRootWriter(tmp_path / "containers")


def entries(container: ContainerLog) -> list[dict[str, Any]]:
    """Every entry of every log file of `container`, oldest first."""
    lines = b"".join(path.read_bytes() for path in container.log_files()).splitlines()
    return [json.loads(line) for line in lines]


# --- entry bytes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "log_json"),
    [
        ("hello", r"hello\n"),
        ('<a href="/x?a=1&b=2">', r"\u003ca href=\"/x?a=1\u0026b=2\"\u003e\n"),
        ("col1\tcol2", r"col1\u0009col2\n"),  # dockerd's escaper has no \t: TAB is \u0009
        ("\x00\x01\x08\x0c\x1b[0m\x1f", r"\u0000\u0001\u0008\u000c\u001b[0m\u001f\n"),
        ("del\x7f", "del\x7f\\n"),  # DEL is not escaped
        ("back\\slash", r"back\\slash\n"),
        ("crlf\r", r"crlf\r\n"),  # \r\n stays in `log`
        ("Zoë 東京 😀", "Zoë 東京 😀\\n"),  # non-ASCII is written raw, as UTF-8
        ("sep\u2028par\u2029", r"sep\u2028par\u2029\n"),
        ("real \ufffd stays raw", "real \ufffd stays raw\\n"),  # a valid U+FFFD is not escaped
        # A str carries invalid bytes as surrogateescape; each invalid byte is one \ufffd.
        ("bad \udcff byte", r"bad \ufffd byte\n"),
        # Any other lone surrogate is its 3-byte (invalid) form: three \ufffd, as Go decodes it.
        ("lone \ud800", r"lone \ufffd\ufffd\ufffd\n"),
    ],
)
def test_entry_is_byte_exact(writer: DockerRootWriter, message: str, log_json: str) -> None:
    container = writer.add_container("web-1", container_id=ID)
    container.write(message, time_ns=T0)
    expected = f'{{"log":"{log_json}","stream":"stdout","time":"{T0_TEXT}"}}\n'
    assert container.log_path.read_bytes() == expected.encode("utf-8")


@pytest.mark.parametrize(
    ("data", "escaped"),
    [
        (b"\xff", r"\ufffd"),
        (b"\xe2\x82\xac", "\u20ac"),  # a whole euro sign is raw
        (b"\xe2\x82", r"\ufffd\ufffd"),  # a truncated sequence: one \ufffd per byte, as Go
        (b"\xed\xa0\x80", r"\ufffd\ufffd\ufffd"),  # an encoded surrogate is not UTF-8
        (b"\xc0\xaf", r"\ufffd\ufffd"),  # overlong
        (b"\xf4\x90\x80\x80", r"\ufffd\ufffd\ufffd\ufffd"),  # above U+10FFFF
        (b"ok\x80ok", r"ok\ufffdok"),
    ],
)
def test_invalid_utf8_becomes_one_replacement_per_byte(data: bytes, escaped: str) -> None:
    assert encode_json_string(data) == f'"{escaped}"'.encode()


def test_stderr_entry(writer: DockerRootWriter) -> None:
    container = writer.add_container("web-1")
    container.write(b"oops", stream="stderr", time_ns=DEFAULT_START_NS)
    assert container.log_path.read_bytes() == (
        b'{"log":"oops\\n","stream":"stderr","time":"2024-05-01T12:00:00Z"}\n'
    )


def test_every_escape_decodes_back_to_the_text() -> None:
    rng = random.Random(7)
    alphabet = [chr(c) for c in range(0x80)] + ["é", "€", "😀", "\u2028", "\u2029", "\ufffd"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert json.loads(encode_json_string(text.encode())) == text


def test_embedded_newlines_make_one_entry_a_line(writer: DockerRootWriter) -> None:
    container = writer.add_container("web-1")
    container.write("one\ntwo\n\nthree", time_ns=T0)
    assert [e["log"] for e in entries(container)] == ["one\n", "two\n", "\n", "three\n"]


def test_empty_message(writer: DockerRootWriter) -> None:
    container = writer.add_container("web-1")
    container.write("", time_ns=T0)  # an empty line is logged, as "\n"
    container.write("", time_ns=T0, newline=False)  # nothing at all was written
    assert [e["log"] for e in entries(container)] == ["\n"]


def test_newline_false_writes_an_entry_without_newline(writer: DockerRootWriter) -> None:
    container = writer.add_container("web-1")
    container.write("last words", time_ns=T0, newline=False)
    assert entries(container) == [{"log": "last words", "stream": "stdout", "time": T0_TEXT}]


def test_stream_is_checked(writer: DockerRootWriter) -> None:
    container = writer.add_container("web-1")
    with pytest.raises(ValueError, match="stream"):
        container.write("x", stream="stdin")  # type: ignore[arg-type]


# --- time -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset_ns", "text"),
    [
        (0, "2024-05-01T12:00:00Z"),  # zero fraction: no decimal point at all
        (100_000_000, "2024-05-01T12:00:00.1Z"),
        (123_000_000, "2024-05-01T12:00:00.123Z"),
        (123_456_789, "2024-05-01T12:00:00.123456789Z"),
        (1, "2024-05-01T12:00:00.000000001Z"),
        (120, "2024-05-01T12:00:00.00000012Z"),
        (59 * 10**9 + 999_999_999, "2024-05-01T12:00:59.999999999Z"),
        (-DEFAULT_START_NS, "1970-01-01T00:00:00Z"),
    ],
)
def test_time_is_rfc3339nano_trimmed(offset_ns: int, text: str) -> None:
    assert format_docker_time(DEFAULT_START_NS + offset_ns) == text


def test_fake_clock_is_monotonic_and_shared(writer: DockerRootWriter) -> None:
    clock = FakeClock(start_ns=DEFAULT_START_NS, step_ns=500_000_000)
    assert [clock(), clock(), clock()] == [
        DEFAULT_START_NS,
        DEFAULT_START_NS + 500_000_000,
        DEFAULT_START_NS + 1_000_000_000,
    ]
    web = writer.add_container("web-1")
    db = writer.add_container("db-1")
    for _ in range(3):
        web.write("w")
        db.write("d")
    times = [e["time"] for e in entries(web) + entries(db)]
    assert len(set(times)) == 6  # every reading of the shared clock is different


def test_wall_clock_can_be_passed(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path, clock=lambda: DEFAULT_START_NS + 5)
    container = writer.add_container("web-1")
    container.write("x")
    assert entries(container)[0]["time"] == "2024-05-01T12:00:00.000000005Z"


def test_fake_clock_rejects_a_step_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="monotonic"):
        FakeClock(step_ns=0)


# --- 16 KiB splits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "newline", "part_lengths"),
    [
        (MAX_ENTRY_BYTES - 1, True, [MAX_ENTRY_BYTES]),  # fits, newline included
        (MAX_ENTRY_BYTES, True, [MAX_ENTRY_BYTES, 1]),  # the newline alone is the last part
        (MAX_ENTRY_BYTES + 1, True, [MAX_ENTRY_BYTES, 2]),
        (40_000, True, [MAX_ENTRY_BYTES, MAX_ENTRY_BYTES, 40_001 - 2 * MAX_ENTRY_BYTES]),
        (2 * MAX_ENTRY_BYTES - 1, True, [MAX_ENTRY_BYTES, MAX_ENTRY_BYTES]),
        (20_000, False, [MAX_ENTRY_BYTES, 20_000 - MAX_ENTRY_BYTES]),
        (MAX_ENTRY_BYTES, False, [MAX_ENTRY_BYTES]),
    ],
)
def test_long_lines_are_split_at_16k(
    writer: DockerRootWriter, length: int, newline: bool, part_lengths: list[int]
) -> None:
    message = "".join(chr(ord("a") + i % 26) for i in range(length))
    container = writer.add_container("web-1")
    container.write(message, time_ns=T0, newline=newline)
    logs = [e["log"] for e in entries(container)]
    assert [len(log) for log in logs] == part_lengths
    assert "".join(logs) == message + ("\n" if newline else "")
    # Only the last part of a terminated line has the newline: no other partial marker exists.
    assert [log.endswith("\n") for log in logs] == [False] * (len(logs) - 1) + [newline]
    assert {e["time"] for e in entries(container)} == {T0_TEXT}
    assert {e["stream"] for e in entries(container)} == {"stdout"}


@pytest.mark.parametrize(
    ("char", "left", "right"),
    [
        ("é", 1, 1),  # 2 bytes, cut after the first
        ("€", 1, 2),  # 3 bytes, cut after the first: one \ufffd left, two right (one per byte)
    ],
)
def test_a_character_cut_by_the_split_becomes_replacements(
    writer: DockerRootWriter, char: str, left: int, right: int
) -> None:
    message = "a" * (MAX_ENTRY_BYTES - 1) + char + "z"
    container = writer.add_container("web-1")
    container.write(message, time_ns=T0)
    first, second = (e["log"] for e in entries(container))
    assert first == "a" * (MAX_ENTRY_BYTES - 1) + "\ufffd" * left
    assert second == "\ufffd" * right + "z\n"


def test_split_output_matches_the_copier() -> None:
    size = MAX_ENTRY_BYTES
    data = b"short\n" + b"x" * (size + 3) + b"\n" + b"y" * size + b"\ntail"
    assert split_output(data) == [
        b"short\n",
        b"x" * size,
        b"xxx\n",
        b"y" * size,
        b"\n",
        b"tail",
    ]


# --- rotation ---------------------------------------------------------------------------------


def write_numbered(container: ContainerLog, first: int, count: int) -> int:
    """Writes same-size entries n=first…; returns the size of one entry in the file."""
    for n in range(first, first + count):
        container.write(f"line {n:04d}", time_ns=T0)
    return len(container.log_path.read_bytes().splitlines(keepends=True)[-1])


def numbers(path: Path) -> list[int]:
    return [int(json.loads(line)["log"].split()[1]) for line in path.read_bytes().splitlines()]


def test_the_entry_that_crosses_max_size_stays_in_the_old_file(writer: DockerRootWriter) -> None:
    entry = len(b'{"log":"line 0000\\n","stream":"stdout","time":"%s"}\n' % T0_TEXT.encode())
    container = writer.add_container("web-1", max_size=3 * entry - 10, max_file=3)
    assert write_numbered(container, 0, 3) == entry
    # The third entry crossed max-size, but dockerd rotates only before the next write.
    assert container.log_files() == [container.log_path]
    inode = container.log_path.stat().st_ino
    write_numbered(container, 3, 1)
    rotated = container.log_path.with_name(container.log_path.name + ".1")
    assert container.log_files() == [rotated, container.log_path]
    assert numbers(rotated) == [0, 1, 2]
    assert rotated.stat().st_ino == inode  # renamed, not copied
    assert numbers(container.log_path) == [3]


def test_rotation_shifts_files_and_deletes_the_oldest(writer: DockerRootWriter) -> None:
    entry = len(b'{"log":"line 0000\\n","stream":"stdout","time":"%s"}\n' % T0_TEXT.encode())
    container = writer.add_container("web-1", max_size=2 * entry, max_file=3)
    write_numbered(container, 0, 9)
    name = container.log_path.name
    assert sorted(p.name for p in container.directory.iterdir() if "json.log" in p.name) == [
        name,
        name + ".1",
        name + ".2",
    ]
    one, two = (container.log_path.with_name(f"{name}.{i}") for i in (1, 2))
    assert container.log_files() == [two, one, container.log_path]
    # Two entries a file; 0-3 went with the deleted files (max-file=3 keeps .1 and .2).
    assert [numbers(p) for p in container.log_files()] == [[4, 5], [6, 7], [8]]
    for rotated in (one, two):
        assert rotated.stat().st_size >= 2 * entry
        assert stat.S_IMODE(rotated.stat().st_mode) & 0o007 == 0  # never world-readable


def test_max_file_1_truncates_in_place(writer: DockerRootWriter) -> None:
    entry = len(b'{"log":"line 0000\\n","stream":"stdout","time":"%s"}\n' % T0_TEXT.encode())
    container = writer.add_container("web-1", max_size=2 * entry)
    inode = container.log_path.stat().st_ino
    write_numbered(container, 0, 5)
    assert container.log_files() == [container.log_path]
    assert container.log_path.stat().st_ino == inode  # Docker 20.10: same inode, truncated
    assert numbers(container.log_path) == [4]


def test_split_parts_straddle_a_rotation(writer: DockerRootWriter) -> None:
    container = writer.add_container("web-1", max_size=MAX_ENTRY_BYTES + 100, max_file=2)
    message = "m" * 40_000
    container.write(message, time_ns=T0)
    rotated, current = container.log_files()
    old_parts = [json.loads(line)["log"] for line in rotated.read_bytes().splitlines()]
    new_parts = [json.loads(line)["log"] for line in current.read_bytes().splitlines()]
    # Part 2 crossed max-size after part 1, so part 3 starts the new file.
    assert [len(p) for p in old_parts] == [MAX_ENTRY_BYTES, MAX_ENTRY_BYTES]
    assert "".join(old_parts + new_parts) == message + "\n"


# --- compress=true ----------------------------------------------------------------------------

ENTRY = len(b'{"log":"line 0000\\n","stream":"stdout","time":"%s"}\n' % T0_TEXT.encode())


def write_timed(container: ContainerLog, first: int, count: int) -> None:
    """Entries n=first… of one size, entry n at time T0 + n seconds (fraction kept)."""
    for n in range(first, first + count):
        container.write(f"line {n:04d}", time_ns=T0 + n * 10**9)


def gzip_extra(path: Path) -> bytes:
    """FEXTRA of a gzip file written by Go's gzip.Writer with only Header.Extra set."""
    head = path.read_bytes()
    magic, method, flags, mtime, xfl, os_byte, xlen = struct.unpack("<2sBBIBBH", head[:12])
    assert (magic, method, flags, mtime, xfl, os_byte) == (b"\x1f\x8b", 8, 0x04, 0, 0, 255)
    return head[12 : 12 + xlen]


def last_time(container_bytes: bytes) -> str:
    return str(json.loads(container_bytes.splitlines()[-1])["time"])


def read_content(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()


def names(container: ContainerLog) -> list[str]:
    return [p.name.removeprefix(container.id) for p in container.log_files()]


def test_compress_sync_makes_gz_files_with_last_time(tmp_path: Path) -> None:
    plain = DockerRootWriter(tmp_path / "plain").add_container(
        "web", max_size=2 * ENTRY, max_file=3
    )
    zipped = DockerRootWriter(tmp_path / "gz", compression="sync").add_container(
        "web", max_size=2 * ENTRY, max_file=3, compress=True
    )
    for container in (plain, zipped):
        write_timed(container, 0, 9)
    assert names(zipped) == ["-json.log.2.gz", "-json.log.1.gz", "-json.log"]
    assert zipped.generations() == zipped.log_files()
    assert zipped.pending_compression is None
    # The same content as without compression, generation by generation.
    assert [read_content(p) for p in zipped.generations()] == [
        p.read_bytes() for p in plain.log_files()
    ]
    for compressed, uncompressed in zip(zipped.log_files()[:2], plain.log_files()[:2], strict=True):
        extra = gzip_extra(compressed)
        assert extra == b'{"lastTime":"%s"}' % last_time(uncompressed.read_bytes()).encode()
        last = 5 if compressed.name.endswith(".2.gz") else 7
        assert json.loads(extra) == {"lastTime": f"2024-05-01T12:00:0{last}.123456789Z"}
        assert stat.S_IMODE(compressed.stat().st_mode) & 0o007 == 0
    assert numbers(zipped.log_path) == [8]  # the current file is never compressed


def test_compress_with_max_file_2_keeps_one_gz(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path, compression="sync")
    container = writer.add_container("web", max_size=2 * ENTRY, max_file=2, compress=True)
    write_timed(container, 0, 7)
    assert names(container) == ["-json.log.1.gz", "-json.log"]
    one = container.log_files()[0]
    assert [int(json.loads(line)["log"].split()[1]) for line in read_content(one).splitlines()] == [
        4,
        5,
    ]


def test_manual_compression_shows_the_overlap(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path, compression="manual")
    # Big enough for the deflater to emit blocks before the end: the .gz visibly grows.
    container = writer.add_container("web", max_size=600_000, max_file=3, compress=True)
    lines = realistic_lines(random.Random(9), 100_000, container="web")
    while not container.log_path.with_name(container.log_path.name + ".1").exists():
        stream, text = next(lines)
        container.write(text, stream=stream)
    one = container.log_path.with_name(container.log_path.name + ".1")
    one_gz = one.with_name(one.name + ".gz")
    content = one.read_bytes()
    inode = one.stat().st_ino

    # Rotated, not compressed yet: dockerd's goroutine has not run.
    assert container.pending_compression == one
    assert names(container) == ["-json.log.1", "-json.log"]
    assert container.generations() == [one, container.log_path]

    # Half-way: .1 is intact and .1.gz is a growing gzip stream without its end.
    assert container.compress_pending(partial=True) is True
    assert one.read_bytes() == content
    assert one.stat().st_ino == inode
    assert names(container) == ["-json.log.1", "-json.log.1.gz", "-json.log"]
    assert container.generations() == [one, container.log_path]  # .1 still holds it completely
    partial = one_gz.read_bytes()
    extra = gzip_extra(one_gz)
    assert len(partial) > 12 + len(extra)  # some deflate data is already there
    with pytest.raises(EOFError):
        gzip.decompress(partial)
    prefix = zlib.decompressobj(-zlib.MAX_WBITS).decompress(partial[12 + len(extra) :])
    assert 0 < len(prefix) < len(content)
    assert content.startswith(prefix)
    assert container.pending_compression == one

    # Finished: the gzip stream is closed, then .1 is unlinked.
    assert container.compress_pending() is True
    assert not one.exists()
    assert gzip.decompress(one_gz.read_bytes()) == content
    assert json.loads(gzip_extra(one_gz)) == {"lastTime": last_time(content)}
    assert container.generations() == [one_gz, container.log_path]
    assert container.compress_pending() is False
    pending: Path | None = container.pending_compression  # (a fresh read: mypy narrowed it)
    assert pending is None


def test_manual_rotation_completes_the_pending_compression_first(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path, compression="manual")
    container = writer.add_container("web", max_size=2 * ENTRY, max_file=4, compress=True)
    write_timed(container, 0, 3)  # one rotation: .1 pending
    container.compress_pending(partial=True)
    write_timed(container, 3, 2)  # the next rotation waits for it, as dockerd's rotateMu does
    assert names(container) == ["-json.log.2.gz", "-json.log.1", "-json.log"]
    two, one, current = container.generations()
    assert [numbers_of(two), numbers_of(one), numbers_of(current)] == [[0, 1], [2, 3], [4]]
    assert json.loads(gzip_extra(two)) == {"lastTime": format_docker_time(T0 + 10**9)}
    container.compress_pending()
    assert names(container) == ["-json.log.2.gz", "-json.log.1.gz", "-json.log"]


def numbers_of(path: Path) -> list[int]:
    return [int(json.loads(line)["log"].split()[1]) for line in read_content(path).splitlines()]


def test_manual_compression_survives_close(tmp_path: Path) -> None:
    with DockerRootWriter(tmp_path, compression="manual") as writer:
        container = writer.add_container("web", max_size=2 * ENTRY, max_file=3, compress=True)
        write_timed(container, 0, 3)
        container.stop()
    assert names(container) == ["-json.log.1", "-json.log"]  # the test still holds the goroutine
    assert container.compress_pending() is True
    assert names(container) == ["-json.log.1.gz", "-json.log"]


def test_thread_compression_is_consistent_after_close(tmp_path: Path) -> None:
    sync = DockerRootWriter(tmp_path / "sync", compression="sync")
    threaded = DockerRootWriter(tmp_path / "thread")  # "thread" is the default
    assert threaded.compression == "thread"
    logs = [
        w.add_container("web", max_size=16 * 1024, max_file=5, compress=True)
        for w in (sync, threaded)
    ]
    for log in logs:
        for n, (stream, text) in enumerate(realistic_lines(random.Random(4), 2000, container="w")):
            log.write(text, stream=stream, time_ns=T0 + n)
    threaded.close()
    sync.close()
    expected, got = logs
    assert names(got) == [
        "-json.log.4.gz",
        "-json.log.3.gz",
        "-json.log.2.gz",
        "-json.log.1.gz",
        "-json.log",
    ]
    assert got.pending_compression is None
    assert [read_content(p) for p in got.generations()] == [
        read_content(p) for p in expected.generations()
    ]
    for path in got.generations()[:-1]:
        assert json.loads(gzip_extra(path))["lastTime"] == last_time(read_content(path))


def test_thread_compressions_never_overlap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    running: list[int] = []
    most = 0
    lock = threading.Lock()
    real_step = docker_writer._GzipJob.step

    def slow_step(self: docker_writer._GzipJob, *, partial: bool = False) -> None:
        nonlocal most
        with lock:
            running.append(1)
            most = max(most, len(running))
        time.sleep(0.02)  # long enough for the writer to reach the next rotation meanwhile
        real_step(self, partial=partial)
        with lock:
            running.pop()

    monkeypatch.setattr(docker_writer._GzipJob, "step", slow_step)
    with DockerRootWriter(tmp_path) as writer:
        container = writer.add_container("web", max_size=ENTRY, max_file=3, compress=True)
        write_timed(container, 0, 6)  # a rotation before each write after the first
    assert most == 1
    assert names(container) == ["-json.log.2.gz", "-json.log.1.gz", "-json.log"]
    assert [numbers_of(p) for p in container.generations()] == [[3], [4], [5]]


def test_hostconfig_records_compress(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path)
    container = writer.add_container("web", max_size=1 << 20, max_file=3, compress=True)
    # A map[string]string in Go: json.Marshal sorts its keys.
    assert b'"Config":{"compress":"true","max-file":"3","max-size":"1m"}' in (
        container.hostconfig_path.read_bytes()
    )


@pytest.mark.parametrize(
    "options",
    [{}, {"max_size": 1000}, {"max_size": 1000, "max_file": 1}, {"max_file": 2}],
)
def test_compress_needs_rotation_with_two_files(
    writer: DockerRootWriter, options: dict[str, int]
) -> None:
    with pytest.raises(ValueError, match=r"max-file is less than 2|max_size"):
        writer.add_container("web", compress=True, **options)  # type: ignore[arg-type]


def test_compression_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compression"):
        DockerRootWriter(tmp_path, compression="later")  # type: ignore[arg-type]
    writer = DockerRootWriter(tmp_path, compression="sync")
    container = writer.add_container(
        "web", max_size=ENTRY, max_file=2, compress=True, compression="thread"
    )
    assert container.compression == "thread"
    with pytest.raises(ValueError, match="manual"):
        container.compress_pending(partial=True)
    assert container.compress_pending() is False
    writer.close()


# --- attrs ------------------------------------------------------------------------------------


def test_attrs_sit_between_stream_and_time(writer: DockerRootWriter) -> None:
    attrs = {"tag": "web/1", "com.example.team": "shop & <ops>", "z": "tab\there"}
    container = writer.add_container("web-1", log_attrs=attrs)
    container.write("hello", stream="stderr", time_ns=T0)
    assert container.log_path.read_bytes() == (
        b'{"log":"hello\\n","stream":"stderr","attrs":{"com.example.team":'
        b'"shop \\u0026 \\u003cops\\u003e","tag":"web/1","z":"tab\\there"},'
        b'"time":"' + T0_TEXT.encode() + b'"}\n'
    )
    assert entries(container)[0]["attrs"] == attrs


def test_attrs_in_every_split_part(writer: DockerRootWriter) -> None:
    container = writer.add_container("web-1", log_attrs={"tag": "t"})
    container.write("x" * 20_000, time_ns=T0)
    assert [e["attrs"] for e in entries(container)] == [{"tag": "t"}, {"tag": "t"}]


def test_empty_attrs_give_no_key(writer: DockerRootWriter) -> None:
    container = writer.add_container("web-1", log_attrs={})
    container.write("x", time_ns=T0)
    assert b"attrs" not in container.log_path.read_bytes()
    assert encode_attrs({}) == b""
    assert encode_entry(b"x\n", "stdout", T0, b"") == encode_entry(b"x\n", "stdout", T0)


def test_attrs_are_encoded_as_go_json() -> None:
    # Keys sorted by their UTF-8 bytes, control characters as Go writes them, DEL raw.
    assert encode_attrs({"é": "1", "b": "\n\x01\x7f", "a": "\u2028"}) == (
        b'{"a":"\\u2028","b":"\\n\\u0001\x7f","\xc3\xa9":"1"}'
    )


# --- metadata ---------------------------------------------------------------------------------


def test_config_v2_json(writer: DockerRootWriter) -> None:
    labels = {"com.example.team": "shop", "io.kubernetes.pod.name": "web-1-abc"}
    container = writer.add_container("web-1", image="nginx:1.25", labels=labels, container_id=ID)
    config_path = writer.root / ID / "config.v2.json"
    assert container.config_path == config_path
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    config = json.loads(config_path.read_bytes())
    assert config["ID"] == ID
    assert config["Name"] == "/web-1"
    assert config["Created"] == "2024-05-01T12:00:00Z"  # the fake clock's first reading
    assert config["Image"].startswith("sha256:")
    assert len(config["Image"]) == len("sha256:") + 64
    assert config["Config"]["Image"] == "nginx:1.25"
    assert config["Config"]["Labels"] == labels
    assert config["Config"]["Env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "SECRET_TOKEN=demo-not-a-secret",
    ]
    assert config["Config"]["Hostname"] == ID[:12]
    assert config["LogPath"] == str(writer.root / ID / f"{ID}-json.log")
    assert container.log_path.exists()
    state = config["State"]
    assert state["Running"] is True
    assert state["ExitCode"] == 0
    assert state["StartedAt"] == format_docker_time(DEFAULT_START_NS + DEFAULT_STEP_NS)
    assert state["FinishedAt"] == "0001-01-01T00:00:00Z"


def test_stop_rewrites_config_atomically(writer: DockerRootWriter) -> None:
    container = writer.add_container("web-1")
    before = container.config_path.stat().st_ino
    container.stop(exit_code=137)
    after = container.config_path.stat()
    assert after.st_ino != before  # a new file renamed over the old one
    assert stat.S_IMODE(after.st_mode) == 0o600
    assert {p.name for p in container.directory.iterdir()} == {
        "config.v2.json",
        f"{container.id}-json.log",
        "hostconfig.json",
    }  # no temporary file left behind
    state = json.loads(container.config_path.read_bytes())["State"]
    assert state["Running"] is False
    assert state["ExitCode"] == 137
    assert state["FinishedAt"] != "0001-01-01T00:00:00Z"
    with pytest.raises(ValueError, match="stopped"):
        container.write("after the end")


@pytest.mark.parametrize(
    ("options", "log_config"),
    [
        ({}, {}),
        ({"max_size": 10 * 1024 * 1024}, {"max-size": "10m"}),
        ({"max_size": 1000, "max_file": 3}, {"max-size": "1000", "max-file": "3"}),
        ({"max_size": 2048, "max_file": 1}, {"max-size": "2k", "max-file": "1"}),
    ],
)
def test_hostconfig_log_config(
    writer: DockerRootWriter, options: dict[str, int], log_config: dict[str, str]
) -> None:
    container = writer.add_container("web-1", **options)  # type: ignore[arg-type]
    hostconfig = json.loads(container.hostconfig_path.read_bytes())
    assert hostconfig["LogConfig"] == {"Type": "json-file", "Config": log_config}


def test_random_ids_are_docker_ids(writer: DockerRootWriter) -> None:
    ids = {writer.add_container(f"c{i}").id for i in range(5)}
    assert len(ids) == 5
    assert all(len(i) == 64 and i == i.lower() and int(i, 16) >= 0 for i in ids)
    assert {p.name for p in writer.root.iterdir()} == ids


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("/web", {}, "name"),
        ("web", {"container_id": "ABC"}, "64 lowercase hex"),
        ("web", {"container_id": ID.upper()}, "64 lowercase hex"),
        ("web", {"max_size": 0}, "max_size"),
        ("web", {"max_file": 3}, "max_size"),
        ("web", {"max_size": 10, "max_file": 0}, "max_file"),
    ],
)
def test_add_container_rejects_bad_arguments(
    writer: DockerRootWriter, name: str, options: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        writer.add_container(name, **options)  # type: ignore[arg-type]


def test_names_are_unique(writer: DockerRootWriter) -> None:
    writer.add_container("web-1")
    with pytest.raises(ValueError, match="in use"):
        writer.add_container("web-1")


def test_writer_closes_its_logs(tmp_path: Path) -> None:
    with DockerRootWriter(tmp_path) as writer:
        container = writer.add_container("web-1")
        container.write("x")
    with pytest.raises(ValueError, match="stopped"):
        container.write("y")


def test_each_entry_is_one_write(writer: DockerRootWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    container = writer.add_container("web-1")
    sizes: list[int] = []
    real_write = os.write

    def spy(fd: int, data: bytes | memoryview) -> int:
        sizes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    container.write("x" * 40_000, time_ns=T0)
    lines = container.log_path.read_bytes().splitlines(keepends=True)
    assert sizes == [len(line) for line in lines]


# --- realistic content ------------------------------------------------------------------------


def test_realistic_lines_are_deterministic_and_numbered() -> None:
    lines = list(realistic_lines(random.Random(42), 3000, container="web-1"))
    assert lines == list(realistic_lines(random.Random(42), 3000, container="web-1"))
    assert len(lines) == 3000
    seqs = [int(m[1]) for _, text in lines for m in [SEQ_PATTERN.search(text)] if m]
    assert seqs == list(range(3000))
    assert all(len(SEQ_PATTERN.findall(text)) == 1 for _, text in lines)
    assert all("\n" not in text for _, text in lines)


def test_realistic_lines_have_realistic_shapes() -> None:
    lines = list(realistic_lines(random.Random(1), 5000, container="web-1"))
    sizes = [len(text.encode()) for _, text in lines]
    short = sum(80 <= s <= 300 for s in sizes)
    payloads = sum(1024 <= s <= 4200 for s in sizes)
    assert short > 0.6 * len(lines)
    assert 0.03 * len(lines) < payloads < 0.15 * len(lines)
    streams = Counter(stream for stream, _ in lines)
    assert streams["stdout"] > streams["stderr"] > 0
    # Stack traces come as consecutive stderr messages, one a line.
    texts = [text for _, text in lines]
    # (A trace started at the very end is cut off by `count`: its next line may not exist.)
    java = [i for i, t in enumerate(texts[:-1]) if t.startswith("java.lang.")]
    python = [i for i, t in enumerate(texts[:-1]) if t.startswith("Traceback (most recent")]
    assert java
    assert python
    for start in java:
        assert lines[start + 1][0] == "stderr"
        assert lines[start + 1][1].startswith("\tat ")
    for start in python:
        assert lines[start + 1][1].startswith('  File "')


def test_realistic_lines_start_seq_continues_numbering() -> None:
    lines = list(realistic_lines(random.Random(3), 10, container="db", start_seq=1_000_000))
    found = [SEQ_PATTERN.search(text) for _, text in lines]
    assert [int(m[1]) for m in found if m] == list(range(1_000_000, 1_000_010))


def test_realistic_lines_survive_the_writer(writer: DockerRootWriter) -> None:
    container = writer.add_container("web-1", max_size=64 * 1024, max_file=5)
    for stream, text in realistic_lines(random.Random(5), 500, container="web-1"):
        container.write(text, stream=stream)
    logs = [e["log"] for e in entries(container)]
    assert [int(m[1]) for log in logs for m in SEQ_PATTERN.finditer(log)] == list(range(500))
