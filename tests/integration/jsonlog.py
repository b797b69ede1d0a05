"""Reading what dockerd's json-file driver wrote: entries, rotated generations, gzip headers."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path
from typing import Any

FEXTRA = 0x04


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of one json-file log, `.gz` or plain, one per line."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in data.splitlines()]


def generations(current: Path) -> list[Path]:
    """The files of one container's log, oldest first: `….log.N[.gz]` … `.log.1[.gz]`, `.log`."""
    rotated: list[tuple[int, Path]] = []
    for path in current.parent.glob(f"{current.name}.*"):
        number = path.name[len(current.name) + 1 :].removesuffix(".gz")
        if number.isdigit():
            rotated.append((int(number), path))
    ordered = [path for _, path in sorted(rotated, reverse=True)]
    return [*ordered, current] if current.exists() else ordered


def gzip_extra(path: Path) -> bytes | None:
    """The raw FEXTRA field of a gzip file's header, or None when the header has none.

    Read by hand: Python's gzip module skips it. dockerd puts JSON there directly
    (`{"lastTime":"…"}`), not RFC 1952 subfields (SI1 SI2 LEN data).
    """
    with path.open("rb") as file:
        header = file.read(10)
        if header[:2] != b"\x1f\x8b" or not header[3] & FEXTRA:
            return None
        (length,) = struct.unpack("<H", file.read(2))
        return file.read(length)
