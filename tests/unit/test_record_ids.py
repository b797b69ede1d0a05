"""Tests for shipper.sinks.record_ids: the same record read twice has the same id; another
record, or the same start with other boundaries, has another."""

from shipper.model import Chunk, LogFile
from shipper.sinks.record_ids import record_ids
from shipper.sources.docker_json import decode_chunk

FILE = LogFile("docker", "c0ffee", "/c/c0ffee-json.log", "h1", fingerprint="f" * 64)
SAME_CONTENT_OTHER_OPEN = LogFile("docker", "c0ffee", "/c/c0ffee-json.log.1", "h2", "f" * 64)
OTHER_FILE = LogFile("docker", "c0ffee", "/c/c0ffee-json.log", "h3", fingerprint="e" * 64)
READ_TIME = "2030-01-01T00:00:00.000000000Z"
LINES = (
    b'{"log":"first\\n","stream":"stdout","time":"2024-05-01T12:00:00.000000001Z"}\n'
    b'{"log":"second\\n","stream":"stdout","time":"2024-05-01T12:00:00.000000002Z"}\n'
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
    cut = ids_of(
        FILE, b'{"log":"fir","stream":"stdout","time":"2024-05-01T12:00:00.000000001Z"}\n'
    )[0]
    assert cut != whole


def test_ids_are_short_url_safe_text() -> None:
    for record_id in ids_of(FILE):
        assert len(record_id) == 20
        assert record_id.replace("-", "").replace("_", "").isalnum()
