"""A multiline record split across a rotation, read again after a restart (ContainerFollower with
real files and Java joining, AckTracker, CheckpointStore).

A Java stack trace whose header is the last line of file N and whose frames are the first lines
of N+1 is one record that starts in N and ends in N+1. If N's checkpoint stays before the header
(something earlier in N is not delivered yet) while N+1's checkpoint moves past the frames (the
joined record was delivered), a restart reads the header again but not the frames: the header
then ships alone, under the joined record's id (overwriting it with a truncated copy where ids
are document ids), or joined to whatever line of its stream comes next. As for a line Docker
split (tests/unit/test_split_line_restart.py), the checkpoints must send the next run back to
every line of such a record, or to none.
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
from shipper.processing.multiline import PRESETS, MultilineJoiner
from shipper.sinks.record_ids import record_ids
from shipper.sources.tailer import ContainerFollower, Shaping, TailSettings
from shipper.telemetry.counters import Telemetry
from tests.helpers import wait_until

# The JVM's own header, which starts a record (the line before it does not join), long enough to
# take `.log` past its max-size: the entry after it goes to a new file.
HEADER = 'Exception in thread "main" java.lang.IllegalStateException: boom ' + "y" * 1_000
FRAMES = ["\tat com.example.Service.handle(Service.java:42)", "\tat java.lang.Thread.run"]
TRACE = "\n".join([HEADER, *FRAMES])


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
                partial_flush_timeout=600.0,
                max_message_bytes=1 << 20,
            ),
            store=self.store,
            pipeline=pipeline,
            telemetry=telemetry,
            shaping=Shaping(
                multiline=MultilineJoiner(PRESETS["java"], max_lines=500, max_bytes=1 << 20),
                # The last line of a run waits for a next line that never comes: it ships
                # after this; the trace's frames are read well within it.
                multiline_timeout=0.5,
            ),
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


@pytest.mark.parametrize(
    "next_line",
    [
        pytest.param(True, id="trace-ends-in-the-new-files-chunk"),
        pytest.param(False, id="trace-left-open-then-flushed"),
    ],
)
async def test_a_restart_reads_every_line_of_a_trace_split_across_a_rotation(
    tmp_path: Path, docker: DockerRootWriter, next_line: bool
) -> None:
    # `.log.1`: "first", then the trace's header (past max-size: the next entry rotates);
    # `-json.log`: the trace's frames, then "next" (which ends the trace in the chunk of its
    # frames) or nothing (the trace stays open, held, and ships at the flush timeout).
    log = docker.add_container("web-1", max_size=1024, max_file=5)
    log.write("first")
    log.write(HEADER)
    for frame in FRAMES:
        log.write(frame)
    later = ["next"] if next_line else []
    for message in later:
        log.write(message)
    assert len(log.log_files()) == 2

    run1 = Run(tmp_path, log)
    await run1.until_read(later[-1] if later else FRAMES[-1])
    messages = [message for message, _ in run1.output.records()]
    assert messages == ["first", TRACE, *later]
    # The output delivers every group but the one of "first" (a refused item being retried):
    # the old file's checkpoint stays before "first", the new file's may go past the frames.
    first_group = next(group for group in run1.output.groups if "first" in group.messages)
    for group in run1.output.groups:
        if group is not first_group:
            run1.output.settle(group)
    delivered = run1.output.records()
    await run1.kill()

    log.write("after")
    run2 = Run(tmp_path, log)
    await run2.until_read("after")
    replayed = run2.output.records()
    await run2.kill()

    # Read again: "first" (not delivered), and the trace split across the rotation, whole and
    # under the id it had, since its header is read again; then what came since.
    assert [message for message, _ in replayed] == ["first", TRACE, *later, "after"]
    ids = dict(delivered)
    assert [record_id for _, record_id in replayed[:-1]] == [
        ids["first"],
        ids[TRACE],
        *[ids[message] for message in later],
    ]
