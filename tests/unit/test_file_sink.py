"""Tests for the `file` output: NDJSON appends, torn-line repair and all-or-nothing writes."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from shipper.errors import FatalSinkError, RetryableSinkError
from shipper.model import Batch, LogFile, Outcome, RecordGroup
from shipper.sinks import file as file_module
from shipper.sinks.ecs import encode_batch
from shipper.sinks.file import FileSink


def make_group(*messages: str, start: int = 0) -> RecordGroup:
    group = RecordGroup(
        file=LogFile("docker", "abc", "/logs/abc-json.log", "h"), start=start, end=start + 100
    )
    for n, message in enumerate(messages):
        group.messages.append(message)
        group.timestamps.append(f"2024-05-06T07:08:09.{n:09d}Z")
        group.streams.append("stdout")
        group.offsets.append(start + 10 * n)
    return group


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[FileSink]:
    sink = FileSink(tmp_path / "out" / "shipped.ndjson", fsync=False)
    await sink.open()
    yield sink
    await sink.close()


def read_messages(path: Path) -> list[str]:
    return [orjson.loads(line)["message"] for line in path.read_bytes().splitlines()]


async def test_writes_ndjson_and_acknowledges(sink: FileSink) -> None:
    group = make_group("one", 'two "quoted"', "three\u2028")
    batch = Batch.of([group])
    result = await sink.send(batch)
    assert result.outcomes == [Outcome.DELIVERED] * 3
    assert result.acknowledged is None
    data = sink.path.read_bytes()
    assert data == encode_batch(batch)
    assert data.endswith(b"\n")
    assert read_messages(sink.path) == ["one", 'two "quoted"', "three\u2028"]
    documents = [orjson.loads(line) for line in data.splitlines()]
    assert documents[1]["log"] == {"file": {"path": "/logs/abc-json.log"}, "offset": 10}


async def test_later_batches_are_appended(sink: FileSink) -> None:
    await sink.send(Batch.of([make_group("a", "b")]))
    await sink.send(Batch([make_group("c", "d", "e")], [[2, 0]]))
    assert read_messages(sink.path) == ["a", "b", "e", "c"]


async def test_fsync_true_writes_and_acknowledges(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "synced.ndjson", fsync=True)
    await sink.open()
    try:
        result = await sink.send(Batch.of([make_group("durable")]))
        assert result.outcomes == [Outcome.DELIVERED]
        assert read_messages(sink.path) == ["durable"]
    finally:
        await sink.close()


async def test_fsync_true_calls_fsync_before_acknowledging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(file_module, "os", _OsProxy(fsync=synced.append))
    sink = FileSink(tmp_path / "synced.ndjson", fsync=True)
    await sink.open()
    try:
        synced.clear()  # open() may fsync after a repair; only the write matters here
        await sink.send(Batch.of([make_group("durable")]))
        assert len(synced) == 1
    finally:
        await sink.close()


async def test_empty_batch_writes_nothing(sink: FileSink) -> None:
    result = await sink.send(Batch.of([]))
    assert result.outcomes == []
    assert sink.path.read_bytes() == b""


async def test_existing_complete_file_is_appended_to_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "out.ndjson"
    path.write_bytes(b'{"message":"old 1"}\n{"message":"old 2"}\n')
    sink = FileSink(path, fsync=False)
    await sink.open()
    try:
        await sink.send(Batch.of([make_group("new")]))
    finally:
        await sink.close()
    assert read_messages(path) == ["old 1", "old 2", "new"]


async def test_torn_last_line_is_cut_at_open_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "out.ndjson"
    complete = b'{"message":"kept"}\n'
    path.write_bytes(complete + b'{"message":"tor')
    sink = FileSink(path, fsync=False)
    with caplog.at_level(logging.WARNING, logger="shipper.sinks.file"):
        await sink.open()
    try:
        assert path.read_bytes() == complete
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert warnings[0].bytes_removed == len(b'{"message":"tor')  # type: ignore[attr-defined]
        assert warnings[0].path == str(path)  # type: ignore[attr-defined]
        await sink.send(Batch.of([make_group("after")]))
    finally:
        await sink.close()
    assert read_messages(path) == ["kept", "after"]


async def test_file_with_only_a_torn_line_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "out.ndjson"
    path.write_bytes(b'{"message":"no newline at all"')
    sink = FileSink(path, fsync=False)
    await sink.open()
    try:
        assert path.read_bytes() == b""
        await sink.send(Batch.of([make_group("fresh")]))
    finally:
        await sink.close()
    assert read_messages(path) == ["fresh"]


async def test_torn_line_longer_than_the_scan_block_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "out.ndjson"
    complete = b'{"message":"kept"}\n'
    path.write_bytes(complete + b"x" * 200_000)
    sink = FileSink(path, fsync=False)
    await sink.open()
    await sink.close()
    assert path.read_bytes() == complete


async def test_complete_file_opens_without_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "out.ndjson"
    path.write_bytes(b'{"message":"a"}\n')
    sink = FileSink(path, fsync=False)
    with caplog.at_level(logging.WARNING, logger="shipper.sinks.file"):
        await sink.open()
    await sink.close()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert path.read_bytes() == b'{"message":"a"}\n'


async def test_open_failure_is_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sink = FileSink(blocker / "out.ndjson", fsync=False)
    with pytest.raises(FatalSinkError):
        await sink.open()


class _OsProxy(ModuleType):
    """The `os` module with some functions replaced, installed only in the sink's module."""

    def __init__(self, **overrides: Any) -> None:
        super().__init__("os_proxy")
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        overrides = self.__dict__.get("_overrides", {})
        if name in overrides:
            return overrides[name]
        return getattr(os, name)


