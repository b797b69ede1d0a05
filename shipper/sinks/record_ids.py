"""Deterministic record ids: the same record read again (a replay after a crash) gets the same
id, so a destination that refuses a known id (Elasticsearch `create`) indexes it once."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from shipper.model import LogFile, RecordGroup

# Digest sizes: multiples of 3 bytes are URL-safe base64 without padding (9 bytes: a file's
# 12-character key; 12 bytes: 16 characters standing for a record's text).
_KEY_BYTES = 9
_TEXT_BYTES = 12


def record_ids(group: RecordGroup, indices: Sequence[int]) -> list[str]:
    """The id of each chosen record: where it starts and where it ends (issue 5).

    A record is the bytes between the two, so the same bytes read again (a replay after a
    crash) get the same id, whatever became of the text on the way. The end is in the id, not
    the start alone, because the same start may begin records with other boundaries: a
    multiline record cut by its flush timeout the first time and whole the second, a partial
    line shipped before its rest came. Such a record gets another id and is indexed again: a
    duplicate, never a loss (one id for both would have the destination refuse the longer
    record as already known).

    The id is the key of the file the record starts in (`file_key`), then its start offset
    and `-` and its end offset, in hex: `Ab3dEf9hIj_L1f40-1f5b2`. No digest per record: the key
    is one per file, and the offsets are text (issue 8 measured a blake2b per record at 7 % of
    the CPU). A record joined across a rotation ends in a later file than it starts in: its
    end offset is the one in that file, so a record's id does not depend on which group (of
    which file) carries it. Records of one file share a prefix, which Lucene looks ids up
    faster by than by random ones. A record whose end is not known (-1, or a group built by
    hand without ends) has `.` and a digest of its text instead of `-` and the end.
    """
    irregular = unpatterned(group)
    pattern = id_pattern(group).decode()
    offsets = group.offsets
    ends = group.ends
    if not irregular:
        return [pattern % (offsets[i], ends[i]) for i in indices]
    return [
        _irregular_id(group, i) if i in irregular else pattern % (offsets[i], ends[i])
        for i in indices
    ]


def file_key(file: LogFile) -> bytes:
    """What names a file in its records' ids: a digest of its stable id, which survives
    renames and restarts (identity.stable_id), or of its path while it has none (no complete
    first line yet)."""
    digest = hashlib.blake2b((file.fingerprint or file.path).encode(), digest_size=_KEY_BYTES)
    return base64.urlsafe_b64encode(digest.digest())


def id_pattern(group: RecordGroup) -> bytes:
    """A `%` format of the id of each record not in `unpatterned(group)`, filled with its
    start and end offsets: for a sink that formats its requests."""
    # URL-safe base64 holds no "%": the key needs no escaping in a format.
    return file_key(group.file) + b"%x-%x"


def unpatterned(group: RecordGroup) -> set[int]:
    """The records whose ids `id_pattern` does not give: those starting in another file
    (`group.heads`) and those whose end is not known."""
    ends = group.ends
    irregular = set(group.heads)
    known = len(ends)
    if known < len(group.offsets):
        irregular.update(range(known, len(group.offsets)))
    if min(ends, default=0) < 0:
        irregular.update(index for index, end in enumerate(ends) if end < 0)
    return irregular


def _irregular_id(group: RecordGroup, index: int) -> str:
    origin = group.heads.get(index) if group.heads else None
    key = file_key(group.file if origin is None else origin).decode()
    start = group.offsets[index]
    end = group.ends[index] if index < len(group.ends) else -1
    if end < 0:
        text = group.messages[index].encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(text, digest_size=_TEXT_BYTES).digest()
        return f"{key}{start:x}.{base64.urlsafe_b64encode(digest).decode()}"
    return f"{key}{start:x}-{end:x}"
