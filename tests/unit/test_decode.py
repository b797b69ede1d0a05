"""Tests for decoding Docker json-file lines into record groups (shipper.sources.docker_json)."""

from __future__ import annotations

import orjson
import pytest

from shipper.model import Chunk, LogFile, RecordGroup
from shipper.sources.docker_json import (
    FLAG_INVALID_JSON,
    FLAG_INVALID_TIME,
    decode_chunk,
    format_time_ns,
    normalize_time,
)

READ_TIME = "2030-01-01T00:00:00.000000000Z"
FILE = LogFile(
    source="docker",
    container_id="c0ffee",
    path="/var/lib/docker/containers/c0ffee/c0ffee-json.log",
    handle="h1",
)


def entry(log: object, *, stream: str = "stdout", time: object = "2024-05-06T07:08:09.5Z") -> bytes:
    return orjson.dumps({"log": log, "stream": stream, "time": time})


def decode(data: bytes, start: int = 0) -> RecordGroup:
    return decode_chunk(Chunk(FILE, start, data), read_time=READ_TIME)


def line_offsets(data: bytes, start: int = 0) -> list[int]:
    """The file offset of every non-blank line of `data`, computed independently of the decoder."""
    offsets = []
    position = start
    for line in data.splitlines(keepends=True):
        if line.strip(b"\r\n"):
            offsets.append(position)
        position += len(line)
    return offsets


# --- time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-05-06T07:08:09Z", "2024-05-06T07:08:09.000000000Z"),  # no dot at all
        ("2024-05-06T07:08:09.1Z", "2024-05-06T07:08:09.100000000Z"),
        ("2024-05-06T07:08:09.12Z", "2024-05-06T07:08:09.120000000Z"),
        ("2024-05-06T07:08:09.123Z", "2024-05-06T07:08:09.123000000Z"),
        ("2024-05-06T07:08:09.1234Z", "2024-05-06T07:08:09.123400000Z"),
        ("2024-05-06T07:08:09.12345Z", "2024-05-06T07:08:09.123450000Z"),
        ("2024-05-06T07:08:09.123456Z", "2024-05-06T07:08:09.123456000Z"),
        ("2024-05-06T07:08:09.1234567Z", "2024-05-06T07:08:09.123456700Z"),
        ("2024-05-06T07:08:09.12345678Z", "2024-05-06T07:08:09.123456780Z"),
        ("2024-05-06T07:08:09.123456789Z", "2024-05-06T07:08:09.123456789Z"),
        ("2024-05-06T07:08:09.000000001Z", "2024-05-06T07:08:09.000000001Z"),
        ("2024-05-06T07:08:09.999999999Z", "2024-05-06T07:08:09.999999999Z"),
    ],
)
def test_time_fraction_of_zero_to_nine_digits_becomes_nine_digits(raw: str, expected: str) -> None:
    assert normalize_time(raw) == expected
    group = decode(entry("x\n", time=raw) + b"\n")
    assert group.timestamps == [expected]
    assert group.flags == {}
    assert group.invalid_time == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-05-06T09:08:09.123456789+02:00", "2024-05-06T07:08:09.123456789Z"),
        ("2024-05-06T01:38:09.5-05:30", "2024-05-06T07:08:09.500000000Z"),
        ("2024-05-06T07:08:09+00:00", "2024-05-06T07:08:09.000000000Z"),
        ("2024-05-06T07:08:09.000000001-00:00", "2024-05-06T07:08:09.000000001Z"),
        # The offset moves the date across a day, a month and a year boundary.
        ("2024-01-01T01:00:00.000000007+02:00", "2023-12-31T23:00:00.000000007Z"),
        ("2024-02-28T23:30:00.25-01:00", "2024-02-29T00:30:00.250000000Z"),  # leap day
        ("2024-05-06T07:08:09.5z", "2024-05-06T07:08:09.500000000Z"),
    ],
)
def test_time_offset_is_converted_to_utc_keeping_nanoseconds(raw: str, expected: str) -> None:
    assert normalize_time(raw) == expected
    group = decode(entry("x\n", time=raw) + b"\n")
    assert group.timestamps == [expected]
    assert group.invalid_time == 0


