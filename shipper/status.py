"""`shipper status`: how far each log file is shipped, read from the checkpoint file.

The checkpoint file is replaced atomically (written aside, then renamed), so it can be read
while shipper runs. For every file it names: the source, the container (Docker: its name from
`<dir>/config.v2.json`; Kubernetes: namespace/pod/container from the path; files: the file's
name), the delivered offset, the size now on disk, the lag (size - offset) and how long ago
the offset last moved. A file that is no longer at its path (rotated) is looked for among its
siblings, by inode and then by content (its checkpoint's fingerprint), so a rotated or
compressed generation still shows its size and lag.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from shipper.backfill import human_bytes
from shipper.checkpoints import CheckpointStore, FileCheckpoint
from shipper.config import (
    Config,
    CriSourceConfig,
    DockerJsonSourceConfig,
    FilesSourceConfig,
    SourceConfig,
    load_config,
)
from shipper.errors import CheckpointCorruptError, CheckpointError, ConfigError
from shipper.processing.metadata import MetadataCache, MetadataOptions
from shipper.sources.cri import parse_pod_log_path
from shipper.sources.identity import prefix_fingerprints
from shipper.sources.logfile import open_log
from shipper.sources.rotation import logrotate_live_name

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

NO_CHECKPOINTS = "no checkpoints yet (nothing shipped)"
# A torn read cannot happen with an atomic rename, but a file replaced between open and read on
# an odd filesystem (NFS) could look so: one more read a moment later settles it.
RETRY_DELAY = 0.1
# Siblings whose content is compared with a checkpoint's fingerprint, at most: each costs a
# read of up to 1 KiB (decompressed for a .gz), and a directory may hold many files.
MAX_CONTENT_LOOKUPS = 64


@dataclass(frozen=True, slots=True)
class FileStatus:
    """One checkpointed file as it is now."""

    source: str
    type: str  # the source's type, "" when the source is no longer configured
    container: str
    container_id: str | None
    path: str  # where the checkpoint last saw the file
    current_path: str | None  # where it is now, None when it is not found
    state: str  # current | rotated | truncated | gone
    offset: int  # delivered: every byte before it has a final outcome
    size: int | None  # bytes of content now (decompressed for a .gz); None when gone
    recorded_size: int  # the size the checkpoint recorded when it was last written
    updated_at: float  # unix seconds of the offset's last move

    @property
    def lag(self) -> int:
        """Bytes not yet delivered: from the size now, or the size last recorded if gone."""
        size = self.size if self.size is not None else self.recorded_size
        return max(0, size - self.offset)

    def age(self, now: float) -> float:
        return max(0.0, now - self.updated_at)

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "source": self.source,
            "type": self.type or None,
            "container": self.container,
            "container_id": self.container_id,
            "path": self.path,
            "current_path": self.current_path,
            "state": self.state,
            "offset": self.offset,
            "size": self.size,
            "recorded_size": self.recorded_size,
            "lag_bytes": self.lag,
            "updated_at": datetime.fromtimestamp(self.updated_at, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "age_seconds": round(self.age(now), 3),
        }


def show_status(path: Path | None, *, as_json: bool) -> int:
    """Print the status of every checkpointed file; the exit code (0, 1 unreadable or corrupt
    checkpoint file, 2 invalid config)."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        _say(sys.stderr, f"shipper status: invalid config: {exc}")
        return EXIT_CONFIG
    try:
        entries = read_checkpoints(config.checkpoint_path)
    except CheckpointError as exc:
        _say(sys.stderr, f"shipper status: {_reason(exc)}")
        return EXIT_FAILED
    if entries is None:
        # In --json mode stdout stays machine-readable: nothing to read there.
        _say(sys.stderr if as_json else sys.stdout, NO_CHECKPOINTS)
        return EXIT_OK
    now = time.time()
    statuses = sorted(file_statuses(entries, config), key=lambda s: (-s.lag, s.path))
    if as_json:
        out = sys.stdout.buffer
        for status in statuses:
            out.write(orjson.dumps(status.as_json(now), option=orjson.OPT_APPEND_NEWLINE))
        out.flush()
    else:
        _say(sys.stdout, render_table(statuses, now))
    return EXIT_OK


