"""Tests for shipper.sinks.record_ids: the same record read twice has the same id; another
record, or the same start with other boundaries, has another."""

from shipper.config import MultilineConfig
from shipper.model import Chunk, LogFile, RecordGroup
from shipper.processing.multiline import MultilineJoiner, build_parsers
from shipper.sinks.record_ids import record_ids
from shipper.sources.docker_json import decode_chunk

FILE = LogFile("docker", "c0ffee", "/c/c0ffee-json.log", "h1", fingerprint="f" * 64)
SAME_CONTENT_OTHER_OPEN = LogFile("docker", "c0ffee", "/c/c0ffee-json.log.1", "h2", "f" * 64)
OTHER_FILE = LogFile("docker", "c0ffee", "/c/c0ffee-json.log", "h3", fingerprint="e" * 64)
READ_TIME = "2030-01-01T00:00:00.000000000Z"
LINES = (
    b'{"log":"first\\n","stream":"stdout","time":"2024-05-01T12:00:01Z"}\n'
    b'{"log":"second\\n","stream":"stdout","time":"2024-05-01T12:00:02Z"}\n'
)


def ids_of(file: LogFile, data: bytes = LINES, start: int = 0) -> list[str]:
    group = decode_chunk(Chunk(file, start, data), read_time=READ_TIME)
    return record_ids(group, range(len(group)))


def test_the_same_records_read_again_get_the_same_ids() -> None:
    # Another opening of the same content (a restart, a rename): same ids.
    assert ids_of(FILE) == ids_of(SAME_CONTENT_OTHER_OPEN)


def test_ids_differ_between_records_files_and_offsets() -> None:
    first, second = ids_of(FILE)
    assert first != second
    assert ids_of(OTHER_FILE)[0] != first
    assert ids_of(FILE, start=100)[0] != first


def test_a_record_with_other_boundaries_gets_another_id() -> None:
    whole = ids_of(FILE)[0]
    cut = ids_of(FILE, b'{"log":"fir","stream":"stdout","time":"2024-05-01T12:00:01Z"}\n')[0]
    assert cut != whole


TRACE = (
    b'{"log":"ERROR failed\\n","stream":"stdout","time":"2024-05-01T12:00:01Z"}\n'
    b'{"log":"\\tat a.B.c(B.java:1)\\n","stream":"stdout","time":"2024-05-01T12:00:02Z"}\n'
    b'{"log":"\\tat a.B.d(B.java:2)\\n","stream":"stdout","time":"2024-05-01T12:00:03Z"}\n'
)


def joined(data: bytes) -> RecordGroup:
    """The records of `data` with Java multiline joining: here one record of all three lines."""
    join = MultilineJoiner(
        build_parsers(MultilineConfig())["java"], max_lines=500, max_bytes=1 << 20
    )
    out = join.apply(decode_chunk(Chunk(FILE, 0, data), read_time=READ_TIME), None, 0.0)
    rest = join.take_all()
    assert rest is not None and len(out) == 0
    return rest


def test_a_record_read_again_with_other_boundaries_gets_another_id() -> None:
    # The same lines, one record joined by a multiline parser, or a record each without: the
    # first record starts at the same byte but ends elsewhere, so it is another record.
    whole = joined(TRACE)
    lines = decode_chunk(Chunk(FILE, 0, TRACE), read_time=READ_TIME)
    assert whole.offsets[0] == lines.offsets[0] == 0
    assert whole.ends == [len(TRACE)]
    assert lines.ends[0] < len(TRACE)
    assert record_ids(whole, [0])[0] != record_ids(lines, [0])[0]


def test_the_same_bytes_read_twice_get_the_same_ids() -> None:
    assert record_ids(joined(TRACE), [0]) == record_ids(joined(TRACE), [0])
    assert ids_of(FILE, TRACE) == ids_of(FILE, TRACE)


def test_a_group_built_without_ends_falls_back_to_the_text() -> None:
    def by_hand(message: str) -> RecordGroup:
        return RecordGroup(file=FILE, start=0, end=0, messages=[message], offsets=[0])

    assert record_ids(by_hand("a"), [0]) == record_ids(by_hand("a"), [0])
    assert record_ids(by_hand("a"), [0]) != record_ids(by_hand("b"), [0])


def test_ids_are_short_url_safe_text() -> None:
    # The file's key, then the start and end offsets in hex.
    first, second = ids_of(FILE, start=0x10)
    key = first[:12]
    assert second.startswith(key)
    assert first == f"{key}10-{0x10 + len(LINES.splitlines()[0]) + 1:x}"
    for record_id in (first, second):
        assert len(record_id) < 30
        assert record_id.replace("-", "").replace("_", "").isalnum()
