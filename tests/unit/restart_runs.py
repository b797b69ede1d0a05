"""A follower's runs with real files, an output that settles only what a test says, and kills:
for tests of what a restart reads again (a record that spans a rotation)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import pytest

from shipper.checkpoints import CheckpointStore
from shipper.docker_writer import ContainerLog
from shipper.model import RecordGroup
from shipper.pipeline.budget import ByteBudget
from shipper.pipeline.output import OutputRunner
from shipper.pipeline.pipeline import Pipeline
from shipper.sinks.record_ids import record_ids
from shipper.sources.tailer import ContainerFollower, Shaping, TailSettings
from shipper.telemetry.counters import Telemetry
from tests.helpers import wait_until


class HeldOutput:
    """Takes every group and settles none until the test says so (a slow or refusing output)."""

    def __init__(self) -> None:
        self.groups: list[RecordGroup] = []

    def accepts(self, source: str) -> bool:
        return True

    def put(self, group: RecordGroup) -> None:
        self.groups.append(group)

    def records(self) -> list[tuple[str, str]]:
        """(message, record id) of everything put so far, in order."""
        return [
            (message, record_id)
            for group in self.groups
            for message, record_id in zip(
                group.messages, record_ids(group, range(len(group))), strict=True
            )
        ]

    def settle(self, group: RecordGroup) -> None:
        assert group.settlement is not None
        group.settlement.settle_one()

    def settle_all_but(self, message: str) -> None:
        """Settle every group but the one with `message` (a refused item being retried)."""
        kept = next(group for group in self.groups if message in group.messages)
        for group in self.groups:
            if group is not kept:
                self.settle(group)


class Run:
    """One `shipper run` of one container's follower: started, then killed (no clean stop)."""

    def __init__(
        self,
        tmp_path: Path,
        log: ContainerLog,
        shaping: Shaping | None = None,
        *,
        read_chunk_size: int = 64 * 1024,
    ) -> None:
        telemetry = Telemetry()
        self.store = CheckpointStore(tmp_path / "checkpoints.json", on_corrupt="fail")
        self.store.load()  # what the previous run flushed
        self.output = HeldOutput()
        outputs = cast(list[OutputRunner], [self.output])
        pipeline = Pipeline(outputs, ByteBudget(1 << 20, telemetry), telemetry)
        self.follower = ContainerFollower(
            source="docker",
            directory=str(log.directory),
            container_id=log.id,
            settings=TailSettings(
                read_chunk_size=read_chunk_size,
                poll_interval=0.02,
                partial_flush_timeout=600.0,  # never: a part waits for its line's rest
                max_message_bytes=1 << 20,
            ),
            store=self.store,
            pipeline=pipeline,
            telemetry=telemetry,
            shaping=shaping,
        )
        self.follower.reconcile()
        self.task = asyncio.create_task(self.follower.run())

    async def until_read(self, last: str) -> None:
        await wait_until(
            lambda: any(m.endswith(last) for m, _ in self.output.records()),
            what=f"a record ending in {last!r}",
        )

    async def kill(self) -> None:
        """SIGKILL after a checkpoint flush: what settled is on disk, nothing else is."""
        self.store.flush()
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def replay_after(
    tmp_path: Path, log: ContainerLog, shaping: Shaping | None = None, **settings: int
) -> list[tuple[str, str]]:
    """The next run, after the container wrote "after": every (message, record id) it read,
    up to that line."""
    log.write("after")
    run = Run(tmp_path, log, shaping, **settings)
    await run.until_read("after")
    replayed = run.output.records()
    await run.kill()
    return replayed
