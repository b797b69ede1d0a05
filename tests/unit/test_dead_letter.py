"""The dead-letter file (what each line holds, appends that a replay can set aside safely) and
`shipper replay-dead-letters` on real files, with outputs that need no server: the id each
record is sent with, lines kept, `--output`, `--dry-run`, leftovers and progress."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper import replay
from shipper.config import ElasticsearchOutputConfig, parse_config
from shipper.model import Enrichment, LogFile, RecordGroup, Rejection
from shipper.replay import _groups, _Line, _parse, replay_dead_letters
from shipper.sinks.dead_letter import DeadLetterFile, _lock_if_current
from shipper.sinks.elasticsearch import ElasticsearchSink
from shipper.sinks.record_ids import record_ids

FILE = LogFile(
    "docker", "c0ffee", "/var/lib/docker/containers/c0ffee/c0ffee-json.log", "h1", "fp-1"
)
ROTATED = LogFile("docker", "c0ffee", f"{FILE.path}.1", "h0", "fp-0")
NO_ID = LogFile("files", "", "/var/log/app/new.log", "h2", "")  # no complete first line yet


def group_of(file: LogFile, *, processed: bool = False) -> RecordGroup:
    """Three records: a plain one, one that starts in the rotated file, one with no known end."""
    group = RecordGroup(
        file,
        start=100,
        end=400,
        timestamps=[
            "2024-05-01T12:00:00.000000001Z",
            "2024-05-01T12:00:01.000000000Z",
            "2024-05-02T00:00:00.500000000Z",
        ],
        messages=["first", "joined across a rotation", "tail"],
        streams=["stdout", "stderr", "stdout"],
        offsets=[100, 16300, 300],
        ends=[200, 250, -1],
        heads={1: ROTATED},
    )
    if processed:
        group.documents = [
            orjson.dumps({"@timestamp": group.timestamps[i], "message": "[redacted]", "n": i})
            + b"\n"
            for i in range(3)
        ]
    return group


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines()]


def replayed(data: bytes) -> list[RecordGroup]:
    entries = []
    for number, raw in enumerate(data.splitlines(keepends=True), 1):
        entry = _parse(_Line(number, raw, 0))
        assert entry is not None
        entries.append(entry)
    return _groups(entries)


# --- the line format ------------------------------------------------------------------------------


def ids_by_offset(groups: list[RecordGroup]) -> dict[int, str]:
    return {g.offsets[i]: record_ids(g, (i,))[0] for g in groups for i in range(len(g))}


@pytest.mark.parametrize("file", [FILE, NO_ID], ids=["fingerprint", "path-only"])
@pytest.mark.parametrize("processed", [False, True], ids=["plain", "processed"])
def test_a_replayed_record_gets_the_id_it_was_first_sent_with(
    file: LogFile, processed: bool
) -> None:
    """What Elasticsearch's `_id` is made of is in the line, so the replay sends the same id:
    a record indexed meanwhile answers 409 instead of becoming a second copy."""
    group = group_of(file, processed=processed)
    first = ids_by_offset([group])
    letters = DeadLetterFile(Path("unused"))
    groups = replayed(letters.encode("es", [(group, i, "400") for i in range(3)]))
    again = ids_by_offset(groups)
    # Every record the pipeline reads has a known end. One without (a group built by hand)
    # gets an id from its message: the processed message is all the line has of it.
    assert again[100] == first[100] and again[16300] == first[16300]
    assert (again[300] == first[300]) is not processed
    # Rejected again, a replayed record is written with the same fields: its id survives any
    # number of replays.
    rewritten = letters.encode("es", [(g, i, "400 again") for g in groups for i in range(len(g))])
    assert ids_by_offset(replayed(rewritten)) == again


@pytest.mark.parametrize("processed", [False, True], ids=["plain", "processed"])
@pytest.mark.parametrize(
    "target",
    [
        {},  # the default data stream
        {"index": "docker-%Y.%m.%d-%H"},  # dated, from each record's @timestamp
        {
            "index": "docker-{container.labels.team}-%Y.%m.%d",  # from the container's labels
            "allowed_indices": ["docker-payments-*"],
            "fallback_index": "docker-unrouted-%Y.%m.%d",
        },
        {
            "index": "docker-{stream}",  # from a field of each record
            "allowed_indices": ["docker-stdout"],
            "fallback_index": "docker-other",
        },
    ],
    ids=["data-stream", "dated", "labels", "per-record"],
)
def test_a_replayed_record_goes_to_the_index_it_was_first_routed_to(
    target: dict[str, Any], processed: bool
) -> None:
    config = parse_config(
        orjson.dumps(
            {
                "sources": {"d": {"type": "docker_json"}},
                "outputs": {"es": {"type": "elasticsearch", "hosts": ["http://x:9200"], **target}},
            }
        ).decode(),
        "<test>",
    ).outputs["es"]
    assert isinstance(config, ElasticsearchOutputConfig)
    group = group_of(FILE, processed=processed)
    metadata = {"container": {"id": "c0ffee", "labels": {"team": "payments"}}}
    group.enrichment = Enrichment(metadata, orjson.dumps(metadata)[1:-1])
    if processed:  # processors keep the container's fields in each document
        group.documents = [
            orjson.dumps({**orjson.loads(line), **metadata, "stream": group.streams[i]}) + b"\n"
            for i, line in enumerate(group.documents or [])
        ]
    router = ElasticsearchSink(config)._router
    first = dict(zip(group.offsets, router.names(group, range(3)), strict=True))
    data = DeadLetterFile(Path("unused")).encode("es", [(group, i, "400") for i in range(3)])
    again = {
        g.offsets[i]: name
        for g in replayed(data)
        for i, name in zip(range(len(g)), router.names(g, range(len(g))), strict=True)
    }
    assert again == first
    assert len(set(first.values())) > 1 or not target  # the records do go to several indices


def test_each_line_says_where_the_record_was_read_and_why_it_was_refused() -> None:
    group = group_of(FILE)
    reason = Rejection(
        "400 document_parsing_exception: failed to parse field [status]",
        400,
        "document_parsing_exception",
    )
    rejected = [(group, 0, reason), (group, 1, "x"), (group, 2, "y")]
    plain, rotated, tail = lines_of(DeadLetterFile(Path("unused")).encode("es", rejected))
    assert list(plain) == [
        "time", "output", "reason", "status", "error_type", "log_file", "offset", "end",
        "fingerprint", "document",
    ]  # fmt: skip
    assert plain["output"] == "es"
    assert (plain["status"], plain["error_type"]) == (400, "document_parsing_exception")
    assert (plain["log_file"], plain["offset"], plain["end"]) == (FILE.path, 100, 200)
    assert plain["fingerprint"] == "fp-1"
    assert plain["document"]["message"] == "first"
    # A record joined across a rotation starts in the rotated file: its id is made from that.
    assert (rotated["head_file"], rotated["fingerprint"]) == (ROTATED.path, "fp-0")
    assert (rotated["log_file"], rotated["offset"], rotated["end"]) == (FILE.path, 16300, 250)
    assert "status" not in rotated and "error_type" not in rotated
    assert "end" not in tail and "head_file" not in tail  # its end is not known


def test_an_old_line_without_end_or_file_id_still_replays_with_a_stable_id() -> None:
    """Lines written before `end` and `fingerprint` were recorded: the id comes from the path,
    offset and message (not the one first sent), the same at every replay."""
    old = (
        b'{"time":1714564800.5,"output":"es","reason":"400 x","log_file":"/a.log","offset":7,'
        b'"document":{"@timestamp":"2024-05-01T12:00:00.000000000Z","message":"hi"}}\n'
    )
    [group] = replayed(old)
    assert (group.file.path, group.file.fingerprint, group.offsets, group.ends) == (
        "/a.log", "", [7], [-1],
    )  # fmt: skip
    assert record_ids(group, [0]) == record_ids(replayed(old)[0], [0])
    assert group.timestamps == ["2024-05-01T12:00:00.000000000Z"]
    assert group.documents == [b'{"@timestamp":"2024-05-01T12:00:00.000000000Z","message":"hi"}\n']


# --- appending while a replay sets the file aside -------------------------------------------------


def test_appends_go_to_a_new_file_once_the_old_one_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "state" / "dead-letter.ndjson"
    letters = DeadLetterFile(path)
    group = group_of(FILE)
    asyncio.run(letters.write("es", [(group, 0, "a")]))
    assert path.stat().st_mode & 0o777 == 0o600
    aside = path.with_name("aside")
    os.rename(path, aside)
    asyncio.run(letters.write("es", [(group, 1, "b")]))
    assert [line["reason"] for line in lines_of(aside.read_bytes())] == ["a"]
    assert [line["reason"] for line in lines_of(path.read_bytes())] == ["b"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_appender_that_opened_the_file_before_it_was_set_aside_does_not_write_there(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dead-letter.ndjson"
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # opened before the rename
    try:
        assert _lock_if_current(fd, path)  # still the file at the path: it may write
        fcntl.flock(fd, fcntl.LOCK_UN)
        aside = path.with_name("aside")
        os.rename(path, aside)
        with aside.open("rb") as replaying:
            fcntl.flock(replaying.fileno(), fcntl.LOCK_EX)  # the replay holds it
            assert not _lock_if_current(fd, path)  # at once, not after the replay
        assert not _lock_if_current(fd, path)  # nor after: the path is another file now
    finally:
        os.close(fd)


def test_an_append_caught_by_the_rename_goes_to_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shipper's append opens the file; a replay renames it aside and locks it before the
    append writes: the append notices (without waiting for the replay), opens the path again
    and writes the new file; the set-aside file stays as the replay read it."""
    path = tmp_path / "dead-letter.ndjson"
    letters = DeadLetterFile(path)
    group = group_of(FILE)
    asyncio.run(letters.write("es", [(group, 0, "before")]))
    opened, go = threading.Event(), threading.Event()
    real_open = os.open

    def open_then_pause(file: Any, flags: int, mode: int = 0o777) -> int:
        fd = real_open(file, flags, mode)
        if Path(file) == path and not opened.is_set():
            opened.set()
            assert go.wait(10)
        return fd

    monkeypatch.setattr(os, "open", open_then_pause)
    appender = threading.Thread(
        target=letters._append, args=(letters.encode("es", [(group, 1, "during")]),)
    )
    appender.start()
    assert opened.wait(10)
    aside = tmp_path / "aside"
    os.rename(path, aside)
    with aside.open("rb") as replaying:
        fcntl.flock(replaying.fileno(), fcntl.LOCK_EX)
        read_under_lock = replaying.read()
        go.set()
        appender.join(10)
        assert not appender.is_alive(), "the append waited for the replay's lock"
        assert aside.read_bytes() == read_under_lock
    assert [line["reason"] for line in lines_of(read_under_lock)] == ["before"]
    assert [line["reason"] for line in lines_of(path.read_bytes())] == ["during"]


