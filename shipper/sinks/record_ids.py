"""Deterministic record ids: the same record read again (a replay after a crash) gets the same
id, so a destination that refuses a known id (Elasticsearch `create`) indexes it once."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from shipper.model import RecordGroup


def record_ids(group: RecordGroup, indices: Sequence[int]) -> list[str]:
    """The id of each chosen record: a digest of the identity of the file its first line is in,
    the offset of that line, and the offset where the record ends (issue 5).

    File and offset say where a record starts; the end offset says where it ends. A record is
    the bytes between the two, so the same bytes read again (a replay after a crash) get the
    same id, whatever became of the text on the way. The end is in the id, not the start alone,
    because the same start may begin records with other boundaries: a multiline record cut by
    its flush timeout the first time and whole the second, a partial line shipped before its
    rest came. Such a record gets another id and is indexed again: a duplicate, never a loss
    (one id for both would have the destination refuse the longer record as already known).

    A group built without ends (by hand, in tests), or a record whose end is not known (-1),
    falls back to the record's text in its place.
    """
    text = record_id_bytes(group, indices).decode()
    return [text[start : start + ID_CHARS] for start in range(0, len(text), ID_CHARS)]


def record_id_bytes(group: RecordGroup, indices: Sequence[int]) -> bytes:
    """`record_ids`, as one run of ASCII bytes: the k-th id is `[k * ID_CHARS:(k + 1) * ID_CHARS]`.

    For a sink that splices the ids into its request: it slices them out as it goes.
    """
    blake2b = hashlib.blake2b
    file = group.file
    heads = group.heads
    offsets = group.offsets
    ends = group.ends
    known = len(ends)
    messages = group.messages
    # The stable id of the file (a hash of its first line) survives renames and restarts; a
    # file without one yet (no complete first line) is named by its path.
    default = (file.fingerprint or file.path).encode()
    if not heads and known == len(offsets) and min(ends, default=0) >= 0:
        # Every record starts in this file and its end is known: the whole digest input in one
        # format and one constructor call (the same bytes the updates below feed, for less
        # per-record work: this runs for every record sent).
        digests = [
            blake2b(
                b"%b\0%d-%d" % (default, offsets[i], ends[i]), digest_size=_DIGEST_BYTES
            ).digest()
            for i in indices
        ]
    else:
        digests = []
        for index in indices:
            origin = heads.get(index) if heads else None
            prefix = default if origin is None else (origin.fingerprint or origin.path).encode()
            digest = blake2b(prefix, digest_size=_DIGEST_BYTES)
            end = ends[index] if index < known else -1
            if end >= 0:
                digest.update(b"\0%d-%d" % (offsets[index], end))  # "-": never the text's form
            else:
                digest.update(b"\0%d\0" % offsets[index])
                digest.update(messages[index].encode("utf-8", "surrogatepass"))
            digests.append(digest.digest())
    # 15 bytes are exactly 20 base64 characters, without padding: the digests of a whole group
    # are encoded in one call and cut apart, rather than one call per record.
    return base64.urlsafe_b64encode(b"".join(digests))


_DIGEST_BYTES = 15
ID_CHARS = _DIGEST_BYTES * 4 // 3  # base64 characters of one id
