"""Handover: deleted log files still being read, passed from the pipeline a reload stops to the
one it starts, so their unread lines are not lost."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

from shipper.sources.logfile import LogReader


class Handover:
    """Open descriptors of deleted log files, kept across a config reload.

    Docker deletes a rotated file as soon as `max-file` is exceeded; shipper reads on through
    the descriptor it holds. A reload stops every follower, and a closed descriptor of a
    deleted file can never be opened again: its unread lines would be lost, exactly as at a
    restart. Instead, each follower that stops leaves such files here (oldest first), and the
    follower of the same file set in the next pipeline takes them at its first look, resuming
    at their checkpoints. What nobody takes (the source was removed or renamed) is closed, and
    the checkpoint garbage collection counts what was unread in it as lost.
    """

    def __init__(self) -> None:
        # (source, directory) -> readers, oldest first
        self._left: dict[tuple[str, str], list[LogReader]] = defaultdict(list)
        self._lock = threading.Lock()  # followers end on the event loop; tests may not

    def leave(self, source: str, directory: str, reader: LogReader) -> None:
        """Keep `reader` (of a deleted file, not read to its end) for the next pipeline."""
        with self._lock:
            self._left[(source, directory)].append(reader)

    def take(self, source: str, directory: str) -> list[LogReader]:
        """The readers left for this file set, oldest first; the caller owns them now."""
        with self._lock:
            return self._left.pop((source, directory), [])

    def discard(self, source: str) -> None:
        """Close what was left for `source` and not taken (its directory is gone now)."""
        self._close(lambda name: name == source)

    def discard_others(self, sources: set[str]) -> None:
        """Close what was left for sources not in `sources` (removed or renamed by the reload)."""
        self._close(lambda name: name not in sources)

    def _close(self, chosen: Callable[[str], bool]) -> None:
        with self._lock:
            keys = [key for key in self._left if chosen(key[0])]
            readers = [reader for key in keys for reader in self._left.pop(key)]
        for reader in readers:
            reader.close()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(readers) for readers in self._left.values())
