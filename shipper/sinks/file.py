"""The `file` output: appends every record as one NDJSON line, acknowledging after the write."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from pathlib import Path

from shipper.errors import FatalSinkError, RetryableSinkError
from shipper.fileio import end_of_last_line
from shipper.model import Batch, BatchResult, Outcome
from shipper.sinks.ecs import encode_batch

log = logging.getLogger(__name__)


class FileSink:
    """NDJSON to a local file; with `fsync` the data is on disk before the checkpoint may move.

    A batch is written whole or not at all: a failed write is cut back to where it started, so a
    retry neither duplicates nor tears lines. A line torn by a crash is cut off at the next start
    (its records were never acknowledged, so they are sent again). Every write and that cut hold
    an exclusive lock (flock) on the file: the worker processes of `pipeline.workers` append to
    the same file, and one must neither cut back nor cut off what another is writing.
    """

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self._fsync = fsync
        self._fd = -1
        # One write at a time: a failed write is cut back to the size before it, which is only
        # right if no other batch was appended meanwhile (outputs may have several in flight).
        self._writing = asyncio.Lock()

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._open)
        except OSError as exc:
            raise FatalSinkError(f"cannot open output file {self.path}: {exc.strerror}") from exc

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            kept = end_of_last_line(fd, size)
            if kept < size:
                os.ftruncate(fd, kept)
                os.fsync(fd)
                log.warning(
                    "Cut a torn last line from the output file.",
                    extra={"path": str(self.path), "bytes_removed": size - kept},
                )
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    async def send(self, batch: Batch) -> BatchResult:
        data = encode_batch(batch)
        try:
            async with self._writing:
                await asyncio.to_thread(self._write, data)
        except OSError as exc:
            raise RetryableSinkError(f"writing {self.path}: {exc.strerror}") from exc
        return BatchResult.uniform(Outcome.DELIVERED, len(batch))

    def _write(self, data: bytes) -> None:
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size  # where this batch starts, under the lock
            view = memoryview(data)
            written = 0
            try:
                while written < len(view):
                    written += os.write(fd, view[written:])
                if self._fsync:
                    os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    async def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
