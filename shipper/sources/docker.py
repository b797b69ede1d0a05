"""The `docker_json` source: discovers `<root>/<id>/<id>-json.log` files and follows each one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from shipper.checkpoints import CheckpointStore
from shipper.config import DockerJsonSourceConfig
from shipper.model import Chunk, RecordGroup
from shipper.pipeline.pipeline import Pipeline
from shipper.sources.docker_json import decode_chunk, format_time_ns
from shipper.sources.tailer import FileFollower, TailSettings
from shipper.sources.watch import Watch
from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)

LOG_SUFFIX = "-json.log"
# With no watch, a rescan this often keeps the promise to find new containers within a second.
UNWATCHED_RESCAN = 1.0


def decode_now(chunk: Chunk) -> RecordGroup:
    """Decode a chunk read just now: entries without a usable time carry the read time."""
    return decode_chunk(chunk, read_time=format_time_ns(time.time_ns()))


class DockerJsonSource:
    """Discovery plus one FileFollower per container log path.

    The periodic rescan is the source of truth; watchdog events only make it (and the follower
    of a rotated file) look sooner. A missing root or an impossible watch falls back to
    rescanning every second, with a warning.
    """

    def __init__(
        self,
        name: str,
        config: DockerJsonSourceConfig,
        *,
        store: CheckpointStore,
        pipeline: Pipeline,
        telemetry: Telemetry,
    ) -> None:
        self.name = name
        self.root = Path(config.root)
        self._config = config
        self._store = store
        self._pipeline = pipeline
        self._telemetry = telemetry
        self._settings = TailSettings(
            read_chunk_size=config.read_chunk_size, poll_interval=config.poll_interval
        )
        self._followers: dict[str, FileFollower] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rescan = asyncio.Event()
        self._root_missing_logged = False

    async def run(self) -> None:
        """Discover and follow until cancelled."""
        watch = Watch(self.root, self._hint)
        try:
            watching = self._config.watch and self.root.is_dir() and watch.start()
            self.scan(initial=True)
            last_full_scan = time.monotonic()
            while True:
                # Wake at least every second: to notice a dead watch, and to rescan often while
                # there is none. A watch event wakes it at once.
                self._rescan.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._rescan.wait(), UNWATCHED_RESCAN)
                if watching and not watch.alive:
                    log.warning(
                        "Watching the log root stopped (inotify limit?); rescanning every second.",
                        extra={"root": str(self.root)},
                    )
                    watch.stop()
                    watching = False
                started = False
                if self._config.watch and not watching and self.root.is_dir():
                    # What appeared before the watch began sends no event: scan once more.
                    watching = started = watch.start()
                due = time.monotonic() - last_full_scan >= self._config.rescan_interval
                if due:
                    last_full_scan = time.monotonic()
                if due or started or not watching or self._rescan.is_set():
                    self.scan(initial=False, collect_garbage=due)
        finally:
            watch.stop()
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def scan(self, *, initial: bool, collect_garbage: bool = False) -> None:
        """Start a follower for every log path that has none."""
        self._telemetry.inc("shipper_discovery_scans_total", source=self.name)
        try:
            container_dirs = [entry for entry in os.scandir(self.root) if entry.is_dir()]
        except OSError as exc:
            if not self._root_missing_logged:
                log.warning(
                    "Log root is not readable; will look again.",
                    extra={"root": str(self.root), "error": exc.strerror or str(exc)},
                )
                self._root_missing_logged = True
            return
        self._root_missing_logged = False
        start_at_end = initial and self._store.first_start and self._config.start_at == "end"
        for entry in container_dirs:
            path = os.path.join(entry.path, entry.name + LOG_SUFFIX)
            if path in self._tasks or not os.path.isfile(path):
                continue
            self._start(path, entry.name, start_at_end=start_at_end)
        if start_at_end:
            # `start_at: end` applies only to the very first start: make it durable now, so a
            # crash before the first interval flush does not turn the next start into a first.
            self._store.flush()
        if collect_garbage:
            self._collect_garbage(container_dirs)

    def _start(self, path: str, container_id: str, *, start_at_end: bool) -> None:
        follower = FileFollower(
            source=self.name,
            path=path,
            container_id=container_id,
            settings=self._settings,
            store=self._store,
            pipeline=self._pipeline,
            decode=decode_now,
            telemetry=self._telemetry,
        )
        first = follower.open(start_at_end=start_at_end)
        if first is None:
            return
        task = asyncio.create_task(follower.run(first), name=f"follow:{path}")
        self._followers[path] = follower
        self._tasks[path] = task
        self._update_open_files()
        task.add_done_callback(lambda done: self._ended(path, done))

    def _ended(self, path: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(path, None)
        self._followers.pop(path, None)
        self._update_open_files()
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "Follower failed; the next scan starts it again.",
                extra={"path": path, "error": repr(task.exception())},
            )
        self._rescan.set()  # a new generation may already be waiting at this path

    def _update_open_files(self) -> None:
        self._telemetry.set("shipper_open_files", len(self._tasks), source=self.name)

    def _hint(self, path: str) -> None:
        """A watch event (on the event loop): wake the follower of that path and rescan."""
        if LOG_SUFFIX not in path and str(self.root) not in (path, os.path.dirname(path)):
            return
        base = path[: path.index(LOG_SUFFIX) + len(LOG_SUFFIX)] if LOG_SUFFIX in path else path
        follower = self._followers.get(base)
        if follower is not None:
            follower.wake()
        self._rescan.set()

    def _collect_garbage(self, container_dirs: list[os.DirEntry[str]]) -> None:
        """Drop checkpoints of this source's files that exist nowhere any more."""
        present: set[tuple[int, int]] = set()
        for entry in container_dirs:
            with contextlib.suppress(OSError):
                for item in os.scandir(entry.path):
                    if LOG_SUFFIX in item.name:
                        stat = item.stat()
                        present.add((stat.st_dev, stat.st_ino))
        for checkpoint in self._store.entries():
            if checkpoint.source != self.name or checkpoint.path in self._tasks:
                continue
            if (checkpoint.device, checkpoint.inode) not in present:
                self._store.remove(checkpoint.key)
