"""OutputRunner: batches the record groups routed to one output and keeps its sends in flight."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Collection

from shipper.model import Batch, RecordGroup
from shipper.pipeline.sender import Sender
from shipper.sinks import Sink
from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)


class OutputRunner:
    """One output: a queue of record groups, a batcher and up to `max_in_flight` sends.

    A batch closes when it holds `max_records` records or `max_bytes` bytes of source data, or
    when its first group has waited `linger` seconds. Groups are never split across batches, so a
    group settles at this output when its one batch is final. The queue is not bounded here: the
    ByteBudget upstream bounds everything that is read and not yet settled.

    Groups wait in one queue per container and batches take from those queues in turn, each in
    its own order: a container that logs after a pause is in the next batch, not behind
    everything a noisy container had queued meanwhile.
    """

    def __init__(
        self,
        name: str,
        sink: Sink,
        sender: Sender,
        *,
        inputs: Collection[str] | None,
        max_records: int,
        max_bytes: int,
        linger: float,
        max_in_flight: int,
        telemetry: Telemetry,
    ) -> None:
        self.name = name
        self.sink = sink
        self._sender = sender
        self._inputs = frozenset(inputs) if inputs is not None else None
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._linger = linger
        self._slots = asyncio.Semaphore(max_in_flight)
        self._telemetry = telemetry
        self._queues: dict[tuple[str, str], deque[RecordGroup]] = {}
        self._turns: deque[tuple[str, str]] = deque()  # keys with queued groups, next first
        self._queued_records = 0
        self._queued_bytes = 0
        self._arrived = asyncio.Event()
        self._closing = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._first_arrival = 0.0

    @property
    def failing_since(self) -> float | None:
        """When (time.monotonic()) this output started failing every attempt; None if it works."""
        return self._sender.failing_since

    def accepts(self, source: str) -> bool:
        return self._inputs is None or source in self._inputs

    def put(self, group: RecordGroup) -> None:
        if not self._queues:
            self._first_arrival = time.monotonic()  # linger counts from here
        key = (group.file.source, group.file.container_id)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._turns.append(key)
        queue.append(group)
        self._queued_records += len(group)
        self._queued_bytes += group.size
        self._arrived.set()

    def close(self) -> None:
        """No more groups will come: send what is queued, then `run` returns."""
        self._closing = True
        self._arrived.set()

    async def run(self) -> None:
        """Batch and send until closed and drained; raise what made a send fail for good."""
        try:
            while True:
                batch = await self._next_batch()
                if batch is None:
                    break
                await self._slots.acquire()
                self._raise_failure()
                task = asyncio.create_task(self._send(batch), name=f"send:{self.name}")
                self._in_flight.add(task)
                task.add_done_callback(self._sent)
            if self._in_flight:
                await asyncio.gather(*self._in_flight)
            self._raise_failure()
        finally:
            for task in self._in_flight:
                task.cancel()

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
            self._arrived.set()  # wake the batcher so `run` raises it

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _next_batch(self) -> Batch | None:
        while not self._queues:
            self._raise_failure()
            if self._closing:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._first_arrival + self._linger
        while not self._closing and not self._full():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
                # that arrives as the event is set, and the stop at shutdown then never lands.
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                break
        return self._take()

    def _full(self) -> bool:
        return self._queued_records >= self._max_records or self._queued_bytes >= self._max_bytes

    def _take(self) -> Batch:
        groups: list[RecordGroup] = []
        records = size = 0
        turns = self._turns
        while turns:
            key = turns[0]
            queue = self._queues[key]
            group = queue[0]
            if groups and (
                records + len(group) > self._max_records or size + group.size > self._max_bytes
            ):
                break
            queue.popleft()
            groups.append(group)
            records += len(group)
            size += group.size
            turns.rotate(-1)  # the next container's turn
            if not queue:
                del self._queues[key]
                turns.remove(key)
        self._queued_records -= records
        self._queued_bytes -= size
        return Batch.of(groups)

    async def _send(self, batch: Batch) -> None:
        slot_held = True

        def free_slot() -> None:
            # The destination took the batch; only its acknowledgement is awaited now, which
            # can take seconds: let the next batch go meanwhile (what settles still waits).
            nonlocal slot_held
            if slot_held:
                slot_held = False
                self._slots.release()

        try:
            self._telemetry.inc("shipper_batches_total", output=self.name)
            handed = time.monotonic()
            await self._sender.deliver(batch, on_accepted=free_slot)
            self._telemetry.observe(
                "shipper_batch_duration_seconds", time.monotonic() - handed, output=self.name
            )
        finally:
            free_slot()
        for group in batch.groups:
            if group.settlement is not None:
                group.settlement.settle_one()
