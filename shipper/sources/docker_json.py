"""Decoding of Docker json-file lines into record groups: a pure function over a chunk.

Docker writes one JSON object a line: `{"log":"…\\n","stream":"stdout","time":"…"}`, with an
`"attrs"` object when the operator set `--log-opt labels/env/tag` (DESIGN.md §4). A line that is
not such an object is shipped as raw text flagged `invalid_json`, never dropped and never fatal.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime

import orjson

from shipper.model import Chunk, RangeClaim, RecordGroup
from shipper.sources.partials import (
    FLAG_INVALID_TIME,
    FLAG_PARTIAL_HEAD_LOST,
    PartialJoiner,
    append_partial,
)

FLAG_INVALID_JSON = "invalid_json"

_STREAMS = {"stdout": "stdout", "stderr": "stderr"}

# RFC 3339 as Go's RFC3339Nano writes it: the fraction has 0 to 9 digits (trailing zeros are
# trimmed, and a zero fraction has no dot at all). Docker writes UTC ("Z"); an offset is accepted
# because other writers of this format use one.
_SECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", re.ASCII)
_RFC3339 = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|z|[+-]\d\d:\d\d)", re.ASCII
)


def normalize_time(value: str) -> str | None:
    """`value` as UTC RFC 3339 with exactly nine fraction digits, or None if it is not RFC 3339.

    Keeping nanoseconds as text (no float anywhere) is what makes the precision survive.
    """
    if (
        len(value) == 30
        and value[29] == "Z"
        and value[19] == "."
        and value.isascii()
        and value[20:29].isdigit()
        and _real_time(value[:19])
    ):
        return value  # already nine digits and UTC: most of Docker's times
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    seconds, fraction, zone = match.groups()
    fraction = (fraction or "").ljust(9, "0")
    if zone in ("Z", "z"):
        return f"{seconds}.{fraction}Z" if _real_time(seconds) else None
    try:
        local = datetime.fromisoformat(seconds + zone)
        utc = local.astimezone(UTC)
    except (ValueError, OverflowError):  # no such date, or outside years 1-9999 once in UTC
        return None
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{fraction}Z"


@functools.lru_cache(maxsize=1024)
def _real_time(seconds: str) -> bool:
    """Whether a `YYYY-MM-DDTHH:MM:SS` that matched the pattern names a real time.

    Cached because consecutive lines share their second: the check costs once per second of
    log, not once per line.
    """
    if _SECONDS.fullmatch(seconds) is None:
        return False
    try:
        datetime.fromisoformat(seconds)
    except ValueError:
        return False
    return True


def format_time_ns(epoch_ns: int) -> str:
    """Epoch nanoseconds as the same normalized RFC 3339 text."""
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


# The per-line loop stays in one function on purpose: a call per line costs throughput.
def decode_chunk(  # noqa: PLR0912, PLR0915
    chunk: Chunk,
    *,
    read_time: str,
    joiner: PartialJoiner | None = None,
    hold: RangeClaim | None = None,
    now: float = 0.0,
) -> RecordGroup:
    """Decode every line of `chunk`; `read_time` stands in for an entry without a valid time.

    With a `joiner` (one per container), Docker's 16 KiB parts are rejoined: a part waits in the
    joiner, keeping `hold` (this chunk's byte range) held, and the whole line becomes one record
    where its last part is; `now` (monotonic) starts a part's flush timeout. Pure but for the
    joiner's state: the same chunk, arguments and joiner state give the same group, so a faster
    decoder can be checked against this one.
    """
    group = RecordGroup(file=chunk.file, start=chunk.start, end=chunk.end)
    timestamps = group.timestamps
    messages = group.messages
    streams = group.streams
    offsets = group.offsets
    ends = group.ends
    loads = orjson.loads
    append_message = messages.append
    append_stream = streams.append
    append_offset = offsets.append
    append_end = ends.append
    append_timestamp = timestamps.append
    # The joiner's containers change in place: is anything waiting, without two attribute
    # lookups per line.
    pending = joiner.pending if joiner is not None else None
    head_lost = joiner.head_lost if joiner is not None else None
    # The `YYYY-MM-DDTHH:MM:SS` of the last time found valid: consecutive lines share their
    # second, so most times need no more than a prefix comparison and a digit check.
    last_second = "\0"
    position = chunk.start
    lines = chunk.data.split(b"\n")
    if not lines[-1]:
        lines.pop()  # the data ended with a newline: no line after it
    for line in lines:
        offset = position
        position += len(line) + 1
        if not line or line == b"\r":
            continue  # blank lines carry nothing; their bytes settle with the group
        try:
            entry = loads(line)
            message = entry["log"]
            stream = entry.get("stream", "")
            when = entry.get("time")
            if type(message) is not str or type(stream) is not str:
                raise TypeError("not a json-file entry")
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
            index = len(messages)
            text = line.decode("utf-8", "replace")
            messages.append(text[:-1] if text.endswith("\r") else text)
            streams.append("")
            timestamps.append(read_time)
            offsets.append(offset)
            ends.append(position)
            group.flags[index] = (FLAG_INVALID_JSON,)
            group.invalid_json += 1
            continue
        # Docker keeps the application's line ending in `log`; the record is the line itself.
        if message.endswith("\n"):
            message = message[:-2] if message.endswith("\r\n") else message[:-1]
        elif joiner is not None:
            # A part of a longer line (or a last line without newline): wait for the rest.
            timestamp = normalize_time(when) if type(when) is str else None
            attrs = entry.get("attrs")
            joiner.add(
                stream,
                message,
                file=chunk.file,
                offset=offset,
                end=min(position, chunk.end),
                timestamp=timestamp or read_time,
                time_valid=timestamp is not None,
                attrs=attrs if attrs and type(attrs) is dict else None,
                hold=hold,
                now=now,
            )
            continue
        index = len(messages)
        if pending or head_lost:
            assert joiner is not None  # noqa: S101 - they are its containers
            partial = joiner.finish(stream, message, file=chunk.file, offset=offset, hold=hold)
            if partial is not None:
                append_partial(group, partial, stream, position)
                continue
            if joiner.take_head_lost(stream):
                group.flags[index] = (FLAG_PARTIAL_HEAD_LOST,)
        append_message(message)
        # orjson makes a new "stdout" for every line: the shared one saves ~55 bytes a record
        # for as long as the record waits in the buffer.
        append_stream(_STREAMS.get(stream, stream))
        append_offset(offset)
        append_end(position)
        if (
            type(when) is str
            and len(when) == 30
            and when.startswith(last_second)
            and when[19] == "."
            and when[29] == "Z"
            and when.isascii()
            and when[20:29].isdigit()
        ):
            append_timestamp(when)  # what normalize_time returns as it is, in a real second
        else:
            timestamp = normalize_time(when) if type(when) is str else None
            if timestamp is None:
                append_timestamp(read_time)
                group.flags[index] = (*group.flags.get(index, ()), FLAG_INVALID_TIME)
                group.invalid_time += 1
            else:
                append_timestamp(timestamp)
                last_second = timestamp[:19]
        attrs = entry.get("attrs")
        if attrs and type(attrs) is dict:
            group.attrs[index] = {str(k): str(v) for k, v in attrs.items()}
    if ends and ends[-1] > chunk.end:
        ends[-1] = chunk.end  # the last line had no newline: it ends with the data
    return group
