"""The pipeline's shared vocabulary (chunks, record groups, batches, outcomes), with no I/O."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class Outcome(enum.StrEnum):
    """What happened to one record at one output."""

    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # the destination already had it (Elasticsearch 409 on `create`)
    DEAD_LETTERED = "dead_lettered"  # never deliverable; written to the dead-letter file
    DROPPED = "dropped"  # filtered out on purpose
    RETRY = "retry"  # not final: the sender sends it again
    AWAITING_ACK = "awaiting_ack"  # not final: sent, the destination has not confirmed it yet


FINAL_OUTCOMES = frozenset(
    {Outcome.DELIVERED, Outcome.DUPLICATE, Outcome.DEAD_LETTERED, Outcome.DROPPED}
)


@dataclass(frozen=True, slots=True)
class LogFile:
    """One log file as a source reads it: who wrote it and which content it holds."""

    source: str  # configured source name
    container_id: str
    path: str  # path when the file was opened; a rotated file keeps reading through its fd
    handle: str  # unique per opened file in this process: the AckTracker lane of its byte ranges
    fingerprint: str = ""  # stable identity of the content (identity.stable_id), for records


@dataclass(frozen=True, slots=True)
class Enrichment:
    """What every record of one container carries besides its own line (its metadata).

    `document` holds the fields as a dict (the plain encoder's reference); `fragment` the same
    fields serialised once, without the enclosing braces, ready to splice into each record.
    """

    document: dict[str, Any]
    fragment: bytes


class Hold(Protocol):
    """A claim on a registered byte range (or on its tail) that must be released exactly once."""

    def release(self) -> None: ...


class RangeClaim(Hold, Protocol):
    """A chunk's registered byte range, as its decoder sees it.

    The group decoded from the chunk releases the range itself; a record left waiting for more
    lines (a partial line, a multiline record) takes `hold_from(offset)` at its first line, so
    the checkpoint may still move up to that line but not past it.
    """

    def hold_from(self, offset: int) -> Hold: ...


@dataclass(frozen=True, slots=True)
class Chunk:
    """The complete lines of one read of one file: the unit that flows from a tailer.

    Every line ends in b"\n", except that the last one may lack it when the tailer decided to
    stop waiting for the rest (a flush timeout, or a line longer than any record may be).
    """

    file: LogFile
    start: int  # file offset of data[0]
    data: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.data)


class Settlement:
    """Counts the outputs that still owe a final outcome for a record group.

    When the last one settles, `on_settled` runs once: it releases the group's byte-range tickets
    (so checkpoints may move) and its share of the memory budget.
    """

    __slots__ = ("_on_settled", "pending")

    def __init__(self, on_settled: Callable[[], None]) -> None:
        self.pending = 0
        self._on_settled = on_settled

    def expect(self, outputs: int) -> None:
        self.pending += outputs
        if self.pending == 0:
            self._fire()

    def settle_one(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self._fire()

    def _fire(self) -> None:
        callback, self._on_settled = self._on_settled, _noop
        callback()


def _noop() -> None:
    return None


@dataclass(slots=True, eq=False)
class RecordGroup:
    """The decoded records of one chunk, kept as parallel columns rather than an object per record.

    Per-line Python objects decide shipper's speed (DESIGN.md §2), so a record is an index into
    these lists. `flags` and `attrs` are sparse: most records have neither.
    """

    file: LogFile
    start: int  # byte range the group settles
    end: int
    timestamps: list[str] = field(default_factory=list)  # RFC 3339, UTC, 9 fraction digits
    messages: list[str] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # start offset of each record in its file
    # End offset of each record in the file its LAST line is in: the byte after that line's
    # newline (after its last byte, for a last line the tailer stopped waiting to complete).
    # Groups built by hand may leave it short; -1: not known.
    ends: list[int] = field(default_factory=list)
    flags: dict[int, tuple[str, ...]] = field(default_factory=dict)
    attrs: dict[int, dict[str, str]] = field(default_factory=dict)
    # A record joined from Docker's 16 KiB parts starts where its first part does, which may be
    # in an earlier file (across a rotation): that file, for the few records where it differs.
    heads: dict[int, LogFile] = field(default_factory=dict)
    # Ranges of earlier chunks that hold the first parts of records completed in this group:
    # released with this group, so no checkpoint passes a part before its record settled.
    held: list[Hold] = field(default_factory=list)
    enrichment: Enrichment | None = None  # the container's metadata fields, if known
    settlement: Settlement | None = None
    invalid_json: int = 0  # lines shipped as raw text because they were not Docker JSON entries
    invalid_time: int = 0  # entries whose time was unusable; they carry the read time
    # Lines this group was decoded from, when it differs from its records (multiline joined
    # some, or holds some back for the next group); None: one record per line.
    lines_read: int | None = None
    # The finished NDJSON line of each record, when processing built them (processors work on
    # whole documents); None: the encoders build each record from the columns above.
    documents: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def size(self) -> int:
        """Bytes of the file this group came from; what it costs the memory budget."""
        return self.end - self.start


@dataclass(slots=True)
class Batch:
    """Records of several groups sent to one output in one request.

    `selection[i]` lists which records of `groups[i]` are in this batch: a retry resends only the
    records whose outcome was RETRY. Outcomes are reported in iteration order (see `records`).
    """

    groups: list[RecordGroup]
    selection: list[Sequence[int]]

    @classmethod
    def of(cls, groups: list[RecordGroup]) -> Batch:
        return cls(groups, [range(len(group)) for group in groups])

    def __len__(self) -> int:
        return sum(len(indices) for indices in self.selection)

    def records(self) -> Iterator[tuple[RecordGroup, int]]:
        for group, indices in zip(self.groups, self.selection, strict=True):
            for index in indices:
                yield group, index

    def subset(self, keep: Sequence[bool]) -> Batch:
        """The records whose flag in `keep` (aligned with `records()`) is true."""
        groups: list[RecordGroup] = []
        selection: list[Sequence[int]] = []
        position = 0
        for group, indices in zip(self.groups, self.selection, strict=True):
            chosen = [index for n, index in enumerate(indices) if keep[position + n]]
            position += len(indices)
            if chosen:
                groups.append(group)
                selection.append(chosen)
        return Batch(groups, selection)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a destination refused a record for good, as the dead-letter file records it."""

    reason: str
    status: int | None = None  # the destination's status for this record (e.g. HTTP 400)
    error_type: str | None = None  # its error type (e.g. document_parsing_exception)

    def __str__(self) -> str:
        return self.reason


@dataclass(slots=True)
class BatchResult:
    """One outcome per record of a batch, in `Batch.records()` order, and why any was rejected."""

    outcomes: list[Outcome]
    reasons: dict[int, str | Rejection] = field(default_factory=dict)  # index → why rejected
    # Set when the records left RETRY were refused for a reason only an operator can fix
    # (privileges, a missing index): they are retried without limit, never dead-lettered.
    held: str | None = None
    # Set when some outcomes are AWAITING_ACK: resolves to the result once the destination has
    # confirmed (or refused) them, e.g. Splunk indexer acknowledgements.
    acknowledged: Awaitable[BatchResult] | None = None

    @classmethod
    def uniform(cls, outcome: Outcome, count: int) -> BatchResult:
        return cls([outcome] * count)
