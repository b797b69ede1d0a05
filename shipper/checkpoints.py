"""CheckpointStore: the durable record of how far each log file (known by content) was shipped."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import orjson

from shipper.errors import CheckpointCorruptError, CheckpointError
from shipper.fileio import fsync_directory
from shipper.sharding import Shard

__all__ = [
    "FORMAT_VERSION",
    "MAX_HEAD_LEN",
    "CheckpointKey",
    "CheckpointStore",
    "FileCheckpoint",
]

FORMAT_VERSION = 1
"""Version written in the file; any incompatible change to the format bumps it."""

MAX_HEAD_LEN = 1024 + 64
"""The fingerprint covers at most this many identity bytes of a file (shipper.sources.identity:
the first KiB, plus the end of a first line longer than that)."""

log = logging.getLogger(__name__)

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("fingerprint", "head_len", "path", "device", "inode", "offset", "source", "updated_at")
_OPTIONAL_FIELDS = ("size", "open_partials")


class CheckpointKey(NamedTuple):
    """Identity of a file's content: two entries with the same key describe the same file."""

    fingerprint: str
    head_len: int


@dataclass(slots=True, frozen=True)
class FileCheckpoint:
    """How far one log file, identified by its content, has been shipped.

    Frozen so that every change goes through the store, which must know what changed to flush it.
    """

    fingerprint: str  # hex sha256 of the file's first `head_len` bytes (identity of the content)
    head_len: int  # bytes the fingerprint covers (<= MAX_HEAD_LEN; less while the file was shorter)
    path: str  # last path seen (informational and for GC)
    device: int
    inode: int
    offset: int  # next byte to read: every byte before it has a final outcome
    source: str  # name of the configured source
    updated_at: float  # unix seconds of the last offset change
    # Bytes of content (uncompressed) known to exist when last read: if the file is gone at the
    # next start, `size - offset` is what was lost with it, counted rather than silent.
    size: int = 0
    # Streams whose line split by Docker at 16 KiB has its first part in this file, beyond
    # `offset`: if the file is gone at the next start, the next file begins with the rest of
    # those lines, whose head is lost (shipped flagged `partial_head_lost`).
    open_partials: tuple[str, ...] = ()

    @property
    def key(self) -> CheckpointKey:
        return CheckpointKey(self.fingerprint, self.head_len)


class _InvalidError(ValueError):
    """A checkpoint entry or file does not have the expected shape (the message says how)."""


def _require_int(entry: dict[str, Any], name: str, *, minimum: int) -> int:
    value = entry[name]
    # bool is an int subclass; `"offset": true` is a typo, not offset 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _InvalidError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise _InvalidError(f"{name} must be >= {minimum}, got {value}")
    return value


def _require_str(entry: dict[str, Any], name: str) -> str:
    value = entry[name]
    if not isinstance(value, str):
        raise _InvalidError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    return value


def _require_streams(entry: dict[str, Any]) -> tuple[str, ...]:
    value = entry["open_partials"]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise _InvalidError(f"open_partials must be a list of strings, got {value!r}")
    return tuple(value)