async def test_failed_write_leaves_the_file_at_its_previous_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.ndjson"
    sink = FileSink(path, fsync=False)
    await sink.open()
    try:
        await sink.send(Batch.of([make_group("before")]))
        before = path.read_bytes()

        def write_part_then_fail(fd: int, data: Any) -> int:
            os.write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(file_module, "os", _OsProxy(write=write_part_then_fail))
        with pytest.raises(RetryableSinkError, match="No space left"):
            await sink.send(Batch.of([make_group("lost 1", "lost 2", "x" * 10_000)]))
        assert path.read_bytes() == before

        monkeypatch.undo()
        await sink.send(Batch.of([make_group("retried")]))
    finally:
        await sink.close()
    assert read_messages(path) == ["before", "retried"]


async def test_write_failure_after_several_short_writes_is_cut_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.ndjson"
    path.write_bytes(b'{"message":"old"}\n')
    sink = FileSink(path, fsync=False)
    await sink.open()
    calls = 0

    def short_writes(fd: int, data: Any) -> int:
        nonlocal calls
        calls += 1
        if calls > 3:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return os.write(fd, bytes(data[:7]))

    monkeypatch.setattr(file_module, "os", _OsProxy(write=short_writes))
    try:
        with pytest.raises(RetryableSinkError):
            await sink.send(Batch.of([make_group("partial")]))
        assert path.read_bytes() == b'{"message":"old"}\n'
    finally:
        monkeypatch.undo()
        await sink.close()


async def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.ndjson"
    sink = FileSink(path, fsync=False)
    await sink.open()

    def short_write(fd: int, data: Any) -> int:
        return os.write(fd, bytes(data[:5]))

    monkeypatch.setattr(file_module, "os", _OsProxy(write=short_write))
    try:
        batch = Batch.of([make_group("a", "bb", "ccc")])
        await sink.send(batch)
        assert path.read_bytes() == encode_batch(batch)
    finally:
        monkeypatch.undo()
        await sink.close()


async def test_failed_fsync_cuts_the_write_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.ndjson"
    sink = FileSink(path, fsync=True)
    await sink.open()
    await sink.send(Batch.of([make_group("first")]))
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(file_module, "os", _OsProxy(fsync=failing_fsync))
    try:
        with pytest.raises(RetryableSinkError):
            await sink.send(Batch.of([make_group("not durable")]))
        assert path.read_bytes() == before
    finally:
        monkeypatch.undo()
        await sink.close()


async def test_size_after_a_failure_is_still_right_for_the_next_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure, a success, then another failure must cut back to after the success."""
    path = tmp_path / "out.ndjson"
    sink = FileSink(path, fsync=False)
    await sink.open()

    def fail(fd: int, data: Any) -> int:
        os.write(fd, bytes(data[:3]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    try:
        monkeypatch.setattr(file_module, "os", _OsProxy(write=fail))
        with pytest.raises(RetryableSinkError):
            await sink.send(Batch.of([make_group("x")]))
        monkeypatch.undo()
        await sink.send(Batch.of([make_group("ok")]))
        after_ok = path.read_bytes()
        monkeypatch.setattr(file_module, "os", _OsProxy(write=fail))
        with pytest.raises(RetryableSinkError):
            await sink.send(Batch.of([make_group("y")]))
        assert path.read_bytes() == after_ok
    finally:
        monkeypatch.undo()
        await sink.close()
    assert read_messages(path) == ["ok"]


async def test_a_failed_send_does_not_cut_an_overlapping_acknowledged_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.ndjson"
    sink = FileSink(path, fsync=False)
    await sink.open()
    first_half_written = threading.Event()
    other_send_done = threading.Event()

    def write(fd: int, data: Any) -> int:
        chunk = bytes(data)
        if b'"message":"failing' not in chunk:
            return os.write(fd, chunk)
        os.write(fd, chunk[: len(chunk) // 2])
        first_half_written.set()
        other_send_done.wait(timeout=5)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(file_module, "os", _OsProxy(write=write))
    try:
        failing = asyncio.create_task(sink.send(Batch.of([make_group("failing " + "f" * 200)])))
        deadline = time.monotonic() + 2
        while not first_half_written.is_set():
            assert time.monotonic() < deadline, "the failing write never started"
            await asyncio.sleep(0.001)
        result = await sink.send(Batch.of([make_group("acknowledged")]))
        assert result.outcomes == [Outcome.DELIVERED]
        other_send_done.set()
        with pytest.raises(RetryableSinkError):
            await failing
    finally:
        other_send_done.set()
        monkeypatch.undo()
        await sink.close()
    assert read_messages(path) == ["acknowledged"]