@pytest.mark.parametrize(
    "bad_time",
    [
        "",
        "yesterday",
        "2024-05-06 07:08:09Z",  # space instead of T
        "2024-05-06T07:08:09",  # no zone
        "2024-05-06T07:08:09.Z",  # dot without digits
        "2024-05-06T07:08:09.1234567891Z",  # ten digits
        "2024-05-06T07:08:09.5+0200",  # offset without colon
        "2024-13-06T07:08:09+01:00",  # month 13, offset form
        "2024-05-06T07:08:09Z ",
        "２０２４-05-06T07:08:09Z",  # fullwidth digits are not ASCII digits  # noqa: RUF001
        1715000000,
        None,
        ["2024-05-06T07:08:09Z"],
    ],
)
def test_invalid_time_uses_read_time_flagged_and_counted(bad_time: object) -> None:
    data = entry("first\n") + b"\n" + entry("second\n", time=bad_time) + b"\n"
    group = decode(data)
    assert group.messages == ["first", "second"]
    assert group.timestamps == ["2024-05-06T07:08:09.500000000Z", READ_TIME]
    assert group.flags == {1: (FLAG_INVALID_TIME,)}
    assert group.invalid_time == 1
    assert group.invalid_json == 0


def test_entry_without_time_uses_read_time() -> None:
    group = decode(orjson.dumps({"log": "x\n", "stream": "stdout"}) + b"\n")
    assert group.timestamps == [READ_TIME]
    assert group.flags == {0: (FLAG_INVALID_TIME,)}
    assert group.invalid_time == 1


@pytest.mark.parametrize(
    "impossible", ["2024-13-06T07:08:09Z", "2023-02-30T07:08:09.5Z", "2024-05-06T25:61:61Z"]
)
def test_impossible_utc_time_is_invalid(impossible: str) -> None:
    group = decode(entry("x\n", time=impossible) + b"\n")
    assert group.timestamps == [READ_TIME]
    assert group.flags == {0: (FLAG_INVALID_TIME,)}
    assert group.invalid_time == 1


