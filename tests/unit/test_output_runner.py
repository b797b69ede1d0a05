"""Tests for OutputRunner batching and for Pipeline routing over real runners.

The sinks here are small fakes: they record each batch and, when gated, hold each send until the
test finishes it, so the test decides the order in which outputs and batches complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Collection

import orjson
import pytest

from shipper.errors import FatalSinkError
from shipper.model import Batch, BatchResult, Chunk, LogFile, Outcome, RecordGroup, Settlement
from shipper.pipeline.budget import ByteBudget
from shipper.pipeline.output import OutputRunner
from shipper.pipeline.pipeline import Pipeline
from shipper.pipeline.sender import Sender
from shipper.sources.docker_json import decode_chunk
from shipper.telemetry.counters import Telemetry

READ_TIME = "2030-01-01T00:00:00.000000000Z"


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def let_run(rounds: int = 20) -> None:
    """Give every ready task a chance to run (used before asserting that nothing happened)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Call:
    """One send held by a GatedSink until the test finishes or fails it."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.gate = asyncio.Event()
        self.result: BatchResult | None = None
        self.error: BaseException | None = None
        self.returned = False

    def finish(self, result: BatchResult | None = None) -> None:
        self.result = result
        self.gate.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.gate.set()


class GatedSink:
    """Records every batch; each send waits until its Call is finished (or the sink is opened)."""

    def __init__(self, *, gated: bool = True) -> None:
        self.calls: list[Call] = []
        self._gated = gated

    @property
    def batches(self) -> list[list[RecordGroup]]:
        return [call.batch.groups for call in self.calls]

    def open_all(self) -> None:
        self._gated = False
        for call in self.calls:
            call.gate.set()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, batch: Batch) -> BatchResult:
        call = Call(batch)
        self.calls.append(call)
        if self._gated:
            await call.gate.wait()
        call.returned = True
        if call.error is not None:
            raise call.error
        return call.result or BatchResult.uniform(Outcome.DELIVERED, len(batch))


async def _no_dead_letters(output: str, rejected: list[tuple[RecordGroup, int, str]]) -> None:
    raise AssertionError(f"unexpected dead letters at {output}: {rejected}")


def make_runner(
    sink: GatedSink,
    *,
    name: str = "out",
    inputs: Collection[str] | None = None,
    max_records: int = 1000,
    max_bytes: int = 10**9,
    linger: float = 0.0,
    max_in_flight: int = 1,
    telemetry: Telemetry | None = None,
) -> OutputRunner:
    telemetry = telemetry or Telemetry()
    sender = Sender(
        name,
        sink,
        initial_backoff=0.001,
        max_backoff=0.002,
        max_attempts=0,
        dead_letter=_no_dead_letters,
        telemetry=telemetry,
    )
    return OutputRunner(
        name,
        sink,
        sender,
        inputs=inputs,
        max_records=max_records,
        max_bytes=max_bytes,
        linger=linger,
        max_in_flight=max_in_flight,
        telemetry=telemetry,
    )


@contextlib.asynccontextmanager
async def running(*runners: OutputRunner) -> AsyncIterator[None]:
    """Run the runners; on exit let every held send through, close them and wait for `run`."""
    tasks = [asyncio.create_task(runner.run()) for runner in runners]
    try:
        yield
    finally:
        for runner in runners:
            runner.sink.open_all()  # type: ignore[attr-defined]
            runner.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 2)


class Settled:
    """A settlement that remembers it fired."""

    def __init__(self, group: RecordGroup) -> None:
        self.fired = 0
        group.settlement = Settlement(self._fire)
        group.settlement.expect(1)

    def _fire(self) -> None:
        self.fired += 1


_FILE = LogFile("docker", "c", "/logs/c.log", "h")


def group_of(records: int, size: int = 100, name: str = "g") -> RecordGroup:
    group = RecordGroup(file=_FILE, start=0, end=size)
    for n in range(records):
        group.messages.append(f"{name}-{n}")
        group.timestamps.append(READ_TIME)
        group.streams.append("stdout")
        group.offsets.append(n)
    return group


# --- batching -----------------------------------------------------------------------------------


async def test_batch_closes_when_max_records_is_reached_without_waiting_for_linger() -> None:
    sink = GatedSink(gated=False)
    runner = make_runner(sink, max_records=3, linger=60)
    g1, g2, g3 = group_of(2), group_of(1), group_of(2)
    async with running(runner):
        runner.put(g1)
        await let_run()
        assert sink.calls == []  # lingering: 2 of 3 records
        runner.put(g2)
        await wait_until(lambda: len(sink.calls) == 1, "the full batch")
        assert sink.batches == [[g1, g2]]
        runner.put(g3)
        await let_run()
        assert len(sink.calls) == 1  # g3 alone is not full: it lingers
    assert sink.batches == [[g1, g2], [g3]]


async def test_batch_closes_when_max_bytes_is_reached_without_waiting_for_linger() -> None:
    sink = GatedSink(gated=False)
    runner = make_runner(sink, max_bytes=1000, linger=60)
    g1, g2, g3 = group_of(1, size=600), group_of(1, size=400), group_of(1, size=10)
    async with running(runner):
        runner.put(g1)
        await let_run()
        assert sink.calls == []
        runner.put(g2)
        await wait_until(lambda: len(sink.calls) == 1, "the full batch")
        assert sink.batches == [[g1, g2]]
        runner.put(g3)
    assert sink.batches == [[g1, g2], [g3]]


async def test_queued_groups_are_cut_into_batches_by_records_and_bytes() -> None:
    sink = GatedSink(gated=False)
    runner = make_runner(sink, max_records=4, max_bytes=1000, linger=60)
    groups = [
        group_of(2, 100),
        group_of(2, 100),  # 4 records: full
        group_of(1, 700),
        group_of(1, 300),  # 1000 bytes: full
        group_of(3, 10),
        group_of(2, 10),  # would be 5 records: the group goes to the next batch, unsplit
        group_of(1, 10),
    ]
    for group in groups:
        runner.put(group)
    runner.close()
    await asyncio.wait_for(runner.run(), 2)
    a, b, c, d, e, f, g = groups
    assert sink.batches == [[a, b], [c, d], [e], [f, g]]
    for call in sink.calls:
        assert [list(s) for s in call.batch.selection] == [
            list(range(len(group))) for group in call.batch.groups
        ]


def group_from(container: str, records: int) -> RecordGroup:
    """A group of `records` records read from `container`'s log."""
    file = dataclasses.replace(_FILE, container_id=container, handle=f"{container}:1")
    group = group_of(records, name=container)
    group.file = file
    return group