def _say(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


def read_checkpoints(path: Path) -> list[FileCheckpoint] | None:
    """The checkpoint file's entries; None if there is no file yet. CheckpointError if it
    cannot be read or is corrupt (after one more try)."""
    for attempt in range(2):
        store = CheckpointStore(path, on_corrupt="fail")  # "fail": a reader never moves it
        try:
            store.load()
        except CheckpointCorruptError:
            if attempt == 0:
                time.sleep(RETRY_DELAY)
                continue
            raise
        return None if store.first_start else store.entries()
    raise AssertionError("unreachable")  # pragma: no cover


def _reason(exc: CheckpointError) -> str:
    # The store's message speaks to `shipper run` ("refusing to start..."): keep what is wrong.
    return str(exc).split("; refusing to start", 1)[0]


def file_statuses(entries: list[FileCheckpoint], config: Config) -> list[FileStatus]:
    metadata = MetadataCache(MetadataOptions(host_name=""), on_error=lambda _id, _why: None)
    listings: dict[str, list[str]] = {}
    return [_status(entry, config, metadata, listings) for entry in entries]


def _status(
    entry: FileCheckpoint,
    config: Config,
    metadata: MetadataCache,
    listings: dict[str, list[str]],
) -> FileStatus:
    source = config.sources.get(entry.source)
    container, container_id = _container(entry.path, source, metadata)
    directory = os.path.dirname(entry.path)
    if directory not in listings:
        try:
            listings[directory] = sorted(os.listdir(directory))
        except OSError:
            listings[directory] = []
    current, size = _locate(entry, listings[directory])
    if current is None:
        state = "gone"
    elif current != entry.path:
        state = "rotated"
    elif size is not None and size < entry.offset:
        state = "truncated"
    else:
        state = "current"
    return FileStatus(
        source=entry.source,
        type=source.type if source is not None else "",
        container=container,
        container_id=container_id,
        path=entry.path,
        current_path=current,
        state=state,
        offset=entry.offset,
        size=size,
        recorded_size=entry.size,
        updated_at=entry.updated_at,
    )


def _container(
    path: str, source: SourceConfig | None, metadata: MetadataCache
) -> tuple[str, str | None]:
    """(what to call the file's container, the Docker container id if there is one)."""
    directory, name = os.path.split(path)
    if isinstance(source, DockerJsonSourceConfig):
        container_id = os.path.basename(directory)
        facts = metadata.facts(directory, container_id)
        found = facts.name if facts is not None else ""
        return found or container_id[:12], container_id
    if isinstance(source, CriSourceConfig):
        # A rotated generation (`0.log.20240101-120000.gz`) is named after its live file.
        live = name.split(".log", 1)[0] + ".log" if ".log" in name else name
        ref = parse_pod_log_path(os.path.join(directory, live))
        if ref is not None:
            return f"{ref.namespace}/{ref.pod_name}/{ref.container_name}", None
        return name, None
    if isinstance(source, FilesSourceConfig):
        return logrotate_live_name(name) or name, None
    return "", None


def _locate(entry: FileCheckpoint, names: list[str]) -> tuple[str | None, int | None]:
    """Where the checkpointed file is now and its content size: at its path if that still
    holds it, else the sibling with its inode (renamed by rotation), else the sibling with its
    content (compressed into a new file); (None, None) when it is gone."""
    directory = os.path.dirname(entry.path)
    if _same_file(entry, entry.path):
        return entry.path, _content_size(entry.path)
    for name in names:
        candidate = os.path.join(directory, name)
        if candidate != entry.path and _same_file(entry, candidate):
            return candidate, _content_size(candidate)
    # Docker and logrotate compress a rotated file into a new one (`x.1` -> `x.1.gz`), and
    # renumber them later: the family is the names sharing the file's stem.
    stem = os.path.basename(entry.path).split(".", 1)[0]
    family = [n for n in names if n.split(".", 1)[0] == stem and n != os.path.basename(entry.path)]
    for name in family[:MAX_CONTENT_LOOKUPS]:
        candidate = os.path.join(directory, name)
        if _holds_content(entry, candidate) is True:
            return candidate, _content_size(candidate)
    return None, None


def _same_file(entry: FileCheckpoint, path: str) -> bool:
    """Whether `path` is the checkpointed file: its inode, and (when readable) its content,
    since a deleted file's inode number is soon given to a new file."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    if (stat.st_dev, stat.st_ino) != (entry.device, entry.inode):
        return False
    return _holds_content(entry, path) is not False


def _holds_content(entry: FileCheckpoint, path: str) -> bool | None:
    """Whether the file at `path` starts with the checkpointed content; None if unreadable."""
    try:
        reader = open_log(path)
    except OSError:
        return None
    try:
        head = reader.head()
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            reader.close()
    return prefix_fingerprints(head)(entry.head_len) == entry.fingerprint


def _content_size(path: str) -> int | None:
    """Bytes of content: the size of a plain file, the decompressed size of a gzip one."""
    try:
        reader = open_log(path)
    except OSError:
        try:  # not readable by this user: a plain file's size is still in its metadata
            return None if path.endswith(".gz") else os.stat(path).st_size
        except OSError:
            return None
    try:
        return reader.content_size()
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            reader.close()


# -- the table --------------------------------------------------------------------------------

_HEADERS = ("CONTAINER", "SOURCE", "OFFSET", "SIZE", "LAG", "PROGRESS", "PATH")
_RIGHT = {2, 3, 4, 5}  # numbers are right-aligned


def render_table(statuses: list[FileStatus], now: float) -> str:
    """Aligned columns for people, most behind first, and a totals line."""
    rows = []
    for status in statuses:
        size = human_bytes(status.size) if status.size is not None else status.state
        path = status.path
        if status.current_path is not None and status.current_path != status.path:
            path = f"{path} -> {os.path.basename(status.current_path)}"
        elif status.state == "gone":
            path = f"{path} (gone)"
        rows.append(
            (
                status.container or "-",
                status.source,
                human_bytes(status.offset),
                size,
                human_bytes(status.lag),
                f"{_human_age(status.age(now))} ago",
                path,
            )
        )
    behind = sum(1 for status in statuses if status.lag > 0)
    total_size = sum(status.size for status in statuses if status.size is not None)
    rows.append(
        (
            f"total: {len(statuses)} files",
            "",
            human_bytes(sum(status.offset for status in statuses)),
            human_bytes(total_size),
            human_bytes(sum(status.lag for status in statuses)),
            "",
            f"{behind} behind",
        )
    )
    widths = [max(len(row[i]) for row in [_HEADERS, *rows]) for i in range(len(_HEADERS))]

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(width) if i in _RIGHT else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join(line(row) for row in [_HEADERS, *rows])


def _human_age(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"
