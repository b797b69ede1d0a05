"""Stopping shipper mid-run (SIGTERM, SIGKILL) and starting it again: no loss, bounded replay."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import orjson
import pytest

from shipper.docker_writer import SEQ_PATTERN, DockerRootWriter, realistic_lines
from tests.helpers import wait_until_sync


class LiveWriter(threading.Thread):
    """Containers that keep logging, paced, until told to stop: shipper comes and goes."""

    def __init__(self, root: Path, containers: int = 3) -> None:
        super().__init__(daemon=True)
        self.docker = DockerRootWriter(root)
        self.logs = [self.docker.add_container(f"app-{n}") for n in range(containers)]
        self.expected: Counter[tuple[str, int]] = Counter()
        self.written = 0
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        generators = [
            realistic_lines(random.Random(n), 1_000_000, container=log.name)
            for n, log in enumerate(self.logs)
        ]
        while not self.halt.is_set():
            for log, lines in zip(self.logs, generators, strict=True):
                for _ in range(20):
                    stream, message = next(lines)
                    log.write(message, stream=stream)
                    with self.lock:
                        self.expected[(log.id, int(SEQ_PATTERN.search(message).group(1)))] += 1
                        self.written += 1
            self.halt.wait(0.005)  # pace: about 10k lines/s, like a busy host


def start_shipper(tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    config = tmp / "shipper.yaml"
    config.write_text(
        f"""
state_dir: {tmp / "state"}
# Any free port: shipper processes of several tests may overlap.
monitoring:
  port: 0
sources:
  docker:
    type: docker_json
    root: {tmp / "containers"}
    poll_interval: 20ms
outputs:
  archive:
    type: file
    path: {tmp / "out.ndjson"}
    batch:
      max_records: 300
      linger: 20ms
checkpoints:
  flush_interval: 100ms
"""
    )
    stderr = tmp / f"{name}.stderr"
    with stderr.open("wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "shipper", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return process, stderr


def output_lines(tmp: Path) -> list[bytes]:
    """The complete lines of the output: one may be half written by a running shipper, or
    torn by a kill (the next start cuts it)."""
    path = tmp / "out.ndjson"
    data = path.read_bytes() if path.exists() else b""
    return data[: data.rfind(b"\n") + 1].splitlines()


def checkpoints(tmp: Path) -> dict[str, int]:
    """The flushed checkpoint file's offsets; empty before the first flush (it is replaced by a
    rename, so it is never read half written)."""
    path = tmp / "state" / "checkpoints.json"
    if not path.exists():
        return {}
    document = orjson.loads(path.read_bytes())
    return {entry["path"]: entry["offset"] for entry in document["files"]}


def shipped(tmp: Path) -> list[dict]:
    return [orjson.loads(line) for line in output_lines(tmp)]


def key(document: dict) -> tuple[str, int]:
    return document["container"]["id"], int(SEQ_PATTERN.search(document["message"]).group(1))


def stop_and_restart(tmp: Path, how: signal.Signals) -> tuple[LiveWriter, dict[str, int]]:
    """Run, stop with `how` mid-run, keep writing while down, restart, ship everything."""
    writer = LiveWriter(tmp / "containers")
    writer.start()
    first, first_log = start_shipper(tmp, "first")
    try:
        # Stopped only once a checkpoint past the start was flushed: a kill within the first
        # flush interval would test nothing but a full replay.
        wait_until_sync(
            lambda: len(output_lines(tmp)) >= 3000 and any(checkpoints(tmp).values()),
            what="the first run shipping and flushing a checkpoint",
        )
        first.send_signal(how)
        code = first.wait(timeout=30)
    finally:
        first.kill()
    if how is signal.SIGTERM:
        assert code == 0, first_log.read_text()
        events = [orjson.loads(line) for line in first_log.read_bytes().splitlines()]
        assert any(event["message"] == "shipper stopped." for event in events)
    flushed = checkpoints(tmp)  # what the second run starts from
    assert flushed, "the first run flushed no checkpoint"
    down_since = writer.written
    wait_until_sync(lambda: writer.written > down_since + 2000, what="lines written while down")

    second, second_log = start_shipper(tmp, "second")
    try:
        wait_until_sync(lambda: writer.written > down_since + 4000, what="more lines")
        writer.halt.set()
        writer.join()
        expected = set(writer.expected)
        wait_until_sync(
            lambda: expected <= {key(d) for d in shipped(tmp)},
            timeout=60,
            what="every written line in the output",
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, second_log.read_text()
    finally:
        second.kill()
    return writer, flushed


@pytest.mark.timeout(180)
def test_sigterm_mid_run_then_restart_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    writer, _ = stop_and_restart(tmp_path, signal.SIGTERM)
    seen = Counter(key(document) for document in shipped(tmp_path))
    assert set(seen) == set(writer.expected)  # nothing lost
    # A clean stop finishes what is in flight and flushes: the restart repeats nothing.
    assert [k for k, n in seen.items() if n > 1] == []


@pytest.mark.timeout(180)
def test_sigkill_then_restart_loses_nothing_and_repeats_only_after_the_checkpoint(
    tmp_path: Path,
) -> None:
    writer, flushed = stop_and_restart(tmp_path, signal.SIGKILL)
    documents = shipped(tmp_path)
    seen = Counter(key(document) for document in documents)
    assert set(seen) == set(writer.expected)  # nothing lost
    duplicates = [d for d in documents if seen[key(d)] > 1]
    for document in duplicates:
        # Every repeated line lies at or after the last checkpoint flushed before the kill.
        assert document["log"]["offset"] >= flushed[document["log"]["file"]["path"]]
    assert os.path.getsize(tmp_path / "out.ndjson") > 0
