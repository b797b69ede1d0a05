"""Tests for rejoining Docker's 16 KiB parts (shipper.sources.partials through decode_chunk).

Chunks are built byte for byte as dockerd writes them (shipper.docker_writer: encode_entry for
the entry, split_output for the 16 KiB cut). Holds are either a counting fake (to pin how often a
range is held) or real AckTracker tickets (to pin what the checkpoint may do).
"""

from __future__ import annotations

import orjson
import pytest

from shipper.docker_writer import (
    DEFAULT_START_NS,
    MAX_ENTRY_BYTES,
    Stream,
    encode_entry,
    split_output,
)
from shipper.model import Chunk, Hold, LogFile, RangeClaim, RecordGroup
from shipper.pipeline.acks import AckTracker
from shipper.sources.docker_json import FLAG_INVALID_TIME, decode_chunk, format_time_ns
from shipper.sources.partials import (
    FLAG_PARTIAL_HEAD_LOST,
    FLAG_TRUNCATED,
    PartialJoiner,
    group_of,
)

READ_TIME = "2030-01-01T00:00:00.000000000Z"
T0 = DEFAULT_START_NS
MAX = 1024 * 1024  # a cap that no test line reaches, unless the test is about the cap

FILE_OLD = LogFile(
    source="docker",
    container_id="c0ffee",
    path="/var/lib/docker/containers/c0ffee/c0ffee-json.log.1",
    handle="docker:1:11:1",
    fingerprint="a" * 64,
)
FILE_NEW = LogFile(
    source="docker",
    container_id="c0ffee",
    path="/var/lib/docker/containers/c0ffee/c0ffee-json.log",
    handle="docker:1:12:2",
    fingerprint="b" * 64,
)


class CountingHold:
    """A stand-in for an AckTracker ticket that counts what the joiner does with it."""

    def __init__(self, name: str = "hold") -> None:
        self.name = name
        self.holds = 0
        self.releases = 0
        self.held_from: list[int] = []  # the offsets tail holds were taken from

    def hold_from(self, offset: int) -> Hold:
        self.holds += 1
        self.held_from.append(offset)
        return _Tail(self)

    def release(self) -> None:
        self.releases += 1

    def __repr__(self) -> str:
        return f"CountingHold({self.name!r}, holds={self.holds}, releases={self.releases})"


class _Tail:
    def __init__(self, parent: CountingHold) -> None:
        self.parent = parent

    def release(self) -> None:
        self.parent.releases += 1


def owners(holds: list[Hold]) -> list[CountingHold]:
    """The stand-in tickets the tail holds in `holds` were taken from."""
    return [hold.parent if isinstance(hold, _Tail) else hold for hold in holds]  # type: ignore[misc]


def t(i: int = 0) -> str:
    """The normalized `time` of entry time T0 + i ms."""
    return format_time_ns(T0 + i * 1_000_000)


def entries(data: bytes, stream: Stream = "stdout", time_ns: int = T0, attrs: bytes = b"") -> bytes:
    """What dockerd writes for `data` written to `stream`: one entry per line or 16 KiB part."""
    return b"".join(encode_entry(part, stream, time_ns, attrs) for part in split_output(data))


def parts_of(data: bytes, stream: Stream = "stdout", time_ns: int = T0) -> list[bytes]:
    """The entries (lines) of `data`, one per part."""
    return [encode_entry(part, stream, time_ns) for part in split_output(data)]


def logs_of(lines: list[bytes]) -> list[str]:
    """The decoded `log` values of json-file lines: what a reader of each entry sees."""
    return [orjson.loads(line)["log"] for line in lines]


def decode(
    file: LogFile,
    start: int,
    data: bytes,
    joiner: PartialJoiner | None,
    hold: RangeClaim | None = None,
    *,
    now: float = 0.0,
) -> RecordGroup:
    return decode_chunk(
        Chunk(file, start, data), read_time=READ_TIME, joiner=joiner, hold=hold, now=now
    )


