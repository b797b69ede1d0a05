"""The `_bulk` lines the elasticsearch output splices (issue 8) against the plain path: action
lines as orjson writes them, ids as `record_ids` documents them, documents from `encode_plain`.
Byte for byte, on hostile groups: escapes, invalid UTF-8 read as text, huge lines, every field
combination, "%" wherever a format could take it, and timestamps no decoder would make."""

from __future__ import annotations

import base64
import hashlib
import random
import sys

import orjson
import pytest

from shipper.config import ElasticsearchOutputConfig
from shipper.model import Batch, Chunk, Enrichment, LogFile, RecordGroup
from shipper.sinks.ecs import _ESCAPED, IdHead, encode_plain, encode_spliced, spliced_lines
from shipper.sinks.elasticsearch import ElasticsearchSink
from shipper.sinks.record_ids import record_ids
from shipper.sources.docker_json import decode_chunk
from tests.unit.test_ecs import hostile_string, random_group
from tests.unit.test_elasticsearch_sink import output_config

READ_TIME = "2030-01-01T00:00:00.000000000Z"


def reference_id(group: RecordGroup, index: int) -> str:
    """record_ids' docstring, step by step: the key of the file the record starts in (its
    stable id, or its path, as blake2b of 9 bytes in URL-safe base64), the start offset in hex,
    then `-` and the end offset in hex (in the file the record ends in), or `.` and a digest of
    the text when the end is not known."""
    origin = group.heads.get(index, group.file)
    digest = hashlib.blake2b((origin.fingerprint or origin.path).encode(), digest_size=9)
    key = base64.urlsafe_b64encode(digest.digest()).decode()
    start = group.offsets[index]
    end = group.ends[index] if index < len(group.ends) else -1
    if end < 0:
        text = group.messages[index].encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(text, digest_size=12)
        return f"{key}{start:x}.{base64.urlsafe_b64encode(digest.digest()).decode()}"
    return f"{key}{start:x}-{end:x}"


def reference_line(sink: ElasticsearchSink, group: RecordGroup, index: int) -> bytes:
    """One record's action and document lines, built the plain way, one record at a time."""
    name = sink._router.names(group, [index])[0]
    action = orjson.dumps({"create": {"_index": name, "_id": reference_id(group, index)}})
    document = encode_plain(group, [index]).removesuffix(b"\n").replace(b"\n", b" ")
    return action + b"\n" + document + b"\n"


HOSTILE_TIMESTAMPS = [
    "2024-05-06T07:08:09.000000000Z\n",
    '2024-05-06T07:08:09"Z',
    "2024-05-06\\T07",
    "\x00",
    "",
    "é😀",
    "100%d%b%%",
]


def hostile_group(rng: random.Random) -> RecordGroup:
    """test_ecs's random group, with what the bulk path adds: ends (known, unknown, missing),
    head files, enrichment, fingerprints, "%" in every shared field, odd timestamps."""
    group = random_group(rng)
    count = len(group)
    percent = rng.random() < 0.3
    fingerprint = rng.choice(["", "f" * 64, "%d%b%%" if percent else "e" * 64])
    file = group.file
    group.file = LogFile(
        file.source,
        file.container_id + ("%s%%" if percent else ""),
        file.path + ("%d" if percent else ""),
        file.handle,
        fingerprint,
    )
    roll = rng.random()
    if roll < 0.6:
        group.ends = [offset + rng.randint(1, 500) for offset in group.offsets]
        if count and rng.random() < 0.2:
            group.ends[rng.randrange(count)] = -1
    elif roll < 0.8 and count:
        group.ends = [offset + 1 for offset in group.offsets[: rng.randrange(count)]]
    if count and rng.random() < 0.2:
        earlier = LogFile("docker", "c", "/c/c-json.log.1", "h0", rng.choice(["", "a" * 64]))
        group.heads[rng.randrange(count)] = earlier
    if rng.random() < 0.4:
        document = {
            "container": {"id": group.file.container_id, "name": hostile_string(rng)},
            "host": {"name": "100%"},
        }
        group.enrichment = Enrichment(document, orjson.dumps(document)[1:-1])
    if count and rng.random() < 0.15:
        group.timestamps[rng.randrange(count)] = rng.choice(HOSTILE_TIMESTAMPS)
    if count and rng.random() < 0.1:
        group.documents = [
            orjson.dumps({"message": message}) + rng.choice([b"\n", b"\nraw\n", b""])
            for message in group.messages
        ]
    return group


