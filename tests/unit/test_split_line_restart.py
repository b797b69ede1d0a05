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

from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.docker_writer import DockerRootWriter
from tests.unit.restart_runs import Run, replay_after

LONG = "x" * 20_000 + " the end of the long line"  # two entries: 16 KiB, then the rest


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

    replayed = await replay_after(tmp_path, log)

    # Read again: "first" (not delivered), and the line split across the rotation, whole and
    # under the id it had, since its first part is read again; then what came since.
    assert [message for message, _ in replayed] == ["first", LONG, "next", "after"]
    ids = dict(delivered)
    assert [record_id for _, record_id in replayed[:3]] == [ids["first"], ids[LONG], ids["next"]]


async def test_a_restart_reads_both_halves_when_the_later_file_is_held_back_before_the_rest(
    tmp_path: Path, docker: DockerRootWriter
) -> None:
    # Docker copies stdout and stderr on their own, so another stream's line can come between
    # the parts of a split line. `.log.1`: "first", the long line's first part; `-json.log`: a
    # stderr line, then the long line's rest, then "next". With 16 KiB reads the stderr line is
    # a chunk of its own, which the output leaves unsettled while the joined line is delivered:
    # the new file's checkpoint stays before the rest. The old file's must then stay before the
    # first part, or a restart reads the rest without it and ships it again on its own.
    log = docker.add_container("web-1", max_size=24 * 1024, max_file=5)
    first = "f" * 8400 + " first"  # with the first part, past max-size: the next entry rotates
    log.write(first)
    head, rest = LONG[: 16 * 1024], LONG[16 * 1024 :]
    log.write(head, newline=False)  # a 16 KiB part: dockerd writes it without a newline
    between = "e" * 15_000 + " on stderr"
    log.write(between, stream="stderr")
    log.write(rest)
    log.write("next")
    assert len(log.log_files()) == 2

    run1 = Run(tmp_path, log, read_chunk_size=16 * 1024)
    await run1.until_read("next")
    messages = [message for message, _ in run1.output.records()]
    assert messages == [first, between, LONG, "next"]
    run1.output.settle_all_but(between)
    delivered = run1.output.records()
    await run1.kill()

    replayed = await replay_after(tmp_path, log, read_chunk_size=16 * 1024)

    # Read again: the stderr line (not delivered) and the long line whole, under the id it had
    # (its first part is read again too), then what came since; never its rest on its own.
    ids = dict(delivered)
    assert sorted(message for message, _ in replayed) == sorted([between, LONG, "next", "after"])
    assert dict(replayed)[LONG] == ids[LONG]