async def test_batches_take_from_each_container_in_turn_keeping_each_ones_order() -> None:
    sink = GatedSink(gated=False)
    runner = make_runner(sink, max_records=4, linger=60)
    noisy = [group_from("noisy", 1) for _ in range(6)]
    quiet = group_from("quiet", 1)
    for group in noisy:
        runner.put(group)
    runner.put(quiet)  # queued after all six noisy groups
    runner.close()
    await asyncio.wait_for(runner.run(), 2)
    # The quiet container's group is in the first batch, not behind the noisy backlog, and
    # the noisy groups keep their order across batches.
    assert sink.batches == [[noisy[0], quiet, noisy[1], noisy[2]], [noisy[3], noisy[4], noisy[5]]]


async def test_a_group_larger_than_a_batch_is_sent_whole() -> None:
    sink = GatedSink(gated=False)
    runner = make_runner(sink, max_records=3, max_bytes=50, linger=60)
    small, big, after = group_of(1, 10), group_of(10, 500), group_of(1, 10)
    for group in (small, big, after):
        runner.put(group)
    runner.close()
    await asyncio.wait_for(runner.run(), 2)
    assert sink.batches == [[small], [big], [after]]
    assert len(sink.calls[1].batch) == 10


async def test_linger_closes_a_batch_that_is_not_full() -> None:
    sink = GatedSink(gated=False)
    runner = make_runner(sink, max_records=1000, linger=0.1)
    g1, g2, g3 = group_of(1), group_of(1), group_of(1)
    async with running(runner):
        runner.put(g1)
        await let_run(5)  # the runner is lingering on g1
        runner.put(g2)  # arrives within the linger: same batch
        await wait_until(lambda: len(sink.calls) == 1, "the lingered batch")
        runner.put(g3)
        await wait_until(lambda: len(sink.calls) == 2, "the second lingered batch")
        assert sink.batches == [[g1, g2], [g3]]


