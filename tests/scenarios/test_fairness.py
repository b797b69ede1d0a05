"""Fairness between containers: one writing 100 times as much as the others does not hold their
lines back, and a start over many backlogs ships every container's first lines first."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from pathlib import Path

import orjson

from shipper.app import App
from shipper.config import FileOutputConfig, OutputConfig, parse_config
from shipper.docker_writer import SEQ_PATTERN, ContainerLog, DockerRootWriter, realistic_lines
from shipper.model import Batch, BatchResult
from shipper.sinks import Sink
from shipper.sinks.file import FileSink
from shipper.sources.tailer import FIRST_READ
from shipper.telemetry.counters import Telemetry
from tests.helpers import wait_until

Seqs = dict[tuple[str, str], list[int]]

BUDGET = 1024 * 1024
NOISY_LINES = 4000  # about 1.7 MB: a backlog larger than the budget
QUIET_CONTAINERS = 8
QUIET_LINES = NOISY_LINES // 100
BURST = 4  # lines a quiet container writes at each look of the test
RECORD_COST = 300e-6  # seconds the destination takes per record: reading runs far ahead of it


class SlowFileSink:
    """The real file output behind a destination that takes a while per record."""

    def __init__(self, inner: FileSink) -> None:
        self._inner = inner

    async def open(self) -> None:
        await self._inner.open()

    async def send(self, batch: Batch) -> BatchResult:
        await asyncio.sleep(len(batch) * RECORD_COST)
        return await self._inner.send(batch)

    async def close(self) -> None:
        await self._inner.close()


class Output:
    """Follows the output file as it grows, by whole lines (shipper may be writing the last)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines: Counter[str] = Counter()  # by container id
        self.seqs: Seqs = defaultdict(list)  # by (container id, stream), in delivery order

    def read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as file:
            file.seek(self.offset)
            data = file.read()
        whole = data[: data.rfind(b"\n") + 1]
        self.offset += len(whole)
        for line in whole.splitlines():
            document = orjson.loads(line)
            container = document["container"]["id"]
            self.lines[container] += 1
            match = SEQ_PATTERN.search(document["message"])
            assert match is not None
            self.seqs[(container, document["stream"])].append(int(match[1]))


class Container:
    """Writes one container's lines a few at a time, noting each line's sequence number."""

    def __init__(self, log: ContainerLog, count: int, seed: int, expected: Seqs) -> None:
        self.log = log
        self.count = count
        self.written = 0
        self._lines = realistic_lines(random.Random(seed), count, container=log.name)
        self._expected = expected

    def write(self, count: int) -> None:
        for _ in range(min(count, self.count - self.written)):
            stream, message = next(self._lines)
            self.log.write(message, stream=stream)
            match = SEQ_PATTERN.search(message)
            assert match is not None
            self._expected[(self.log.id, stream)].append(int(match[1]))
            self.written += 1


async def stop_once_delivered(
    output: Output, total: int, stop: asyncio.Event, app_run: asyncio.Task[None]
) -> None:
    """Wait until the output holds `total` lines, then stop the app and let it finish."""

    def all_delivered() -> bool:
        output.read()
        return output.lines.total() >= total

    await wait_until(all_delivered, what="every line")
    stop.set()
    await app_run
    output.read()


def config_for(tmp_path: Path, *, small_reads: bool = True) -> str:
    """Small batches, so that the order in which chunks were read shows in delivery; with
    `small_reads`, small reads and budget too (else shipper's defaults)."""
    reads = "    read_chunk_size: 32KiB" if small_reads else ""
    budget = f"pipeline:\n  max_buffered_bytes: {BUDGET}" if small_reads else ""
    return f"""
state_dir: {tmp_path / "state"}
sources:
  docker:
    type: docker_json
    root: {tmp_path / "containers"}
    poll_interval: 20ms
{reads}
outputs:
  archive:
    type: file
    path: {tmp_path / "out.ndjson"}
    batch:
      linger: 20ms
      max_records: 100
{budget}
"""


