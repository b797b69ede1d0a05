"""The ECS-style JSON document of a record, built two ways: as a dict (plain) and spliced (fast).

Both are pure functions of a record group. The spliced form pre-serialises what every record of a
group shares and only serialises message, time, stream and offset per record (DESIGN.md §2); the
plain form is the reference it must equal byte for byte (checked by tests on hostile input).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from shipper.model import Batch, RecordGroup
from shipper.sinks import record_ids

_STREAMS = {
    "stdout": b',"stream":"stdout"',
    "stderr": b',"stream":"stderr"',
    "": b"",  # an invalid_json line has no stream
}


# What orjson escapes in a string; anything else it writes as the string's UTF-8.
_ESCAPED = re.compile(r'["\\\x00-\x1f]')
# What RFC 3339 timestamps are written with; none needs escaping.
_RFC3339_CHARACTERS = b"0123456789-:.+TZtz"


def build_document(group: RecordGroup, index: int) -> dict[str, Any]:
    """The plain reference: the record as a dict, in the field order the spliced form writes."""
    document: dict[str, Any] = {
        "@timestamp": group.timestamps[index],
        "message": group.messages[index],
    }
    stream = group.streams[index]
    if stream:
        document["stream"] = stream
    enrichment = group.enrichment
    if enrichment is None:
        document["container"] = {"id": group.file.container_id}
    else:
        document.update(enrichment.document)
    origin = group.heads.get(index, group.file)
    log_file = {"path": origin.path}
    if origin.fingerprint:
        log_file["fingerprint"] = origin.fingerprint
    log: dict[str, Any] = {"file": log_file, "offset": group.offsets[index]}
    flags = group.flags.get(index)
    if flags:
        log["flags"] = list(flags)
    document["log"] = log
    attrs = group.attrs.get(index)
    if attrs:
        document["docker"] = {**document.get("docker", {}), "attrs": attrs}
    return document


def encode_plain(group: RecordGroup, indices: Sequence[int]) -> bytes:
    """NDJSON of the chosen records through `build_document` + orjson: slow, obviously right.

    A group whose records were processed carries their finished lines: those are the records.
    """
    documents = group.documents
    if documents is not None:
        return b"".join(documents[i] for i in indices)
    return b"".join(orjson.dumps(build_document(group, i)) + b"\n" for i in indices)


def encode_spliced(group: RecordGroup, indices: Sequence[int]) -> bytes:
    """NDJSON of the chosen records, spliced from pre-serialised bytes: equal to `encode_plain`."""
    documents = group.documents
    if documents is not None:
        # Processed records: each line was built once, after the processing steps.
        return b"".join(documents[i] for i in indices)
    # Small pieces joined once: for one run of lines this copies each byte once, where a
    # bytes object per line (spliced_lines) would copy it twice.
    dumps = orjson.dumps
    shared = _shared_fields(group)
    timestamps = group.timestamps
    messages = group.messages
    streams = group.streams
    offsets = group.offsets
    stream_fields = _StreamFields(_STREAMS)
    irregular = _irregular(group)
    parts: list[bytes] = []
    append = parts.append
    for i in indices:
        if i in irregular:
            append(dumps(build_document(group, i)) + b"\n")
            continue
        append(b'{"@timestamp":"')
        append(timestamps[i].encode())
        append(b'","message":')
        append(dumps(messages[i]))
        append(stream_fields[streams[i]])
        append(shared)
        append(str(offsets[i]).encode())
        append(b"}}\n")
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class IdHead:
    """A head per record made of its id: `prefix`, the record's id (record_ids), then `suffix`
    (an action line around the id)."""

    prefix: bytes
    suffix: bytes


def spliced_lines(
    group: RecordGroup, indices: Sequence[int], heads: Sequence[bytes] | IdHead | None = None
) -> list[bytes]:
    """`encode_spliced`'s lines as one bytes object each (newline included), after the k-th
    head for the k-th record if given (a sink's action line): for sinks that frame every record.

    Each line is one `%` format, filled with the record's own values (an IdHead's prefix, id
    pattern and suffix are part of the format): cheaper than splitting `encode_spliced`'s
    output and joining each piece to its head, which made the elasticsearch output's encoding
    the largest cost after decoding (issue 8). Not for processed records (`group.documents`):
    those are finished lines already.
    """
    dumps = orjson.dumps
    # The shared bytes become part of the format, so a "%" in them (a path, a label) is escaped.
    document = (
        b'{"@timestamp":"%b","message":%b%b'
        + _shared_fields(group).replace(b"%", b"%%")
        + b"%d}}\n"
    )
    timestamps = group.timestamps
    messages = group.messages
    streams = group.streams
    offsets = group.offsets
    stream_fields = _StreamFields(_STREAMS)
    irregular = _irregular(group)
    if isinstance(heads, IdHead):
        # The id is part of the format too, filled with the record's start and end; a
        # record whose id has another form is built the plain way.
        prefix = heads.prefix.replace(b"%", b"%%")
        suffix = heads.suffix.replace(b"%", b"%%")
        line = prefix + record_ids.id_pattern(group) + suffix + document
        irregular |= record_ids.unpatterned(group)
        ends = group.ends
        ids = iter(record_ids.record_ids(group, [i for i in indices if i in irregular]))
        # One comprehension for both kinds of record: an empty set's `in` costs little.
        return [
            heads.prefix
            + next(ids).encode()
            + heads.suffix
            + dumps(build_document(group, i))
            + b"\n"
            if i in irregular
            else line
            % (
                offsets[i],
                ends[i],
                timestamps[i].encode(),
                dumps(messages[i]),
                stream_fields[streams[i]],
                offsets[i],
            )
            for i in indices
        ]
    line = b"%b" + document
    values = heads if heads is not None else [b""] * len(indices)
    return [
        value + dumps(build_document(group, i)) + b"\n"
        if i in irregular
        else line
        % (value, timestamps[i].encode(), dumps(messages[i]), stream_fields[streams[i]], offsets[i])
        for value, i in zip(values, indices, strict=True)
    ]


def _shared_fields(group: RecordGroup) -> bytes:
    """What every record of the group writes after its stream, up to its offset's value."""
    dumps = orjson.dumps
    fingerprint = group.file.fingerprint
    return (
        b","
        + (
            group.enrichment.fragment
            if group.enrichment is not None
            else b'"container":{"id":' + dumps(group.file.container_id) + b"}"
        )
        + b',"log":{"file":{"path":'
        + dumps(group.file.path)
        + (b',"fingerprint":' + dumps(fingerprint) if fingerprint else b"")
        + b'},"offset":'
    )


