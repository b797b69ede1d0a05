"""Byte-level file helpers shared by the reading side, the checkpoints and the files written."""

from __future__ import annotations

import os

_BLOCK = 65536


def end_of_last_line(fd: int, size: int) -> int:
    """Offset just after the last newline before `size`: where whole lines end (0 if none)."""
    end = size
    while end > 0:
        start = max(0, end - _BLOCK)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or a file creation in `directory` durable: they change the directory, not
    the file, and until it is fsynced a power loss can undo them."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
