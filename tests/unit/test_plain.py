"""Tests for decoding plain text log lines into record groups (shipper.sources.plain)."""

from __future__ import annotations

import orjson
import pytest

from shipper.model import Chunk, LogFile, RecordGroup
from shipper.sinks.ecs import encode_plain, encode_spliced
from shipper.sources.partials import PartialJoiner
from shipper.sources.plain import FLAG_INVALID_UTF8, decode_text_chunk

READ_TIME = "2030-01-01T00:00:00.123456789Z"
FILE = LogFile(source="files", container_id="", path="/logs/app.log", handle="files:1:2:3")


def decode(data: bytes, start: int = 0) -> RecordGroup:
    return decode_text_chunk(Chunk(FILE, start, data), read_time=READ_TIME)


def line_offsets(data: bytes, start: int = 0) -> list[int]:
    """The offset of every line with content, found independently of the decoder."""
    offsets = []
    position = start
    for line in data.split(b"\n"):
        if line.removesuffix(b"\r"):
            offsets.append(position)
        position += len(line) + 1
    return offsets


def test_each_line_is_a_record() -> None:
    data = b"first line\nsecond: with \xc3\xa9 and \xe2\x82\xac\nthird\n"
    group = decode(data, start=4096)
    assert group.messages == ["first line", "second: with é and €", "third"]
    assert group.offsets == line_offsets(data, 4096) == [4096, 4107, 4131]
    assert group.timestamps == [READ_TIME] * 3
    assert group.streams == [""] * 3
    assert group.flags == {}
    assert (group.start, group.end) == (4096, 4096 + len(data))
    assert (group.invalid_json, group.invalid_time) == (0, 0)


def test_crlf_endings_are_not_part_of_the_message() -> None:
    data = b"windows\r\nunix\nmid\rline\r\n"
    group = decode(data)
    assert group.messages == ["windows", "unix", "mid\rline"]
    assert group.offsets == line_offsets(data)


@pytest.mark.parametrize(
    "data",
    [
        b"a\n\nb\n",
        b"\na\n\n\nb\n\n",
        b"a\r\n\r\nb\r\n",
        b"\r\na\n\rb\n",  # a lone "\r" is not an empty line: "\rb" is text
    ],
)
def test_empty_lines_are_skipped_with_offsets_kept(data: bytes) -> None:
    group = decode(data, start=7)
    assert [m.lstrip("\r") for m in group.messages] == ["a", "b"]
    assert group.offsets == line_offsets(data, 7)


def test_whitespace_lines_are_kept() -> None:
    group = decode(b"  \n\t\n \r\n")
    assert group.messages == ["  ", "\t", " "]


def test_only_empty_lines_give_an_empty_group_that_still_covers_them() -> None:
    group = decode(b"\n\r\n\n", start=10)
    assert len(group) == 0
    assert (group.start, group.end) == (10, 14)
    assert group.streams == group.timestamps == []


def test_invalid_utf8_is_replaced_and_flagged() -> None:
    data = b"ok\nlatin-1 caf\xe9\ncut \xe2\x82\nok again\n"
    group = decode(data)
    assert group.messages == ["ok", "latin-1 caf\ufffd", "cut \ufffd", "ok again"]
    assert group.flags == {1: (FLAG_INVALID_UTF8,), 2: (FLAG_INVALID_UTF8,)}
    assert group.offsets == line_offsets(data)


def test_last_line_without_newline_ships_as_it_is() -> None:
    group = decode(b"done\npartial line", start=0)
    assert group.messages == ["done", "partial line"]
    assert group.offsets == [0, 5]


def test_joiner_arguments_are_accepted_and_change_nothing() -> None:
    data = b"no newline at the end"
    joiner = PartialJoiner(1024)
    group = decode_text_chunk(Chunk(FILE, 0, data), read_time=READ_TIME, joiner=joiner, now=5.0)
    assert group.messages == ["no newline at the end"]
    assert joiner.pending == {}


def test_ndjson_lines_arrive_verbatim_for_decode_json() -> None:
    objects = [{"level": "info", "msg": "started", "n": 1}, {"msg": 'a "quoted" é'}]
    data = b"".join(orjson.dumps(o) + b"\r\n" for o in objects) + b"not json\n"
    group = decode(data)
    assert [orjson.loads(m) for m in group.messages[:2]] == objects
    assert group.messages[2] == "not json"
    assert group.flags == {}


def test_group_encodes_alike_both_ways_without_a_stream() -> None:
    group = decode(b"plain\nbad \xff byte\n\n  spaced\n")
    indices = range(len(group))
    assert encode_spliced(group, indices) == encode_plain(group, indices)
    documents = [orjson.loads(line) for line in encode_plain(group, indices).splitlines()]
    assert all("stream" not in document for document in documents)
    assert documents[1]["log"]["flags"] == [FLAG_INVALID_UTF8]