@pytest.mark.parametrize("edge", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_time_out_of_range_after_offset_is_invalid_not_a_crash(edge: str) -> None:
    group = decode(entry("x\n", time=edge) + b"\n")
    assert group.timestamps == [READ_TIME]
    assert group.invalid_time == 1


def test_times_in_a_row_are_what_normalize_time_makes_of_each() -> None:
    """The decoder checks a time that shares the previous valid one's second with a prefix
    comparison: whatever follows a valid time, the result is normalize_time's."""
    second = "2024-05-06T07:08:09"
    times: list[object] = [
        f"{second}.123456789Z",
        f"{second}.000000001Z",  # same second: the short path
        f"{second}.12345678٩Z",  # an Arabic-Indic digit: isdigit() but not a time
        f"{second}.123456789+00:00",  # an offset, 30 characters too
        f"{second}.1234567890",  # ten digits, no zone
        f"{second}.12345678 Z",
        f"{second}Z",
        "2024-02-30T07:08:09.123456789Z",  # no such day, after a valid time
        "2024-05-06T07:08:10.123456789Z",  # the next second
        "2024-05-06T07:08:10.999999999Z",
        f"{second}.123456789z",
        42,
        None,
    ]
    data = b"".join(entry(f"line {n}\n", time=time) + b"\n" for n, time in enumerate(times))
    group = decode(data)
    expected = [
        (normalize_time(time) if isinstance(time, str) else None) or READ_TIME for time in times
    ]
    assert group.timestamps == expected
    invalid = [
        n for n, time in enumerate(times) if not isinstance(time, str) or not normalize_time(time)
    ]
    assert sorted(n for n, flags in group.flags.items() if FLAG_INVALID_TIME in flags) == invalid


def test_format_time_ns_matches_normalized_form() -> None:
    assert format_time_ns(1_715_000_000_000_000_042) == "2024-05-06T12:53:20.000000042Z"
    assert format_time_ns(0) == "1970-01-01T00:00:00.000000000Z"
    assert normalize_time(format_time_ns(1_715_000_000_123_456_789)) == format_time_ns(
        1_715_000_000_123_456_789
    )


# --- message text -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_log", "expected"),
    [
        (rb"a \u003cb\u003e \u0026 c\n", "a <b> & c"),
        (rb"col1\tcol2\n", "col1\tcol2"),
        (rb"sep\u2028line\u2029para\n", "sep\u2028line\u2029para"),
        (rb"bad \ufffd byte\n", "bad \ufffd byte"),
        (rb"quote \" backslash \\ slash \/\n", 'quote " backslash \\ slash /'),
        (rb"emoji \ud83d\ude00 raw " + "é".encode() + rb"\n", "emoji 😀 raw é"),
        (rb"nul \u0000 bell \u0007\n", "nul \x00 bell \x07"),
        # Only the final line ending is removed; a CR LF inside the message is kept.
        (rb"windows\r\n", "windows"),
        (rb"one\r\ntwo\r\n", "one\r\ntwo"),
        (rb"one\ntwo\n", "one\ntwo"),
        (rb"trailing cr\r", "trailing cr\r"),
        (rb"double\n\n", "double\n"),
        (rb"no newline (partial)", "no newline (partial)"),
        (rb"\n", ""),
        (rb"", ""),
    ],
)
def test_log_escapes_are_decoded_and_final_line_ending_stripped(
    raw_log: bytes, expected: str
) -> None:
    line = b'{"log":"' + raw_log + b'","stream":"stderr","time":"2024-05-06T07:08:09Z"}\n'
    group = decode(line)
    assert group.messages == [expected]
    assert group.streams == ["stderr"]
    assert group.flags == {}


# --- lines that are not Docker entries ----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected_message"),
    [
        (b"plain text, not json", "plain text, not json"),
        (b'{"log":"truncated', '{"log":"truncated'),
        (b"[1, 2, 3]", "[1, 2, 3]"),
        (b'"just a string"', '"just a string"'),
        (b"42", "42"),
        (b"null", "null"),
        (b'{"stream":"stdout","time":"2024-05-06T07:08:09Z"}', None),
        (b'{"log":123,"stream":"stdout"}', None),
        (b'{"log":null,"stream":"stdout"}', None),
        (b'{"log":["a"],"stream":"stdout"}', None),
        (b'{"log":{"a":1},"stream":"stdout"}', None),
        (b'{"log":"x\\n","stream":5}', None),
        (b"\xff\xfe not utf-8", "\ufffd\ufffd not utf-8"),
        (b"raw with cr\r", "raw with cr"),
    ],
)
def test_not_a_docker_entry_is_shipped_raw_flagged_and_counted(
    line: bytes, expected_message: str | None
) -> None:
    good = entry("ok\n")
    data = good + b"\n" + line + b"\n" + good + b"\n"
    group = decode(data, start=1000)
    expected = expected_message if expected_message is not None else line.decode()
    assert group.messages == ["ok", expected, "ok"]
    assert group.streams == ["stdout", "", "stdout"]
    assert group.timestamps[1] == READ_TIME
    assert group.flags == {1: (FLAG_INVALID_JSON,)}
    assert group.invalid_json == 1
    assert group.invalid_time == 0
    assert group.offsets == [1000, 1000 + len(good) + 1, 1000 + len(good) + 1 + len(line) + 1]
    assert group.offsets == line_offsets(data, 1000)


def test_several_invalid_lines_are_all_counted() -> None:
    data = b"a\nb\n" + entry("ok\n") + b"\nc\n"
    group = decode(data)
    assert group.messages == ["a", "b", "ok", "c"]
    assert group.invalid_json == 3
    assert group.flags == {
        0: (FLAG_INVALID_JSON,),
        1: (FLAG_INVALID_JSON,),
        3: (FLAG_INVALID_JSON,),
    }