async def test_close_flushes_what_is_queued_and_run_returns() -> None:
    sink = GatedSink(gated=False)
    runner = make_runner(sink, max_records=2, linger=60)
    groups = [group_of(1, name=f"g{n}") for n in range(5)]
    settled = [Settled(group) for group in groups]
    task = asyncio.create_task(runner.run())
    for group in groups:
        runner.put(group)
    runner.close()
    await asyncio.wait_for(task, 2)
    assert sink.batches == [groups[0:2], groups[2:4], groups[4:5]]
    assert [s.fired for s in settled] == [1] * 5


async def test_close_of_an_idle_runner_returns() -> None:
    sink = GatedSink(gated=False)
    runner = make_runner(sink, linger=60)
    task = asyncio.create_task(runner.run())
    await let_run()
    runner.close()
    await asyncio.wait_for(task, 2)
    assert sink.calls == []


async def test_close_waits_for_sends_in_flight() -> None:
    sink = GatedSink()
    runner = make_runner(sink)
    group = group_of(2)
    settled = Settled(group)
    task = asyncio.create_task(runner.run())
    runner.put(group)
    await wait_until(lambda: len(sink.calls) == 1, "the send")
    runner.close()
    await let_run()
    assert not task.done()
    sink.calls[0].finish()
    await asyncio.wait_for(task, 2)
    assert settled.fired == 1


async def test_max_in_flight_bounds_concurrent_sends() -> None:
    sink = GatedSink()
    runner = make_runner(sink, max_records=1, max_in_flight=2)
    groups = [group_of(1, name=f"g{n}") for n in range(3)]
    async with running(runner):
        for group in groups:
            runner.put(group)
        await wait_until(lambda: len(sink.calls) == 2, "two sends in flight")
        await let_run()
        assert len(sink.calls) == 2
        sink.calls[1].finish()
        await wait_until(lambda: len(sink.calls) == 3, "the third send")
        assert sink.batches == [[g] for g in groups]


async def test_a_non_retryable_send_failure_makes_run_raise() -> None:
    sink = GatedSink()
    runner = make_runner(sink)
    group = group_of(2)
    settled = Settled(group)
    task = asyncio.create_task(runner.run())
    runner.put(group)
    await wait_until(lambda: len(sink.calls) == 1, "the send")
    sink.calls[0].fail(FatalSinkError("401 Unauthorized"))
    with pytest.raises(FatalSinkError, match="401"):
        await asyncio.wait_for(task, 2)
    assert settled.fired == 0  # never delivered: its range must not settle


async def test_a_failure_while_other_sends_are_in_flight_makes_run_raise() -> None:
    sink = GatedSink()
    runner = make_runner(sink, max_records=1, max_in_flight=2)
    first, second = group_of(1), group_of(1)
    task = asyncio.create_task(runner.run())
    runner.put(first)
    runner.put(second)
    await wait_until(lambda: len(sink.calls) == 2, "two sends")
    sink.calls[1].fail(ValueError("sink bug"))
    with pytest.raises(ValueError, match="sink bug"):
        await asyncio.wait_for(task, 2)


