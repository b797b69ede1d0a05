"""A multiline record split across a rotation, read again after a restart (ContainerFollower with
real files and Java joining, AckTracker, CheckpointStore).

A Java stack trace whose header is the last line of file N and whose frames are the first lines
of N+1 is one record that starts in N and ends in N+1. If N's checkpoint stays before the header
(something earlier in N is not delivered yet) while N+1's checkpoint moves past the frames (the
joined record was delivered), a restart reads the header again but not the frames: the header
then ships alone, a truncated second copy of the trace under another record id. As for a line Docker
split (tests/unit/test_split_line_restart.py), the checkpoints must send the next run back to
every line of such a record, or to none.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.docker_writer import DockerRootWriter
from shipper.processing.multiline import PRESETS, MultilineJoiner
from shipper.sources.tailer import Shaping
from tests.unit.restart_runs import Run, replay_after

# The JVM's own header, which starts a record (the line before it does not join), long enough to
# take `.log` past its max-size: the entry after it goes to a new file.
HEADER = 'Exception in thread "main" java.lang.IllegalStateException: boom ' + "y" * 1_000
FRAMES = ["\tat com.example.Service.handle(Service.java:42)", "\tat java.lang.Thread.run"]
TRACE = "\n".join([HEADER, *FRAMES])


def java() -> Shaping:
    return Shaping(
        multiline=MultilineJoiner(PRESETS["java"], max_lines=500, max_bytes=1 << 20),
        # The last line of a run waits for a next line that never comes: it ships after this;
        # the trace's frames are read well within it.
        multiline_timeout=0.5,
    )


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

    run1 = Run(tmp_path, log, java())
    await run1.until_read(later[-1] if later else FRAMES[-1])
    messages = [message for message, _ in run1.output.records()]
    assert messages == ["first", TRACE, *later]
    # The output delivers every group but the one of "first" (a refused item being retried):
    # the old file's checkpoint stays before "first", the new file's may go past the frames.
    run1.output.settle_all_but("first")
    delivered = run1.output.records()
    await run1.kill()

    replayed = await replay_after(tmp_path, log, java())

    # Read again: "first" (not delivered), and the trace split across the rotation, whole and
    # under the id it had, since its header is read again; then what came since.
    assert [message for message, _ in replayed] == ["first", TRACE, *later, "after"]
    ids = dict(delivered)
    assert [record_id for _, record_id in replayed[:-1]] == [
        ids["first"],
        ids[TRACE],
        *[ids[message] for message in later],
    ]


async def test_a_restart_reads_the_header_again_when_the_new_file_is_held_back_before_the_frames(
    tmp_path: Path, docker: DockerRootWriter
) -> None:
    # `.log.1`: "first", the trace's header; `-json.log`: a stderr line (Docker copies the two
    # streams on their own), the frames, "next". With 16 KiB reads the stderr line is a chunk of
    # its own, which the output leaves unsettled while the trace is delivered: the new file's
    # checkpoint stays before the frames. The old file's must then stay before the header, or a
    # restart reads the frames without it and ships them again as a record of their own.
    log = docker.add_container("web-1", max_size=16 * 1024 + 512, max_file=5)
    first = "f" * 16_000 + " first"  # with the header, past max-size: the next entry rotates
    log.write(first)
    log.write(HEADER)
    between = "e" * 16_100 + " on stderr"  # a whole read's worth: the frames are in the next
    log.write(between, stream="stderr")
    for frame in FRAMES:
        log.write(frame)
    log.write("next")
    assert len(log.log_files()) == 2

    run1 = Run(tmp_path, log, java(), read_chunk_size=16 * 1024)
    await run1.until_read("next")
    assert sorted(message for message, _ in run1.output.records()) == sorted(
        [first, between, TRACE, "next"]
    )
    run1.output.settle_all_but(between)
    delivered = dict(run1.output.records())
    await run1.kill()

    replayed = await replay_after(tmp_path, log, java(), read_chunk_size=16 * 1024)

    # Read again: the stderr line (not delivered) and the whole trace under the id it had (its
    # header is read again too), then what came since; never its frames on their own.
    assert sorted(message for message, _ in replayed) == sorted([between, TRACE, "next", "after"])
    assert dict(replayed)[TRACE] == delivered[TRACE]