def _parse_entry(raw: object) -> FileCheckpoint:
    if not isinstance(raw, dict):
        raise _InvalidError(f"entry must be an object, got {type(raw).__name__}")
    missing = [name for name in _FIELDS if name not in raw]
    if missing:
        raise _InvalidError(f"missing field(s) {', '.join(missing)}")
    unknown = sorted(set(raw) - set(_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        # The format is versioned: a field we do not know means a file we do not understand.
        raise _InvalidError(f"unknown field(s) {', '.join(unknown)}")
    updated_at = raw["updated_at"]
    if (
        not isinstance(updated_at, int | float)
        or isinstance(updated_at, bool)
        or not math.isfinite(updated_at)
    ):
        raise _InvalidError(f"updated_at must be a number, got {updated_at!r}")
    cp = FileCheckpoint(
        fingerprint=_require_str(raw, "fingerprint"),
        head_len=_require_int(raw, "head_len", minimum=1),
        path=_require_str(raw, "path"),
        device=_require_int(raw, "device", minimum=0),
        inode=_require_int(raw, "inode", minimum=0),
        offset=_require_int(raw, "offset", minimum=0),
        source=_require_str(raw, "source"),
        updated_at=float(updated_at),
        size=_require_int(raw, "size", minimum=0) if "size" in raw else 0,
        open_partials=_require_streams(raw) if "open_partials" in raw else (),
    )
    _check_identity(cp)
    return cp


def _check_identity(cp: FileCheckpoint) -> None:
    if not _HEX_SHA256.fullmatch(cp.fingerprint):
        raise _InvalidError(f"fingerprint must be 64 lowercase hex digits, got {cp.fingerprint!r}")
    # head_len 0 would be the fingerprint of nothing, which every file matches: an empty file has
    # no identity yet and must not be recorded.
    if not 1 <= cp.head_len <= MAX_HEAD_LEN:
        raise _InvalidError(f"head_len must be in 1..{MAX_HEAD_LEN}, got {cp.head_len}")


def _check(cp: FileCheckpoint) -> None:
    """Validate an entry handed to the store by code (the same rules as for the file)."""
    try:
        _parse_entry(dataclasses.asdict(cp))
    except _InvalidError as exc:
        raise ValueError(f"invalid checkpoint {cp!r}: {exc}") from None


def _parse_document(data: bytes) -> list[FileCheckpoint]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _InvalidError(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _InvalidError(f"top level must be an object, got {type(doc).__name__}")
    if "version" not in doc:
        raise _InvalidError("missing version")
    version = doc["version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise _InvalidError(
            f"unsupported version {version!r} (this shipper reads {FORMAT_VERSION})"
        )
    files = doc.get("files")
    if not isinstance(files, list):
        raise _InvalidError("files must be a list")
    entries: list[FileCheckpoint] = []
    seen: set[CheckpointKey] = set()
    for index, raw in enumerate(files):
        try:
            cp = _parse_entry(raw)
        except _InvalidError as exc:
            raise _InvalidError(f"files[{index}]: {exc}") from None
        if cp.key in seen:
            raise _InvalidError(f"files[{index}]: duplicate entry for {cp.key}")
        seen.add(cp.key)
        entries.append(cp)
    return entries


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CheckpointStore:
    """Checkpoints of every known log file, loaded from and flushed to one JSON file.

    Not thread-safe, by design: the store lives on the asyncio event loop thread and needs no lock.
    `flush()` does blocking I/O on purpose: the file is small (one entry per live log file) and a
    write plus two fsyncs is cheaper than a hop to a thread, and an await in the middle of a flush
    would let the entries change under it.

    Entries are keyed by (fingerprint, head_len), see `CheckpointKey`. Two files whose first
    `head_len` bytes are identical share one identity; the last writer wins.

    With a `shard` (one of several worker processes, `pipeline.workers`), the store holds only
    the entries of the files its worker follows, and each flush writes them into the one file
    under a lock, beside the entries the other workers wrote: so `shipper status`, a restart
    with another number of workers and a reload all see one file, as with a single process.
    """

    def __init__(
        self,
        path: Path,
        *,
        on_corrupt: Literal["fail", "reset"],
        clock: Callable[[], float] = time.time,
        shard: Shard | None = None,
    ) -> None:
        self._path = Path(path)
        self._tmp_path = self._path.with_name(self._path.name + ".tmp")
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        self.shard = shard if shard is not None and shard.count > 1 else None
        self._on_corrupt = on_corrupt
        self._clock = clock
        self._entries: dict[CheckpointKey, FileCheckpoint] = {}
        # How many entries have each head_len, so find() hashes a file's head once per length.
        self._head_lens: Counter[int] = Counter()
        self._dirty = False
        self._first_start = False
        self._set_aside_path: Path | None = None
        self._corrupt_reason: str | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def first_start(self) -> bool:
        """True when `load()` found no checkpoint file: shipper has never run here before."""
        return self._first_start

    @property
    def set_aside_path(self) -> Path | None:
        """Where `load()` moved a corrupt file with on_corrupt="reset" (None if it did not)."""
        return self._set_aside_path

    @property
    def corrupt_reason(self) -> str | None:
        """What was wrong with the file set aside by `load()`, for the caller's warning."""
        return self._corrupt_reason

    @property
    def dirty(self) -> bool:
        """True when something changed since the last successful flush."""
        return self._dirty

    # -- loading ---------------------------------------------------------------------------------

    def load(self, *, first_start: bool | None = None) -> None:
        """Replace the store's contents with the checkpoint file's.

        A stale `<name>.tmp` left by a crash before the rename is ignored: the rename is the
        commit point, so the main file is the last complete state. `first_start`, if given,
        is what the supervisor of several workers found before it started them: a worker may
        find the file another worker has just written, and the start is a first one still.
        """
        self._clear()
        self._dirty = False
        self._first_start = False
        self._set_aside_path = None
        self._corrupt_reason = None
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            self._first_start = True if first_start is None else first_start
            return
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint file {self._path}: {exc}") from exc
        if first_start is not None:
            self._first_start = first_start
        try:
            entries = _parse_document(data)
        except _InvalidError as exc:
            self._handle_corrupt(str(exc))
            return
        shard = self.shard
        for cp in entries:
            if shard is None or shard.owns_path(cp.path):
                self._put(cp)

    def owns(self, directory: str) -> bool:
        """Whether the files of `directory` are this store's (always, without a shard)."""
        return self.shard is None or self.shard.owns_directory(directory)

    def _handle_corrupt(self, reason: str) -> None:
        if self._on_corrupt == "fail":
            raise CheckpointCorruptError(
                f"checkpoint file {self._path} is corrupt: {reason}; refusing to start; "
                "fix or move the file, or set checkpoints.on_corrupt: reset"
            )
        aside = self._aside_name()
        try:
            self._path.rename(aside)
        except OSError as exc:
            raise CheckpointError(
                f"checkpoint file {self._path} is corrupt ({reason}) and cannot be moved "
                f"aside to {aside}: {exc}"
            ) from exc
        self._set_aside_path = aside
        self._corrupt_reason = reason
        # Not a first start: shipper has run here and the files on disk may hold lines it never
        # shipped. Treating this as a first start would let `start_at: end` skip them (a silent
        # loss); reading them from the beginning risks only duplicates, which the outputs
        # deduplicate (Elasticsearch by _id) or at worst repeat: at-least-once beats a loss.
        self._first_start = False
        # Write the empty store now: if shipper died before its first flush, the next start would
        # find no file and believe it is a first start after all.
        self._dirty = True
        self.flush()

    def _aside_name(self) -> Path:
        stamp = _utc_now().strftime("%Y%m%dT%H%M%SZ")
        aside = self._path.with_name(f"{self._path.name}.corrupt-{stamp}")
        counter = 1
        while aside.exists():  # two resets within a second must not overwrite the first copy
            aside = self._path.with_name(f"{self._path.name}.corrupt-{stamp}-{counter}")
            counter += 1
        return aside

    # -- queries ---------------------------------------------------------------------------------

    def find(
        self,
        fingerprint_of: Callable[[int], str | None],
        *,
        path: str,
        device: int,
        inode: int,
        size: int | None = None,
    ) -> FileCheckpoint | None:
        """Return the entry whose content identity matches this file, or None.

        `fingerprint_of(n)` returns the hex sha256 of the file's first n bytes, or None when the
        file is shorter than n; it is called once per distinct head_len, shortest first, and not
        again once it returns None (a file shorter than n is shorter than any longer n).

        Content must match; among matching entries, one with the same (device, inode) wins (the
        same file, perhaps renamed), then one whose recorded size equals `size` (the gzip twin
        of a file read to its end), then one with the same path, then the one with the longest
        head_len (the most specific identity).
        """
        best: FileCheckpoint | None = None
        best_rank: tuple[bool, bool, bool, int] | None = None
        for head_len in sorted(self._head_lens):
            fingerprint = fingerprint_of(head_len)
            if fingerprint is None:
                break
            cp = self._entries.get(CheckpointKey(fingerprint, head_len))
            if cp is None:
                continue
            rank = (
                cp.device == device and cp.inode == inode,
                size is not None and cp.size == size,
                cp.path == path,
                cp.head_len,
            )
            if best_rank is None or rank > best_rank:
                best, best_rank = cp, rank
        return best

    def get(self, key: CheckpointKey | tuple[str, int]) -> FileCheckpoint | None:
        return self._entries.get(CheckpointKey(*key))

    def entries(self) -> list[FileCheckpoint]:
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    # -- changes ---------------------------------------------------------------------------------

    def set(self, cp: FileCheckpoint) -> None:
        """Insert `cp`, or replace the entry with the same (fingerprint, head_len)."""
        _check(cp)
        if self._entries.get(cp.key) == cp:
            return
        self._put(cp)
        self._dirty = True

    def update_offset(
        self,
        key: CheckpointKey | tuple[str, int],
        offset: int,
        *,
        path: str | None = None,
        size: int | None = None,
        open_partials: tuple[str, ...] | None = None,
    ) -> FileCheckpoint:
        """Record the new offset (and last path and size seen) of an existing entry; KeyError if
        unknown.

        The offset may go down (that only replays lines); updated_at changes only with the offset.
        """
        key = CheckpointKey(*key)
        current = self._entries[key]
        if type(offset) is not int or offset < 0:  # a bool is an int, and a bug here
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        new_path = current.path if path is None else path
        new_size = current.size if size is None else size
        partials = current.open_partials if open_partials is None else open_partials
        if (offset, new_path, new_size, partials) == (
            current.offset,
            current.path,
            current.size,
            current.open_partials,
        ):
            return current
        updated_at = self._clock() if offset != current.offset else current.updated_at
        cp = dataclasses.replace(
            current,
            offset=offset,
            path=new_path,
            updated_at=updated_at,
            size=new_size,
            open_partials=partials,
        )
        self._entries[key] = cp
        self._dirty = True
        return cp

    def rekey(self, old_key: CheckpointKey | tuple[str, int], new: FileCheckpoint) -> None:
        """Replace the entry under `old_key` with `new`, whose identity covers more bytes.

        Used when a file that was shorter than MAX_HEAD_LEN grows: its fingerprint now covers a
        longer head. KeyError if `old_key` is unknown; an entry already under `new.key` is replaced.
        """
        old_key = CheckpointKey(*old_key)
        if old_key not in self._entries:
            raise KeyError(old_key)
        _check(new)
        if new.head_len < old_key.head_len:
            raise ValueError(
                f"rekey may only lengthen the fingerprint: head_len {old_key.head_len} -> "
                f"{new.head_len}"
            )
        self._drop(old_key)
        self._put(new)
        self._dirty = True

    def remove(self, key: CheckpointKey | tuple[str, int]) -> bool:
        """Forget an entry (garbage collection); returns whether it existed."""
        key = CheckpointKey(*key)
        if key not in self._entries:
            return False
        self._drop(key)
        self._dirty = True
        return True

    def _put(self, cp: FileCheckpoint) -> None:
        if cp.key not in self._entries:
            self._head_lens[cp.head_len] += 1
        self._entries[cp.key] = cp

    def _drop(self, key: CheckpointKey) -> None:
        del self._entries[key]
        self._head_lens[key.head_len] -= 1
        if not self._head_lens[key.head_len]:
            del self._head_lens[key.head_len]

    def _clear(self) -> None:
        self._entries.clear()
        self._head_lens.clear()

    # -- writing ---------------------------------------------------------------------------------

    def flush(self, *, force: bool = False) -> bool:
        """Write the store if it changed since the last flush (or `force`); returns whether it
        wrote. At start, a forced flush proves the file can be written before anything ships.

        Atomic and durable: the new state goes to `<name>.tmp`, is fsynced, then renamed over the
        file, so a crash at any point leaves either the old or the new file, never a torn one.
        """
        if not self._dirty and not force:
            return False
        try:
            if self.shard is None:
                self._write_atomically(self._document(self._entries))
            else:
                self._write_shared()
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._tmp_path.unlink()
            raise CheckpointError(f"cannot write checkpoint file {self._path}: {exc}") from exc
        self._dirty = False
        return True

    @staticmethod
    def _document(entries: dict[CheckpointKey, FileCheckpoint]) -> bytes:
        document = {
            "version": FORMAT_VERSION,
            "written_at": _utc_now().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            # Sorted so that `shipper status` and a human diffing two versions see a stable order.
            "files": sorted(entries.values(), key=lambda cp: (cp.source, cp.path, cp.key)),
        }
        return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)

    def _write_shared(self) -> None:
        """Read, merge and replace the file under an exclusive lock, keeping the entries of the
        files other workers follow as they last wrote them (ours, including removals, win)."""
        assert self.shard is not None  # noqa: S101 - only called with one
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        lock = os.open(self._lock_path, flags, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {cp.key: cp for cp in self._others_on_disk()}
            merged.update(self._entries)
            self._write_atomically(self._document(merged))
        finally:
            os.close(lock)  # closing releases the lock

    def _others_on_disk(self) -> list[FileCheckpoint]:
        """The entries of files other workers follow, from the file as it is now."""
        assert self.shard is not None  # noqa: S101 - only called with one
        try:
            entries = _parse_document(self._path.read_bytes())
        except FileNotFoundError:
            return []
        except _InvalidError as exc:
            # Every worker writes its own entries again at its next flush, so the file heals;
            # what another worker cannot write again before a crash is read again (duplicates,
            # never a loss).
            log.error(
                "The checkpoint file became unreadable while running; rewriting it.",
                extra={"path": str(self._path), "reason": str(exc)},
            )
            return []
        shard = self.shard
        return [cp for cp in entries if not shard.owns_path(cp.path)]

    def _write_atomically(self, data: bytes) -> None:
        directory = self._path.parent
        # 0o700: the paths inside name containers and hosts; only shipper's user needs them.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self._tmp_path, flags, 0o600)
        try:
            # A stale .tmp from a crash keeps its old mode through O_CREAT: set it explicitly.
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            # The data must be on disk before the rename makes it the checkpoint file, or a power
            # loss could leave a renamed but empty file.
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp_path, self._path)
        # The rename is a change to the directory, not the file: until the directory is fsynced a
        # power loss can undo it, bringing back an older checkpoint (replays) or, on the first
        # write, no file at all (a "first start" that would let `start_at: end` skip data).
        fsync_directory(directory)