# --- replaying into a file output -----------------------------------------------------------------


# replay_dead_letters sets up shipper's logging (tests/conftest.py puts it back).
pytestmark = pytest.mark.usefixtures("restore_logging")


def write_config(tmp: Path, *, outputs: tuple[str, ...] = ("archive",), extra: str = "") -> Path:
    text = f"state_dir: {tmp / 'state'}\n"
    text += f"sources:\n  d:\n    type: docker_json\n    root: {tmp / 'containers'}\n"
    text += "outputs:\n"
    for name in outputs:
        text += f"  {name}:\n    type: file\n    path: {tmp / (name + '.ndjson')}\n{extra}"
    config = tmp / "shipper.yaml"
    config.write_text(text)
    return config


def letter(
    output: str, seq: int, *, error_type: str | None = "document_parsing_exception"
) -> bytes:
    record: dict[str, Any] = {
        "time": 1714564800.25,
        "output": output,
        "reason": "400 refused" if error_type else "gave up after 3 attempts: down",
        **({"status": 400, "error_type": error_type} if error_type else {}),
        "log_file": "/logs/a-json.log",
        "offset": seq * 100,
        "end": seq * 100 + 90,
        "fingerprint": "fp-a",
        "document": {
            "@timestamp": "2024-05-01T12:00:00.000000000Z",
            "message": f"line seq={seq:06d}",
            "stream": "stdout",
            "secret": "sh-do-not-print",
        },
    }
    return orjson.dumps(record) + b"\n"