def test_accepts_follows_inputs() -> None:
    sink = GatedSink()
    assert make_runner(sink).accepts("anything")
    only = make_runner(sink, inputs=["docker", "sidecar"])
    assert only.accepts("docker")
    assert only.accepts("sidecar")
    assert not only.accepts("other")
    assert not make_runner(sink, inputs=[]).accepts("docker")


# --- pipeline routing ---------------------------------------------------------------------------


class Rig:
    """A Pipeline over real runners, one tracked file, and what its checkpoint did."""

    def __init__(self, *runners: OutputRunner, budget_limit: int = 10**6) -> None:
        self.telemetry = Telemetry()
        self.budget = ByteBudget(budget_limit, self.telemetry)
        self.pipeline = Pipeline(list(runners), self.budget, self.telemetry)
        self.file = LogFile("docker", "c0ffee", "/logs/c0ffee-json.log", "handle-1")
        self.advances: list[int] = []
        self.pipeline.tracker.track(self.file.handle, 0, self.advances.append)
        self.position = 0

    def chunk(self, *messages: str, raw: bytes | None = None) -> Chunk:
        data = (
            raw
            if raw is not None
            else b"".join(
                orjson.dumps({"log": m + "\n", "stream": "stdout", "time": "2024-05-06T07:08:09Z"})
                + b"\n"
                for m in messages
            )
        )
        chunk = Chunk(self.file, self.position, data)
        self.position = chunk.end
        return chunk

    async def ingest(self, chunk: Chunk) -> None:
        await self.pipeline.ingest(
            chunk, lambda chunk, hold: decode_chunk(chunk, read_time=READ_TIME, hold=hold)
        )

    @property
    def checkpoint(self) -> int:
        return self.advances[-1] if self.advances else 0


async def test_group_routed_to_two_outputs_settles_only_after_both_delivered() -> None:
    sink_a, sink_b = GatedSink(), GatedSink()
    a, b = make_runner(sink_a, name="a"), make_runner(sink_b, name="b")
    rig = Rig(a, b)
    chunk = rig.chunk("one", "two")
    async with running(a, b):
        await rig.ingest(chunk)
        await wait_until(lambda: sink_a.calls and sink_b.calls, "both outputs sending")
        group = sink_a.calls[0].batch.groups[0]
        assert sink_b.calls[0].batch.groups[0] is group
        assert group.messages == ["one", "two"]
        assert rig.budget.used == len(chunk.data)

        sink_a.calls[0].finish()
        assert group.settlement is not None
        await wait_until(lambda: group.settlement.pending == 1, "output a to settle")  # type: ignore[union-attr]
        await let_run()
        assert rig.advances == []
        assert rig.budget.used == len(chunk.data)
        assert rig.telemetry.value("shipper_buffered_bytes") == len(chunk.data)

        sink_b.calls[0].finish()
        await wait_until(lambda: rig.advances == [chunk.end], "the checkpoint to advance")
        assert rig.budget.used == 0
        assert rig.telemetry.value("shipper_buffered_bytes") == 0
    assert rig.telemetry.value("shipper_lines_read_total", source="docker") == 2
    assert rig.telemetry.value("shipper_bytes_read_total", source="docker") == len(chunk.data)


async def test_settled_only_after_both_even_when_the_second_output_retries() -> None:
    sink_a, sink_b = GatedSink(), GatedSink()
    a, b = make_runner(sink_a, name="a"), make_runner(sink_b, name="b")
    rig = Rig(a, b)
    chunk = rig.chunk("one", "two")
    async with running(a, b):
        await rig.ingest(chunk)
        await wait_until(lambda: sink_a.calls and sink_b.calls, "both outputs sending")
        sink_b.calls[0].finish(BatchResult([Outcome.DELIVERED, Outcome.RETRY]))
        await wait_until(lambda: len(sink_b.calls) == 2, "the retry of one record")
        assert [i for _, i in sink_b.calls[1].batch.records()] == [1]
        sink_a.calls[0].finish()
        await let_run()
        assert rig.advances == []
        sink_b.calls[1].finish()
        await wait_until(lambda: rig.advances == [chunk.end], "the checkpoint to advance")