async def test_quiet_containers_are_not_held_back_by_one_writing_100_times_more(
    tmp_path: Path,
) -> None:
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    noisy = Container(writer.add_container("noisy"), NOISY_LINES, 1, expected)
    noisy.write(NOISY_LINES)
    noisy_bytes = noisy.log.log_path.stat().st_size
    assert noisy_bytes > 1.5 * BUDGET
    quiet = [
        Container(writer.add_container(f"quiet-{n}"), QUIET_LINES, 10 + n, expected)
        for n in range(QUIET_CONTAINERS)
    ]

    def slow(name: str, config: OutputConfig, telemetry: Telemetry) -> Sink:
        assert isinstance(config, FileOutputConfig)
        return SlowFileSink(FileSink(config.path, fsync=False))

    app = App(parse_config(config_for(tmp_path), origin="<test>"), sinks={"file": slow})
    output = Output(tmp_path / "out.ndjson")
    # How far behind the noisy container a quiet line falls: the noisy container's lines
    # delivered between the quiet line's writing and its delivery, the most seen.
    lag = 0
    written_at: dict[str, list[tuple[int, int]]] = {c.log.id: [] for c in quiet}

    def quiet_ones_write_and_are_delivered() -> bool:
        """Each quiet container writes a few lines at every look (they log steadily)."""
        nonlocal lag
        output.read()
        noisy_now = output.lines[noisy.log.id]
        for container in quiet:
            marks = written_at[container.log.id]
            while marks and marks[0][0] <= output.lines[container.log.id]:
                lag = max(lag, noisy_now - marks.pop(0)[1])
            if container.written < QUIET_LINES:
                container.write(BURST)
                marks.append((container.written, noisy_now))
        return all(output.lines[c.log.id] == QUIET_LINES for c in quiet)

    quiet_ones_write_and_are_delivered()  # their first lines are there when shipper starts
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    await asyncio.wait_for(app.started.wait(), 10)
    await wait_until(quiet_ones_write_and_are_delivered, what="every quiet container's lines")

    # Served first come, first served, every quiet line queued behind the whole budget's worth
    # of the noisy container's lines (about 2400 here), and the quiet ones finished with ~3/4
    # of the noisy backlog delivered. With a share each, the noisy one holds about a ninth.
    lines_per_budget = NOISY_LINES * BUDGET // noisy_bytes
    assert lag < lines_per_budget // 2
    assert output.lines[noisy.log.id] < NOISY_LINES // 2

    total = NOISY_LINES + QUIET_CONTAINERS * QUIET_LINES
    await stop_once_delivered(output, total, stop, task)
    assert output.lines.total() == total
    assert dict(output.seqs) == dict(expected)  # each line once, in order per stream
    assert app.budget.used == 0


STARTING_CONTAINERS = 12
BACKLOG_LINES = 1000  # about 430 KB each: more than one whole read (read_chunk_size, 256 KiB)


async def test_a_start_over_many_backlogs_ships_every_containers_first_lines_first(
    tmp_path: Path,
) -> None:
    """shipper started over containers that all have a backlog: every container's first lines
    are shipped before any container's second read, not after the whole reads of the
    containers that happened to start first (issue 8: 1,000 containers)."""
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    containers = [
        Container(writer.add_container(f"app-{n}"), BACKLOG_LINES, 100 + n, expected)
        for n in range(STARTING_CONTAINERS)
    ]
    for container in containers:
        container.write(BACKLOG_LINES)
    # The lines of each container's first read (FIRST_READ bytes, whole lines).
    first_reads = 0
    for container in containers:
        with container.log.log_path.open("rb") as file:
            first_reads += file.read(FIRST_READ).count(b"\n")
    app = App(parse_config(config_for(tmp_path, small_reads=False), origin="<test>"))
    output = Output(tmp_path / "out.ndjson")
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    await stop_once_delivered(output, STARTING_CONTAINERS * BACKLOG_LINES, stop, task)
    assert dict(output.seqs) == dict(expected)  # each line once, in order per stream
    # The container of each record, in delivery order.
    order = [
        orjson.loads(line)["container"]["id"] for line in output.path.read_bytes().splitlines()
    ]
    firsts = {container: order.index(container) for container in set(order)}
    assert len(firsts) == STARTING_CONTAINERS
    assert max(firsts.values()) < first_reads