def documents(path: Path) -> list[dict[str, Any]]:
    return lines_of(path.read_bytes()) if path.exists() else []


def messages(path: Path) -> list[str]:
    return [document["message"] for document in documents(path)]


def state_files(tmp: Path) -> list[str]:
    return sorted(path.name for path in (tmp / "state").iterdir())


def run(
    capsys: pytest.CaptureFixture[str],
    config: Path,
    *,
    file: Path | None = None,
    output: str | None = None,
    dry_run: bool = False,
) -> tuple[int, str, str]:
    code = replay_dead_letters(config, file=file, output=output, dry_run=dry_run)
    said = capsys.readouterr()
    assert "sh-do-not-print" not in said.out + said.err  # documents are counted, never shown
    return code, said.out, said.err


def test_every_record_goes_to_its_output_as_it_was_and_the_file_is_consumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, outputs=("archive", "copy"))
    dead = tmp_path / "state" / "dead-letter.ndjson"
    dead.parent.mkdir()
    lines = [letter("archive", 1), letter("copy", 2), letter("archive", 3, error_type=None)]
    dead.write_bytes(b"".join(lines))
    code, out, _ = run(capsys, config)
    assert code == 0, out
    assert messages(tmp_path / "archive.ndjson") == ["line seq=000001", "line seq=000003"]
    assert messages(tmp_path / "copy.ndjson") == ["line seq=000002"]
    # Byte for byte the document of the line: processed and redacted once, never again.
    assert (tmp_path / "copy.ndjson").read_bytes() == orjson.dumps(
        orjson.loads(lines[1])["document"]
    ) + b"\n"
    assert "archive: 2 delivered, 0 duplicate (already there), 0 rejected again, 0 kept" in out
    assert "copy: 1 delivered" in out
    assert "total: 3 delivered, 0 duplicate (already there), 0 rejected again, 0 kept" in out
    assert state_files(tmp_path) == []  # no dead letter left, no set-aside file, no progress
    code, out, _ = run(capsys, config)  # again: nothing to do
    assert (code, out.strip()) == (0, f"nothing to replay: {dead} does not exist")