def settle(group: RecordGroup, own: Hold) -> None:
    """What the pipeline does when every output settled a group: release its range and held."""
    for hold in [own, *group.held]:
        hold.release()


def text(n: int, seed: str = "abcdefghijklmnopqrstuvwxyz0123456789") -> bytes:
    """`n` bytes of ASCII that are not all the same, so a misplaced part would show."""
    return (seed * (n // len(seed) + 1))[:n].encode()


LONG = text(40 * 1024)  # a 40 KiB line: 16384 + 16384 + 8192 (+ the newline) bytes


# --- one chunk ----------------------------------------------------------------------------------


def test_split_line_in_one_chunk_is_one_record() -> None:
    before = encode_entry(b"before\n", "stdout", T0)
    # Docker gives every part the same time; distinct times here pin which one the record takes.
    parts = [
        encode_entry(part, "stdout", T0 + (i + 1) * 1_000_000)
        for i, part in enumerate(split_output(LONG + b"\n"))
    ]
    after = encode_entry(b"after\n", "stdout", T0 + 9_000_000)
    assert len(parts) == 3
    assert [len(p) for p in logs_of(parts)] == [16384, 16384, 8192 + 1]
    start = 1000
    data = before + b"".join(parts) + after
    joiner = PartialJoiner(MAX)
    hold = CountingHold()

    group = decode(FILE_NEW, start, data, joiner, hold)

    assert group.messages == ["before", LONG.decode(), "after"]
    assert group.offsets == [start, start + len(before), start + len(data) - len(after)]
    # The rejoined line ends after its last part's entry.
    assert group.ends == [start + len(before), start + len(data) - len(after), start + len(data)]
    assert group.timestamps == [t(0), t(1), t(9)]
    assert group.streams == ["stdout"] * 3
    assert group.flags == {}
    assert group.heads == {}  # it starts in this very file
    assert (group.start, group.end) == (start, start + len(data))
    # Its own chunk held once for the wait, released once more with the group: balanced.
    assert hold.holds == 1
    assert owners(group.held) == [hold]
    assert joiner.pending == {}


def test_line_of_exactly_16k_has_an_empty_last_part() -> None:
    line = text(MAX_ENTRY_BYTES)
    parts = parts_of(line + b"\n")
    assert logs_of(parts) == [line.decode(), "\n"]
    group = decode(FILE_NEW, 0, b"".join(parts), PartialJoiner(MAX), CountingHold())
    assert group.messages == [line.decode()]
    assert group.offsets == [0]


def test_one_chunk_with_real_tickets_settles_to_its_end() -> None:
    tracker = AckTracker()
    advanced: list[int] = []
    tracker.track(FILE_NEW.handle, 0, advanced.append)
    data = entries(LONG + b"\n")
    ticket = tracker.register(FILE_NEW.handle, len(data))
    group = decode(FILE_NEW, 0, data, PartialJoiner(MAX), ticket)

    settle(group, ticket)  # would raise if the ticket were released more often than held

    assert advanced == [len(data)]
    assert tracker.unsettled(FILE_NEW.handle) == 0


# --- across chunks and files --------------------------------------------------------------------


def test_split_across_two_chunks_of_one_file() -> None:
    line0 = encode_entry(b"zero\n", "stdout", T0)
    p1, p2, p3 = parts_of(LONG + b"\n", time_ns=T0 + 1_000_000)
    line4 = encode_entry(b"four\n", "stdout", T0 + 2_000_000)
    chunk1 = line0 + p1 + p2
    chunk2 = p3 + line4
    joiner = PartialJoiner(MAX)
    hold1, hold2 = CountingHold("1"), CountingHold("2")

    group1 = decode(FILE_NEW, 0, chunk1, joiner, hold1)
    group2 = decode(FILE_NEW, len(chunk1), chunk2, joiner, hold2)

    assert group1.messages == ["zero"]
    assert group1.held == []
    assert group2.messages == [LONG.decode(), "four"]
    assert group2.offsets == [len(line0), len(chunk1) + len(p3)]
    assert group2.timestamps == [t(1), t(2)]
    assert group2.heads == {}
    assert owners(group2.held) == [hold1]
    assert hold1.holds == 1  # two parts in chunk 1, held once
    assert hold2.holds == 0  # the last part does not wait


def test_split_across_a_rotation_is_joined_in_the_later_group() -> None:
    """Part 1 is the last entry of `.log.1`, the rest the first entries of the new file."""
    old_lines = encode_entry(b"old\n", "stdout", T0)
    p1, p2, p3 = parts_of(LONG + b"\n", time_ns=T0 + 1_000_000)
    new_line = encode_entry(b"new\n", "stdout", T0 + 2_000_000)
    old_chunk = old_lines + p1
    old_start = 5000
    new_chunk = p2 + p3 + new_line
    joiner = PartialJoiner(MAX)
    hold_old, hold_new = CountingHold("old"), CountingHold("new")

    group_old = decode(FILE_OLD, old_start, old_chunk, joiner, hold_old)
    group_new = decode(FILE_NEW, 0, new_chunk, joiner, hold_new)

    assert group_old.messages == ["old"]
    assert group_new.messages == [LONG.decode(), "new"]
    assert group_new.offsets == [old_start + len(old_lines), len(p2) + len(p3)]
    # It starts in the old file and ends in the new one, where its last part is.
    assert group_new.ends == [len(p2) + len(p3), len(new_chunk)]
    assert group_new.timestamps == [t(1), t(2)]
    assert group_new.heads == {0: FILE_OLD}
    assert group_new.heads[0] is FILE_OLD
    assert hold_old in owners(group_new.held)
    assert hold_old.holds == 1
    # The middle part waited in the new chunk, so that range is held too (and listed once).
    assert owners(group_new.held) == [hold_old, hold_new]
    assert hold_new.holds == 1


@pytest.mark.parametrize("order", ["old group first", "new group first"])
def test_rotation_checkpoint_waits_for_the_joined_record(order: str) -> None:
    """With real tickets: the old file's settled offset does not pass part 1 until the group
    holding the joined record settled, whichever group settles first; it may reach part 1 (the
    line before it was delivered), so a restart reads only the unfinished record again."""
    old_lines = encode_entry(b"old\n", "stdout", T0)
    p1, p2, p3 = parts_of(LONG + b"\n")
    old_chunk = old_lines + p1
    new_chunk = p2 + p3
    old_start = 5000
    tracker = AckTracker()
    settled: dict[str, list[int]] = {FILE_OLD.handle: [], FILE_NEW.handle: []}
    tracker.track(FILE_OLD.handle, old_start, settled[FILE_OLD.handle].append)
    tracker.track(FILE_NEW.handle, 0, settled[FILE_NEW.handle].append)
    joiner = PartialJoiner(MAX)

    ticket_old = tracker.register(FILE_OLD.handle, old_start + len(old_chunk))
    group_old = decode(FILE_OLD, old_start, old_chunk, joiner, ticket_old)
    ticket_new = tracker.register(FILE_NEW.handle, len(new_chunk))
    group_new = decode(FILE_NEW, 0, new_chunk, joiner, ticket_new)
    part1_offset = old_start + len(old_lines)
    assert group_new.offsets == [part1_offset]

    first, second = (
        ((group_old, ticket_old), (group_new, ticket_new))
        if order == "old group first"
        else ((group_new, ticket_new), (group_old, ticket_old))
    )
    settle(*first)
    if order == "old group first":
        assert settled[FILE_OLD.handle] == [part1_offset]
    else:
        assert settled[FILE_OLD.handle] == []
    settle(*second)

    assert tracker.settled_offset(FILE_OLD.handle) == old_start + len(old_chunk)
    assert tracker.settled_offset(FILE_NEW.handle) == len(new_chunk)
    assert settled[FILE_OLD.handle][-1] == old_start + len(old_chunk)
    assert tracker.unsettled(FILE_OLD.handle) == tracker.unsettled(FILE_NEW.handle) == 0


def test_rotation_checkpoint_does_not_pass_part_one_while_the_new_group_is_unsettled() -> None:
    old_lines = encode_entry(b"old\n", "stdout", T0)
    p1, p2, p3 = parts_of(LONG + b"\n")
    tracker = AckTracker()
    tracker.track(FILE_OLD.handle, 0, lambda _: None)
    tracker.track(FILE_NEW.handle, 0, lambda _: None)
    joiner = PartialJoiner(MAX)
    old_chunk = old_lines + p1
    ticket_old = tracker.register(FILE_OLD.handle, len(old_chunk))
    group_old = decode(FILE_OLD, 0, old_chunk, joiner, ticket_old)
    ticket_new = tracker.register(FILE_NEW.handle, len(p2 + p3))
    decode(FILE_NEW, 0, p2 + p3, joiner, ticket_new)

    settle(group_old, ticket_old)  # "old" delivered; the joined record is still in flight

    # Up to part 1, not past it: a restart now reads the record from its first part again.
    assert tracker.settled_offset(FILE_OLD.handle) == len(old_lines)
    assert tracker.unsettled(FILE_OLD.handle) == 1


# --- multi-byte characters cut at 16 KiB --------------------------------------------------------


@pytest.mark.parametrize(
    ("char", "cut"),
    [("é", 1), ("€", 1), ("€", 2), ("😀", 1), ("😀", 2), ("😀", 3)],
)
def test_character_cut_at_the_boundary_joins_as_dockerd_wrote_it(char: str, cut: int) -> None:
    encoded = char.encode()
    line = b"a" * (MAX_ENTRY_BYTES - cut) + encoded + b"tail"
    raw = split_output(line + b"\n")
    assert raw[0].endswith(encoded[:cut])  # the character really is cut
    parts = parts_of(line + b"\n")
    logs = logs_of(parts)
    assert logs[0].endswith("\ufffd")
    assert logs[1].startswith("\ufffd")
    expected = "".join(logs)[:-1]

    group = decode(FILE_NEW, 0, b"".join(parts), PartialJoiner(MAX), CountingHold())

    assert group.messages == [expected]
    message = group.messages[0]
    middle = message.removeprefix("a" * (MAX_ENTRY_BYTES - cut)).removesuffix("tail")
    assert middle
    assert set(middle) == {"\ufffd"}
    assert len(middle) == len(encoded)  # one U+FFFD per orphaned byte, nothing extra


# --- streams ------------------------------------------------------------------------------------


def test_interleaved_streams_are_joined_independently() -> None:
    out_line = text(20_000, "OUT-") + b"\n"
    err_line = text(17_000, "err+") + b"\n"
    o1, o2 = parts_of(out_line, "stdout", T0 + 1_000_000)
    e1, e2 = parts_of(err_line, "stderr", T0 + 3_000_000)
    err_short = encode_entry(b"short error\n", "stderr", T0 + 2_000_000)
    out_short = encode_entry(b"short out\n", "stdout", T0 + 4_000_000)
    # stdout part, a whole stderr line, a stderr part, the end of stdout, then of stderr.
    lines = [o1, err_short, e1, o2, e2, out_short]
    data = b"".join(lines)
    offset = {id(line): sum(len(x) for x in lines[: lines.index(line)]) for line in lines}
    hold = CountingHold()
    joiner = PartialJoiner(MAX)

    group = decode(FILE_NEW, 0, data, joiner, hold)

    # In the order each line completes; each record starts at its first part.
    assert group.messages == [
        "short error",
        out_line[:-1].decode(),
        err_line[:-1].decode(),
        "short out",
    ]
    assert group.streams == ["stderr", "stdout", "stderr", "stdout"]
    assert group.offsets == [
        offset[id(err_short)],
        offset[id(o1)],
        offset[id(e1)],
        offset[id(out_short)],
    ]
    assert group.timestamps == [t(2), t(1), t(3), t(4)]
    assert hold.holds == 2  # one wait per stream, each released with the group
    assert owners(group.held) == [hold, hold]
    assert joiner.pending == {}


def test_interleaved_streams_across_chunks() -> None:
    out_line = text(33_000, "OUT-") + b"\n"
    o1, o2, o3 = parts_of(out_line, "stdout")
    e_a = encode_entry(b"err a\n", "stderr", T0)
    e_b = encode_entry(b"err b\n", "stderr", T0)
    chunk1 = o1 + e_a
    chunk2 = o2 + e_b + o3
    joiner = PartialJoiner(MAX)
    hold1, hold2 = CountingHold("1"), CountingHold("2")

    group1 = decode(FILE_NEW, 0, chunk1, joiner, hold1)
    group2 = decode(FILE_NEW, len(chunk1), chunk2, joiner, hold2)

    assert group1.messages == ["err a"]
    assert group1.offsets == [len(o1)]
    assert group2.messages == ["err b", out_line[:-1].decode()]
    assert group2.offsets == [len(chunk1) + len(o2), 0]
    # One hold in the file, from the first part: the file's checkpoint moves in order, so it
    # keeps the later parts in chunk 2 unsettled as well.
    assert owners(group2.held) == [hold1]
    assert hold1.held_from == [0]
    assert hold2.holds == 0


# --- orphaned tails -----------------------------------------------------------------------------


def test_head_lost_flags_the_next_complete_line_of_that_stream_only() -> None:
    joiner = PartialJoiner(MAX)
    joiner.head_lost = {"stdout"}
    data = (
        encode_entry(b"an error\n", "stderr", T0)
        + encode_entry(b"tail of a lost line\n", "stdout", T0)
        + encode_entry(b"next line\n", "stdout", T0)
    )

    group = decode(FILE_NEW, 0, data, joiner, CountingHold())

    assert group.messages == ["an error", "tail of a lost line", "next line"]
    assert group.flags == {1: (FLAG_PARTIAL_HEAD_LOST,)}
    assert joiner.head_lost == set()


def test_head_lost_and_invalid_time_are_both_flagged() -> None:
    joiner = PartialJoiner(MAX)
    joiner.head_lost = {"stdout"}
    data = orjson.dumps({"log": "tail\n", "stream": "stdout", "time": "yesterday"}) + b"\n"

    group = decode(FILE_NEW, 0, data, joiner, CountingHold())

    assert group.flags == {0: (FLAG_PARTIAL_HEAD_LOST, FLAG_INVALID_TIME)}
    assert group.timestamps == [READ_TIME]


def test_partial_starting_while_head_lost_is_flagged() -> None:
    """Part 1 of 3 was in a deleted file: parts 2 and 3 join, and the record says so."""
    joiner = PartialJoiner(MAX)
    joiner.head_lost = {"stdout"}
    _, p2, p3 = parts_of(LONG + b"\n")

    group = decode(FILE_NEW, 0, p2 + p3, joiner, CountingHold())

    assert group.messages == [(LONG[MAX_ENTRY_BYTES:]).decode()]
    assert group.offsets == [0]
    assert group.flags == {0: (FLAG_PARTIAL_HEAD_LOST,)}
    assert joiner.head_lost == set()


# --- flush timeout ------------------------------------------------------------------------------


def test_part_without_continuation_expires_after_the_timeout() -> None:
    """A container's last output without a newline looks exactly like a first part."""
    before = encode_entry(b"prompt line\n", "stdout", T0)
    last = encode_entry(b"Password: ", "stdout", T0 + 5_000_000)
    joiner = PartialJoiner(MAX)
    hold = CountingHold()
    start = 300

    group = decode(FILE_NEW, start, before + last, joiner, hold, now=100.0)

    assert group.messages == ["prompt line"]
    assert group.held == []
    assert hold.holds == 1
    assert joiner.oldest() == 100.0
    assert joiner.expired(100.0, 5.0) == []
    assert joiner.expired(104.999, 5.0) == []
    assert "stdout" in joiner.pending

    expired = joiner.expired(105.0, 5.0)

    assert [stream for stream, _ in expired] == ["stdout"]
    assert joiner.pending == {}
    assert joiner.oldest() is None
    flushed = group_of(expired)
    assert flushed.messages == ["Password: "]
    assert flushed.streams == ["stdout"]
    assert flushed.offsets == [start + len(before)]
    assert flushed.ends == [start + len(before) + len(last)]  # its last part's end
    assert flushed.timestamps == [t(5)]
    assert owners(flushed.held) == [hold]
    assert flushed.flags == {}
    assert flushed.heads == {}
    assert flushed.file is FILE_NEW
    assert (flushed.start, flushed.end) == (0, 0)  # it settles only what it held
    assert hold.holds == 1
    assert hold.releases == 0  # nothing released by the joiner itself


def test_flush_timeout_counts_from_the_first_part() -> None:
    p1, p2, _ = parts_of(LONG + b"\n")
    joiner = PartialJoiner(MAX)
    decode(FILE_NEW, 0, p1, joiner, CountingHold("1"), now=10.0)
    decode(FILE_NEW, len(p1), p2, joiner, CountingHold("2"), now=14.0)

    expired = joiner.expired(15.0, 5.0)

    assert len(expired) == 1
    flushed = group_of(expired)
    assert flushed.messages == [LONG[: 2 * MAX_ENTRY_BYTES].decode()]
    assert flushed.offsets == [0]
    assert [h.name for h in owners(flushed.held)] == ["1"]  # one hold per file suffices


def test_only_due_partials_expire_and_take_all_takes_the_rest() -> None:
    joiner = PartialJoiner(MAX)
    hold_old, hold_new = CountingHold("old"), CountingHold("new")
    decode(FILE_OLD, 70, encode_entry(b"out part", "stdout", T0), joiner, hold_old, now=1.0)
    decode(FILE_NEW, 0, encode_entry(b"err part", "stderr", T0), joiner, hold_new, now=2.0)

    assert joiner.expired(5.5, 4.0) != []  # stdout (since 1.0) is due, stderr not yet
    assert list(joiner.pending) == ["stderr"]
    rest = joiner.take_all()  # e.g. the container stopped

    assert [stream for stream, _ in rest] == ["stderr"]
    assert joiner.pending == {}


def test_group_of_several_partials_names_each_head() -> None:
    joiner = PartialJoiner(MAX)
    hold_old, hold_new = CountingHold("old"), CountingHold("new")
    decode(FILE_OLD, 70, encode_entry(b"out part", "stdout", T0), joiner, hold_old, now=1.0)
    decode(FILE_NEW, 0, encode_entry(b"err part", "stderr", T0), joiner, hold_new, now=1.0)

    flushed = group_of(joiner.take_all())

    assert flushed.file is FILE_OLD
    assert flushed.messages == ["out part", "err part"]
    assert flushed.streams == ["stdout", "stderr"]
    assert flushed.offsets == [70, 0]
    assert flushed.heads == {1: FILE_NEW}
    assert owners(flushed.held) == [hold_old, hold_new]


def test_continuation_after_expiry_is_a_record_of_its_own() -> None:
    joiner = PartialJoiner(MAX)
    decode(FILE_NEW, 0, encode_entry(b"slow ", "stdout", T0), joiner, CountingHold(), now=0.0)
    joiner.expired(10.0, 5.0)
    group = decode(FILE_NEW, 100, encode_entry(b"writer\n", "stdout", T0), joiner, CountingHold())
    assert group.messages == ["writer"]
    assert group.held == []


# --- size cap -----------------------------------------------------------------------------------


def test_size_cap_truncates_and_consumes_the_rest() -> None:
    after = encode_entry(b"after\n", "stdout", T0 + 1_000_000)
    parts = parts_of(LONG + b"\n")
    data = b"".join(parts) + after
    joiner = PartialJoiner(20_000)
    hold = CountingHold()

    group = decode(FILE_NEW, 0, data, joiner, hold)

    assert group.messages == [LONG[:20_000].decode(), "after"]
    assert group.flags == {0: (FLAG_TRUNCATED,)}
    assert group.offsets == [0, len(data) - len(after)]
    assert joiner.pending == {}
    assert hold.holds == 1


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_size_cap_never_cuts_a_character(char: str) -> None:
    encoded = char.encode()
    cap = 20_000
    prefix = b"a" * (cap - 1)  # the character starts one byte before the cap
    line = prefix + encoded + text(40 * 1024 - cap)

    group = decode(FILE_NEW, 0, entries(line + b"\n"), PartialJoiner(cap), CountingHold())

    assert len(group) == 1
    message = group.messages[0]
    assert message == prefix.decode()  # the straddling character is left out, not mangled
    assert len(message.encode("utf-8")) <= cap
    assert group.flags == {0: (FLAG_TRUNCATED,)}


def test_size_cap_spanning_chunks_and_timeout() -> None:
    p1, p2, p3 = parts_of(LONG + b"\n")
    joiner = PartialJoiner(20_000)
    decode(FILE_NEW, 0, p1 + p2, joiner, CountingHold(), now=0.0)
    flushed = group_of(joiner.expired(60.0, 5.0))
    assert flushed.messages == [LONG[:20_000].decode()]
    assert flushed.flags == {0: (FLAG_TRUNCATED,)}
    # The third part comes later: a (short) record of its own, not part of the truncated one.
    group = decode(FILE_NEW, len(p1 + p2), p3, joiner, CountingHold())
    assert group.messages == [LONG[2 * MAX_ENTRY_BYTES :].decode()]


# --- without a joiner ---------------------------------------------------------------------------


def test_without_a_joiner_parts_are_separate_records() -> None:
    """decode_chunk(joiner=None) is the plain, stateless decoder: one record per entry, as the
    file holds them. It stays for callers with no container to join for (unit tests of
    decoding and of outputs that feed chunks straight through a pipeline, and any faster
    decoder that must be compared with this one line for line); the tailer always passes a joiner.
    """
    parts = parts_of(LONG + b"\n")
    data = b"".join(parts)

    group = decode(FILE_NEW, 0, data, None)

    assert group.messages == [
        LONG[:MAX_ENTRY_BYTES].decode(),
        LONG[MAX_ENTRY_BYTES : 2 * MAX_ENTRY_BYTES].decode(),
        LONG[2 * MAX_ENTRY_BYTES :].decode(),
    ]
    assert group.offsets == [0, len(parts[0]), len(parts[0]) + len(parts[1])]
    assert group.held == []
    assert group.flags == {}


# --- what a joined record loses (bugs) ----------------------------------------------------------


def test_joined_record_keeps_the_entry_attrs() -> None:
    attrs = b'{"com.example.team":"payments"}'
    data = entries(LONG + b"\n", attrs=attrs) + encode_entry(b"short\n", "stdout", T0, attrs)

    group = decode(FILE_NEW, 0, data, PartialJoiner(MAX), CountingHold())

    assert group.messages == [LONG.decode(), "short"]
    assert group.attrs.get(1) == {"com.example.team": "payments"}  # a plain line has them
    assert group.attrs.get(0) == {"com.example.team": "payments"}


def test_crlf_split_between_cr_and_lf_is_stripped() -> None:
    line = text(MAX_ENTRY_BYTES - 1)
    parts = parts_of(line + b"\r\n")
    assert logs_of(parts) == [line.decode() + "\r", "\n"]

    group = decode(FILE_NEW, 0, b"".join(parts), PartialJoiner(MAX), CountingHold())

    assert group.messages == [line.decode()]


def test_joined_record_with_invalid_time_is_flagged() -> None:
    data = b"".join(
        orjson.dumps({"log": part.decode(), "stream": "stdout", "time": "garbage"}) + b"\n"
        for part in split_output(LONG + b"\n")
    )

    group = decode(FILE_NEW, 0, data, PartialJoiner(MAX), CountingHold())

    assert group.messages == [LONG.decode()]
    assert group.timestamps == [READ_TIME]
    assert group.flags == {0: (FLAG_INVALID_TIME,)}
    assert group.invalid_time == 1
