"""File identity: a fingerprint of a file's first bytes, which survives renames and inode reuse."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from shipper.checkpoints import MAX_HEAD_LEN

HEAD_BYTES = MAX_HEAD_LEN


def fingerprint(head: bytes) -> str:
    """Hex SHA-256 of a file's leading bytes (at most HEAD_BYTES of them)."""
    return hashlib.sha256(head[:HEAD_BYTES]).hexdigest()


def read_head(fd: int) -> bytes:
    """The file's first HEAD_BYTES bytes, or all of it when shorter."""
    return os.pread(fd, HEAD_BYTES, 0)


def prefix_fingerprints(head: bytes) -> Callable[[int], str | None]:
    """For checkpoint lookup: the fingerprint of the first n bytes, None if the file is shorter.

    A checkpoint taken while a file was short covers fewer bytes; comparing that prefix of the
    file as it is now (a growing prefix) is how small files keep their identity as they grow.
    """

    def of(length: int) -> str | None:
        return fingerprint(head[:length]) if len(head) >= length else None

    return of