def test_malformed_lines_and_unknown_outputs_are_kept_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    dead = tmp_path / "state" / "dead-letter.ndjson"
    dead.parent.mkdir()
    unknown = letter("retired", 2)
    malformed = [b"{not json\n", b'{"output":"archive"}\n', b"[1,2]\n"]
    dead.write_bytes(
        letter("archive", 1) + malformed[0] + unknown + malformed[1] + malformed[2]
        + b'{"output":"archive","document":{"message":"torn'  # a torn last line, no newline
    )  # fmt: skip
    code, out, err = run(capsys, config)
    assert code == 1
    assert messages(tmp_path / "archive.ndjson") == ["line seq=000001"]
    assert "archive: 1 delivered" in out
    assert "retired: 1 kept (output not in the config)" in out
    assert "malformed lines: 4 kept (lines 2, 4, 5, 6)" in out
    assert "total: 1 delivered, 0 duplicate (already there), 0 rejected again, 5 kept" in out
    warnings = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert {"output": "retired", "count": 1} in [
        {key: w.get(key) for key in ("output", "count")} for w in warnings
    ]
    assert any(w.get("lines") == [2, 4, 5, 6] for w in warnings)
    # Kept lines go back to the dead-letter file as they were (the torn one completed by a
    # newline); the set-aside file is gone.
    kept = dead.read_bytes().splitlines(keepends=True)
    assert sorted(kept) == sorted(
        [*malformed, unknown, b'{"output":"archive","document":{"message":"torn\n']
    )
    assert state_files(tmp_path) == ["dead-letter.ndjson"]


def test_only_the_chosen_output_is_replayed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, outputs=("archive", "copy"))
    dead = tmp_path / "state" / "dead-letter.ndjson"
    dead.parent.mkdir()
    dead.write_bytes(letter("archive", 1) + letter("copy", 2) + letter("retired", 3))
    code, out, _ = run(capsys, config, output="copy")
    assert code == 0, out  # what was asked for was delivered
    assert messages(tmp_path / "copy.ndjson") == ["line seq=000002"]
    assert not (tmp_path / "archive.ndjson").exists()
    assert "archive: 1 left in the file (not --output copy)" in out
    assert "retired: 1 left in the file (not --output copy)" in out
    assert dead.read_bytes() == letter("archive", 1) + letter("retired", 3)


def test_an_output_not_in_the_config_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    dead = tmp_path / "state" / "dead-letter.ndjson"
    dead.parent.mkdir()
    dead.write_bytes(letter("archive", 1))
    code, _, err = run(capsys, config, output="nope")
    assert code == 2
    assert "--output: no output of this name (defined: archive)" in err
    assert dead.read_bytes() == letter("archive", 1)
    (tmp_path / "bad.yaml").write_text("outputs: 3\n")
    assert run(capsys, tmp_path / "bad.yaml")[0] == 2


def test_a_dry_run_counts_by_output_and_cause_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, outputs=("archive", "copy"))
    dead = tmp_path / "state" / "dead-letter.ndjson"
    dead.parent.mkdir()
    dead.write_bytes(
        letter("archive", 1) + letter("archive", 2) + letter("archive", 3, error_type=None)
        + letter("copy", 4, error_type="strict_dynamic_mapping_exception") + letter("gone", 5)
        + b"garbage\n"
    )  # fmt: skip
    before = (dead.read_bytes(), dead.stat().st_mtime_ns, state_files(tmp_path))
    code, out, _ = run(capsys, config, dry_run=True)
    assert code == 0
    assert out.splitlines() == [
        f"dry run: {dead}; nothing is sent and no file is changed",
        "archive: 3 to send (document_parsing_exception: 2, retries exhausted: 1)",
        "copy: 1 to send (strict_dynamic_mapping_exception: 1)",
        "gone: 1 kept (output not in the config)",
        "malformed lines: 1 kept (line 6)",
        "total: 4 to send, 2 kept",
    ]
    assert (dead.read_bytes(), dead.stat().st_mtime_ns, state_files(tmp_path)) == before
    assert not (tmp_path / "archive.ndjson").exists() and not (tmp_path / "copy.ndjson").exists()


