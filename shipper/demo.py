"""`shipper demo`: a built-in writer fills a Docker-style root while shipper ships it to a file."""

from __future__ import annotations

import asyncio
import random
import shutil
import threading
import time
from collections import defaultdict
from pathlib import Path

import orjson

from shipper.app import App
from shipper.config import parse_config
from shipper.docker_writer import SEQ_PATTERN, DockerRootWriter, realistic_lines
from shipper.telemetry.logging import setup_logging

MARKER = ".shipper-demo"
DEMO_CONFIG = """\
state_dir: {state}
sources:
  docker:
    type: docker_json
    root: {root}
    poll_interval: 100ms
    rescan_interval: 2s
outputs:
  archive:
    type: file
    path: {output}
logging:
  level: info
  format: text
"""


def run_demo(directory: Path, *, containers: int, lines: int, rate: int) -> int:
    """Write `lines` lines in each of `containers` containers at `rate` lines/s, ship them all,
    check the output holds each line exactly once and in order per stream; exit 0 if so."""
    directory = directory.resolve()
    if directory.exists() and any(directory.iterdir()) and not (directory / MARKER).exists():
        print(f"shipper demo: {directory} is not empty and not a demo folder; choose another --dir")
        return 2
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / MARKER).touch()
    root, state, output = (
        directory / "containers",
        directory / "state",
        directory / "shipped.ndjson",
    )
    root.mkdir()
    config = parse_config(
        DEMO_CONFIG.format(root=root, state=state, output=output), origin="<demo>"
    )
    setup_logging("warning", "text")
    total = containers * lines
    print(f"shipper demo: {containers} containers x {lines} lines at {rate} lines/s")
    print(f"  Docker-style root : {root}")
    print(f"  shipping to       : {output}")
    print(f"  checkpoints       : {config.checkpoint_path}")

    writer = _DemoWriter(root, containers=containers, lines=lines, rate=rate)
    app = App(config)
    started = time.monotonic()

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(app.run(stop))
        await app.started.wait()
        writer.start()
        while True:
            await asyncio.sleep(1)  # progress display cadence, not synchronisation
            delivered = int(app.telemetry.value("shipper_records_total"))
            print(
                f"  {time.monotonic() - started:5.1f}s  written {writer.written:>7}"
                f"  shipped {delivered:>7}  rotations {writer.rotations():>3}"
                f"  buffered {app.budget.used:>8} B"
            )
            if writer.done.is_set() and delivered >= total:
                break
            if running.done():
                break
        stop.set()
        await running

    asyncio.run(main())
    writer.join()
    elapsed = time.monotonic() - started
    problems = _verify(output, writer.expected)
    print(f"shipper demo: shipped {total} lines from {containers} containers in {elapsed:.1f}s")
    if problems:
        print("shipper demo: FAILED")
        for problem in problems[:20]:
            print(f"  {problem}")
        return 1
    print("shipper demo: OK: every line is in the output exactly once, in order per stream")
    return 0


class _DemoWriter(threading.Thread):
    """Writes realistic lines (with stack traces) to several containers, rotating like dockerd."""

    def __init__(self, root: Path, *, containers: int, lines: int, rate: int) -> None:
        super().__init__(name="demo-writer", daemon=True)
        self._docker = DockerRootWriter(root, clock=time.time_ns)
        self._logs = [
            self._docker.add_container(
                f"demo-{n + 1}", image="demo/app:1.0", max_size=256 * 1024, max_file=3
            )
            for n in range(containers)
        ]
        self._lines = lines
        self._rate = rate
        self.written = 0
        self.expected: dict[str, dict[str, list[int]]] = {
            log.id: defaultdict(list) for log in self._logs
        }
        self.done = threading.Event()

    def rotations(self) -> int:
        return sum(len(log.log_files()) - 1 for log in self._logs)

    def run(self) -> None:
        rng = random.Random(42)
        streams = [realistic_lines(rng, self._lines, container=log.name) for log in self._logs]
        started = time.monotonic()
        for _ in range(self._lines):
            for log, lines in zip(self._logs, streams, strict=True):
                stream, message = next(lines)
                log.write(message, stream=stream)
                match = SEQ_PATTERN.search(message)
                if match:
                    self.expected[log.id][stream].append(int(match.group(1)))
                self.written += 1
            ahead = self.written / self._rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)  # pacing the writer, like a real application
        self.done.set()


def _verify(output: Path, expected: dict[str, dict[str, list[int]]]) -> list[str]:
    shipped: dict[str, dict[str, list[int]]] = {cid: defaultdict(list) for cid in expected}
    with output.open("rb") as lines:
        for line in lines:
            document = orjson.loads(line)
            match = SEQ_PATTERN.search(document["message"])
            if match:
                shipped[document["container"]["id"]][document["stream"]].append(int(match.group(1)))
    problems = []
    for cid, streams in expected.items():
        for stream, seqs in streams.items():
            got = shipped[cid][stream]
            if got != seqs:
                problems.append(
                    f"container {cid[:12]} {stream}: expected {len(seqs)} lines in order, "
                    f"got {len(got)} ({len(set(seqs) - set(got))} missing)"
                )
    return problems
