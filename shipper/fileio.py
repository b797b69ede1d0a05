"""Byte-level file helpers shared by the reading side and the file output."""

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
