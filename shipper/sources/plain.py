"""Decoding of plain text log files (the `files` source) into record groups: one record a line.

Each line, without its `\\n` or `\\r\\n`, is a record's message; the file says nothing about time
or stream, so every record carries the read time and no stream. Bytes that are not UTF-8 are
replaced (U+FFFD) and the record flagged `invalid_utf8`, never dropped.

Empty lines are skipped, as Filebeat does by default: in a text log an empty line is spacing
(between stack traces, after a banner), and as a record of its own it is a document with
nothing in it. Its bytes still settle with the group. A line of spaces is kept: it is text.
NDJSON files are decoded by this same function and then by a `decode_json` processor.
"""

from __future__ import annotations

from shipper.model import Chunk, RangeClaim, RecordGroup
from shipper.sources.partials import PartialJoiner

FLAG_INVALID_UTF8 = "invalid_utf8"


def decode_text_chunk(
    chunk: Chunk,
    *,
    read_time: str,
    joiner: PartialJoiner | None = None,
    hold: RangeClaim | None = None,
    now: float = 0.0,
) -> RecordGroup:
    """Decode every line of `chunk`, one record each, timed `read_time`.

    Takes the arguments of shipper.sources.docker_json.decode_chunk so a follower calls every
    decoder alike; `joiner`, `hold` and `now` are unused: a text line has no parts (a last line
    without newline is one the follower chose to stop waiting for, and ships as it is).
    """
    group = RecordGroup(file=chunk.file, start=chunk.start, end=chunk.end)
    messages = group.messages
    offsets = group.offsets
    ends = group.ends
    flags = group.flags
    position = chunk.start
    lines = chunk.data.split(b"\n")
    if not lines[-1]:
        lines.pop()  # the data ended with a newline: no line after it
    for line in lines:
        offset = position
        position += len(line) + 1
        if line.endswith(b"\r"):
            line = line[:-1]  # noqa: PLW2901 - the line ending is not part of the message
        if not line:
            continue
        try:
            messages.append(line.decode())
        except UnicodeDecodeError:
            flags[len(messages)] = (FLAG_INVALID_UTF8,)
            messages.append(line.decode("utf-8", "replace"))
        offsets.append(offset)
        ends.append(position)
    if ends and ends[-1] > chunk.end:
        ends[-1] = chunk.end  # the last line had no newline: it ends with the data
    # Every record shares these: built once per chunk, not per line.
    count = len(messages)
    group.streams = [""] * count
    group.timestamps = [read_time] * count
    return group