# --- offsets, blank lines, chunk edges ----------------------------------------------------------


def test_offsets_are_byte_offsets_of_each_line_in_the_file() -> None:
    lines = [entry("first\n"), entry("ünïcödé 😀\n"), entry("x" * 5000 + "\n"), b"junk"]
    data = b"\n".join(lines) + b"\n"
    start = 123_456
    group = decode(data, start)
    assert group.start == start
    assert group.end == start + len(data)
    assert group.size == len(data)
    assert group.offsets == line_offsets(data, start)
    expected_offsets = []
    position = start
    for line in lines:
        expected_offsets.append(position)
        position += len(line) + 1
    assert group.offsets == expected_offsets


def test_blank_lines_are_skipped_and_later_offsets_stay_right() -> None:
    a, b, c = entry("a\n"), entry("b\n"), entry("c\n")
    data = b"\n" + a + b"\n\n\r\n" + b + b"\n\n" + c + b"\n"
    group = decode(data, start=10)
    assert group.messages == ["a", "b", "c"]
    assert group.offsets == [11, 11 + len(a) + 3 + 1, 11 + len(a) + 4 + len(b) + 2]
    assert group.offsets == line_offsets(data, 10)
    assert group.invalid_json == 0
    assert group.end == 10 + len(data)


def test_only_blank_lines_give_an_empty_group_covering_the_range() -> None:
    group = decode(b"\n\n\r\n", start=50)
    assert len(group) == 0
    assert not group
    assert (group.start, group.end) == (50, 54)
    assert group.invalid_json == 0


def test_final_line_without_newline_is_decoded() -> None:
    a, b = entry("a\n"), entry("partial")
    data = a + b"\n" + b
    group = decode(data, start=7)
    assert group.messages == ["a", "partial"]
    assert group.offsets == [7, 7 + len(a) + 1]
    assert group.end == 7 + len(data)


def test_final_raw_line_without_newline_is_shipped_raw() -> None:
    data = entry("a\n") + b"\n" + b"not json at all"
    group = decode(data)
    assert group.messages == ["a", "not json at all"]
    assert group.flags == {1: (FLAG_INVALID_JSON,)}


def test_empty_chunk() -> None:
    group = decode(b"", start=99)
    assert len(group) == 0
    assert (group.start, group.end) == (99, 99)


def test_attrs_are_captured_per_record() -> None:
    with_attrs = orjson.dumps(
        {
            "log": "x\n",
            "stream": "stdout",
            "attrs": {"tag": "web", "com.example.team": "ops", "emoji": "😀"},
            "time": "2024-05-06T07:08:09Z",
        }
    )
    empty_attrs = orjson.dumps(
        {"log": "y\n", "stream": "stdout", "attrs": {}, "time": "2024-05-06T07:08:09Z"}
    )
    data = entry("none\n") + b"\n" + with_attrs + b"\n" + empty_attrs + b"\n"
    group = decode(data)
    assert group.messages == ["none", "x", "y"]
    assert group.attrs == {1: {"tag": "web", "com.example.team": "ops", "emoji": "😀"}}
    assert group.flags == {}


def test_streams_are_kept_as_written() -> None:
    data = entry("o\n") + b"\n" + entry("e\n", stream="stderr") + b"\n"
    data += orjson.dumps({"log": "n\n", "time": "2024-05-06T07:08:09Z"}) + b"\n"
    group = decode(data)
    assert group.streams == ["stdout", "stderr", ""]
    assert group.invalid_json == 0


def test_decode_is_pure() -> None:
    data = entry("a\n") + b"\nnot json\n" + entry("b\n", time="bad") + b"\n"
    first = decode(data, 5)
    second = decode(data, 5)
    assert first.messages == second.messages
    assert first.timestamps == second.timestamps
    assert first.offsets == second.offsets
    assert first.flags == second.flags
    assert first.file is FILE
