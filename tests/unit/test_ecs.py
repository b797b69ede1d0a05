"""Tests for the ECS document encoders: the spliced fast path must equal the plain reference."""

from __future__ import annotations

import random

import orjson
import pytest

from shipper.model import Batch, LogFile, RecordGroup
from shipper.sinks.ecs import build_document, encode_batch, encode_plain, encode_spliced
from shipper.sources.docker_json import format_time_ns

HOSTILE_PIECES = [
    '"',
    "\\",
    '\\"',
    "\\u0000",
    "/",
    "</script>",
    "\x00",
    "\x01",
    "\x08",
    "\x0c",
    "\x1b[31m",
    "\x1f",
    "\x7f",
    "\t",
    "\n",
    "\r\n",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\ufffd",
    "\u200b",
    "é",
    "漢字",
    "😀",
    "👩‍👩‍👧",  # a ZWJ sequence
    "\U0010ffff",
    "{",
    "}",
    ",",
    ":",
    '{"a":1}',
    " ",
    "",
]


def hostile_string(rng: random.Random, *, max_pieces: int = 12) -> str:
    """Mixes hostile pieces with random code points (surrogates excluded: orjson refuses them)."""
    parts = []
    for _ in range(rng.randint(0, max_pieces)):
        roll = rng.random()
        if roll < 0.5:
            parts.append(rng.choice(HOSTILE_PIECES))
        elif roll < 0.8:
            parts.append(chr(rng.randint(0, 0x7F)))
        else:
            code = rng.randint(0x80, 0x10FFFF)
            if 0xD800 <= code <= 0xDFFF:
                code = 0xFFFD
            parts.append(chr(code))
    return "".join(parts)


def random_group(rng: random.Random) -> RecordGroup:
    file = LogFile(
        source=hostile_string(rng, max_pieces=3) or "docker",
        container_id=rng.choice(["c0ffee" * 10 + "abcd", hostile_string(rng), ""]),
        path=rng.choice(
            [
                "/var/lib/docker/containers/abc/abc-json.log",
                '/tmp/we"ird\\pa th/ünï😀/x-json.log',
                hostile_string(rng),
            ]
        ),
        handle="h",
    )
    count = rng.randint(0, 30)
    start = rng.randint(0, 10**12)
    group = RecordGroup(file=file, start=start, end=start + 10 * count + 1)
    offset = start
    for index in range(count):
        roll = rng.random()
        if roll < 0.05:
            message = "x" * rng.randint(16_000, 70_000)
        elif roll < 0.1:
            message = hostile_string(rng, max_pieces=2000)
        else:
            message = hostile_string(rng)
        group.messages.append(message)
        group.timestamps.append(format_time_ns(rng.randint(0, 4_102_444_800 * 10**9)))
        group.streams.append(
            rng.choice(
                ["stdout", "stderr", "", "stdin", "STDOUT", hostile_string(rng, max_pieces=3)]
            )
        )
        group.offsets.append(offset)
        offset += rng.randint(1, 20_000)
        if rng.random() < 0.2:
            group.flags[index] = rng.choice(
                [("invalid_json",), ("invalid_time",), ("invalid_time", "partial"), ()]
            )
        if rng.random() < 0.15:
            group.attrs[index] = {
                hostile_string(rng, max_pieces=3): hostile_string(rng, max_pieces=5)
                for _ in range(rng.randint(0, 4))
            }
    return group


def make_group(
    messages: list[str],
    *,
    streams: list[str] | None = None,
    container_id: str = "abc123",
    path: str = "/var/lib/docker/containers/abc123/abc123-json.log",
    flags: dict[int, tuple[str, ...]] | None = None,
    attrs: dict[int, dict[str, str]] | None = None,
    start: int = 0,
) -> RecordGroup:
    group = RecordGroup(
        file=LogFile("docker", container_id, path, "h"), start=start, end=start + 100
    )
    group.messages.extend(messages)
    group.streams.extend(streams if streams is not None else ["stdout"] * len(messages))
    group.timestamps.extend(f"2024-05-06T07:08:{n % 60:02d}.{n:09d}Z" for n in range(len(messages)))
    group.offsets.extend(start + 17 * n for n in range(len(messages)))
    group.flags.update(flags or {})
    group.attrs.update(attrs or {})
    return group


def check_lines(group: RecordGroup, indices: list[int], data: bytes) -> None:
    """Every line is a JSON document with exactly the documented fields."""
    lines = data.split(b"\n")
    assert lines[-1] == b""
    lines.pop()
    assert len(lines) == len(indices)
    for line, i in zip(lines, indices, strict=True):
        document = orjson.loads(line)
        expected: dict[str, object] = {
            "@timestamp": group.timestamps[i],
            "message": group.messages[i],
            "container": {"id": group.file.container_id},
            "log": {"file": {"path": group.file.path}, "offset": group.offsets[i]},
        }
        if group.streams[i]:
            expected["stream"] = group.streams[i]
        if group.flags.get(i):
            expected["log"]["flags"] = list(group.flags[i])  # type: ignore[index]
        if group.attrs.get(i):
            expected["docker"] = {"attrs": group.attrs[i]}
        assert document == expected


