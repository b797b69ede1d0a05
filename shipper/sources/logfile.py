"""Readers of one log file's content by offset: plain files, and gzip files Docker compressed."""

from __future__ import annotations

import gzip
import os
import struct

from shipper.sources.identity import first_line, identity_bytes

GZIP_MAGIC = b"\x1f\x8b"


class LogReader:
    """A plain log file read through its descriptor, which keeps working after rename or unlink.

    Offsets are offsets of the content (for a gzip file, of the decompressed content), so a
    checkpoint taken on `x.log.1` resumes at the same place in `x.log.1.gz`.
    """

    compressed = False

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def head(self) -> bytes:
        """The identity bytes of the content (shipper.sources.identity)."""
        return identity_bytes(self.read)

    def first_line(self) -> bytes | None:
        """The first line of content with its newline, or None while it is unfinished."""
        return first_line(self.read)

    def content_size(self) -> int:
        """How many bytes of content there are now."""
        return os.fstat(self.fd).st_size

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def close(self) -> None:
        # Idempotent: a drained file's reader is closed when its ranges settle, which may come
        # after the follower closed everything at a stop.
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class GzipLogReader(LogReader):
    """A complete gzip file (Docker's `compress=true` rotation), read as its decompressed bytes.

    Reading is sequential in practice; a read before the current position starts decompressing
    again from the beginning, a read after it decompresses and discards the gap.
    """

    compressed = True

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self._raw = os.fdopen(os.dup(fd), "rb")
        self._stream = gzip.GzipFile(fileobj=self._raw, mode="rb")

    def read(self, offset: int, size: int) -> bytes:
        if offset != self._stream.tell():
            self._stream.seek(offset)
        try:
            return self._stream.read(size)
        except (EOFError, gzip.BadGzipFile, OSError) as exc:
            raise OSError(f"corrupt or incomplete gzip file: {exc}") from exc

    def content_size(self) -> int:
        # ISIZE, the last four bytes, is the uncompressed size modulo 2**32 (RFC 1952); Docker's
        # rotated files are far below 4 GiB.
        size = os.fstat(self.fd).st_size
        if size < 18:  # smaller than an empty gzip member: nothing to read yet
            return 0
        (isize,) = struct.unpack("<I", os.pread(self.fd, 4, size - 4))
        return int(isize)

    def close(self) -> None:
        self._stream.close()
        self._raw.close()
        super().close()


def open_log(path: str) -> LogReader:
    """Open `path` for reading as plain or gzip (by its magic bytes, not its name)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.pread(fd, 2, 0) == GZIP_MAGIC:
            return GzipLogReader(fd)
        return LogReader(fd)
    except OSError:
        os.close(fd)
        raise


__all__ = ["GzipLogReader", "LogReader", "open_log"]
