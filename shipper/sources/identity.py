"""File identity: a fingerprint of a file's first bytes, which survives renames and inode reuse."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from shipper.checkpoints import MAX_HEAD_LEN

HEAD_BYTES = MAX_HEAD_LEN


def fingerprint(head: bytes) -> str:
    """Hex SHA-256 of a file's leading bytes (at most HEAD_BYTES of them)."""
    return hashlib.sha256(head[:HEAD_BYTES]).hexdigest()


def stable_id(head: bytes) -> str:
    """The identity a record carries (`log.file.fingerprint`): its file's first line, hashed.

    The checkpoint identity grows with a short file (up to HEAD_BYTES); a record needs one that
    never changes, so a replay after a restart names the same file: the first line (at most
    HEAD_BYTES of it) is written once and then fixed. Docker's first line holds a nanosecond
    time, so it is unique in practice.
    """
    end = head.find(b"\n", 0, HEAD_BYTES)
    return hashlib.sha256(head[: end + 1 if end >= 0 else HEAD_BYTES]).hexdigest()


def prefix_fingerprints(head: bytes) -> Callable[[int], str | None]:
    """For checkpoint lookup: the fingerprint of the first n bytes, None if the file is shorter.

    A checkpoint taken while a file was short covers fewer bytes; comparing that prefix of the
    file as it is now (a growing prefix) is how small files keep their identity as they grow.
    """

    def of(length: int) -> str | None:
        return fingerprint(head[:length]) if len(head) >= length else None

    return of