def selection(rng: random.Random, count: int) -> list[int]:
    roll = rng.random()
    if roll < 0.5 or not count:
        return list(range(count))
    if roll < 0.8:
        return sorted(rng.sample(range(count), rng.randint(1, count)))
    return [rng.randrange(count) for _ in range(rng.randint(1, 2 * count))]  # repeats, any order


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"index": "logs-%Y.%m.%d"},
        {
            "index": "logs-{container.name}",
            "allowed_indices": ["logs-*"],
            "fallback_index": "logs-other",
        },
    ],
    ids=["data-stream", "dated", "field"],
)
@pytest.mark.parametrize("seed", range(40))
def test_bulk_lines_equal_the_plain_path(seed: int, options: dict[str, object]) -> None:
    config: ElasticsearchOutputConfig = output_config({"hosts": ["http://es:9200"], **options})
    sink = ElasticsearchSink(config)
    rng = random.Random(seed)
    groups = [hostile_group(rng) for _ in range(rng.randint(1, 5))]
    batch = Batch(groups, [selection(rng, len(group)) for group in groups])
    lines, names = sink._encode(batch)
    expected = [reference_line(sink, group, index) for group, index in batch.records()]
    assert lines == expected
    assert names == [sink._router.names(group, [index])[0] for group, index in batch.records()]
    for line in lines:
        assert line.count(b"\n") == 2  # framing: one action line, one document line


@pytest.mark.parametrize("seed", range(200))
def test_spliced_documents_and_ids_equal_the_plain_path(seed: int) -> None:
    rng = random.Random(1000 + seed)
    group = hostile_group(rng)
    group.documents = None
    indices = selection(rng, len(group))
    assert encode_spliced(group, indices) == encode_plain(group, indices)
    heads = [hostile_string(rng).encode() for _ in indices]
    assert spliced_lines(group, indices, heads) == [
        head + encode_plain(group, [index]) for head, index in zip(heads, indices, strict=True)
    ]
    head = IdHead(hostile_string(rng).encode() + b"%s%", b"%d%%" + hostile_string(rng).encode())
    assert spliced_lines(group, indices, head) == [
        head.prefix
        + reference_id(group, index).encode()
        + head.suffix
        + encode_plain(group, [index])
        for index in indices
    ]
    assert record_ids(group, indices) == [reference_id(group, index) for index in indices]


def test_decoded_hostile_lines_equal_the_plain_path() -> None:
    """Through the real decoder: escapes, invalid JSON and invalid UTF-8 (shipped as text with
    replacement characters), a 1 MiB line, odd streams and times, attrs."""
    lines = [
        b'{"log":"plain\\n","stream":"stdout","time":"2024-05-06T07:08:09.123456789Z"}',
        b'{"log":"esc \\" \\\\ \\u0000 \\u2028 \\ud83d\\ude00 \\t\\n","stream":"stderr",'
        b'"time":"2024-05-06T07:08:09.1Z"}',
        b'{"log":"100%d %s %b %%\\r\\n","stream":"std%out","time":"2024-05-06T09:08:09+02:00"}',
        b'{"log":"bad time\\n","stream":"stdout","time":"2024-02-30T07:08:09Z"}',
        b'{"log":"no time\\n","stream":"stdout"}',
        b'{"log":"attrs\\n","stream":"stdout","time":"2024-05-06T07:08:09Z","attrs":{"a":"%"}}',
        b"not json \xff\xfe invalid utf-8",
        b'{"log":"\xff\xfe raw invalid utf-8 in a string\\n","stream":"stdout"}',
        b'{"log":"' + b"x" * (1 << 20) + b'\\n","stream":"stdout","time":"2024-05-06T07:08:09Z"}',
        b'{"log":42,"stream":"stdout"}',
        b"[1,2,3]",
        b"",
        b"\r",
    ]
    file = LogFile("docker", "c%d", "/c/100%/c-json.log", "h", "f%s" * 20)
    group = decode_chunk(Chunk(file, 7, b"\n".join(lines) + b"\n"), read_time=READ_TIME)
    assert len(group) == len(lines) - 2  # the blank lines carry nothing
    indices = list(range(len(group)))
    assert encode_spliced(group, indices) == encode_plain(group, indices)
    sink = ElasticsearchSink(output_config({"hosts": ["http://es:9200"]}))
    lines_sent, _ = sink._encode(Batch.of([group]))
    assert lines_sent == [reference_line(sink, group, index) for index in indices]


def test_the_escape_gate_matches_orjson_on_every_code_point() -> None:
    """Timestamps are spliced unescaped unless `_ESCAPED` finds something: it must find exactly
    what orjson would escape (one search over all code points but the surrogates)."""
    text = "".join(chr(code) for code in range(sys.maxunicode + 1) if not 0xD800 <= code < 0xE000)
    escaped = {char for char in text if orjson.dumps(char) != b'"' + char.encode() + b'"'}
    assert {char for char in text if _ESCAPED.search(char)} == escaped