async def test_output_whose_inputs_exclude_the_source_gets_nothing_and_holds_nothing() -> None:
    sink_other, sink_all = GatedSink(), GatedSink()
    other = make_runner(sink_other, name="other", inputs=["sidecar"])
    everything = make_runner(sink_all, name="all", inputs=["docker"])
    rig = Rig(other, everything)
    chunk = rig.chunk("hello")
    async with running(other, everything):
        await rig.ingest(chunk)
        await wait_until(lambda: len(sink_all.calls) == 1, "the accepting output to send")
        sink_all.calls[0].finish()
        await wait_until(lambda: rig.advances == [chunk.end], "the checkpoint to advance")
        assert rig.budget.used == 0
    assert sink_other.calls == []


async def test_group_no_output_takes_settles_at_once() -> None:
    sink = GatedSink()
    runner = make_runner(sink, inputs=["sidecar"])
    rig = Rig(runner)
    chunk = rig.chunk("hello")
    async with running(runner):
        await rig.ingest(chunk)
        assert rig.advances == [chunk.end]
        assert rig.budget.used == 0
    assert sink.calls == []


async def test_group_of_blank_lines_settles_at_once() -> None:
    sink = GatedSink()
    runner = make_runner(sink)
    rig = Rig(runner)
    first = rig.chunk("a")
    blank = rig.chunk(raw=b"\n\r\n\n")
    async with running(runner):
        await rig.ingest(first)
        await rig.ingest(blank)
        # the blank range settled, but it may not pass the unsettled first chunk
        assert rig.advances == []
        assert rig.budget.used == len(first.data)
        await wait_until(lambda: len(sink.calls) == 1, "the first send")
        sink.calls[0].finish()
        await wait_until(lambda: rig.checkpoint == blank.end, "the checkpoint to pass both")
        assert rig.budget.used == 0
        later_blank = rig.chunk(raw=b"\n")
        await rig.ingest(later_blank)
        assert rig.advances[-1] == later_blank.end
    assert [len(g) for g in sink.batches[0]] == [1]


async def test_batches_completing_out_of_order_advance_only_to_contiguous_offset() -> None:
    sink = GatedSink()
    runner = make_runner(sink, max_records=1, max_in_flight=3)
    rig = Rig(runner)
    chunks = [rig.chunk(f"line {n}") for n in range(3)]
    async with running(runner):
        for chunk in chunks:
            await rig.ingest(chunk)
        await wait_until(lambda: len(sink.calls) == 3, "three batches in flight")
        assert [call.batch.groups[0].start for call in sink.calls] == [c.start for c in chunks]
        groups = [call.batch.groups[0] for call in sink.calls]

        sink.calls[2].finish()
        await wait_until(lambda: groups[2].settlement.pending == 0, "batch 3 to settle")  # type: ignore[union-attr]
        assert rig.advances == []
        assert rig.budget.used == len(chunks[0].data) + len(chunks[1].data)

        sink.calls[1].finish()
        await wait_until(lambda: groups[1].settlement.pending == 0, "batch 2 to settle")  # type: ignore[union-attr]
        assert rig.advances == []
        assert rig.budget.used == len(chunks[0].data)

        sink.calls[0].finish()
        await wait_until(lambda: bool(rig.advances), "the checkpoint to advance")
        assert rig.advances == [chunks[2].end]
        assert rig.budget.used == 0


async def test_middle_batch_settling_first_then_first_advances_to_second_only() -> None:
    sink = GatedSink()
    runner = make_runner(sink, max_records=1, max_in_flight=3)
    rig = Rig(runner)
    chunks = [rig.chunk(f"line {n}") for n in range(3)]
    async with running(runner):
        for chunk in chunks:
            await rig.ingest(chunk)
        await wait_until(lambda: len(sink.calls) == 3, "three batches in flight")
        sink.calls[1].finish()
        sink.calls[0].finish()
        await wait_until(lambda: bool(rig.advances), "the checkpoint to advance")
        assert rig.advances == [chunks[1].end]
        sink.calls[2].finish()
        await wait_until(lambda: rig.checkpoint == chunks[2].end, "the last batch")
        assert rig.advances == [chunks[1].end, chunks[2].end]


