"""PartialJoiner: rejoins the 16 KiB parts Docker splits long lines into, per container and stream.

Docker writes a line longer than 16 KiB as several entries whose `log` has no trailing newline;
the last part has it, and every part carries the same `time` (DESIGN.md §4). Nothing else marks a
part, so a part waits here until its stream's next entry with a newline, a flush timeout, or a
size cap. One joiner serves all of a container's files, so a line split across a rotation is
joined too; the byte ranges of every part stay held until the joined record settles, and the
holds in the files it spans are let go together (shipper.pipeline.acks.join_holds): a restart
reads both halves of such a line again, or neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shipper.model import Hold, LogFile, RangeClaim, RecordGroup
from shipper.pipeline.acks import join_holds

FLAG_TRUNCATED = "truncated"
FLAG_PARTIAL_HEAD_LOST = "partial_head_lost"
FLAG_INVALID_TIME = "invalid_time"


@dataclass(slots=True)
class Partial:
    """The parts of one line seen so far."""

    file: LogFile  # where the first part is
    offset: int  # of the first part's entry in that file
    timestamp: str
    since: float  # monotonic time the first part arrived: the flush timeout counts from here
    end: int = 0  # of the last part seen so far, in the file it is in: the byte after its entry
    time_valid: bool = True  # False: `timestamp` is the read time standing in for a bad one
    attrs: dict[str, object] | None = None  # Docker's `attrs` of the first part
    parts: list[str] = field(default_factory=list)
    size: int = 0  # UTF-8 bytes kept in `parts`
    truncated: bool = False
    head_lost: bool = False
    holds: list[Hold] = field(default_factory=list)
    held_in: str = ""  # handle of the file the last of `holds` is in
    head: Hold | None = None  # the hold in `file`, from `offset`: the first of `holds`


class PartialJoiner:
    """The pending parts of one container, by stream.

    `max_bytes` caps a joined message: the rest is dropped and the record flagged `truncated`
    (the entries still count as read, so the checkpoint moves past them).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.pending: dict[str, Partial] = {}
        # Streams whose first part lies in a file that is gone: their next part or line is the
        # tail of a record whose head was lost (set from a checkpoint after a restart).
        self.head_lost: set[str] = set()

    def add(
        self,
        stream: str,
        text: str,
        *,
        file: LogFile,
        offset: int,
        end: int,
        timestamp: str,
        hold: RangeClaim | None,
        now: float,
        time_valid: bool = True,
        attrs: dict[str, object] | None = None,
    ) -> None:
        """A part without newline: keep it, and keep the file held from where the line starts
        (from this part, in a file where none of its earlier parts is). `end`: the byte after
        this part's entry."""
        partial = self.pending.get(stream)
        if partial is None:
            partial = Partial(
                file=file,
                offset=offset,
                timestamp=timestamp,
                since=now,
                time_valid=time_valid,
                attrs=attrs,
            )
            if stream in self.head_lost:
                self.head_lost.discard(stream)
                partial.head_lost = True
            self.pending[stream] = partial
        partial.end = end
        self._append(partial, text)
        if hold is not None and partial.held_in != file.handle:
            # One hold per file suffices: a file's checkpoint moves in order, so holding from
            # the first part in it keeps every later part of it unsettled too.
            _hold_in(partial, file, offset, hold)

    def finish(
        self,
        stream: str,
        text: str,
        *,
        file: LogFile | None = None,
        offset: int = 0,
        hold: RangeClaim | None = None,
    ) -> Partial | None:
        """The part with the newline arrived: the whole line, or None if nothing was pending.

        Given the part's `file`, entry `offset` and chunk `hold`: when it is the line's first
        entry in a later file than the line's start, that file stays held from it, the hold
        joined with the line's others, as for a part (`add`)."""
        partial = self.pending.pop(stream, None)
        if partial is not None:
            self._append(partial, text)
            if (
                hold is not None
                and file is not None
                and partial.head is not None
                and partial.held_in != file.handle
            ):
                _hold_in(partial, file, offset, hold)
        return partial

    def take_head_lost(self, stream: str) -> bool:
        """Whether a complete line in `stream` is the tail of a record whose head is gone."""
        if stream in self.head_lost:
            self.head_lost.discard(stream)
            return True
        return False

    def expired(self, now: float, timeout: float) -> list[tuple[str, Partial]]:
        """Remove and return the partials that waited `timeout` seconds for their last part."""
        done = [(s, p) for s, p in self.pending.items() if now - p.since >= timeout]
        for stream, _ in done:
            del self.pending[stream]
        return done

    def take_all(self) -> list[tuple[str, Partial]]:
        """Remove and return every pending partial (the container stopped, or a backfill ends)."""
        done = list(self.pending.items())
        self.pending.clear()
        return done

    def oldest(self) -> float | None:
        return min((p.since for p in self.pending.values()), default=None)

    def _append(self, partial: Partial, text: str) -> None:
        if partial.truncated:
            return
        size = len(text.encode("utf-8", "surrogatepass"))
        room = self.max_bytes - partial.size
        if size > room:
            text = text.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
            partial.truncated = True
            size = room
        partial.parts.append(text)
        partial.size += size


def _hold_in(partial: Partial, file: LogFile, offset: int, hold: RangeClaim) -> None:
    """Hold `file` from `offset`, the first entry of `partial` in it. In a later file than the
    line's first, the hold is joined with the one there (join_holds): else a restart could read
    the first part again but not this one, and join it to the next line of its stream, or read
    this one but not the first part, and ship it again on its own."""
    tail = hold.hold_from(offset)
    if partial.head is None:
        if file.handle == partial.file.handle:
            partial.head = tail
    else:
        tail = join_holds(tail, partial.head)
    partial.holds.append(tail)
    partial.held_in = file.handle


def joined_text(partial: Partial) -> str:
    """The whole line. A CRLF line split between its \r and \n ends in \r once the last
    part's \n is gone: strip it as the unsplit line's ending would be."""
    text = "".join(partial.parts)
    return text[:-1] if text.endswith("\r") else text


def flags_of(partial: Partial) -> tuple[str, ...]:
    flags = []
    if partial.head_lost:
        flags.append(FLAG_PARTIAL_HEAD_LOST)
    if partial.truncated:
        flags.append(FLAG_TRUNCATED)
    if not partial.time_valid:
        flags.append(FLAG_INVALID_TIME)
    return tuple(flags)


def append_partial(group: RecordGroup, partial: Partial, stream: str, end: int) -> None:
    """Append the record rejoined from its parts: it starts where its first part does, ends at
    `end` (after its last part's entry), and holds the ranges of every part until it settles."""
    index = len(group.messages)
    group.messages.append(joined_text(partial))
    group.streams.append(stream)
    group.offsets.append(partial.offset)
    group.ends.append(end)
    group.timestamps.append(partial.timestamp)
    flags = flags_of(partial)
    if flags:
        group.flags[index] = flags
    if not partial.time_valid:
        group.invalid_time += 1
    if partial.attrs:
        group.attrs[index] = {str(k): str(v) for k, v in partial.attrs.items()}
    if partial.file is not group.file:
        group.heads[index] = partial.file
    group.held.extend(partial.holds)


def group_of(partials: list[tuple[str, Partial]]) -> RecordGroup:
    """The records of partials given up on (timeout, stop), as a group that holds no bytes of
    its own: it settles only the ranges its parts held."""
    group = RecordGroup(file=partials[0][1].file, start=0, end=0)
    for stream, partial in partials:
        append_partial(group, partial, stream, partial.end)  # ends where its last part does
    return group
