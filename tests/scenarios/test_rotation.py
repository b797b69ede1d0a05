"""Reading through everything Docker's rotation does: fast renames, gzip, deletion under stalls."""

from __future__ import annotations

import asyncio
import gzip
import os
import random
import threading
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from shipper.app import App
from shipper.checkpoints import CheckpointStore
from shipper.config import FileOutputConfig, OutputConfig
from shipper.docker_writer import SEQ_PATTERN, ContainerLog, DockerRootWriter, realistic_lines
from shipper.sinks import Sink
from shipper.sinks.file import FileSink
from shipper.telemetry.counters import Telemetry
from tests.helpers import make_config, wait_until
from tests.scenarios.test_delivery import GatedFileSink, Seqs, delivered, shipped, start

LONG_EVERY = 97  # every so many lines is longer than 16 KiB: Docker splits it into parts


def long_message(seq: int, size: int) -> str:
    return f"seq={seq:06d} long " + "x" * size


def write_numbered(
    log: ContainerLog, count: int, expected: Seqs, *, seed: int, long_lines: bool = True
) -> None:
    """Realistic lines, numbered per container; with `long_lines`, some over 16 KiB."""
    rng = random.Random(seed)
    for stream, line in realistic_lines(rng, count, container=log.name):
        seq = int(SEQ_PATTERN.search(line)[1])
        long = long_lines and seq % LONG_EVERY == 0
        log.write(long_message(seq, rng.randrange(17_000, 60_000)) if long else line, stream=stream)
        expected[(log.id, stream)].append(seq)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_lines_written_while_rotating_fast_arrive_once_in_order(tmp_path: Path) -> None:
    """Three containers log flat out with a tiny max-size and gzip; every line arrives once,
    in order within its stream, long lines rejoined, across renames and compression."""
    writer = DockerRootWriter(tmp_path / "containers")
    logs = [
        writer.add_container(f"fast-{n}", max_size=48 * 1024, max_file=200, compress=n != 1)
        for n in range(3)
    ]
    app = App(make_config(tmp_path))
    stop, task = await start(app)
    expected: Seqs = defaultdict(list)
    threads = [
        threading.Thread(target=write_numbered, args=(log, 4000, expected), kwargs={"seed": n})
        for n, log in enumerate(logs)
    ]
    for thread in threads:
        thread.start()
    await asyncio.to_thread(lambda: [thread.join() for thread in threads])
    total = sum(len(seqs) for seqs in expected.values())
    assert all(len(log.generations()) > 10 for log in logs)  # it did rotate, a lot
    await wait_until(lambda: delivered(app) >= total, timeout=60, what="every line")
    stop.set()
    await task
    writer.close()
    by_stream, documents = shipped(tmp_path / "out.ndjson")
    assert len(documents) == total
    assert dict(by_stream) == dict(expected)
    longs = [d for d in documents if " long " in d["message"]]
    assert longs
    assert all(len(d["message"]) > 17_000 and "flags" not in d["log"] for d in longs)
    assert app.telemetry.value("shipper_bytes_lost_total") == 0


async def test_a_checkpoint_on_dot_1_resumes_at_the_same_offset_inside_its_gz(
    tmp_path: Path,
) -> None:
    writer = DockerRootWriter(tmp_path / "containers", compression="manual")
    log = writer.add_container("zipped", max_size=8 * 1024, max_file=3, compress=True)
    written = 0
    for stream, message in realistic_lines(random.Random(1), 1000, container="zipped"):
        if len(log.generations()) == 2 and os.path.getsize(log.log_path) > 0:
            break  # `.1` (not compressed yet) and a current file with lines
        log.write(message, stream=stream)
        written += 1
    first = log.generations()[0]
    assert first.name.endswith(".1")
    content = first.read_bytes()
    lines_in_first = content.count(b"\n")
    # A previous run shipped the first ten lines of `.1` and checkpointed there.
    cut = sum(len(line) for line in content.splitlines(keepends=True)[:10])
    app = App(make_config(tmp_path))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= written, what="everything once")
    stop.set()
    await task
    entry = next(e for e in app.store.entries() if e.path.endswith(".1"))
    os.remove(tmp_path / "out.ndjson")
    store = CheckpointStore(app.config.checkpoint_path, on_corrupt="fail")
    store.load()
    store.update_offset(entry.key, cut)
    store.flush()

    log.compress_pending()  # now `.1.gz` holds the generation and `.1` is gone
    assert not first.exists()
    assert gzip.decompress(Path(f"{first}.gz").read_bytes()) == content
    app = App(make_config(tmp_path))
    stop, task = await start(app)
    rest = lines_in_first - 10
    await wait_until(lambda: delivered(app) >= rest, what="the rest of .1, from the .gz")
    stop.set()
    await task
    _, documents = shipped(tmp_path / "out.ndjson")
    offsets = [d["log"]["offset"] for d in documents]
    assert len(documents) == rest  # exactly the lines after the checkpoint: none again, none lost
    assert offsets[0] == cut
    assert all(d["log"]["file"]["path"].endswith(".1.gz") for d in documents)