async def test_invalid_lines_are_shipped_and_counted_by_the_pipeline() -> None:
    sink = GatedSink(gated=False)
    runner = make_runner(sink)
    rig = Rig(runner)
    good = orjson.dumps({"log": "ok\n", "stream": "stdout", "time": "bad"})
    chunk = rig.chunk(raw=b"not json\n" + good + b"\n")
    async with running(runner):
        await rig.ingest(chunk)
        await wait_until(lambda: rig.advances == [chunk.end], "the checkpoint to advance")
    assert sink.batches[0][0].messages == ["not json", "ok"]
    assert rig.telemetry.value("shipper_invalid_lines_total", source="docker") == 1
    assert rig.telemetry.value("shipper_invalid_timestamps_total", source="docker") == 1
    assert rig.telemetry.value("shipper_lines_read_total", source="docker") == 2


async def test_budget_stops_ingest_until_an_output_settles() -> None:
    sink = GatedSink()
    runner = make_runner(sink, max_records=1, max_in_flight=4)
    first_size = len(Rig().chunk("0123456789").data)  # same line length as below
    rig = Rig(runner, budget_limit=first_size + 1)
    first, second = rig.chunk("0123456789"), rig.chunk("abcdefghij")
    async with running(runner):
        await rig.ingest(first)
        blocked = asyncio.create_task(rig.ingest(second))
        await wait_until(lambda: len(sink.calls) == 1, "the first send")
        await let_run()
        assert not blocked.done()
        sink.calls[0].finish()
        await asyncio.wait_for(blocked, 2)
        await wait_until(lambda: len(sink.calls) == 2, "the second send")
        sink.calls[1].finish()
        await wait_until(lambda: rig.checkpoint == second.end, "both to settle")


class AckingSink:
    """Takes every batch at once and confirms it only when the test says so (indexer acks)."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.confirmations: list[asyncio.Future[BatchResult]] = []

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def open_all(self) -> None:
        """What `running` calls on exit: confirm whatever is still awaited."""
        for batch, confirmed in zip(self.batches, self.confirmations, strict=True):
            if not confirmed.done():
                confirmed.set_result(BatchResult.uniform(Outcome.DELIVERED, len(batch)))

    async def send(self, batch: Batch) -> BatchResult:
        self.batches.append(batch)
        confirmed: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self.confirmations.append(confirmed)
        return BatchResult([Outcome.AWAITING_ACK] * len(batch), acknowledged=confirmed)


async def test_a_batch_waiting_only_for_its_acknowledgement_frees_its_send_slot() -> None:
    """With one send in flight, the next batch goes while the first awaits its ack; each
    settles only when confirmed."""
    sink = AckingSink()
    runner = make_runner(sink, max_records=1, max_in_flight=1)  # type: ignore[arg-type]
    first, second = group_of(1, name="first"), group_of(1, name="second")
    settled: list[str] = []
    for group in (first, second):
        group.settlement = Settlement(lambda g=group: settled.append(g.messages[0]))
        group.settlement.expect(1)
    async with running(runner):
        runner.put(first)
        runner.put(second)
        await wait_until(lambda: len(sink.batches) == 2, "the second batch sent before any ack")
        assert settled == []
        sink.confirmations[1].set_result(BatchResult.uniform(Outcome.DELIVERED, 1))
        await wait_until(lambda: settled == ["second-0"], "the second batch settled")
        sink.confirmations[0].set_result(BatchResult.uniform(Outcome.DELIVERED, 1))
        await wait_until(lambda: settled == ["second-0", "first-0"], "the first batch settled")