def _irregular(group: RecordGroup) -> set[int]:
    """The records the spliced forms build through `build_document` instead: those with flags,
    attrs or a head file, and any whose timestamp JSON would escape.

    Timestamps are spliced as they are, which is right for what the decoders make of them
    (RFC 3339 text); one that needs escaping (a bug upstream) would otherwise differ from the
    plain form, and a raw newline in it would break the one-line-per-record framing. One
    search over the group's timestamps checks them all.
    """
    irregular = group.flags.keys() | group.attrs.keys() | group.heads.keys()
    timestamps = group.timestamps
    # First the quick look: deleting RFC 3339's characters from all of them leaves nothing (a
    # fifth of a regular expression search, which cost 3 % of the CPU). Anything left, even
    # a character orjson would not escape, has each timestamp checked.
    joined = "".join(timestamps)
    if not joined.isascii() or joined.encode().translate(None, _RFC3339_CHARACTERS):
        irregular.update(i for i, timestamp in enumerate(timestamps) if _ESCAPED.search(timestamp))
    return irregular


class _StreamFields(dict[str, bytes]):
    """The `"stream"` member of each stream value, serialised on first use.

    One per call, so a hostile writer's stream values are not kept beyond the group.
    """

    def __missing__(self, stream: str) -> bytes:
        value = self[stream] = b',"stream":' + orjson.dumps(stream)
        return value


def encode_batch(batch: Batch) -> bytes:
    """NDJSON for every record of a batch, in `Batch.records()` order."""
    return b"".join(
        encode_spliced(group, indices)
        for group, indices in zip(batch.groups, batch.selection, strict=True)
    )


def record_document(group: RecordGroup, index: int) -> Mapping[str, Any]:
    """A record as the outputs send it, as a dict: processed when the source has processors."""
    if group.documents is None:
        return build_document(group, index)
    try:
        document = orjson.loads(group.documents[index])
    except orjson.JSONDecodeError:
        return {}
    return document if isinstance(document, dict) else {}


def field_value(node: Any, path: Sequence[str]) -> Any:
    """The value at a dotted path of a record; a key that itself holds dots (a label such as
    `app.kubernetes.io/name` kept undotted) matches too."""
    if not path:
        return node
    if not isinstance(node, Mapping):
        return None
    for width in range(len(path), 0, -1):
        key = ".".join(path[:width])
        if key in node:
            found = field_value(node[key], path[width:])
            if found is not None:
                return found
    return None