async def test_a_gz_is_not_read_while_its_plain_twin_exists(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path / "containers", compression="manual")
    log = writer.add_container("zipping", max_size=8 * 1024, max_file=3, compress=True)
    expected: Seqs = defaultdict(list)
    write_numbered(log, 30, expected, seed=2, long_lines=False)
    log.compress_pending(partial=True)  # `.1` and an incomplete `.1.gz` side by side
    app = App(make_config(tmp_path))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 30, what="everything once")
    log.compress_pending()  # the gzip completes and `.1` goes while shipper runs
    more: Seqs = defaultdict(list)
    write_numbered(log, 30, more, seed=3, long_lines=False)
    await wait_until(lambda: delivered(app) >= 60, what="the later lines")
    stop.set()
    await task
    _, documents = shipped(tmp_path / "out.ndjson")
    assert len(documents) == 60  # the .gz twin was not read again
    assert app.telemetry.value("shipper_invalid_lines_total") == 0


def gated_sinks(gate: asyncio.Event) -> dict[str, object]:
    def gated(name: str, config: OutputConfig, telemetry: Telemetry) -> Sink:
        assert isinstance(config, FileOutputConfig)
        return GatedFileSink(FileSink(config.path, fsync=False), gate)

    return {"file": gated}


@pytest.mark.parametrize("cap", [None, 40 * 1024])
async def test_output_stalled_while_docker_rotates_and_deletes(
    tmp_path: Path, cap: int | None
) -> None:
    """Without a cap nothing is lost while the files existed: deleted generations stay open
    and are drained. With a cap, exactly the bytes given up are counted as lost."""
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("busy", max_size=16 * 1024, max_file=2)
    gate = asyncio.Event()
    extra = "" if cap is None else f"    max_pinned_bytes: {cap}"
    app = App(
        make_config(
            tmp_path,
            extra_source=f"    read_chunk_size: 16KiB\n{extra}",
            extra="pipeline:\n  max_buffered_bytes: 1MiB",
        ),
        sinks=gated_sinks(gate),  # type: ignore[arg-type]
    )
    stop, task = await start(app)
    entry_bytes: dict[int, int] = {}
    # More than the 1 MiB memory budget: reading must stop with generations still unread.
    lines = realistic_lines(random.Random(7), 6000, container="busy")
    for stream, message in lines:
        before = os.path.getsize(log.log_path)
        log.write(message, stream=stream)
        after = os.path.getsize(log.log_path)
        rotated = after <= before
        entry_bytes[int(SEQ_PATTERN.search(message)[1])] = after if rotated else after - before
        if rotated:  # let shipper see each new generation before Docker deletes anything more
            opened = app.telemetry.value("shipper_files_opened_total")
            await wait_until(
                lambda n=opened: app.telemetry.value("shipper_files_opened_total") > n,
                what="the new generation to be opened",
            )
    assert delivered(app) == 0  # the output is still stalled
    assert sum(entry_bytes.values()) > 1024 * 1024
    if cap is None:  # Docker deleted unread files: they stay open, pinning their disk space
        await wait_until(
            lambda: app.telemetry.value("shipper_pinned_bytes", source="docker") > 64 * 1024,
            what="deleted files held open",
        )
    gate.set()
    last = max(entry_bytes)  # in the current file: never deleted, and read after all others
    await wait_until(
        lambda: last in shipped_seqs(tmp_path) and app.budget.used == 0,
        what="everything still readable delivered",
    )
    stop.set()
    await task
    _, documents = shipped(tmp_path / "out.ndjson")
    seqs = shipped_seqs(tmp_path)
    missing = set(entry_bytes) - seqs
    assert len(documents) == len(seqs)  # no duplicates
    lost = app.telemetry.value("shipper_bytes_lost_total")
    if cap is None:
        assert missing == set()
        assert lost == 0
    else:
        assert missing  # the cap did give something up...
        assert lost == sum(entry_bytes[seq] for seq in missing)  # ...and counted exactly that


