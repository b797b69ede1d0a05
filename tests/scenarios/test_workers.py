"""`pipeline.workers`: a real `shipper run` whose process forks the other workers, each
following a share of the containers. Every line once and in order per container, whatever the
number of workers from one run to the next; metrics summed over the workers; a worker that dies
stops shipper in order, and the next start reads on; SIGHUP reaches every worker."""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections import defaultdict
from pathlib import Path

import orjson

from shipper.docker_writer import SEQ_PATTERN, ContainerLog, DockerRootWriter, realistic_lines
from tests.helpers import start_shipper, wait_until_sync
from tests.scenarios.test_metrics import monitoring_url, scrape

CONTAINERS = 6
OUTPUT = "archive"


def write_config(tmp: Path, workers: int, *, max_records: int = 500) -> Path:
    config = tmp / "shipper.yaml"
    config.write_text(
        f"""
state_dir: {tmp / "state"}
monitoring:
  port: 0
pipeline:
  workers: {workers}
sources:
  docker:
    type: docker_json
    root: {tmp / "containers"}
    poll_interval: 20ms
outputs:
  {OUTPUT}:
    type: file
    path: {tmp / "out.ndjson"}
    batch:
      max_records: {max_records}
      linger: 20ms
checkpoints:
  flush_interval: 100ms
"""
    )
    return config


class Containers:
    """Containers that log when told to, remembering what each wrote, in order."""

    def __init__(self, root: Path) -> None:
        self.docker = DockerRootWriter(root)
        self.logs: list[ContainerLog] = [
            self.docker.add_container(f"app-{n}") for n in range(CONTAINERS)
        ]
        self.lines = [
            realistic_lines(random.Random(n), 10**7, container=log.name)
            for n, log in enumerate(self.logs)
        ]
        self.written: dict[str, list[int]] = defaultdict(list)

    def write(self, per_container: int) -> None:
        for log, lines in zip(self.logs, self.lines, strict=True):
            for _ in range(per_container):
                stream, message = next(lines)
                log.write(message, stream=stream)
                self.written[log.id].append(int(SEQ_PATTERN.search(message).group(1)))

    @property
    def total(self) -> int:
        return sum(map(len, self.written.values()))


def shipped(tmp: Path) -> dict[str, list[int]]:
    """Each container's seqs in the order they are in the output (complete lines only)."""
    path = tmp / "out.ndjson"
    data = path.read_bytes() if path.exists() else b""
    by_container: dict[str, list[int]] = defaultdict(list)
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        document = orjson.loads(line)
        seq = int(SEQ_PATTERN.search(document["message"]).group(1))
        by_container[document["container"]["id"]].append(seq)
    return by_container


def count(tmp: Path) -> int:
    return sum(map(len, shipped(tmp).values()))


def logged(stderr: Path, message: str) -> list[dict[str, object]]:
    events = []
    for line in stderr.read_bytes().splitlines():
        if line.startswith(b"{"):
            event = orjson.loads(line)
            if event.get("message") == message:
                events.append(event)
    return events


def worker_pids(stderr: Path) -> list[int]:
    """Worker 0 (the process started) first, then the ones it forked."""
    wait_until_sync(lambda: bool(logged(stderr, "Workers started.")), what="the workers")
    [event] = logged(stderr, "Workers started.")
    pids = event["pids"]
    assert isinstance(pids, list)
    return [int(pid) for pid in pids]


def stop(process: subprocess.Popen[bytes], stderr: Path) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, stderr.read_text()


def errors(stderr: Path) -> list[bytes]:
    return [
        line
        for line in stderr.read_bytes().splitlines()
        if line.startswith(b"{") and orjson.loads(line)["level"] == "error"
    ]


def test_every_line_once_and_in_order_whatever_the_number_of_workers(tmp_path: Path) -> None:
    containers = Containers(tmp_path / "containers")
    for run, workers in enumerate((2, 3, 1, 2)):
        containers.write(400)
        process, stderr = start_shipper(tmp_path, write_config(tmp_path, workers), f"run{run}")
        try:
            if workers > 1:
                pids = worker_pids(stderr)
                assert len(pids) == workers
                # One process per share: the one started, and its children.
                children = (
                    Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
                )
                assert pids[0] == process.pid
                assert sorted(map(int, children)) == sorted(pids[1:])
            wait_until_sync(
                lambda: count(tmp_path) >= containers.total,
                timeout=60,
                what=f"run {run} ({workers} workers) shipping {containers.total} lines",
            )
        finally:
            stop(process, stderr)
        assert errors(stderr) == []
        # Every line exactly once and in the order it was written: a container's files are
        # read by one worker, and a new number of workers reads on from the checkpoints.
        assert shipped(tmp_path) == containers.written, f"run {run} with {workers} workers"


