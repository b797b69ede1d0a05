"""Bridge from watchdog's thread to the event loop: file create/move/delete hints, nothing else."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

log = logging.getLogger(__name__)

# Only structural events. watchdog's default mask would also deliver a modify event per write,
# i.e. one Python call per log line; tailers find new bytes by reading at EOF instead.
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]


class _Forward(FileSystemEventHandler):
    """Collects changed paths in watchdog's thread and hands them to the loop in batches.

    A rotation renames every file of a container, and a container rotating flat out makes
    thousands of events a second: one loop callback per batch, not per event, keeps the
    event loop free for reading.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, notify: Callable[[set[str]], None]) -> None:
        self._loop = loop
        self._notify = notify
        self._lock = threading.Lock()
        self._paths: set[str] = set()

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p}
        with self._lock:
            first = not self._paths
            self._paths |= paths
        if first:
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            paths, self._paths = self._paths, set()
        self._notify(paths)


class Watch:
    """Watches a directory tree and calls `notify(paths)` on the event loop with what changed.

    Hints only: a lost or late event costs latency, never data, because the periodic rescan is
    the source of truth. `start` returns False (and logs why) when watching is impossible, e.g.
    the root is missing or inotify watches are exhausted; the caller then rescans more often.
    """

    def __init__(self, root: Path, notify: Callable[[set[str]], None]) -> None:
        self._root = root
        self._notify = notify
        self._observer: BaseObserver | None = None
        self._failures_logged = False

    @property
    def alive(self) -> bool:
        """Started and still working: an emitter thread dies when, for example, adding the watch
        of a new directory hits the inotify limit, and then no event comes any more."""
        observer = self._observer
        return (
            observer is not None
            and observer.is_alive()
            and all(emitter.is_alive() for emitter in observer.emitters)
        )

    def start(self) -> bool:
        observer = Observer()
        try:
            observer.schedule(
                _Forward(asyncio.get_running_loop(), self._notify),
                str(self._root),
                recursive=True,
                event_filter=_EVENTS,
            )
            observer.start()
        except OSError as exc:
            if not self._failures_logged:  # once, not at every retry
                log.warning(
                    "Cannot watch the log root; rescanning every second instead.",
                    extra={"root": str(self._root), "error": exc.strerror or str(exc)},
                )
                self._failures_logged = True
            return False
        self._observer = observer
        self._failures_logged = False
        return True

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
