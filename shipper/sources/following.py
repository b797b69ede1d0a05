"""FollowingSource: what every file-following source shares (discovery loop, watch, followers, GC).

A source type says only which files to follow (`discover`) and how to turn their chunks into
records (a Shaping per followed file); this base runs one ContainerFollower per followed file,
rescans on an interval (the truth) and on watch hints (the speed), lets every follower pin new
generations even while backpressure stalls it, and drops the checkpoints of files that are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shipper.backfill import Backlog
from shipper.checkpoints import CheckpointStore, FileCheckpoint
from shipper.config import CriSourceConfig as _CriSourceConfig
from shipper.config import DockerJsonSourceConfig, FilesSourceConfig
from shipper.errors import ShipperError
from shipper.pipeline.pipeline import Pipeline
from shipper.sources.handover import Handover
from shipper.sources.rotation import Rotation
from shipper.sources.tailer import ContainerFollower, Shaping, TailSettings
from shipper.sources.watch import Watch
from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)

# Without a working watch, a rescan this often keeps the promise to find new files within
# about a second; with one, the loop still wakes this often to notice a watch that died.
UNWATCHED_RESCAN = 1.0

TailingSourceConfig = DockerJsonSourceConfig | _CriSourceConfig | FilesSourceConfig


@dataclass(frozen=True, slots=True)
class Target:
    """One file to follow with its rotated generations, as discovery found it."""

    directory: str
    rotation: Rotation
    container_id: str  # what records name as container.id when nothing better is known

    @property
    def key(self) -> str:
        return os.path.join(self.directory, self.rotation.base)


def tail_settings(config: TailingSourceConfig) -> TailSettings:
    settings = TailSettings(
        read_chunk_size=config.read_chunk_size,
        poll_interval=config.poll_interval,
        partial_flush_timeout=config.partial_flush_timeout,
        max_message_bytes=config.max_message_bytes,
        max_pinned_bytes=config.max_pinned_bytes,
    )
    if isinstance(config, FilesSourceConfig):
        # A plain file's line is not split by a runtime: max_message_bytes is where the
        # follower cuts it (the rest ships as the next record), not waiting for its newline.
        settings = dataclasses.replace(settings, max_line_bytes=config.max_message_bytes)
    if isinstance(config, FilesSourceConfig | _CriSourceConfig):
        settings = dataclasses.replace(settings, rotate_wait=config.rotate_wait)
    return settings


class FollowingSource:
    """Discovery plus one ContainerFollower per followed file; subclasses say what to follow."""

    def __init__(
        self,
        name: str,
        config: TailingSourceConfig,
        root: Path,
        *,
        store: CheckpointStore,
        pipeline: Pipeline,
        telemetry: Telemetry,
        backfill: Backlog | None = None,
    ) -> None:
        self.name = name
        self.root = root
        self._tailing = config
        self._store = store
        self._pipeline = pipeline
        self._telemetry = telemetry
        self._settings = tail_settings(config)
        self._followers: dict[str, ContainerFollower] = {}  # by Target.key
        self._by_directory: dict[str, set[str]] = defaultdict(set)  # directory -> keys
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rescan = asyncio.Event()
        self._lag_series: set[str] = set()  # container labels of shipper_lag_bytes set now
        self._watching = False  # the watch of the root works: followers' idle looks skip listing
        # A backfill (`run --once`): discover once, read each file to its end, return.
        self._backfill = backfill
        # Set by the App when a reload may hand deleted files from one pipeline to the next.
        self.handover: Handover | None = None

    # -- what subclasses provide ---------------------------------------------------------------

    def discover(self) -> Iterable[Target]:
        """The files to follow now (those already followed may be included)."""
        raise NotImplementedError

    def shaping(self, target: Target) -> Shaping:
        """How the records of a newly followed file are made."""
        raise NotImplementedError

    def forgotten(self, target: Target) -> None:
        """A follower ended (its directory is gone): drop what was cached for it."""

    async def side_tasks(self) -> None:
        """Anything else the source runs beside discovery (e.g. Docker's event stream)."""

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Discover and follow until cancelled (a backfill: until every file is read)."""
        if self._backfill is not None:
            await self._run_once(self._backfill)
            return
        watch = Watch(self.root, self._hint)
        side = asyncio.create_task(self.side_tasks(), name=f"{self.name}:side")
        side.add_done_callback(self._side_ended)
        try:
            watching = self._tailing.watch and self.root.is_dir() and watch.start()
            self._set_watching(watching)
            self.scan(initial=True)
            if self.handover is not None:
                # What no follower took was in a directory that is gone now: closed, and its
                # checkpoint's garbage collection counts what was unread.
                self.handover.discard(self.name)
            last_full_scan = time.monotonic()
            while True:
                self._rescan.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(UNWATCHED_RESCAN):  # not wait_for: see _pause
                        await self._rescan.wait()
                if watching and not watch.alive:
                    log.warning(
                        "Watching the log root stopped (inotify limit?); rescanning every second.",
                        extra={"root": str(self.root)},
                    )
                    watch.stop()
                    watching = False
                started = False
                if self._tailing.watch and not watching and self.root.is_dir():
                    # What appeared before the watch began sends no event: scan once more.
                    watching = started = watch.start()
                self._set_watching(watching)
                due = time.monotonic() - last_full_scan >= self._tailing.rescan_interval
                if due:
                    last_full_scan = time.monotonic()
                if due or started or not watching or self._rescan.is_set():
                    self.scan(initial=False, collect_garbage=due)
                self._reconcile_all(collect_garbage=due, listing=due or started or not watching)
        finally:
            watch.stop()
            side.cancel()
            tasks = [side, *self._tasks.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # A source that ends (stopped, or removed by a reload) leaves no gauges behind.
            for gauge in ("shipper_lag_bytes", "shipper_open_files", "shipper_pinned_bytes"):
                self._telemetry.remove(gauge, source=self.name)
            self._lag_series.clear()

    async def _run_once(self, backlog: Backlog) -> None:
        """A backfill: one discovery (no watch, no rescans for new files, no side tasks such
        as Docker's event stream), then wait until every follower read its files to the end
        they had at the start."""
        try:
            self.scan(initial=True)
        finally:
            backlog.sources_pending -= 1  # this source's share of the total is known
        tasks = list(self._tasks.values())
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
        failed = sum(1 for result in results if isinstance(result, Exception))
        if failed:
            raise ShipperError(
                f"source {self.name}: reading {failed} log file(s) failed (see the errors above)"
            )

    def _side_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "A helper task of the source stopped; logs still ship from the files.",
                extra={"source": self.name, "error": repr(task.exception())},
            )

    def request_scan(self) -> None:
        self._rescan.set()

    def follower_of(self, key: str) -> ContainerFollower | None:
        return self._followers.get(key)

    def ours(self, directory: str) -> bool:
        """Whether this process follows the files of `directory` (another worker's otherwise,
        `pipeline.workers`): asked before reading anything about it, a listing or metadata."""
        return self._store.owns(directory)

    def followers_in(self, directory: str) -> list[ContainerFollower]:
        return [self._followers[key] for key in self._by_directory.get(directory, ())]

    def stalled_reads(self) -> list[tuple[str, float]]:
        """(path, since when) of every followed file whose reading is stalled now."""
        return [
            (follower.current_path, follower.stalled_since)
            for follower in self._followers.values()
            if follower.stalled_since is not None
        ]

    def scan(self, *, initial: bool, collect_garbage: bool = False) -> None:
        """Start a follower for every discovered file that has none yet."""
        self._telemetry.inc("shipper_discovery_scans_total", source=self.name)
        # A backfill ships the history whatever `start_at` says: that is what it is run for.
        start_at_end = (
            initial
            and self._store.first_start
            and self._tailing.start_at == "end"
            and self._backfill is None
        )
        checkpoints: dict[str, list[FileCheckpoint]] | None = None
        owns = self._store.owns
        for target in self.discover():
            if target.key in self._tasks or not owns(target.directory):
                continue  # followed already, or another worker's (pipeline.workers)
            if checkpoints is None:  # once per scan, not per file
                checkpoints = self._checkpoints_by_directory()
            mine = [
                entry
                for entry in checkpoints.get(target.directory, [])
                if _owns(target.rotation, entry.path)
            ]
            self._start(target, mine, start_at_end=start_at_end)
        if start_at_end:
            # `start_at: end` applies only to the very first start: make it durable now, so a
            # crash before the first interval flush does not turn the next start into a first.
            self._store.flush()
        if collect_garbage:
            self._collect_garbage()

    def _start(
        self, target: Target, checkpoints: list[FileCheckpoint], *, start_at_end: bool
    ) -> None:
        follower = ContainerFollower(
            source=self.name,
            directory=target.directory,
            container_id=target.container_id,
            settings=self._settings,
            store=self._store,
            pipeline=self._pipeline,
            telemetry=self._telemetry,
            rotation=target.rotation,
            shaping=self.shaping(target),
            backfill=self._backfill,
            handover=self.handover,
        )
        # The first look also settles what happened while shipper was down: checkpoints of
        # files gone since are dropped, and what was unread in them counted as lost.
        follower.reconcile(start_at_end=start_at_end, checkpoints=checkpoints)
        follower.watched = self._watching
        key = target.key
        task = asyncio.create_task(follower.run(), name=f"follow:{key[-40:]}")
        self._followers[key] = follower
        self._by_directory[target.directory].add(key)
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._ended(target, done))

    def _ended(self, target: Target, task: asyncio.Task[None]) -> None:
        key = target.key
        self._tasks.pop(key, None)
        self._followers.pop(key, None)
        keys = self._by_directory.get(target.directory)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_directory[target.directory]
        self.forgotten(target)
        container = _container_label(target.container_id, key)
        if container in self._lag_series and not any(
            _container_label(f.container_id, f.current_path) == container
            for f in self._followers.values()
        ):
            # The container is gone: its series goes now, not at the next look.
            self._lag_series.discard(container)
            self._telemetry.remove("shipper_lag_bytes", source=self.name, container=container)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "Follower failed; the next scan starts it again."
                if self._backfill is None
                else "Follower failed; the backfill cannot finish this file.",
                extra={"path": key, "error": repr(task.exception())},
            )
            self._rescan.set()

    def _checkpoints_by_directory(self) -> dict[str, list[FileCheckpoint]]:
        by_directory: dict[str, list[FileCheckpoint]] = defaultdict(list)
        for entry in self._store.entries():
            if entry.source == self.name:
                by_directory[os.path.dirname(entry.path)].append(entry)
        return by_directory

    def _set_watching(self, watching: bool) -> None:
        if watching != self._watching:
            self._watching = watching
            for follower in self._followers.values():
                follower.watched = watching

    def _reconcile_all(self, *, collect_garbage: bool, listing: bool = True) -> None:
        """Let every follower pin new generations, even one stalled by backpressure; now and
        then, drop the checkpoints of files that are gone. Without `listing` (the watch works
        and no rescan is due) only measure: the watch's hints list what changed."""
        by_directory = self._checkpoints_by_directory() if collect_garbage else {}
        pinned = open_files = 0
        lag: dict[str, int] = defaultdict(int)  # by container label: a pod's restarts add up
        for follower in self._followers.values():
            checkpoints = None
            if collect_garbage:
                checkpoints = [
                    entry
                    for entry in by_directory.get(follower.directory, [])
                    if _owns(follower.rotation, entry.path)
                ]
            if listing or collect_garbage:
                follower.reconcile(checkpoints=checkpoints)
            else:
                follower.refresh()
            pinned += follower.pinned_bytes
            open_files += follower.open_files
            lag[_container_label(follower.container_id, follower.current_path)] += (
                follower.lag_bytes
            )
        self._telemetry.set("shipper_open_files", open_files, source=self.name)
        self._telemetry.set("shipper_pinned_bytes", pinned, source=self.name)
        for container, behind in lag.items():
            self._telemetry.set("shipper_lag_bytes", behind, source=self.name, container=container)
        for container in self._lag_series - lag.keys():
            self._telemetry.remove("shipper_lag_bytes", source=self.name, container=container)
        self._lag_series = set(lag)

    def _hint(self, paths: set[str]) -> None:
        """Watch events (on the event loop): the followers of those directories look soon; a
        path no follower owns (a new directory, a new live file) asks for a scan."""
        unowned = False
        owns = self._store.owns
        # Another worker's files (pipeline.workers) are none of this one's business: without
        # this, every line they write would ask for a rescan here. (A path that is itself a
        # directory of ours, just created, still asks.)
        paths = {path for path in paths if owns(os.path.dirname(path)) or owns(path)}
        for directory in {os.path.dirname(path) for path in paths}:
            for follower in self.followers_in(directory):
                follower.hint()
        for path in paths:
            followers = self.followers_in(os.path.dirname(path))
            if not any(_owns(follower.rotation, path) for follower in followers):
                unowned = True
                break
        if unowned:
            self._rescan.set()

    def _collect_garbage(self) -> None:
        """Drop checkpoints of files no follower has and whose directory is gone, counting
        what was unread."""
        for entry in self._store.entries():
            directory = os.path.dirname(entry.path)
            if (
                entry.source != self.name
                or directory in self._by_directory
                or os.path.isdir(directory)
            ):
                continue
            if entry.size > entry.offset:
                lost = entry.size - entry.offset
                self._telemetry.inc(
                    "shipper_bytes_lost_total", lost, source=self.name, reason="deleted_unread"
                )
                log.error(
                    "Log bytes lost: the directory was removed before they were read.",
                    extra={"path": entry.path, "bytes": lost},
                )
            self._store.remove(entry.key)


def _container_label(container_id: str, path: str) -> str:
    """shipper_lag_bytes' `container`: the container's id, or the followed file's path where
    there is no container (the files source)."""
    return container_id or path


def _owns(rotation: Rotation, path: str) -> bool:
    """Whether a checkpointed path is one of the generations of this followed file."""
    return bool(rotation.generations([os.path.basename(path)]))
