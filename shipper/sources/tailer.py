"""FileFollower: reads one log path through its generations, in order, as chunks of whole lines."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from dataclasses import dataclass

from shipper.checkpoints import CheckpointStore, FileCheckpoint
from shipper.fileio import end_of_last_line
from shipper.model import Chunk, LogFile
from shipper.pipeline.pipeline import Decoder, Pipeline
from shipper.sources.identity import HEAD_BYTES, fingerprint, prefix_fingerprints, read_head
from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)

_handles = itertools.count(1)


@dataclass(frozen=True, slots=True)
class TailSettings:
    read_chunk_size: int
    poll_interval: float
    # A line with no newline within this many bytes is cut there and shipped as it is: Docker's
    # own lines are at most 16 KiB of text (about 100 KiB escaped), so only a foreign file gets
    # here, and waiting for its newline would hold all memory.
    max_line_bytes: int = 4 * 1024 * 1024


class _OpenFile:
    """One generation of the path: an open descriptor and what is known of its content."""

    __slots__ = ("entry", "fd", "file", "finished", "offset", "removed")

    def __init__(self, fd: int, file: LogFile, offset: int, entry: FileCheckpoint | None) -> None:
        self.fd = fd
        self.file = file
        self.offset = offset  # next byte to read (reading runs ahead of the settled offset)
        self.entry = entry  # None until the file has a first byte to fingerprint
        self.finished = False  # drained after rotation or removal: no more ranges will come
        self.removed = False  # unlinked: its checkpoint goes once everything settled


class FileFollower:
    """Follows `<id>-json.log` through rotation: the renamed file is drained to its end through
    its open descriptor before the new file is read, so lines stay in order (DESIGN.md §1).

    Reading runs ahead of delivery; the checkpoint follows the settled offset reported by the
    AckTracker, never the read offset.
    """

    def __init__(
        self,
        *,
        source: str,
        path: str,
        container_id: str,
        settings: TailSettings,
        store: CheckpointStore,
        pipeline: Pipeline,
        decode: Decoder,
        telemetry: Telemetry,
    ) -> None:
        self.source = source
        self.path = path
        self.container_id = container_id
        self._settings = settings
        self._store = store
        self._pipeline = pipeline
        self._decode = decode
        self._telemetry = telemetry
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Something changed at this path: look now rather than at the next poll."""
        self._wake.set()

    def open(self, *, start_at_end: bool = False) -> _OpenFile | None:
        """Open the file now at the path and find where to start; None if there is none."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error(
                "Cannot open log file.",
                extra={"path": self.path, "error": exc.strerror or str(exc)},
            )
            return None
        try:
            return self._position(fd, start_at_end=start_at_end)
        except OSError as exc:
            os.close(fd)
            log.error(
                "Cannot read log file.",
                extra={"path": self.path, "error": exc.strerror or str(exc)},
            )
            return None

    def _position(self, fd: int, *, start_at_end: bool) -> _OpenFile:
        stat = os.fstat(fd)
        file = LogFile(
            source=self.source,
            container_id=self.container_id,
            path=self.path,
            handle=f"{self.source}:{stat.st_dev}:{stat.st_ino}:{next(_handles)}",
        )
        head = read_head(fd)
        offset = 0
        entry: FileCheckpoint | None = None
        if head:
            known = self._store.find(
                prefix_fingerprints(head), path=self.path, device=stat.st_dev, inode=stat.st_ino
            )
            if known is not None:
                offset = known.offset
                if offset > stat.st_size:
                    self._truncated(offset, stat.st_size)
                    offset = 0
            elif start_at_end:
                offset = end_of_last_line(fd, stat.st_size)
            entry = FileCheckpoint(
                fingerprint=fingerprint(head),
                head_len=len(head),
                path=self.path,
                device=stat.st_dev,
                inode=stat.st_ino,
                offset=offset,
                source=self.source,
                updated_at=time.time(),
            )
            if known is not None and known.key != entry.key:
                self._store.rekey(known.key, entry)
            else:
                self._store.set(entry)
        self._telemetry.inc("shipper_files_opened_total", source=self.source)
        log.info(
            "Following log file.",
            extra={
                "path": self.path,
                "offset": offset,
                "resumed": entry is not None and offset > 0,
            },
        )
        return _OpenFile(fd, file, offset, entry)

    async def run(self, first: _OpenFile | None) -> None:
        """Follow generation after generation until the path is gone; cancel to stop."""
        current = first if first is not None else self.open()
        while current is not None:
            try:
                await self._follow(current)
            finally:
                os.close(current.fd)
                self._telemetry.inc("shipper_files_closed_total", source=self.source)
            current = self.open()

    async def _follow(self, current: _OpenFile) -> None:
        tracker = self._pipeline.tracker
        handle = current.file.handle
        tracker.track(handle, current.offset, lambda offset: self._settled(current, offset))
        replaced = False
        while True:
            try:
                data = self._read(current)
            except OSError as exc:
                log.error(
                    "Cannot read log file; trying again.",
                    extra={"path": self.path, "error": exc.strerror or str(exc)},
                )
                await self._pause()
                continue
            cut = data.rfind(b"\n")
            if cut >= 0 or len(data) >= self._settings.max_line_bytes:
                await self._emit(current, data[: cut + 1] if cut >= 0 else data)
                continue
            # At the end, or only the start of a line not yet finished.
            if replaced:
                if data:  # the rest of a line that will never be finished: ship it as it is
                    await self._emit(current, data)
                self._finish(current)
                return
            replaced = self._replaced(current)
            if replaced:
                continue  # read once more: bytes written before the rename are still to come
            size = os.fstat(current.fd).st_size
            if size < current.offset:
                self._truncated(current.offset, size)
                self._restart(current)
                continue
            await self._pause()

    def _read(self, current: _OpenFile) -> bytes:
        size = self._settings.read_chunk_size
        limit = self._settings.max_line_bytes
        while True:
            data = os.pread(current.fd, size, current.offset)
            if len(data) < size or b"\n" in data or size >= limit:
                return data
            size = min(size * 4, limit)  # one line longer than a read: widen until it fits

    async def _emit(self, current: _OpenFile, data: bytes) -> None:
        if current.entry is None or current.entry.head_len < HEAD_BYTES:
            self._refresh_identity(current)
        chunk = Chunk(current.file, current.offset, data)
        current.offset += len(data)
        await self._pipeline.ingest(chunk, self._decode)

    def _refresh_identity(self, current: _OpenFile) -> None:
        """A short file grew: its fingerprint now covers more bytes (a growing prefix)."""
        head = read_head(current.fd)
        if current.entry is not None and len(head) <= current.entry.head_len:
            return
        stat = os.fstat(current.fd)
        entry = FileCheckpoint(
            fingerprint=fingerprint(head),
            head_len=len(head),
            path=current.file.path,
            device=stat.st_dev,
            inode=stat.st_ino,
            offset=current.entry.offset if current.entry else 0,
            source=self.source,
            updated_at=time.time(),
        )
        if current.entry is None:
            self._store.set(entry)
        else:
            self._store.rekey(current.entry.key, entry)
        current.entry = entry

    def _settled(self, current: _OpenFile, offset: int) -> None:
        """The AckTracker moved this file's settled offset: that is the checkpoint."""
        if current.entry is None:
            return
        current.entry = self._store.update_offset(current.entry.key, offset)
        if current.finished and offset >= current.offset:
            self._pipeline.tracker.forget(current.file.handle)
            if current.removed:
                self._store.remove(current.entry.key)

    def _replaced(self, current: _OpenFile) -> bool:
        """True when the path no longer names this file (rotated away or removed)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return True
        own = os.fstat(current.fd)
        return (stat.st_dev, stat.st_ino) != (own.st_dev, own.st_ino)

    def _finish(self, current: _OpenFile) -> None:
        current.finished = True
        current.removed = os.fstat(current.fd).st_nlink == 0
        log.info(
            "Finished log file.",
            extra={"path": self.path, "offset": current.offset, "removed": current.removed},
        )
        tracker = self._pipeline.tracker
        if tracker.unsettled(current.file.handle) == 0:
            self._settled(current, tracker.settled_offset(current.file.handle))

    def _restart(self, current: _OpenFile) -> None:
        """The file was truncated in place: read it again from the start as new content."""
        if current.entry is not None:
            self._store.remove(current.entry.key)
        current.entry = None
        current.offset = 0
        self._pipeline.tracker.track(
            current.file.handle, 0, lambda offset: self._settled(current, offset)
        )

    def _truncated(self, offset: int, size: int) -> None:
        self._telemetry.inc("shipper_truncations_total", source=self.source)
        log.warning(
            "Log file was truncated; reading it again from the start.",
            extra={"path": self.path, "offset": offset, "size": size},
        )

    async def _pause(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._settings.poll_interval)
