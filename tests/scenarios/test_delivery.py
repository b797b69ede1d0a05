"""The whole pipeline in-process on real files: every line once, in order, through stalls."""

from __future__ import annotations

import asyncio
import os
import random
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from shipper.app import App
from shipper.config import FileOutputConfig, OutputConfig
from shipper.docker_writer import SEQ_PATTERN, DockerRootWriter, realistic_lines
from shipper.model import Batch, BatchResult
from shipper.sinks import Sink
from shipper.sinks.file import FileSink
from shipper.telemetry.counters import Telemetry
from tests.helpers import make_config, wait_until

Seqs = dict[tuple[str, str], list[int]]


def write_lines(writer: DockerRootWriter, name: str, count: int, expected: Seqs, seed: int) -> None:
    log = writer.containers.get(name) or writer.add_container(name)
    for stream, message in realistic_lines(random.Random(seed), count, container=name):
        log.write(message, stream=stream)
        expected[(log.id, stream)].append(int(SEQ_PATTERN.search(message).group(1)))


def shipped(path: Path) -> tuple[Seqs, list[dict]]:
    """The output's documents, by (container, stream). Only whole lines: while shipper runs,
    the last one may be half written."""
    by_stream: Seqs = defaultdict(list)
    data = path.read_bytes() if path.exists() else b""
    documents = [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]
    for document in documents:
        match = SEQ_PATTERN.search(document["message"])
        if match:
            by_stream[(document["container"]["id"], document["stream"])].append(int(match[1]))
    return by_stream, documents


async def start(app: App) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    await asyncio.wait_for(app.started.wait(), 10)
    return stop, task


def delivered(app: App) -> int:
    return int(app.telemetry.value("shipper_records_total", output="archive", outcome="delivered"))


