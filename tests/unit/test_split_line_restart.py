"""A line Docker split across a rotation, read again after a restart (ContainerFollower with real
files, AckTracker, CheckpointStore).

The first part of such a line is the last entry of file N, its rest the first entry of N+1; the
record starts in N and ends in N+1. If N's checkpoint stays before that first part (something
earlier in N is not delivered yet) while N+1's checkpoint moves past the rest (the joined record
was delivered), a restart reads the first part again but not the rest: the part then waits for
its stream's next line, in some later file, and ships glued to it, under a new record id, as a
second copy of that line (tests/scenarios/test_elasticsearch_crash_cycles.py). The checkpoints
must send the next run back to both halves of the line, or to neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from shipper.checkpoints import CheckpointStore
from shipper.docker_writer import ContainerLog, DockerRootWriter
from shipper.model import RecordGroup
from shipper.pipeline.budget import ByteBudget
from shipper.pipeline.output import OutputRunner
from shipper.pipeline.pipeline import Pipeline
from shipper.sinks.record_ids import record_ids
from shipper.sources.tailer import ContainerFollower, TailSettings
from shipper.telemetry.counters import Telemetry
from tests.helpers import wait_until

LONG = "x" * 20_000 + " the end of the long line"  # two entries: 16 KiB, then the rest


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


class Run:
    """One `shipper run` of one container's follower: started, then killed (no clean stop)."""

    def __init__(self, tmp_path: Path, log: ContainerLog) -> None:
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
                read_chunk_size=64 * 1024,
                poll_interval=0.02,
                partial_flush_timeout=600.0,  # never: a part waits for its line's rest
                max_message_bytes=1 << 20,
            ),
            store=self.store,
            pipeline=pipeline,
            telemetry=telemetry,
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


@pytest.fixture
def docker(tmp_path: Path) -> Iterator[DockerRootWriter]:
    writer = DockerRootWriter(tmp_path / "containers")
    yield writer
    writer.close()


async def test_a_restart_reads_both_halves_of_a_line_split_across_a_rotation(
    tmp_path: Path, docker: DockerRootWriter
) -> None:
    # `.log.1`: "first", then the long line's first part (past max-size: the next entry rotates);
    # `-json.log`: the long line's rest, then "next".
    log = docker.add_container("web-1", max_size=16 * 1024, max_file=5)
    log.write("first")
    log.write(LONG)
    log.write("next")
    assert len(log.log_files()) == 2

    run1 = Run(tmp_path, log)
    await run1.until_read("next")
    old_group, new_group = run1.output.groups
    assert old_group.messages == ["first"]  # the first part waits for its rest
    assert new_group.messages == [LONG, "next"]
    # The output delivers the group with the joined line, but not yet the one before it (a
    # refused item being retried): the old file's checkpoint stays before "first".
    run1.output.settle(new_group)
    delivered = run1.output.records()
    await run1.kill()

    log.write("after")
    run2 = Run(tmp_path, log)
    await run2.until_read("after")
    replayed = run2.output.records()
    await run2.kill()

    # Read again: "first" (not delivered), and the line split across the rotation, whole and
    # under the id it had, since its first part is read again; then what came since.
    assert [message for message, _ in replayed] == ["first", LONG, "next", "after"]
    ids = dict(delivered)
    assert [record_id for _, record_id in replayed[:3]] == [ids["first"], ids[LONG], ids["next"]]