def test_hand_built_group_spliced_equals_plain_and_has_documented_fields() -> None:
    group = make_group(
        [
            "plain",
            'quote " and backslash \\ and \\"',
            "tab\tnewline\ncr\r\nnul\x00esc\x1b",
            "\u2028\u2029",
            "😀 漢字 é",
            "",
            "x" * 100_000,
            "</script><b>&amp;",
            "flagged",
            "with attrs",
        ],
        streams=[
            "stdout",
            "stderr",
            "",
            "custom",
            'str"eam',
            "stdout",
            "stderr",
            "\u2028",
            "",
            "stdout",
        ],
        container_id='id"with\\quote😀',
        path='/tmp/pa"th\\ü/\u2028.log',
        flags={8: ("invalid_json",)},
        attrs={9: {"tag": 'we"b', "ünï": "😀\n"}},
        start=2**40,
    )
    indices = list(range(len(group)))
    spliced = encode_spliced(group, indices)
    assert spliced == encode_plain(group, indices)
    check_lines(group, indices, spliced)


def test_stdout_document_bytes() -> None:
    group = make_group(["hello"])
    assert encode_spliced(group, [0]) == (
        b'{"@timestamp":"2024-05-06T07:08:00.000000000Z","message":"hello","stream":"stdout",'
        b'"container":{"id":"abc123"},"log":{"file":{"path":'
        b'"/var/lib/docker/containers/abc123/abc123-json.log"},"offset":0}}\n'
    )


def test_flags_appear_only_when_present() -> None:
    group = make_group(
        ["a", "b", "c"], flags={1: ("invalid_time",), 2: ()}, attrs={2: {}}, streams=["", "", ""]
    )
    documents = [orjson.loads(line) for line in encode_spliced(group, [0, 1, 2]).splitlines()]
    assert "flags" not in documents[0]["log"]
    assert documents[1]["log"]["flags"] == ["invalid_time"]
    assert "flags" not in documents[2]["log"]
    assert "docker" not in documents[2]
    assert all("stream" not in document for document in documents)
    assert encode_spliced(group, [0, 1, 2]) == encode_plain(group, [0, 1, 2])


def test_selection_is_encoded_in_the_given_order() -> None:
    group = make_group(["r0", "r1", "r2", "r3"], flags={2: ("invalid_json",)})
    for indices in ([], [3], [2, 0], [3, 1, 2], [0, 0]):
        spliced = encode_spliced(group, indices)
        assert spliced == encode_plain(group, indices)
        assert [orjson.loads(line)["message"] for line in spliced.splitlines()] == [
            f"r{i}" for i in indices
        ]


def test_encode_batch_follows_records_order() -> None:
    first = make_group(["a0", "a1", "a2"], container_id="a")
    second = make_group(["b0", "b1"], container_id="b", flags={0: ("invalid_json",)})
    batch = Batch([first, second], [[2, 0], [1, 0]])
    data = encode_batch(batch)
    assert data == encode_plain(first, [2, 0]) + encode_plain(second, [1, 0])
    documents = [orjson.loads(line) for line in data.splitlines()]
    assert [(d["container"]["id"], d["message"]) for d in documents] == [
        (group.file.container_id, group.messages[index]) for group, index in batch.records()
    ]


def test_build_document_field_order() -> None:
    group = make_group(["m"], flags={0: ("invalid_time",)}, attrs={0: {"k": "v"}})
    assert list(build_document(group, 0)) == [
        "@timestamp",
        "message",
        "stream",
        "container",
        "log",
        "docker",
    ]


@pytest.mark.parametrize("seed", range(40))
def test_spliced_equals_plain_on_random_hostile_groups(seed: int) -> None:
    rng = random.Random(seed)
    group = random_group(rng)
    all_indices = list(range(len(group)))
    spliced = encode_spliced(group, all_indices)
    assert spliced == encode_plain(group, all_indices)
    check_lines(group, all_indices, spliced)
    some = [i for i in all_indices if rng.random() < 0.5]
    rng.shuffle(some)
    assert encode_spliced(group, some) == encode_plain(group, some)


def test_generator_is_actually_hostile() -> None:
    """Guard the generator itself: the seeds above must exercise the cases that matter."""
    groups = [random_group(random.Random(seed)) for seed in range(40)]
    messages = [m for g in groups for m in g.messages]
    streams = {s for g in groups for s in g.streams}
    assert any('"' in m for m in messages)
    assert any("\\" in m for m in messages)
    assert any("\x00" in m for m in messages)
    assert any("\u2028" in m for m in messages)
    assert any("😀" in m for m in messages)
    assert any(len(m) > 16_000 for m in messages)
    assert "" in messages
    assert {"stdout", "stderr", "", "stdin"} <= streams
    assert any(g.flags for g in groups)
    assert any(g.attrs for g in groups)
    assert any('"' in g.file.path for g in groups)
    assert any(len(g) == 0 for g in groups) or any(len(g) < 3 for g in groups)
