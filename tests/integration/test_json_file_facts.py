"""What the real json-file driver writes, checked on the running dockerd.

shipper's decoder, partial joiner and rotation follower are built on these facts
(tests/integration/README.md, DESIGN.md §4): when a Docker version changes one, a test here
fails first.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration import scripts
from tests.integration.dockerd import Dockerd
from tests.integration.jsonlog import generations, gzip_extra, read_entries

PAYLOAD = "abcdefghijklmnopqrstuvwxyz"  # a numbered line is ~108 bytes as a json-file entry
ROTATE = {"max-size": "10k", "max-file": "3"}


def poll(condition: Callable[[], bool], *, timeout: float = 20.0, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def seqs(paths: list[Path]) -> list[int]:
    return [int(entry["log"][4:10]) for path in paths for entry in read_entries(path)]


def test_long_line_split_in_16k_entries_and_last_output_without_newline(dockerd: Dockerd) -> None:
    script = scripts.chain(
        scripts.text_line("before"),
        scripts.long_line(40_000),
        scripts.text_line("after"),
        scripts.no_trailing_newline("last-line-no-newline"),
    )
    container_id = dockerd.run_container("long-line", script)
    assert dockerd.wait_exited(container_id) == 0

    entries = read_entries(dockerd.json_log(container_id))
    logs = [entry["log"] for entry in entries]
    assert logs == [
        "before\n",
        "x" * 16384,
        "x" * 16384,
        "x" * (40_000 - 2 * 16384) + "\n",
        "after\n",
        "last-line-no-newline",
    ]
    # The parts of one line share one `time`; nothing else marks them (no partial flag).
    assert entries[1]["time"] == entries[2]["time"] == entries[3]["time"]
    assert all(set(entry) == {"log", "stream", "time"} for entry in entries)


def test_split_cuts_a_multibyte_character(dockerd: Dockerd) -> None:
    # 16383 bytes of `x`, then `é` (2 bytes in UTF-8): the 16 KiB boundary falls inside it.
    script = "head -c 16383 /dev/zero | tr '\\0' x; printf '\\303\\251tail\\n'"
    container_id = dockerd.run_container("multibyte-split", script)
    assert dockerd.wait_exited(container_id) == 0

    logs = [entry["log"] for entry in read_entries(dockerd.json_log(container_id))]
    assert logs == ["x" * 16383 + "\ufffd", "\ufffdtail\n"]


def test_rotation_renames_then_deletes_the_oldest(dockerd: Dockerd) -> None:
    """max-size=10k max-file=3: -json.log → .1 → .2 → deleted, one rename at a time."""
    script = scripts.chain(
        scripts.numbered_lines(50, payload=PAYLOAD),  # ~5.4 kB: no rotation yet
        scripts.wait_for_signal("one-rotation"),
        scripts.numbered_lines(50, start=50, payload=PAYLOAD),  # crosses 10,000 bytes once
        scripts.wait_for_signal("second-rotation"),
        scripts.numbered_lines(100, start=100, payload=PAYLOAD),  # crosses it once more
        scripts.wait_for_signal("more-rotations"),
        scripts.numbered_lines(300, start=200, payload=PAYLOAD),
    )
    container_id = dockerd.run_container("rotation", script, log_opts=ROTATE)
    current = dockerd.json_log(container_id)
    rotated_1 = current.with_name(current.name + ".1")
    rotated_2 = current.with_name(current.name + ".2")

    def holds(path: Path, last_seq: int) -> Callable[[], bool]:
        needle = scripts.numbered_line(last_seq, PAYLOAD).encode()

        def check() -> bool:
            try:  # between Docker's rename and its create, the name holds no file
                return needle in path.read_bytes()
            except FileNotFoundError:
                return False

        return check

    poll(holds(current, 49), what="phase 1")
    assert generations(current) == [current]
    # An open descriptor pins the inode: it cannot be reused, and nlink tells when it is deleted.
    first = os.open(current, os.O_RDONLY)
    try:
        first_inode = os.fstat(first).st_ino
        dockerd.exec(container_id, "touch", scripts.signal_path("one-rotation"))
        poll(holds(current, 99), what="phase 2")
        assert generations(current) == [rotated_1, current]
        assert rotated_1.stat().st_ino == first_inode, "the old -json.log was renamed to .1"
        assert current.stat().st_ino != first_inode, "a new -json.log was created"
        # The entry that crosses max-size stays in the old file; "10k" is 10,000 bytes, not 10,240.
        size = rotated_1.stat().st_size
        last_entry = rotated_1.read_bytes().splitlines(keepends=True)[-1]
        assert size >= 10_000 > size - len(last_entry)

        dockerd.exec(container_id, "touch", scripts.signal_path("second-rotation"))
        poll(holds(current, 199), what="phase 3")
        assert generations(current) == [rotated_2, rotated_1, current]
        assert rotated_2.stat().st_ino == first_inode, ".1 was renamed to .2"

        dockerd.exec(container_id, "touch", scripts.signal_path("more-rotations"))
        assert dockerd.wait_exited(container_id) == 0
        assert os.fstat(first).st_nlink == 0, "the oldest file was deleted"
    finally:
        os.close(first)
    assert generations(current) == [rotated_2, rotated_1, current]
    assert not current.with_name(current.name + ".3").exists()
    # What is left is contiguous and ends with the last line; the start is gone with .3.
    kept = seqs(generations(current))
    assert kept == list(range(kept[0], 500))
    assert kept[0] > 0


def test_compress_gzips_rotated_files_with_last_time_in_fextra(dockerd: Dockerd) -> None:
    container_id = dockerd.run_container(
        "compress",
        scripts.numbered_lines(500, payload=PAYLOAD),
        log_opts={**ROTATE, "compress": "true"},
    )
    assert dockerd.wait_exited(container_id) == 0
    current = dockerd.json_log(container_id)
    gz_1 = current.with_name(current.name + ".1.gz")
    gz_2 = current.with_name(current.name + ".2.gz")
    # Compression runs in the background after the rename: wait for it to settle.
    poll(lambda: generations(current) == [gz_2, gz_1, current], what="compressed generations")

    for path in (gz_1, gz_2):
        extra = gzip_extra(path)
        assert extra is not None, f"{path.name} has an FEXTRA field"
        meta = json.loads(extra)  # the raw field is JSON, not RFC 1952 subfields
        assert set(meta) == {"lastTime"}
        assert meta["lastTime"] == read_entries(path)[-1]["time"]
    assert gzip_extra(current) is None  # the current file is plain JSON lines
    kept = seqs(generations(current))
    assert kept == list(range(kept[0], 500))