def shipped_seqs(tmp: Path) -> set[int]:
    _, documents = shipped(tmp / "out.ndjson")
    return {int(SEQ_PATTERN.search(d["message"])[1]) for d in documents}


async def test_a_file_deleted_while_shipper_was_down_is_a_counted_loss(tmp_path: Path) -> None:
    """Shipper stops with unshipped generations; Docker deletes one meanwhile: exactly its
    bytes are counted as lost at the next start, and everything still on disk is shipped."""
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("gone", max_size=8 * 1024, max_file=3)
    expected: Seqs = defaultdict(list)
    lines = realistic_lines(random.Random(4), 10_000, container="gone")
    while len(log.generations()) < 3:
        stream, message = next(lines)
        log.write(message, stream=stream)
    gate = asyncio.Event()  # the output is down for the whole first run
    config = make_config(tmp_path, extra="pipeline:\n  shutdown_timeout: 100ms")
    app = App(config, sinks=gated_sinks(gate))  # type: ignore[arg-type]
    stop, task = await start(app)
    await wait_until(lambda: app.telemetry.value("shipper_files_opened_total") >= 3, what="open")
    stop.set()
    await task
    oldest = log.generations()[0]
    doomed = oldest.stat().st_size
    first_line = oldest.read_bytes().split(b"\n", 1)[0]
    # Docker deletes the oldest file (its inode number may well be reused: compare content).
    while first_line in {p.read_bytes().split(b"\n", 1)[0] for p in log.generations()}:
        stream, message = next(lines)
        log.write(message, stream=stream)

    app = App(make_config(tmp_path))
    stop, task = await start(app)
    last = int(SEQ_PATTERN.search(message)[1])
    await wait_until(lambda: last in shipped_seqs(tmp_path), what="the lines still on disk")
    stop.set()
    await task
    assert (
        app.telemetry.value("shipper_bytes_lost_total", source="docker", reason="deleted_unread")
        == doomed
    )
    lost_seq = int(SEQ_PATTERN.search(orjson.loads(first_line)["log"])[1])
    assert lost_seq not in shipped_seqs(tmp_path)
    assert expected == {}


async def test_the_rest_of_a_split_line_whose_head_was_deleted_is_flagged(tmp_path: Path) -> None:
    """Docker split a long line across a rotation; shipper stopped before shipping it, and
    Docker deleted the file with its first part meanwhile: the rest still ships, flagged."""
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("splitter", max_size=16 * 1024, max_file=2)
    while os.path.getsize(log.log_path) < 12 * 1024:
        log.write("short line before the long one")
    log.write("HEAD" + "y" * 40_000 + "TAIL")  # part 1 ends this file, the rest opens the next
    assert len(log.generations()) == 2
    gate = asyncio.Event()  # the output is down: nothing settles in the first run
    config = make_config(tmp_path, extra="pipeline:\n  shutdown_timeout: 100ms")
    app = App(config, sinks=gated_sinks(gate))  # type: ignore[arg-type]
    stop, task = await start(app)
    await wait_until(lambda: app.telemetry.value("shipper_lines_read_total") > 0, what="reading")
    await wait_until(
        lambda: any(e.open_partials == ("stdout",) for e in app.store.entries()),
        what="the split line noted in the first file's checkpoint",
    )
    stop.set()
    await task
    head_file = log.generations()[0].read_bytes().split(b"\n", 1)[0]
    while head_file in {p.read_bytes().split(b"\n", 1)[0] for p in log.generations()}:
        log.write("filler after the long line")  # until Docker deletes the head's file
    log.write("last line")

    app = App(make_config(tmp_path))
    stop, task = await start(app)
    await wait_until(
        lambda: any(d["message"] == "last line" for d in shipped(tmp_path / "out.ndjson")[1]),
        what="the lines still on disk",
    )
    stop.set()
    await task
    _, documents = shipped(tmp_path / "out.ndjson")
    [rest] = [d for d in documents if d["message"].endswith("TAIL")]
    assert not rest["message"].startswith("HEAD")  # the first 16 KiB went with the file
    assert rest["log"]["flags"] == ["partial_head_lost"]
    assert all("flags" not in d["log"] for d in documents if d is not rest)
    lost = app.telemetry.value("shipper_bytes_lost_total", source="docker", reason="deleted_unread")
    assert lost > 0


