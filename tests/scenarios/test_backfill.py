"""`shipper run --once` (a backfill) as an operator runs it: the real command in a child process
on a prepared backlog (Docker json-file logs with rotated and gzipped generations, a sidecar file
whose last line has no newline), into the file output or a fake Elasticsearch that is down."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from shipper.app import App
from shipper.checkpoints import CheckpointStore
from shipper.config import FileOutputConfig, OutputConfig, parse_config
from shipper.docker_writer import SEQ_PATTERN, ContainerLog, DockerRootWriter, realistic_lines
from shipper.model import Batch, BatchResult
from shipper.sinks import Sink
from shipper.sinks.file import FileSink
from shipper.telemetry.counters import Telemetry
from tests.engine_api import EngineApi
from tests.fake_elasticsearch import FakeElasticsearch
from tests.helpers import wait_until_sync

Seqs = dict[tuple[str, str], list[int]]

LAST_LINE = "app seq=999999 the last words, with no newline"
PROGRESS = re.compile(
    r"^progress: (\d+)% [\d.]+ (?:B|kB|MB|GB|TB) of [\d.]+ (?:B|kB|MB|GB|TB), "
    r"[\d.]+[kM]? lines/s(?:, ETA .+)?$"
)


# --- the backlog ---------------------------------------------------------------------------------


def write_numbered(log: ContainerLog, count: int, expected: Seqs, *, seed: int) -> None:
    """Realistic numbered lines; every 97th is longer than 16 KiB (Docker splits it)."""
    rng = random.Random(seed)
    start = sum(len(seqs) for (cid, _), seqs in expected.items() if cid == log.id)
    for stream, line in realistic_lines(rng, count, container=log.name, start_seq=start):
        seq = int(SEQ_PATTERN.search(line)[1])
        long = f"seq={seq:06d} long " + "x" * rng.randrange(17_000, 40_000)
        log.write(long if seq % 97 == 0 else line, stream=stream)
        expected[(log.id, stream)].append(seq)


def prepare_backlog(tmp: Path) -> tuple[Seqs, list[str]]:
    """Three containers' json-file logs (rotated plain `.1`, `.2`..., and `.1` + `.2.gz`...,
    one whose last output has no newline) and a sidecar file rotated once whose last line
    has no newline. Nothing is deleted by max-file, so everything written is on disk."""
    writer = DockerRootWriter(tmp / "containers", compression="manual")
    expected: Seqs = defaultdict(list)
    plain = writer.add_container("plain", max_size=64 * 1024, max_file=50)
    zipped = writer.add_container(
        "zipped", max_size=64 * 1024, max_file=50, compress=True, compression="manual"
    )
    quiet = writer.add_container("quiet")
    write_numbered(plain, 1500, expected, seed=1)
    write_numbered(zipped, 1500, expected, seed=2)
    write_numbered(quiet, 200, expected, seed=3)
    # Its last output before it stopped: no newline (dockerd writes it as an entry whose log
    # has no "\n"; in normal mode it would wait for the partial flush timeout).
    quiet.write("seq=999998 goodbye", newline=False)
    expected[(quiet.id, "stdout")].append(999998)
    writer.close()
    assert len(plain.generations()) > 3
    names = [path.name for path in zipped.generations()]
    assert names[-2].endswith(".1") and names[-3].endswith(".2.gz")  # `.1` not compressed yet

    logs = tmp / "logs"
    logs.mkdir()
    lines = [f"app seq={n:06d} line {n}" for n in range(300)]
    (logs / "app.log.1").write_text("".join(f"{line}\n" for line in lines[:150]))
    (logs / "app.log").write_text("".join(f"{line}\n" for line in lines[150:]) + LAST_LINE)
    return expected, [*lines, LAST_LINE]


def write_config(tmp: Path, output: str | None = None, extra: str = "") -> Path:
    output = output or (
        f"  archive:\n    type: file\n    path: {tmp / 'out.ndjson'}\n"
        "    batch:\n      linger: 20ms\n"
    )
    config = tmp / "shipper.yaml"
    config.write_text(
        f"state_dir: {tmp / 'state'}\n"
        "sources:\n"
        f"  docker:\n    type: docker_json\n    root: {tmp / 'containers'}\n"
        f"  app:\n    type: files\n    paths: ['{tmp / 'logs'}/*.log']\n"
        f"outputs:\n{output}"
        "monitoring:\n  port: 0\n"
        "checkpoints:\n  flush_interval: 100ms\n"
        f"{extra}"
    )
    return config


def backfill(config: Path, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`shipper run --once`; stderr is a pipe, not a terminal: plain progress lines."""
    return subprocess.run(
        [sys.executable, "-m", "shipper", "run", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_backfill(config: Path, stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "shipper", "run", "--once", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


# --- what was shipped ----------------------------------------------------------------------------


def shipped(documents: list[dict]) -> tuple[Seqs, list[str]]:
    """Docker records' seqs by (container id, stream), and the sidecar file's messages."""
    by_stream: Seqs = defaultdict(list)
    plain: list[str] = []
    for document in documents:
        if "container" in document:
            match = SEQ_PATTERN.search(document["message"])
            assert match is not None, document["message"][:80]
            by_stream[(document["container"]["id"], document["stream"])].append(int(match[1]))
        else:
            plain.append(document["message"])
    return by_stream, plain


def output_documents(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def progress_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("progress:")]


def summary_line(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if line.startswith("backfill ")]
    return line


def checkpoints(tmp: Path) -> CheckpointStore:
    store = CheckpointStore(tmp / "state" / "checkpoints.json", on_corrupt="fail")
    store.load()
    return store


def assert_checkpoints_at_the_ends(tmp: Path) -> None:
    """Every file the checkpoints name was delivered to its end (its recorded size), and the
    live files' sizes are what is on disk now."""
    store = checkpoints(tmp)
    assert len(store) > 10
    for entry in store.entries():
        assert entry.offset == entry.size, entry
        if entry.path.endswith((".log", "-json.log")):
            assert os.path.getsize(entry.path) == entry.offset, entry


# --- tests ---------------------------------------------------------------------------------------


def test_once_ships_the_backlog_exactly_once_then_a_second_run_ships_nothing(
    tmp_path: Path,
) -> None:
    expected, lines = prepare_backlog(tmp_path)
    config = write_config(tmp_path)

    result = backfill(config)

    assert result.returncode == 0, result.stderr[-3000:]
    documents = output_documents(tmp_path / "out.ndjson")
    by_stream, plain = shipped(documents)
    assert dict(by_stream) == dict(expected)  # every line once, in order per stream
    assert plain == lines  # the rotated `.1` first, then the live file, its last line too
    assert any(" long " in d["message"] and len(d["message"]) > 17_000 for d in documents)
    goodbye = next(d for d in documents if "goodbye" in d["message"])
    assert goodbye["message"] == "seq=999998 goodbye"
    assert_checkpoints_at_the_ends(tmp_path)
    # Plain progress lines (stderr is not a terminal), the last at 100 %, then the summary.
    progress = progress_lines(result.stderr)
    assert progress, result.stderr[-3000:]
    assert all(PROGRESS.match(line) for line in progress), progress
    assert progress[-1].startswith("progress: 100% ")
    total = len(documents)
    summary = summary_line(result.stderr)
    # More lines than records: Docker wrote each long line as several entries.
    assert f" lines, {total:,} records delivered, 0 dead-lettered, " in summary, summary
    assert "Traceback" not in result.stderr

    again = backfill(config, timeout=30)

    assert again.returncode == 0, again.stderr[-3000:]
    assert len(output_documents(tmp_path / "out.ndjson")) == total  # nothing shipped again
    assert summary_line(again.stderr).startswith("backfill done: 0 lines, 0 records delivered")


def test_a_normal_run_after_a_backfill_ships_only_what_came_later(tmp_path: Path) -> None:
    """The rest of a line that had no newline at the backfill ships as another record."""
    prepare_backlog(tmp_path)
    config = write_config(tmp_path)
    assert backfill(config).returncode == 0
    before = len(output_documents(tmp_path / "out.ndjson"))
    with (tmp_path / "logs" / "app.log").open("a") as log:
        log.write(" (finished later)\napp seq=001000 new\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "shipper", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_sync(
            lambda: len(output_documents(tmp_path / "out.ndjson")) >= before + 2,
            timeout=30,
            what="the two new records",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    after = output_documents(tmp_path / "out.ndjson")
    assert [d["message"] for d in after[before:]] == [" (finished later)", "app seq=001000 new"]


class SlowFileSink:
    """The file output at a bounded rate: reading is held back by the memory budget, so a
    writer faster than that rate can never be caught up with."""

    def __init__(self, inner: FileSink) -> None:
        self._inner = inner

    async def open(self) -> None:
        await self._inner.open()

    async def send(self, batch: Batch) -> BatchResult:
        await asyncio.sleep(len(batch) / 10_000)  # 10,000 records/s at most
        return await self._inner.send(batch)

    async def close(self) -> None:
        await self._inner.close()


def slow_sinks() -> dict[str, object]:
    def slow(name: str, config: OutputConfig, telemetry: Telemetry) -> Sink:
        assert isinstance(config, FileOutputConfig)
        return SlowFileSink(FileSink(config.path, fsync=False))

    return {"file": slow}


@pytest.mark.timeout(120)
async def test_once_ends_while_a_writer_keeps_appending_faster_than_it_ships(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "busy.log"
    padding = "p" * 100
    backlog = 20_000  # 2.5 MB: more than the memory budget, so reading waits for the output
    with path.open("w") as file:
        file.writelines(f"busy seq={n:06d} {padding}\n" for n in range(backlog))
    config = parse_config(
        f"""
state_dir: {tmp_path / "state"}
sources:
  app:
    type: files
    paths: ["{logs}/*.log"]
outputs:
  archive:
    type: file
    path: {tmp_path / "out.ndjson"}
    batch:
      max_records: 20
      linger: 5ms
pipeline:
  max_buffered_bytes: 1MiB
""",
        origin="<test>",
    )
    stop_writing = threading.Event()
    written = [backlog]

    def keep_writing() -> None:
        # About 20,000 lines/s, twice what the slow output ships: a backfill that chased the
        # writer's end would never catch it. Bounded, so that such a backfill stops the test
        # (by the timeout or the count below) before the disk fills.
        with path.open("a") as file:
            while not stop_writing.is_set() and written[0] < 400_000:
                n = written[0]
                file.writelines(f"busy seq={k:06d} {padding}\n" for k in range(n, n + 200))
                file.flush()
                written[0] = n + 200
                stop_writing.wait(0.01)

    app = App(config, once=True, sinks=slow_sinks())
    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        run = asyncio.create_task(app.run(asyncio.Event()))
        await asyncio.wait_for(asyncio.shield(run), 60)
    finally:
        stop_writing.set()
        await asyncio.to_thread(writer.join)
    assert app.drained
    seqs = [
        int(SEQ_PATTERN.search(d["message"])[1]) for d in output_documents(tmp_path / "out.ndjson")
    ]
    assert seqs == list(range(len(seqs)))  # in order, none twice, none skipped
    # All that was there at the start, not what the writer added until it was stopped.
    assert backlog <= len(seqs) < written[0]
    entry = checkpoints(tmp_path).entries()[0]
    assert entry.offset == sum(len(f"busy seq={n:06d} {padding}\n") for n in range(len(seqs)))


@pytest.fixture
def es() -> Iterator[FakeElasticsearch]:
    with FakeElasticsearch() as server:
        yield server
    assert server.internal_errors == []


def es_output(es: FakeElasticsearch) -> str:
    return (
        f"  es:\n    type: elasticsearch\n    hosts: ['{es.url}']\n"
        "    batch:\n      linger: 20ms\n"
        "    retry:\n      initial_backoff: 50ms\n      max_backoff: 200ms\n"
    )


def assert_indexed_once(es: FakeElasticsearch, expected: Seqs, lines: list[str]) -> None:
    """Every line once (batches in flight together may be indexed in any order)."""
    by_stream, plain = shipped(es.sources())
    assert {key: sorted(seqs) for key, seqs in by_stream.items()} == {
        key: sorted(seqs) for key, seqs in expected.items()
    }
    assert sorted(plain) == sorted(lines)


@pytest.mark.timeout(180)
def test_once_waits_for_elasticsearch_that_is_down_then_delivers_everything_once(
    tmp_path: Path, es: FakeElasticsearch
) -> None:
    expected, lines = prepare_backlog(tmp_path)
    # No time at all for a normal shutdown: a backfill must not use it, but wait as long as
    # the output needs.
    config = write_config(tmp_path, es_output(es), extra="pipeline:\n  shutdown_timeout: 0s\n")
    stderr = tmp_path / "backfill.stderr"
    with es.down():
        process = start_backfill(config, stderr)
        wait_until_sync(
            lambda: stderr.read_text().count("Output failed; retrying.") >= 3,
            timeout=60,
            what="failed attempts while Elasticsearch is down",
        )
        assert process.poll() is None
    assert process.wait(timeout=120) == 0, stderr.read_text()[-3000:]
    assert_indexed_once(es, expected, lines)
    assert summary_line(stderr.read_text()).startswith("backfill done:")
    assert_checkpoints_at_the_ends(tmp_path)


@pytest.mark.timeout(180)
def test_a_stopped_backfill_exits_1_and_the_next_one_finishes_the_job(
    tmp_path: Path, es: FakeElasticsearch
) -> None:
    expected, lines = prepare_backlog(tmp_path)
    config = write_config(tmp_path, es_output(es), extra="pipeline:\n  shutdown_timeout: 1s\n")
    stderr = tmp_path / "backfill.stderr"
    with es.down():
        process = start_backfill(config, stderr)
        wait_until_sync(
            lambda: "Output failed; retrying." in stderr.read_text(),
            timeout=60,
            what="a failed attempt",
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 1
    said = stderr.read_text()
    assert "backfill did not finish (stopped before everything was delivered)" in said
    assert all(entry.offset == 0 for entry in checkpoints(tmp_path).entries())

    result = backfill(config)

    assert result.returncode == 0, result.stderr[-3000:]
    assert_indexed_once(es, expected, lines)


def test_dead_lettered_records_are_a_final_outcome_and_counted_in_the_summary(
    tmp_path: Path, es: FakeElasticsearch
) -> None:
    expected, lines = prepare_backlog(tmp_path)
    config = write_config(tmp_path, es_output(es))
    es.fail_items(5, status=400)  # a mapping conflict: never deliverable

    result = backfill(config)

    assert result.returncode == 0, result.stderr[-3000:]
    total = sum(len(seqs) for seqs in expected.values()) + len(lines)
    assert f"{total - 5:,} records delivered, 5 dead-lettered" in summary_line(result.stderr)
    dead = (tmp_path / "state").glob("dead-letter*")
    assert sum(len(p.read_bytes().splitlines()) for p in dead) == 5
    assert_checkpoints_at_the_ends(tmp_path)


async def test_a_backfill_ignores_start_at_end_and_docker_events(tmp_path: Path) -> None:
    """`start_at: end` skips history at a first start; a backfill is run for that history.
    Docker's event stream is not followed either (a backfill discovers once)."""
    expected, lines = prepare_backlog(tmp_path)
    config = parse_config(
        f"""
state_dir: {tmp_path / "state"}
sources:
  docker:
    type: docker_json
    root: {tmp_path / "containers"}
    start_at: end
    docker_host: unix://{tmp_path / "docker.sock"}
  app:
    type: files
    paths: ["{tmp_path / "logs"}/*.log"]
    start_at: end
outputs:
  archive:
    type: file
    path: {tmp_path / "out.ndjson"}
""",
        origin="<test>",
    )
    app = App(config, once=True)

    async with EngineApi(tmp_path / "docker.sock") as daemon:
        await asyncio.wait_for(app.run(asyncio.Event()), 60)

    assert daemon.requests == []  # not even a ping
    assert app.drained
    by_stream, plain = shipped(output_documents(tmp_path / "out.ndjson"))
    assert dict(by_stream) == dict(expected)
    assert plain == lines
    assert app.telemetry.value("shipper_discovery_scans_total") == 2  # one per source
    assert app.backlog is not None
    assert app.backlog.settled == app.backlog.total > 0
