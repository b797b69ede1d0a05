"""The `docker_json` source: discovers container directories under the root and follows each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict
from pathlib import Path

from shipper.checkpoints import CheckpointStore, FileCheckpoint
from shipper.config import ContainerMatch, DockerJsonSourceConfig
from shipper.pipeline.pipeline import Pipeline
from shipper.processing.metadata import (
    MetadataCache,
    MetadataOptions,
    Selection,
    default_host_name,
    log_driver,
    own_container_id,
)
from shipper.sources.tailer import LOG_SUFFIX, ContainerFollower, TailSettings
from shipper.sources.watch import Watch
from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)

# Without a working watch, a rescan this often keeps the promise to find new containers within
# about a second; with one, the loop still wakes this often to notice a watch that died.
UNWATCHED_RESCAN = 1.0


class DockerJsonSource:
    """Discovery plus one ContainerFollower per container directory.

    The periodic rescan is the source of truth; watchdog events only make it (and the follower
    of a rotating container) look sooner. A missing root or a watch that fails falls back to
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
            read_chunk_size=config.read_chunk_size,
            poll_interval=config.poll_interval,
            partial_flush_timeout=config.partial_flush_timeout,
            max_message_bytes=config.max_message_bytes,
            max_pinned_bytes=config.max_pinned_bytes,
        )
        self._metadata = MetadataCache(
            MetadataOptions(
                host_name=config.host_name or default_host_name(),
                dedot_labels=config.dedot_labels,
                env_allowlist=tuple(config.env_allowlist),
            ),
            on_error=self._metadata_error,
        )
        self._own_id = own_container_id() if config.exclude_self else None
        self._selection = Selection(
            include=_patterns(config.include) if config.include is not None else None,
            exclude=_patterns(config.exclude),
            opt_out_label=config.opt_out_label,
        )
        self._excluded: set[str] = set()  # containers left out, said once
        self._not_json_file: set[str] = set()  # containers already warned about
        self._followers: dict[str, ContainerFollower] = {}  # by directory
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rescan = asyncio.Event()
        self._root_missing_logged = False
        self._unlistable: set[str] = set()  # container directories whose error was logged

    async def run(self) -> None:
        """Discover and follow until cancelled."""
        watch = Watch(self.root, self._hint)
        try:
            watching = self._config.watch and self.root.is_dir() and watch.start()
            self.scan(initial=True)
            last_full_scan = time.monotonic()
            while True:
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
                self._reconcile_all(collect_garbage=due)
        finally:
            watch.stop()
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def scan(self, *, initial: bool, collect_garbage: bool = False) -> None:
        """Start a follower for every container directory that has log files and none yet."""
        self._telemetry.inc("shipper_discovery_scans_total", source=self.name)
        try:
            directories = [entry for entry in os.scandir(self.root) if entry.is_dir()]
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
        by_directory: dict[str, list[FileCheckpoint]] | None = None
        for entry in directories:
            if entry.path in self._tasks or entry.name == self._own_id:
                continue
            base = entry.name + LOG_SUFFIX
            try:
                names = os.listdir(entry.path)
            except FileNotFoundError:
                continue  # removed since the scan
            except OSError as exc:
                if entry.path not in self._unlistable:  # once, not at every scan
                    self._unlistable.add(entry.path)
                    log.error(
                        "Cannot list container directory; will try again.",
                        extra={"path": entry.path, "error": exc.strerror or str(exc)},
                    )
                continue
            self._unlistable.discard(entry.path)
            if not any(name.startswith(base) for name in names):
                self._check_log_driver(entry.path, entry.name)
            elif self._selected(entry.path, entry.name):
                if by_directory is None:  # once per scan, not per container
                    by_directory = self._checkpoints_by_directory()
                checkpoints = by_directory.get(entry.path, [])
                self._start(entry.path, entry.name, checkpoints, start_at_end=start_at_end)
        if start_at_end:
            # `start_at: end` applies only to the very first start: make it durable now, so a
            # crash before the first interval flush does not turn the next start into a first.
            self._store.flush()
        if collect_garbage:
            self._collect_garbage()

    def _start(
        self,
        directory: str,
        container_id: str,
        checkpoints: list[FileCheckpoint],
        *,
        start_at_end: bool,
    ) -> None:
        follower = ContainerFollower(
            source=self.name,
            directory=directory,
            container_id=container_id,
            settings=self._settings,
            store=self._store,
            pipeline=self._pipeline,
            telemetry=self._telemetry,
            metadata=self._metadata,
        )
        # The first look also settles what happened while shipper was down: checkpoints of
        # files gone since are dropped, and what was unread in them counted as lost.
        follower.reconcile(start_at_end=start_at_end, checkpoints=checkpoints)
        task = asyncio.create_task(follower.run(), name=f"follow:{container_id[:12]}")
        self._followers[directory] = follower
        self._tasks[directory] = task
        task.add_done_callback(lambda done: self._ended(directory, done))

    def _selected(self, directory: str, container_id: str) -> bool:
        if self._selection.ships(self._metadata.config(directory, container_id)):
            self._excluded.discard(container_id)
            return True
        if container_id not in self._excluded:
            self._excluded.add(container_id)
            log.info(
                "Container left out by the configuration.", extra={"container_id": container_id}
            )
        return False

    def _metadata_error(self, container_id: str, reason: str) -> None:
        self._telemetry.inc("shipper_metadata_errors_total", source=self.name)
        log.warning(
            "Container metadata unavailable; its records ship with the container id only.",
            extra={"container_id": container_id, "reason": reason},
        )

    def _check_log_driver(self, directory: str, container_id: str) -> None:
        """A container with no json-file log: say once if its driver keeps logs off disk."""
        if container_id in self._not_json_file:
            return
        driver = log_driver(directory)
        if driver is not None and driver != "json-file":
            self._not_json_file.add(container_id)
            log.warning(
                "Container logs with another driver than json-file: nothing on disk to ship.",
                extra={"container_id": container_id, "log_driver": driver},
            )

    def _ended(self, directory: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(directory, None)
        self._followers.pop(directory, None)
        self._metadata.forget(directory)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "Follower failed; the next scan starts it again.",
                extra={"path": directory, "error": repr(task.exception())},
            )
            self._rescan.set()

    def _checkpoints_by_directory(self) -> dict[str, list[FileCheckpoint]]:
        by_directory: dict[str, list[FileCheckpoint]] = defaultdict(list)
        for entry in self._store.entries():
            if entry.source == self.name:
                by_directory[os.path.dirname(entry.path)].append(entry)
        return by_directory

    def _reconcile_all(self, *, collect_garbage: bool) -> None:
        """Let every follower pin new generations, even one stalled by backpressure; now and
        then, drop the checkpoints of files that are gone."""
        by_directory = self._checkpoints_by_directory() if collect_garbage else {}
        pinned = open_files = 0
        for directory, follower in self._followers.items():
            follower.reconcile(
                checkpoints=by_directory.get(directory, []) if collect_garbage else None
            )
            pinned += follower.pinned_bytes
            open_files += follower.open_files
        self._telemetry.set("shipper_open_files", open_files, source=self.name)
        self._telemetry.set("shipper_pinned_bytes", pinned, source=self.name)

    def _hint(self, paths: set[str]) -> None:
        """Watch events (on the event loop): the followers of those directories look soon; a
        change elsewhere (a new container directory, its first log file) asks for a scan."""
        for directory in {os.path.dirname(path) for path in paths}:
            follower = self._followers.get(directory)
            if follower is not None:
                follower.hint()
            else:
                self._rescan.set()

    def _collect_garbage(self) -> None:
        """Drop checkpoints of containers whose directory is gone, counting what was unread."""
        for entry in self._store.entries():
            directory = os.path.dirname(entry.path)
            if (
                entry.source != self.name
                or directory in self._followers
                or os.path.isdir(directory)
            ):
                continue
            if entry.size > entry.offset:
                lost = entry.size - entry.offset
                self._telemetry.inc(
                    "shipper_bytes_lost_total", lost, source=self.name, reason="deleted_unread"
                )
                log.error(
                    "Log bytes lost: the container was removed before they were read.",
                    extra={"path": entry.path, "bytes": lost},
                )
            self._store.remove(entry.key)


def _patterns(match: ContainerMatch) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    return tuple(match.names), tuple(match.images), tuple(match.labels)