@pytest.mark.parametrize("refill", [False, True])
async def test_a_file_truncated_in_place_is_read_again_from_the_start(
    tmp_path: Path, refill: bool
) -> None:
    """Docker 20.10 with max-file=1 truncates the log in place. Whether shipper looks while it
    is shorter than before or only once it has grown past the old offset, the new content is
    read from its start, the truncation counted, and nothing is shipped twice."""
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("truncating")
    expected: Seqs = defaultdict(list)
    write_numbered(log, 50, expected, seed=1, long_lines=False)
    app = App(make_config(tmp_path))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 50, what="the first lines")
    old_size = log.log_path.stat().st_size
    lines = realistic_lines(random.Random(2), 10_000, container="truncating", start_seq=1000)
    with log.log_path.open("r+b") as raw:
        raw.truncate(0)  # what dockerd does, then it writes on from offset 0
    written = 0
    while not refill or log.log_path.stat().st_size <= old_size:
        stream, message = next(lines)
        log.write(message, stream=stream)
        expected[(log.id, stream)].append(int(SEQ_PATTERN.search(message)[1]))
        written += 1
        if not refill and written == 20:
            break
    await wait_until(lambda: delivered(app) >= 50 + written, what="the new content")
    stop.set()
    await task
    by_stream, documents = shipped(tmp_path / "out.ndjson")
    assert len(documents) == 50 + written
    assert dict(by_stream) == dict(expected)
    assert app.telemetry.value("shipper_truncations_total", source="docker") == 1


def java_trace(seq: int, frames: int) -> list[str]:
    """A Java stack trace as logback writes it after its log line: header, frames, cause."""
    lines = [
        f"2024-05-01 12:00:00.000 ERROR [main] c.e.Orders - order failed seq={seq:06d}",
        f"java.lang.IllegalStateException: order {seq} rejected",
    ]
    lines += [f"\tat com.example.orders.Step{n}.run(Step{n}.java:{10 + n})" for n in range(frames)]
    lines += [
        "Caused by: java.lang.NullPointerException: null",
        "\tat com.example.orders.Repo.load(Repo.java:42)",
        f"\t... {frames} more",
    ]
    return lines


async def test_stack_traces_split_by_rotations_arrive_as_one_record_each(tmp_path: Path) -> None:
    """Multiline state lives per container and stream, across Docker's rotations: traces
    written over many small, compressed files arrive whole, one record per trace, and every
    plain line between them arrives on its own, in order."""
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("java-app", max_size=4 * 1024, max_file=400, compress=True)
    app = App(
        make_config(
            tmp_path,
            extra_source="    multiline: {default: java, flush_timeout: 200ms}",
        )
    )
    stop, task = await start(app)
    expected: list[str] = []
    for seq in range(120):
        if seq % 3 == 0:
            lines = java_trace(seq, frames=5 + seq % 7)
            for line in lines:
                log.write(line, stream="stderr")
            expected.append("\n".join(lines))
        else:
            line = f"2024-05-01 12:00:00.000 INFO [main] c.e.Orders - order ok seq={seq:06d}"
            log.write(line, stream="stderr")
            expected.append(line)
    assert len(log.generations()) > 10  # traces did cross rotations
    await wait_until(lambda: delivered(app) >= len(expected), timeout=30, what="every record")
    stop.set()
    await task
    writer.close()
    _, documents = shipped(tmp_path / "out.ndjson")
    assert [d["message"] for d in documents] == expected
    assert all("flags" not in d["log"] for d in documents)
    # Records that began in an older file name that file.
    assert len({d["log"]["file"]["path"] for d in documents}) > 10
    # Lines are counted as lines, records as records.
    lines = sum(message.count("\n") + 1 for message in expected)
    assert app.telemetry.value("shipper_lines_read_total", source="docker") == lines
    # The last record had no next line to end it: the flush timeout shipped it, counted.
    flushed = app.telemetry.value(
        "shipper_pending_flushed_total", source="docker", kind="multiline", reason="timeout"
    )
    assert flushed >= 1