async def test_every_line_is_delivered_once_in_order_per_stream(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    for n in range(4):  # containers with history before shipper starts
        write_lines(writer, f"before-{n}", 1500, expected, seed=n)
    app = App(make_config(tmp_path))
    stop, task = await start(app)
    for n in range(3):  # containers that appear while shipper runs, and more lines in old ones
        write_lines(writer, f"after-{n}", 1000, expected, seed=10 + n)
        write_lines(writer, f"before-{n}", 500, expected, seed=20 + n)
    total = sum(len(seqs) for seqs in expected.values())
    await wait_until(lambda: delivered(app) >= total, what=f"{total} records delivered")
    stop.set()
    await task

    by_stream, documents = shipped(tmp_path / "out.ndjson")
    assert len(documents) == total
    assert dict(by_stream) == dict(expected)  # same lines, each once, same order per stream
    first = documents[0]
    assert set(first) >= {"@timestamp", "message", "stream", "container", "log"}
    assert first["log"]["file"]["path"].endswith("-json.log")
    assert app.telemetry.value("shipper_lines_read_total") == total
    assert app.budget.used == 0


async def test_lines_in_rotated_files_are_drained_in_order(tmp_path: Path) -> None:
    """The renamed file is read to its end before the new one, so order holds across rotation."""
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("rotating", max_size=64 * 1024, max_file=5)
    app = App(make_config(tmp_path))
    stop, task = await start(app)
    expected: Seqs = defaultdict(list)
    lines = realistic_lines(random.Random(3), 3000, container="rotating")
    for written in range(100, 3001, 100):
        # Slices of lines that each cross about one rotation; reading follows between slices
        # (following rotations faster than the reader is a later issue's stress test).
        for stream, message in (next(lines) for _ in range(100)):
            log.write(message, stream=stream)
            expected[(log.id, stream)].append(int(SEQ_PATTERN.search(message).group(1)))
        await wait_until(
            lambda n=written: app.telemetry.value("shipper_lines_read_total") >= n,
            what="reading to keep up",
        )
    assert len(log.log_files()) == 5  # it did rotate, and dropped the oldest files
    total = sum(len(seqs) for seqs in expected.values())
    await wait_until(lambda: delivered(app) >= total, what="rotated lines delivered")
    stop.set()
    await task
    by_stream, _ = shipped(tmp_path / "out.ndjson")
    assert dict(by_stream) == dict(expected)


class GatedFileSink:
    """The real file output behind a gate the test opens: a destination that stalls."""

    def __init__(self, inner: FileSink, gate: asyncio.Event) -> None:
        self._inner = inner
        self._gate = gate

    async def open(self) -> None:
        await self._inner.open()

    async def send(self, batch: Batch) -> BatchResult:
        await self._gate.wait()
        return await self._inner.send(batch)

    async def close(self) -> None:
        await self._inner.close()


async def test_stalled_output_stops_reading_then_resumes_without_loss(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    for n in range(3):
        write_lines(writer, f"busy-{n}", 6000, expected, seed=n)
    total = sum(len(seqs) for seqs in expected.values())
    log_bytes = sum(p.stat().st_size for c in writer.containers.values() for p in c.log_files())
    limit = 1024 * 1024
    assert log_bytes > 4 * limit  # the backlog is much larger than the memory budget

    gate = asyncio.Event()

    def gated(name: str, config: OutputConfig, telemetry: Telemetry) -> Sink:
        assert isinstance(config, FileOutputConfig)
        return GatedFileSink(FileSink(config.path, fsync=False), gate)

    config = make_config(
        tmp_path,
        extra_source="    read_chunk_size: 64KiB",
        extra="pipeline:\n  max_buffered_bytes: 1MiB",
    )
    app = App(config, sinks={"file": gated})
    stop, task = await start(app)

    # Reading goes on until the budget is spent, then stops: memory is bounded by bytes.
    await wait_until(lambda: app.budget.used > limit - 64 * 1024, what="the budget to fill")
    read_while_stalled = app.telemetry.value("shipper_bytes_read_total")
    for _ in range(20):  # give the readers many chances to overrun the budget
        await asyncio.sleep(0.01)
        assert app.budget.used <= limit
    assert app.telemetry.value("shipper_bytes_read_total") == read_while_stalled
    assert read_while_stalled < log_bytes
    assert delivered(app) == 0

    gate.set()
    await wait_until(lambda: delivered(app) >= total, what="all records after the stall")
    stop.set()
    await task
    by_stream, documents = shipped(tmp_path / "out.ndjson")
    assert len(documents) == total
    assert dict(by_stream) == dict(expected)


async def test_a_file_deleted_while_far_behind_counts_all_its_unread_bytes_lost(
    tmp_path: Path,
) -> None:
    # Reading stops at the memory budget; the checkpoint must still know how big the file has
    # grown, or a deletion while shipper is stopped counts only what had been read as lost.
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    write_lines(writer, "behind", 100, expected, seed=7)
    log_path = writer.containers["behind"].log_path
    never = asyncio.Event()

    def gated(name: str, config: OutputConfig, telemetry: Telemetry) -> Sink:
        assert isinstance(config, FileOutputConfig)
        return GatedFileSink(FileSink(config.path, fsync=False), never)

    extra = "pipeline:\n  max_buffered_bytes: 1MiB\n  shutdown_timeout: 0s"
    config = make_config(tmp_path, extra_source="    read_chunk_size: 64KiB", extra=extra)
    app = App(config, sinks={"file": gated})
    stop, task = await start(app)
    await wait_until(lambda: app.telemetry.value("shipper_batches_total") > 0, what="a batch")
    write_lines(writer, "behind", 12000, expected, seed=8)  # the file grows far past the budget
    size = log_path.stat().st_size
    assert size > 3 * 1024 * 1024
    await wait_until(
        lambda: [entry.size for entry in app.store.entries()] == [size],
        what="the checkpoint to record the file's size while reading waits on the budget",
    )
    assert app.telemetry.value("shipper_bytes_read_total") < size / 2
    stop.set()
    await task

    # While shipper was stopped, Docker rotated twice with max-file 1: the file is gone.
    log_path.rename(log_path.with_name(log_path.name + ".1"))
    log_path.write_bytes(b"")
    log_path.with_name(log_path.name + ".1").unlink()
    restarted = App(make_config(tmp_path, extra=extra))
    stop, task = await start(restarted)
    await wait_until(
        lambda: restarted.telemetry.value("shipper_bytes_lost_total") > 0, what="the loss counted"
    )
    stop.set()
    await task
    assert restarted.telemetry.value("shipper_bytes_lost_total") == size


async def test_new_container_is_found_by_watch_long_before_the_rescan(tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()
    app = App(make_config(tmp_path, extra_source="    rescan_interval: 1h"))
    stop, task = await start(app)
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    write_lines(writer, "late", 10, expected, seed=1)
    # The rescan is an hour away: only the watch can find it within these seconds.
    await wait_until(lambda: delivered(app) >= 10, timeout=5, what="the new container's lines")
    stop.set()
    await task


async def test_missing_root_is_rescanned_until_it_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(make_config(tmp_path, extra_source="    rescan_interval: 1h"))
    stop, task = await start(app)
    await wait_until(lambda: "Log root is not readable" in caplog.text, what="a warning")
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    write_lines(writer, "first", 10, expected, seed=1)
    await wait_until(lambda: delivered(app) >= 10, timeout=10, what="lines once the root exists")
    stop.set()
    await task


async def test_filtered_output_does_not_hold_checkpoints(tmp_path: Path) -> None:
    """A second output that takes another source never holds back this source's checkpoint."""
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    write_lines(writer, "app", 200, expected, seed=1)
    config = make_config(
        tmp_path,
        extra_source=f"""  other:
    type: docker_json
    root: {tmp_path / "elsewhere"}""",
        output=f"""  second:
    type: file
    path: {tmp_path / "second.ndjson"}
    inputs: [other]""",
    )
    app = App(config)
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 200, what="delivery")
    stop.set()
    await task
    [entry] = app.store.entries()
    assert entry.offset == Path(entry.path).stat().st_size
    assert (
        not (tmp_path / "second.ndjson").exists() or not (tmp_path / "second.ndjson").read_bytes()
    )


async def test_an_unfinished_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("slow-writer")
    log.write("first")
    entry = b'{"log":"second\\n","stream":"stdout","time":"2024-05-01T12:00:00.5Z"}\n'
    with log.log_path.open("ab", buffering=0) as raw:
        raw.write(entry[:20])  # dockerd's write is atomic, but another writer's may not be
        app = App(make_config(tmp_path))
        stop, task = await start(app)
        await wait_until(lambda: delivered(app) >= 1, what="the first line")
        for _ in range(10):  # many polls of the file: the half line must not be shipped
            await asyncio.sleep(0.03)
        assert delivered(app) == 1
        raw.write(entry[20:])
    await wait_until(lambda: delivered(app) >= 2, what="the completed line")
    stop.set()
    await task
    _, documents = shipped(tmp_path / "out.ndjson")
    assert [d["message"] for d in documents] == ["first", "second"]
    assert documents[1]["@timestamp"] == "2024-05-01T12:00:00.500000000Z"


async def test_checkpoints_of_removed_containers_go_once_drained(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    write_lines(writer, "short-lived", 100, expected, seed=1)
    write_lines(writer, "stays", 100, expected, seed=2)
    app = App(make_config(tmp_path, extra_source="    rescan_interval: 100ms"))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 200, what="delivery")
    await wait_until(lambda: len(app.store.entries()) == 2, what="two checkpoints")
    gone = writer.containers["short-lived"]
    gone.close()
    for path in gone.directory.iterdir():
        path.unlink()
    gone.directory.rmdir()  # `docker rm`
    await wait_until(lambda: len(app.store.entries()) == 1, what="the removed one's checkpoint")
    stop.set()
    await task
    [entry] = app.store.entries()
    assert writer.containers["stays"].id in entry.path


async def test_a_watch_that_dies_falls_back_to_rescans_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "containers"
    root.mkdir()
    app = App(make_config(tmp_path, extra_source="    rescan_interval: 1h"))
    stop, task = await start(app)
    root.rmdir()  # the watched directory goes away (a reinstalled Docker, an unmounted disk)
    await wait_until(lambda: "Watching the log root stopped" in caplog.text, what="a warning")
    writer = DockerRootWriter(root)
    expected: Seqs = defaultdict(list)
    write_lines(writer, "back", 10, expected, seed=1)
    # The periodic rescan is an hour away: only the one-second fallback can find these.
    await wait_until(lambda: delivered(app) >= 10, timeout=10, what="lines in the new root")
    stop.set()
    await task


async def test_a_container_whose_log_is_still_empty_is_followed(tmp_path: Path) -> None:
    """dockerd creates the log file before the container writes anything."""
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("quiet")
    app = App(make_config(tmp_path, extra_source="    rescan_interval: 100ms"))
    stop, task = await start(app)
    await wait_until(
        lambda: app.telemetry.value("shipper_files_opened_total") >= 1, what="the empty file"
    )
    for _ in range(3):  # several listings of the empty file
        opened_scans = app.telemetry.value("shipper_discovery_scans_total")
        await wait_until(
            lambda n=opened_scans: app.telemetry.value("shipper_discovery_scans_total") > n,
            what="another scan",
        )
    log.write("finally something")
    await wait_until(lambda: delivered(app) >= 1, what="the first line")
    stop.set()
    await task
    _, documents = shipped(tmp_path / "out.ndjson")
    assert [d["message"] for d in documents] == ["finally something"]


async def test_records_carry_container_metadata_and_a_rename_shows_on_later_lines(
    tmp_path: Path,
) -> None:
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container(
        "web-1", image="nginx:1.25", labels={"app": "web", "app.kubernetes.io/name": "shop"}
    )
    log.write("before the rename")
    app = App(make_config(tmp_path))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 1, what="the first line")
    # `docker rename`: dockerd writes config.v2.json anew (a temporary file, then a rename).
    document = orjson.loads(log.config_path.read_bytes())
    document["Name"] = "/web-renamed"
    temporary = log.directory / ".config.v2.json.tmp"
    temporary.write_bytes(orjson.dumps(document))
    os.replace(temporary, log.config_path)
    log.write("after the rename")
    await wait_until(lambda: delivered(app) >= 2, what="the second line")
    stop.set()
    await task
    _, documents = shipped(tmp_path / "out.ndjson")
    assert [d["container"]["name"] for d in documents] == ["web-1", "web-renamed"]
    first = documents[0]
    assert first["container"]["image"]["name"] == "nginx:1.25"
    assert first["container"]["labels"] == {"app": "web", "app_kubernetes_io/name": "shop"}
    assert first["host"]["name"] and first["agent"]["type"] == "shipper"
    assert "env" not in str(first)  # the writer's SECRET_TOKEN stays home
    assert "demo-not-a-secret" not in (tmp_path / "out.ndjson").read_text()


async def test_a_container_without_metadata_still_ships_and_is_counted(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("anonymous")
    log.config_path.unlink()
    log.write("no config.v2.json")
    app = App(make_config(tmp_path))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 1, what="the line")
    stop.set()
    await task
    _, documents = shipped(tmp_path / "out.ndjson")
    assert documents[0]["container"] == {"id": log.id}
    assert app.telemetry.value("shipper_metadata_errors_total", source="docker") == 1


async def test_containers_are_selected_by_name_label_and_opt_out(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path / "containers")
    shipped_logs = writer.add_container("web-1", labels={"tier": "front"})
    skipped = [
        writer.add_container("db-1", labels={"tier": "back"}),  # not included
        writer.add_container("web-debug", labels={"tier": "front"}),  # excluded by name
        writer.add_container("web-2", labels={"shipper.exclude": "true"}),  # opted out
    ]
    for log in (shipped_logs, *skipped):
        log.write(f"from {log.name}")
    selection = """    include:
      names: ["web-*"]
    exclude:
      names: ["*-debug"]"""
    app = App(make_config(tmp_path, extra_source=selection))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 1, what="the selected container")
    shipped_logs.write("more from web-1")
    await wait_until(lambda: delivered(app) >= 2, what="its later line")
    stop.set()
    await task
    _, documents = shipped(tmp_path / "out.ndjson")
    assert [d["message"] for d in documents] == ["from web-1", "more from web-1"]
