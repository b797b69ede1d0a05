"""The ECS-style JSON document of a record, built two ways: as a dict (plain) and spliced (fast).

Both are pure functions of a record group. The spliced form pre-serialises what every record of a
group shares and only serialises message, time, stream and offset per record (DESIGN.md §2); the
plain form is the reference it must equal byte for byte (checked by tests on hostile input).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from shipper.model import Batch, RecordGroup

_STREAMS = {
    "stdout": b',"stream":"stdout"',
    "stderr": b',"stream":"stderr"',
    "": b"",  # an invalid_json line has no stream
}


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
    dumps = orjson.dumps
    fingerprint = group.file.fingerprint
    shared = (
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
    timestamps = group.timestamps
    messages = group.messages
    streams = group.streams
    offsets = group.offsets
    flags = group.flags
    attrs = group.attrs
    heads = group.heads
    parts: list[bytes] = []
    append = parts.append
    for i in indices:
        if i in flags or i in attrs or i in heads:
            append(dumps(build_document(group, i)) + b"\n")
            continue
        stream_bytes = _STREAMS.get(streams[i])
        if stream_bytes is None:
            stream_bytes = b',"stream":' + dumps(streams[i])
        append(b'{"@timestamp":"')
        append(timestamps[i].encode())
        append(b'","message":')
        append(dumps(messages[i]))
        append(stream_bytes)
        append(shared)
        append(str(offsets[i]).encode())
        append(b"}}\n")
    return b"".join(parts)


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