def test_metrics_add_up_over_the_workers(tmp_path: Path) -> None:
    containers = Containers(tmp_path / "containers")
    containers.write(500)
    # Only the worker that follows a container reads its metadata: a corrupt config.v2.json
    # is one error, not one per worker.
    containers.logs[0].config_path.write_text("{not json")
    process, stderr = start_shipper(tmp_path, write_config(tmp_path, 2), "metrics")
    try:
        url = monitoring_url(process, stderr)
        wait_until_sync(lambda: count(tmp_path) >= containers.total, what="every line")

        def settled() -> bool:
            metrics = scrape(url)
            delivered = metrics.get("shipper_records_total", output=OUTPUT, outcome="delivered")
            # One lag series per container, from whichever worker follows it, all caught up.
            lags = [
                metrics.get("shipper_lag_bytes", source="docker", container=log.id)
                for log in containers.logs
            ]
            return (
                delivered == containers.total
                and lags == [0] * CONTAINERS
                and metrics.get("shipper_ready") == 1
            )

        wait_until_sync(settled, what="the workers' reports adding up to every line")
        metrics = scrape(url)
        assert metrics.get("shipper_workers") == 2
        assert metrics.total("shipper_lines_read_total") == containers.total
        assert len(metrics.labels_of("shipper_lag_bytes")) == CONTAINERS
        assert metrics.total("shipper_metadata_errors_total") == 1
        unavailable = "Container metadata unavailable; its records ship with the container id only."
        assert len(logged(stderr, unavailable)) == 1
    finally:
        stop(process, stderr)


def test_a_worker_that_dies_stops_shipper_in_order_and_the_next_start_reads_on(
    tmp_path: Path,
) -> None:
    containers = Containers(tmp_path / "containers")
    containers.write(300)
    config = write_config(tmp_path, 2)
    process, stderr = start_shipper(tmp_path, config, "killed")
    try:
        wait_until_sync(lambda: count(tmp_path) >= containers.total, what="the first lines")
        os.kill(worker_pids(stderr)[1], signal.SIGKILL)
        # Like a single process that dies: exit code 1 for systemd or the orchestrator, after
        # the other worker stopped in order (its checkpoints written).
        assert process.wait(timeout=60) == 1, stderr.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    [ended] = logged(
        stderr,
        "A worker ended; stopping the others in order. Started again, "
        "every worker reads on from its checkpoints.",
    )
    assert ended["stopped_worker"] == 1 and ended["signal"] == "SIGKILL"
    assert logged(stderr, "shipper stopped.")  # worker 0 stopped in order
    containers.write(300)
    process, stderr = start_shipper(tmp_path, config, "again")
    try:
        # What the killed worker had not checkpointed is read again (at least once); nothing
        # is lost, and every container's lines stay in order.
        wait_until_sync(
            lambda: all(
                set(shipped(tmp_path).get(cid, [])) >= set(seqs)
                for cid, seqs in containers.written.items()
            ),
            timeout=60,
            what="every line after the restart",
        )
    finally:
        stop(process, stderr)
    for cid, seqs in shipped(tmp_path).items():
        assert sorted(set(seqs)) == containers.written[cid]


def test_sighup_reloads_every_worker(tmp_path: Path) -> None:
    containers = Containers(tmp_path / "containers")
    containers.write(100)
    config = write_config(tmp_path, 2)
    process, stderr = start_shipper(tmp_path, config, "reload")
    try:
        wait_until_sync(lambda: len(logged(stderr, "shipper started.")) == 2, what="2 workers")
        wait_until_sync(lambda: count(tmp_path) >= containers.total, what="the first lines")
        write_config(tmp_path, 2, max_records=100)
        process.send_signal(signal.SIGHUP)
        wait_until_sync(
            lambda: len(logged(stderr, "Config reloaded.")) == 2, what="both workers reloading"
        )
        # The forked worker's lines say which it is; worker 0's say nothing.
        reloaded = logged(stderr, "Config reloaded.")
        assert sorted(event.get("worker", 0) for event in reloaded) == [0, 1]
        containers.write(100)
        wait_until_sync(lambda: count(tmp_path) >= containers.total, what="lines after reload")
        assert shipped(tmp_path) == containers.written
    finally:
        stop(process, stderr)
    assert errors(stderr) == []


def test_workers_that_cannot_start_stop_the_supervisor(tmp_path: Path) -> None:
    # The output file is a directory: no worker can open its output, as one process could not.
    (tmp_path / "out.ndjson").mkdir()
    process, stderr = start_shipper(tmp_path, write_config(tmp_path, 2), "fatal")
    assert process.wait(timeout=60) == 1, stderr.read_text()
    assert logged(stderr, "shipper cannot go on.")