def test_records_an_output_still_cannot_take_go_back_with_the_new_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The output's own retry policy applies; with max_attempts reached the records go back to
    the dead-letter file, their ids' fields kept, and the set-aside file is removed."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    config = write_config(
        tmp_path,
        extra="    retry:\n      initial_backoff: 10ms\n      max_backoff: 20ms\n"
        "      max_attempts: 2\n",
    )
    dead = tmp_path / "state" / "dead-letter.ndjson"
    dead.parent.mkdir()
    dead.write_bytes(letter("archive", 1) + letter("archive", 2))
    # The output file exists but cannot be written: opening works, every write fails.
    (tmp_path / "archive.ndjson").symlink_to("/dev/full")
    code, out, _ = run(capsys, config)
    assert code == 1
    assert "archive: 0 delivered, 0 duplicate (already there), 2 rejected again, 0 kept" in out
    back = lines_of(dead.read_bytes())
    assert [line["document"]["message"] for line in back] == ["line seq=000001", "line seq=000002"]
    for line, seq in zip(back, (1, 2), strict=True):
        assert line["reason"].startswith("gave up after 2 attempts")
        assert "status" not in line  # the old reason's details do not stick to the new one
        before = orjson.loads(letter("archive", seq))
        for key in ("log_file", "offset", "end", "fingerprint", "document"):
            assert line[key] == before[key], key
    assert state_files(tmp_path) == ["dead-letter.ndjson"]


def test_leftovers_of_an_interrupted_replay_are_named_and_replayed_from_their_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    aside = state / "dead-letter.ndjson.replay-20240501T120000.000000Z"
    lines = [letter("archive", n) for n in range(1, 5)]
    aside.write_bytes(b"".join(lines))
    # The interrupted replay had finished its first two lines.
    done = len(lines[0]) + len(lines[1])
    (state / f"{aside.name}.progress").write_bytes(orjson.dumps({"offset": done, "line": 3}))
    code, out, err = run(capsys, config, dry_run=True)
    assert f"an earlier replay did not finish: {aside}" in err
    assert f"--file {aside}" in err
    code, out, err = run(capsys, config)
    assert code == 0 and "nothing to replay" in out
    assert f"--file {aside}" in err
    assert aside.exists()
    code, out, err = run(capsys, config, file=aside, dry_run=True)
    assert "archive: 2 to send" in out
    code, out, err = run(capsys, config, file=aside)
    assert code == 0, err
    assert messages(tmp_path / "archive.ndjson") == ["line seq=000003", "line seq=000004"]
    assert state_files(tmp_path) == []


def test_a_progress_that_does_not_fit_the_file_replays_all_of_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    aside = state / "dead-letter.ndjson.replay-x"
    aside.write_bytes(letter("archive", 1) + letter("archive", 2))
    (state / f"{aside.name}.progress").write_bytes(orjson.dumps({"offset": 5, "line": 2}))
    assert run(capsys, config, file=aside)[0] == 0
    assert messages(tmp_path / "archive.ndjson") == ["line seq=000001", "line seq=000002"]


def test_a_file_another_replay_holds_is_left_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay, "LOCK_WAIT", 0.05)
    config = write_config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    aside = state / "dead-letter.ndjson.replay-x"
    aside.write_bytes(letter("archive", 1))
    with aside.open("rb") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        code, _, err = run(capsys, config, file=aside)
        assert code == 1
        assert f"another replay is working on {aside}" in err
        code, _, err = run(capsys, config)
        assert f"another replay is working on {aside}" in err
    assert aside.read_bytes() == letter("archive", 1)
    assert messages(tmp_path / "archive.ndjson") == []


def test_a_file_given_with_file_is_set_aside_and_its_rejections_go_to_the_live_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    copied = tmp_path / "from-another-host.ndjson"
    copied.write_bytes(letter("archive", 1) + letter("elsewhere", 2))
    code, out, _ = run(capsys, config, file=copied)
    assert code == 1
    assert f"set {copied} aside as {copied}.replay-" in out
    assert not copied.exists()
    assert list(tmp_path.glob("from-another-host.ndjson*")) == []
    assert (tmp_path / "state" / "dead-letter.ndjson").read_bytes() == letter("elsewhere", 2)
    assert messages(tmp_path / "archive.ndjson") == ["line seq=000001"]
