"""File identity: a fingerprint of a file's first bytes, which survives renames and inode reuse.

The fingerprint covers the first 1 KiB of content (decompressed), compared as a growing prefix
while the file is shorter. One addition: when the first line is longer than 1 KiB, the last 64
bytes of that line are appended. A rotated json-file often starts with a middle part of a line
Docker split at 16 KiB, whose first KiB is only application text (a run of padding, a blob)
that another file can share; the line's end holds Docker's nanosecond `time`, which tells them
apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

HEAD_BYTES = 1024
TAIL_BYTES = 64
IDENTITY_BYTES = HEAD_BYTES + TAIL_BYTES
# How far to look for the end of a first line: Docker's own lines are at most 16 KiB of text
# (about 100 KiB escaped); past this the first KiB alone is the identity.
MAX_FIRST_LINE = 1024 * 1024

Read = Callable[[int, int], bytes]  # (offset, size) -> bytes


def first_line(read: Read) -> bytes | None:
    """The file's first line with its newline, or None while it is unfinished (or too long)."""
    data = b""
    while len(data) < MAX_FIRST_LINE:
        block = read(len(data), 65536 if data else 4096)
        if not block:
            return None
        end = block.find(b"\n")
        if end >= 0:
            return data + block[: end + 1]
        data += block
    return None


def identity_bytes(read: Read) -> bytes:
    """The bytes the fingerprint covers: up to HEAD_BYTES, plus the first line's last
    TAIL_BYTES when that line is longer than HEAD_BYTES and complete."""
    head = read(0, HEAD_BYTES)
    if len(head) < HEAD_BYTES or b"\n" in head:
        return head
    line = first_line(read)
    if line is None:
        return head
    return head + line[-TAIL_BYTES:]


def fingerprint(identity: bytes) -> str:
    """Hex SHA-256 of a file's identity bytes."""
    return hashlib.sha256(identity).hexdigest()


def stable_id(line: bytes) -> str:
    """The identity a record carries (`log.file.fingerprint`): its file's first line, hashed.

    The checkpoint identity grows with a short file; a record needs one that never changes, so
    a replay after a restart names the same file. The first line is written once and then
    fixed, and Docker's first line holds a nanosecond time, so it is unique in practice.
    """
    return hashlib.sha256(line).hexdigest()


def prefix_fingerprints(identity: bytes) -> Callable[[int], str | None]:
    """For checkpoint lookup: the fingerprint of the first n identity bytes, None if shorter.

    A checkpoint taken while a file was short covers fewer bytes; comparing that prefix of the
    file as it is now (a growing prefix) is how small files keep their identity as they grow.
    """

    def of(length: int) -> str | None:
        return fingerprint(identity[:length]) if len(identity) >= length else None

    return of
