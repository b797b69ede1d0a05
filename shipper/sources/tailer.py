"""ContainerFollower: reads one container's log generations, oldest first, as chunks of whole lines.

Docker rotates `<id>-json.log` by renaming it to `.1` (`.1` to `.2`, …, the oldest deleted) and
with `compress=true` gzips `.1` into `.1.gz` in the background (DESIGN.md §4). The follower keeps
every generation it has seen open, so a renamed or deleted file is drained to its end through
its descriptor, and reads them strictly oldest first, so lines keep their order and a line split
across a rotation is joined. Reading runs ahead of delivery; checkpoints follow the settled offset
the AckTracker reports, never the read offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from shipper.backfill import Backlog
from shipper.checkpoints import CheckpointKey, CheckpointStore, FileCheckpoint
from shipper.fileio import end_of_last_line
from shipper.model import Chunk, Enrichment, LogFile, RangeClaim, RecordGroup
from shipper.pipeline.pipeline import Pipeline
from shipper.sources.docker_json import decode_chunk, format_time_ns
from shipper.sources.handover import Handover
from shipper.sources.identity import (
    HEAD_BYTES,
    IDENTITY_BYTES,
    fingerprint,
    prefix_fingerprints,
    stable_id,
)
from shipper.sources.logfile import LogReader, open_log
from shipper.sources.partials import PartialJoiner, group_of
from shipper.sources.rotation import DockerRotation, Rotation
from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)

LOG_SUFFIX = "-json.log"
# A follower's first read, each next one 4 times larger up to `read_chunk_size`. Starting over
# many containers with a backlog, the budget then goes to every container's first lines
# before anyone's second read (1,000 containers: the first 16 MiB of data), rather than to
# whole reads of the containers that happened to start first (issue 8, many_containers.py).
FIRST_READ = 16 * 1024
_handles = itertools.count(1)


class _Later(enum.Enum):
    LATER = "later"  # a listed file that cannot be judged yet (an unfinished gzip, an error)
    MOVED = "moved"  # its name holds another file since the listing: list again


_LATER = _Later.LATER


@dataclass(frozen=True, slots=True)
class _Done:
    """A listed file with nothing to read (read before, empty, a twin), and its checkpoint."""

    entry: CheckpointKey | None


_MOVED = _Later.MOVED
# Listings per look while Docker rotates under our feet; each costs a stat() per file.
_LISTING_ATTEMPTS = 8
# Watch events come in bursts (a rotation renames every file): at most one look this often.
_HINT_SPACING = 0.02
_DELETED = 1 << 62  # the age of a queued file no longer listed: older than any listed one


@dataclass(frozen=True, slots=True)
class TailSettings:
    read_chunk_size: int
    poll_interval: float
    partial_flush_timeout: float
    max_message_bytes: int
    max_pinned_bytes: int | None = None
    # A line with no newline within this many bytes is cut there and shipped as it is: Docker's
    # own lines are at most 16 KiB of text (about 100 KiB escaped), so only a foreign file gets
    # here, and waiting for its newline would hold all memory.
    max_line_bytes: int = 4 * 1024 * 1024
    # For writers that go on writing to a renamed file until they reopen (kubelet, logrotate):
    # how long a renamed file is still watched after it last grew.
    rotate_wait: float = 5.0


class ChunkDecoder(Protocol):
    """Decodes the lines of one chunk in a source's format (docker_json.decode_chunk is one)."""

    def __call__(
        self,
        chunk: Chunk,
        *,
        read_time: str,
        joiner: PartialJoiner | None = None,
        hold: RangeClaim | None = None,
        now: float = 0.0,
    ) -> RecordGroup: ...


class RecordJoiner(Protocol):
    """Joins the records of one event (multiline), keeping state between chunks."""

    def apply(self, group: RecordGroup, claim: RangeClaim | None, now: float) -> RecordGroup: ...

    def expired(self, now: float, timeout: float) -> RecordGroup | None: ...

    def take_all(self) -> RecordGroup | None: ...


class GroupProcessor(Protocol):
    """Processing steps run on every finished group before it goes to the outputs."""

    def apply(self, group: RecordGroup) -> None: ...


@dataclass(frozen=True, slots=True)
class Shaping:
    """How one follower turns chunks into the records it ships; built per followed file, since
    the multiline joiner keeps that file's state."""

    decode: ChunkDecoder = decode_chunk
    # The container's (or file's) metadata fields, looked up per chunk.
    enrich: Callable[[], Enrichment | None] | None = None
    multiline: RecordJoiner | None = None
    multiline_timeout: float = 2.0
    processors: GroupProcessor | None = None


class _Generation:
    """One file of the container, open: where reading is, and what is known of its content."""

    __slots__ = (
        "device",
        "entry",
        "file",
        "finished",
        "handed_over",
        "identity_final",
        "inode",
        "offset",
        "once_end",
        "once_settled",
        "path",
        "prefix",
        "reader",
        "released",
        "seen",
        "size",
        "start",
        "superseded",
    )

    def __init__(self, reader: LogReader, path: str, file: LogFile, offset: int) -> None:
        stat = reader.stat()
        self.reader = reader
        self.path = path  # its name when last listed
        self.device = stat.st_dev
        self.inode = stat.st_ino
        self.file = file
        self.offset = offset  # next byte to read
        self.size = offset  # content bytes known to exist
        self.entry: FileCheckpoint | None = None  # None until it has a first byte
        self.finished = False  # drained: no more ranges will come
        self.identity_final = False  # fingerprint and first line can no longer grow
        self.prefix = b""  # its first bytes (up to HEAD_BYTES), to notice a truncation
        self.released = False  # closed before it was drained (a cap): stop reading it
        self.superseded = False  # no longer written to: finished at its next end
        self.start = offset  # where reading began: nothing read yet while offset == start
        # A backfill (`run --once`) reads up to the size the file had when it was opened, and
        # counts what settled of it for its progress display.
        self.once_end = offset
        self.once_settled = offset
        # The end of what the last read returned: beyond `offset` when it held an unfinished
        # line, which is waited for, not stalled on.
        self.seen = offset
        self.handed_over = False  # its reader belongs to the next pipeline now (a reload)

    @property
    def key(self) -> tuple[int, int]:
        return (self.device, self.inode)


class ContainerFollower:
    """Follows one log file and its rotated generations in one directory (a Docker container's
    json-file log, a Kubernetes container's N.log, a sidecar's app.log); run() until cancelled
    or the directory is gone."""

    # One per followed file, a thousand and more on a busy host: no __dict__ each.
    __slots__ = (
        "_backfill",
        "_budget_key",
        "_handover",
        "_ignored",
        "_joiner",
        "_last_reconcile",
        "_lingering",
        "_listed",
        "_listing_due",
        "_pending",
        "_pipeline",
        "_read_at",
        "_read_size",
        "_relist",
        "_reported",
        "_reserved",
        "_settings",
        "_shaping",
        "_store",
        "_telemetry",
        "_unread_since",
        "_unsettled",
        "_wake",
        "base",
        "container_id",
        "current_path",
        "directory",
        "gone",
        "ingesting",
        "lag_bytes",
        "pinned_bytes",
        "rotation",
        "source",
        "stalled_since",
        "watched",
    )

    def __init__(
        self,
        *,
        source: str,
        directory: str,
        container_id: str,
        settings: TailSettings,
        store: CheckpointStore,
        pipeline: Pipeline,
        telemetry: Telemetry,
        rotation: Rotation | None = None,
        shaping: Shaping | None = None,
        backfill: Backlog | None = None,
        handover: Handover | None = None,
    ) -> None:
        self.source = source
        # Deleted files a reload's previous pipeline was reading: taken at the first look,
        # and where this follower leaves its own when it stops.
        self._handover = handover
        self.directory = directory
        self.container_id = container_id
        self.rotation = rotation or DockerRotation(container_id + LOG_SUFFIX)
        self._shaping = shaping or Shaping()
        self.base = self.rotation.base
        self.current_path = os.path.join(directory, self.base)
        self._settings = settings
        self._store = store
        self._pipeline = pipeline
        self._telemetry = telemetry
        self._pending: deque[_Generation] = deque()  # oldest first; [0] is the one being read
        # Read to their end after a rename, but their writer may still add lines until it
        # reopens its log (rotation.writes_after_rename): by handle, with when to give up.
        self._lingering: dict[str, tuple[_Generation, float]] = {}
        self._unsettled: dict[str, _Generation] = {}  # by handle: finished, not yet all settled
        # Listed files with nothing to read, by (device, inode): their (size, mtime), since a
        # deleted file's inode number is soon reused (often by the next `-json.log`) and a
        # change of either means another file; and the checkpoint that records them.
        self._ignored: dict[tuple[int, int], tuple[tuple[int, int], CheckpointKey | None]] = {}
        self._joiner = PartialJoiner(settings.max_message_bytes)
        self._reported: set[str] = set()  # paths whose error was logged
        self._wake = asyncio.Event()
        # Budget bytes acquired before the next read (see _reserve), handed to the pipeline
        # with the chunk read, or given back when nothing is emitted.
        self._reserved = 0
        # This container's key in the budget: the one Pipeline.ingest acquires the rest under.
        self._budget_key = (source, container_id)
        # A follower's first reads are small and grow to `read_chunk_size` (see FIRST_READ).
        self._read_size = min(FIRST_READ, settings.read_chunk_size)
        self._last_reconcile = 0.0
        self._listing_due = False
        self._listed: set[object] = set()  # what the last look listed (_contents)
        self.gone = False  # the directory is gone: nothing more will come
        # Set by the source while a watch of the log root works: every creation, rename and
        # deletion in the directory then comes as a hint, so an idle look need not list it.
        self.watched = False
        # The last listing could not be completed (Docker was rotating, a file changed under
        # it): look again at the next chance, watched or not, rather than at the next hint.
        self._relist = False
        # A backfill (`run --once`): read every generation open at the start to the end it had
        # then, ship a last line without newline as it is, and return; no new generations.
        self._backfill = backfill
        self.pinned_bytes = 0  # on-disk bytes of deleted files still open
        # Measured at each look (`_measure`), never per line: bytes not yet delivered, and
        # since when (time.monotonic()) bytes have waited unread with no read advancing and
        # no wait for the memory budget (None: not stalled). shipper_lag_bytes; readiness.
        self.lag_bytes = 0
        self.stalled_since: float | None = None
        self._unread_since: float | None = None
        self._read_at = time.monotonic()  # when a read last returned new bytes
        # Reserving or inside Pipeline.ingest: waiting for the budget, if anywhere.
        self.ingesting = False

    # -- discovery of generations -------------------------------------------------------------

    def wake(self) -> None:
        """Look now rather than at the next poll."""
        self._wake.set()

    def hint(self) -> None:
        """A file of this directory was created, renamed or deleted: list it soon, once for
        a burst of events (a rotation renames every file), and pin what is new even if the
        reading task is held up by backpressure."""
        if not self._listing_due:
            self._listing_due = True
            delay = self._last_reconcile + _HINT_SPACING - time.monotonic()
            asyncio.get_running_loop().call_later(max(0.0, delay), self._listing)
        self._wake.set()

    def _listing(self) -> None:
        self._listing_due = False
        self.reconcile()

    @property
    def open_files(self) -> int:
        return len(self._pending)

    def reconcile(
        self,
        *,
        start_at_end: bool = False,
        checkpoints: list[FileCheckpoint] | None = None,
    ) -> None:
        """List the directory; open every generation not seen yet, in age order, so that Docker
        deleting it later cannot take unread lines. Given this directory's `checkpoints`, also
        drop those of files that are gone (done now and then, not at every look)."""
        self._last_reconcile = time.monotonic()
        if checkpoints is not None and self._handover is not None:
            self._adopt(self._handover.take(self.source, self.directory))
        self._relist = True  # until a listing is complete
        attempts = _LISTING_ATTEMPTS  # shared by every listing below: a bounded cost per call
        while attempts > 0:
            snapshot, attempts = self._snapshot(attempts)
            if snapshot is None:
                break  # Docker kept rotating: what was opened so far is in order; look later
            deferred = self._open_new(snapshot, start_at_end=start_at_end)
            if deferred is not None:
                self._relist = False
                self._count_unseen(self._contents(snapshot))
                # Only a whole, consistent listing may say that a file is gone.
                present = {key for _, _, key, _ in snapshot}
                for key in self._ignored.keys() - present:
                    del self._ignored[key]  # gone: its inode number may be reused
                if checkpoints is not None:
                    self._collect_garbage(checkpoints, deferred)
                break
        self._account_pinned()
        self._measure()

    def _snapshot(
        self, attempts: int
    ) -> tuple[list[tuple[int, str, tuple[int, int], os.stat_result]] | None, int]:
        """The generations oldest first as (index, path, (device, inode), stat), seen without a
        rotation in between; None if that could not be had (or the directory not listed).

        Docker renames every file at each rotation, so a name listed a moment ago may already
        name the next-younger file. A listing counts only when listing and stat-ing twice give
        the same names and the same inodes; otherwise a rotation ran meanwhile: look again.
        """
        previous: list[tuple[int, str, tuple[int, int], os.stat_result]] | None = None
        while attempts > 0:
            attempts -= 1
            try:
                names = os.listdir(self.directory)
            except FileNotFoundError:
                self.gone = True
                return [], attempts
            except OSError as exc:
                self._report(self.directory, "Cannot list container directory.", exc)
                return None, 0
            current = []
            complete = True
            for index, path in self._generations(names):
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    complete = False  # renamed or deleted since the listing
                    break
                current.append((index, path, (stat.st_dev, stat.st_ino), stat))
            if not complete:
                previous = None
                continue
            if previous is not None and [e[:3] for e in previous] == [e[:3] for e in current]:
                return current, attempts
            previous = current
        return None, 0

    def _open_new(
        self,
        snapshot: list[tuple[int, str, tuple[int, int], os.stat_result]],
        *,
        start_at_end: bool,
    ) -> set[tuple[int, int]] | None:
        """Open the generations of `snapshot` not seen yet, oldest first. Returns the files
        left to look at later, or None if a name no longer held the file listed (a rotation
        since): then nothing younger is opened, so the order of generations stays right, and
        the caller lists again."""
        deferred: set[tuple[int, int]] = set()
        ages = {key: index for index, _, key, _ in snapshot}
        open_keys = {generation.key for generation in self._open_generations()}
        for queued in self._pending:
            if not queued.identity_final:
                # Opened young (even empty) and perhaps not read since: know what it holds
                # before judging whether a newly listed file is its gzip twin.
                self._refresh_identity(queued)
        for index, path, key, stat in snapshot:
            if key in open_keys:
                self._renamed(key, path)
                continue
            signature = (stat.st_size, stat.st_mtime_ns)
            ignored = self._ignored.get(key)
            if ignored is not None and ignored[0] == signature:
                continue
            generation = self._open(path, index, key, start_at_end=start_at_end)
            if generation is _MOVED:
                return None
            if generation is _LATER:
                deferred.add(key)
            elif isinstance(generation, _Done):
                self._ignored[key] = (signature, generation.entry)
            elif isinstance(generation, _Generation):
                self._insert(generation, index, ages)
                open_keys.add(key)
        return deferred

    def _contents(
        self, snapshot: list[tuple[int, str, tuple[int, int], os.stat_result]]
    ) -> set[object]:
        """What the listed files hold, as far as known: each one's checkpoint (the same for a
        file and its gzip twin), else its inode; and the handles of those open."""
        known: dict[tuple[int, int], object] = {
            key: ignored[1] for key, ignored in self._ignored.items() if ignored[1] is not None
        }
        opened = list(self._open_generations())
        known.update((g.key, g.entry.key) for g in opened if g.entry is not None)
        contents = {known.get(key, key) for _, _, key, _ in snapshot}
        # An open file also counts by its handle: a young file's checkpoint key grows with it,
        # and the same file seen again must not look like a new one.
        listed = {key for _, _, key, _ in snapshot}
        contents.update(g.file.handle for g in opened if g.key in listed)
        return contents

    def _count_unseen(self, listed: set[object]) -> None:
        """Notice when shipper may have looked too seldom: between two looks Docker rotated
        away every file listed at the first one.

        Docker deletes oldest first, so a file it creates and deletes between two looks is
        younger than all files listed at the first: those must all be gone too. The reverse
        does not hold (exactly max-file rotations lose nothing), and json-file leaves no trace
        of a deleted file: this is a warning that files may have been lost, counted."""
        previous, self._listed = self._listed, listed
        if not previous or not listed or listed & previous:
            return
        self._telemetry.inc("shipper_rotation_overruns_total", source=self.source)
        log.warning(
            "Docker rotated away every file since shipper last looked: rotated log files may "
            "have been deleted unread (raise max-file, or give shipper more CPU).",
            extra={"path": self.directory},
        )

    def _insert(
        self, generation: _Generation, index: int, ages: dict[tuple[int, int], int]
    ) -> None:
        """Queue a generation by age. Almost always it is the youngest; but one first listed
        after younger ones goes before every queued file that is younger in the same listing
        (`ages`: rotation index by file; files no longer listed were deleted, so are older).
        The one being read stays first once reading began: it is half read."""
        pending = self._pending
        position = len(pending)
        first = 0 if pending and pending[0].offset == pending[0].start else 1
        while position > first and ages.get(pending[position - 1].key, _DELETED) < index:
            position -= 1
        pending.insert(position, generation)

    def _generations(self, names: list[str]) -> list[tuple[int, str]]:
        """This file's generations, oldest first, as (rotation age, path); 0 is the live file."""
        return [
            (age, os.path.join(self.directory, name))
            for age, name in self.rotation.generations(names)
        ]

    def _open_generations(self) -> Iterator[_Generation]:
        """Every file open for reading: queued, and renamed but perhaps still written to."""
        yield from self._pending
        for generation, _ in self._lingering.values():
            yield generation

    def _renamed(self, key: tuple[int, int], path: str) -> None:
        for generation in self._open_generations():
            if generation.key == key:
                generation.path = path

    def _open(  # noqa: PLR0911 - each way out is one reason a listed file is not read now
        self, path: str, index: int, key: tuple[int, int], *, start_at_end: bool
    ) -> _Generation | _Later | _Done:
        """Open a newly listed file: a generation to read, _Done if there is nothing to read
        in it (remembered while it is unchanged), _LATER to look again at the next listing, or
        _MOVED if the name no longer holds the file listed."""
        try:
            reader = open_log(path)
        except FileNotFoundError:
            return _MOVED
        except OSError as exc:
            self._report(path, "Cannot open log file; will try again.", exc)
            return _LATER
        stat = reader.stat()
        if (stat.st_dev, stat.st_ino) != key:
            reader.close()
            return _MOVED
        if reader.compressed and os.path.exists(path[: -len(".gz")]):
            # Names are reused fast: since the listing, this name may have become a newer
            # `.N.gz` that Docker is still writing (its plain twin is there until it is done).
            reader.close()
            return _LATER
        try:
            generation = self._position(reader, path, index, start_at_end=start_at_end)
        except OSError as exc:
            reader.close()
            self._report(path, "Cannot read log file; will try again.", exc)
            return _LATER
        if isinstance(generation, _Done):
            reader.close()
            return generation
        self._reported.discard(path)
        self._track(generation, "Following log file.")
        return generation

    def _track(self, generation: _Generation, message: str) -> None:
        """Start reading an opened generation: its ranges settle into its checkpoint."""
        self._telemetry.inc("shipper_files_opened_total", source=self.source)
        self._pipeline.tracker.track(
            generation.file.handle,
            generation.offset,
            functools.partial(self._settled, generation),
        )
        if self._backfill is not None:
            generation.once_end = generation.size
            self._backfill.plan(generation.size - generation.offset)
        log.info(
            message,
            extra={
                "path": generation.path,
                "offset": generation.offset,
                "compressed": generation.reader.compressed,
            },
        )

    def _adopt(self, readers: list[LogReader]) -> None:
        """Read on in the deleted files that a reload's previous pipeline left open (oldest
        first; older than any file listed now), from their checkpoints."""
        for reader in readers:
            generation: _Generation | None = None
            try:
                head = reader.head()
                stat = reader.stat()
                known = (
                    self._store.find(
                        prefix_fingerprints(head), path="", device=stat.st_dev, inode=stat.st_ino
                    )
                    if head
                    else None
                )
                if known is not None and known.offset < reader.content_size():
                    found = self._position(reader, known.path, 1, start_at_end=False)
                    generation = found if isinstance(found, _Generation) else None
            except OSError as exc:
                self._report(self.directory, "Cannot read a deleted log file kept open.", exc)
            if generation is None:  # read and delivered to its end: nothing is owed
                reader.close()
                continue
            generation.superseded = True  # deleted: nothing more is written to it
            self._track(generation, "Following a deleted log file kept open across the reload.")
            self._pending.append(generation)

    def _report(self, path: str, message: str, exc: OSError) -> None:
        if path not in self._reported:  # once per path, not at every listing
            self._reported.add(path)
            log.error(message, extra={"path": path, "error": exc.strerror or str(exc)})

    def _position(
        self, reader: LogReader, path: str, index: int, *, start_at_end: bool
    ) -> _Generation | _Done:
        head = reader.head()
        stat = reader.stat()
        if not head and index > 0:
            return _Done(None)  # an empty rotated file: nothing will ever come
        content_size = reader.content_size()
        line = reader.first_line() if head else None
        file_id = stable_id(line) if line is not None else ""
        twin = self._twin_of_open(file_id, content_size) if file_id else None
        if twin is not None:  # the gzip twin of a file we hold open: the same checkpoint
            return _Done(twin.entry.key if twin.entry is not None else None)
        offset = 0
        known = None
        if head:
            known = self._store.find(
                prefix_fingerprints(head),
                path=path,
                device=stat.st_dev,
                inode=stat.st_ino,
                size=content_size if index > 0 else None,
            )
        if known is not None and known.key in self._busy_keys():
            return _Done(known.key)  # the same content as a file open now: a gzip twin
        if known is not None:
            offset = known.offset
            if offset > content_size and not reader.compressed and index == 0:
                self._count_truncation(path, offset, content_size)
                offset = 0
            elif index > 0 and offset >= content_size:
                # Read before (a restart, or the gzip twin of a finished file): let its
                # checkpoint follow it to this name, so it is not taken for a new file.
                self._store.set(_moved(known, path, stat))
                return _Done(known.key)
        elif start_at_end:
            # History before the very first start: rotated files are skipped, the current
            # file starts after its last whole line. Their checkpoints record that, so a
            # restart does not take them for new files.
            offset = content_size if index > 0 else end_of_last_line(reader.fd, content_size)
        handle = f"{self.source}:{stat.st_dev}:{stat.st_ino}:{next(_handles)}"
        file = LogFile(
            source=self.source,
            container_id=self.container_id,
            path=path,
            handle=handle,
            fingerprint=file_id,
        )
        generation = _Generation(reader, path, file, offset)
        generation.size = max(offset, content_size)
        generation.identity_final = bool(file_id) and _final(head)
        generation.prefix = head[:HEAD_BYTES]
        if head:
            entry = FileCheckpoint(
                fingerprint=fingerprint(head),
                head_len=len(head),
                path=path,
                device=stat.st_dev,
                inode=stat.st_ino,
                offset=offset,
                source=self.source,
                updated_at=time.time(),
                size=generation.size,
            )
            if known is not None and known.key != entry.key:
                self._store.rekey(known.key, entry)
            else:
                self._store.set(entry)
            generation.entry = entry
        if start_at_end and index > 0 and generation.entry is not None:
            return _Done(generation.entry.key)  # recorded as read; nothing to follow
        return generation

    def _twin_of_open(self, file_id: str, content_size: int) -> _Generation | None:
        """The generation open (or not yet settled) with this first line and size: a file
        listed under another name with the same content is its gzip twin."""
        for generation in self._open_generations():
            if (
                generation.file.fingerprint == file_id
                and generation.reader.content_size() == content_size
            ):
                return generation
        for generation in self._unsettled.values():
            if generation.file.fingerprint == file_id and generation.size == content_size:
                return generation
        return None

    def _busy_keys(self) -> set[CheckpointKey]:
        """Checkpoint keys of the generations open or not yet settled: theirs to update."""
        return {
            generation.entry.key
            for generation in itertools.chain(self._open_generations(), self._unsettled.values())
            if generation.entry is not None
        }

    # -- reading -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Read generation after generation until the directory is gone (a backfill: until
        every generation open at the start is read to its end then); cancel to stop."""
        try:
            while True:
                if self._lingering:
                    # Before the next file: what the writer still added to a renamed one was
                    # written before what it writes after reopening.
                    await self._check_lingering(give_up=self.gone)
                if not self._pending:
                    if (self.gone or self._backfill is not None) and not self._lingering:
                        self.flush_pending()  # no more lines will come to finish them
                        return
                    await self._idle()
                    continue
                generation = self._pending[0]
                if self._backfill is not None and generation.offset >= generation.once_end:
                    self._finish(generation)  # read to its end at the start: a backfill stops
                    continue
                await self._reserve(generation)
                try:
                    data = self._read(generation)
                except OSError as exc:
                    self._unreserve()
                    await self._read_failed(generation, exc)
                    continue
                if data and self._rewritten(generation):
                    self._unreserve()
                    self._restart(generation, generation.reader.content_size())
                    continue
                cut = data.rfind(b"\n")
                if cut >= 0 or len(data) >= self._settings.max_line_bytes:
                    # The read is dropped before the chunk may wait (for the budget, beyond the
                    # reservation): the unfinished last line is read again next time anyway.
                    whole = cut < 0 or cut == len(data) - 1
                    chunk, data = (data if whole else data[: cut + 1]), b""
                    await self._emit(generation, chunk)
                    del chunk
                    # Ingesting waits only when the memory budget is spent: give the other
                    # containers, the outputs and the watch their turn after every chunk.
                    await asyncio.sleep(0)
                    if (
                        self._backfill is None
                        and (not self.watched or self._relist)  # else hints list (see hint)
                        and time.monotonic() - self._last_reconcile > self._settings.poll_interval
                    ):
                        self.reconcile()  # keep pinning new generations while catching up
                    continue
                self._unreserve()
                if self._backfill is not None:
                    await self._end_of_backfill(generation, data)
                    continue
                await self._at_end(generation, data)
        finally:
            self._unreserve()
            self._close_all()
            self._pending.clear()
            self._lingering.clear()

    def _close_all(self) -> None:
        """Stopping: close every file, except that deleted files not known delivered to their
        end are left to the next pipeline if a reload starts one (nothing can open them again)."""
        handover = self._handover
        unsettled = [g for g in self._unsettled.values() if not g.released]
        for generation in [*unsettled, *self._open_generations()]:
            if generation.handed_over:
                continue
            if handover is not None and not generation.released and _deleted(generation.reader):
                generation.handed_over = True
                handover.leave(self.source, self.directory, generation.reader)
            else:
                generation.reader.close()

    async def _at_end(self, generation: _Generation, data: bytes) -> None:
        """At the end of a file (`data`: the start of an unfinished line, if any): finish it
        if Docker is done with it, start again if it was truncated, or wait for more."""
        if generation.superseded:
            if self.rotation.writes_after_rename and not generation.released:
                # Its writer may add lines until it reopens: watch it beside the next file.
                self._pending.popleft()
                deadline = time.monotonic() + self._settings.rotate_wait
                self._lingering[generation.file.handle] = (generation, deadline)
                return
            if data:  # a line that will never be finished: ship it as it is
                await self._emit(generation, data)
            self._finish(generation)
        elif self._superseded(generation):
            # Docker closes a file before renaming it, but may have written to it after our
            # last read: read to the end once more before finishing it.
            generation.superseded = True
        elif not self._truncated(generation):
            await self._idle()

    async def _end_of_backfill(self, generation: _Generation, data: bytes) -> None:
        """A backfill reached the end of a file before its end at the start (it was cut, or
        its last line has no newline yet): ship that last line as it is and finish the file.
        Its checkpoint then passes that line, so if its writer finishes it later, the rest
        ships as another record."""
        if data:
            await self._emit(generation, data)
        self._finish(generation)

    async def _read_failed(self, generation: _Generation, exc: OSError) -> None:
        """Reading a file failed: try again after a pause; a backfill instead finishes it where
        it is (its checkpoint stays at what was delivered, so the next run reads the rest) and
        counts it, so that the backfill fails rather than waits forever."""
        error = exc.strerror or str(exc)
        if self._backfill is None:
            log.error(
                "Cannot read log file; trying again.",
                extra={"path": generation.path, "error": error},
            )
            await self._pause()
            return
        log.error(
            "Cannot read log file; the backfill leaves it unfinished.",
            extra={"path": generation.path, "error": error},
        )
        self._backfill.unreadable += 1
        self._finish(generation)

    async def _reserve(self, generation: _Generation) -> None:
        """Hold the budget for the next read before reading: a follower that waits for room
        then waits holding nothing. Read first, each waiting follower held a whole read outside
        the budget (1,000 containers behind a full budget: ~250 MiB, issue 8). Only what the
        file holds unread is reserved, so a quiet container's new line does not wait for a
        whole read's worth of room."""
        if self._reserved or generation.released:
            return
        size = self._read_size
        reader = generation.reader
        if not reader.compressed:
            size = min(size, reader.content_size() - generation.offset)
        if size > 0:
            self.ingesting = True  # waiting for the budget is no stall
            try:
                await self._pipeline.budget.acquire(size, self._budget_key)
            finally:
                self.ingesting = False
            self._reserved = size

    def _unreserve(self) -> None:
        if self._reserved:
            self._pipeline.budget.release(self._reserved, self._budget_key)
            self._reserved = 0

    def _read(self, generation: _Generation) -> bytes:
        if generation.released:
            return b""
        size = self._read_size
        limit = self._settings.max_line_bytes
        while True:
            data = generation.reader.read(generation.offset, size)
            if len(data) < size or b"\n" in data or size >= limit:
                if data:
                    self._read_size = min(self._read_size * 4, self._settings.read_chunk_size)
                seen = generation.offset + len(data)
                if seen != generation.seen:
                    generation.seen = seen
                    self._read_at = time.monotonic()  # per read, not per line
                return data
            size = min(size * 4, limit)  # one line longer than a read: widen until it fits

    async def _emit(self, generation: _Generation, data: bytes) -> None:
        if not generation.identity_final:
            self._refresh_identity(generation)
        chunk = Chunk(generation.file, generation.offset, data)
        if self._backfill is not None:
            # Read past the end at start (the rest of a line written then): counted too.
            self._backfill.extend(chunk.end - max(chunk.start, generation.once_end))
        generation.offset += len(data)
        generation.size = max(generation.size, generation.offset)
        if self._joiner.head_lost and chunk.start > 0:
            # The headless rest of a split line is at the start of a file; reading resumes
            # past that start, so that rest was shipped before.
            self._joiner.head_lost.clear()
        self.ingesting = True
        reserved, self._reserved = self._reserved, 0  # the pipeline holds it from here on
        try:
            await self._pipeline.ingest(chunk, self._decode, reserved=reserved)
        finally:
            self.ingesting = False
        self._record_open_partials(generation)

    def _record_open_partials(self, generation: _Generation) -> None:
        """Note in the file's checkpoint the streams whose last line read so far is the first
        part of a line Docker split (it goes on in the next file): if this file is gone at the
        next start, the rest of those lines ships flagged `partial_head_lost`."""
        entry = generation.entry
        if entry is None:
            return
        handle = generation.file.handle
        streams = tuple(
            sorted(s for s, p in self._joiner.pending.items() if p.file.handle == handle)
        )
        if streams != entry.open_partials:
            generation.entry = self._store.update_offset(
                entry.key, entry.offset, open_partials=streams
            )

    def _decode(self, chunk: Chunk, hold: RangeClaim) -> RecordGroup:
        now = time.monotonic()
        group = self._shaping.decode(
            chunk,
            read_time=format_time_ns(time.time_ns()),
            joiner=self._joiner,
            hold=hold,
            now=now,
        )
        multiline = self._shaping.multiline
        if multiline is not None:
            lines = len(group)
            group = multiline.apply(group, hold, now)
            group.lines_read = lines
        self._finish_group(group)
        return group

    def _finish_group(self, group: RecordGroup) -> None:
        """Enrich and process a group just before it is shipped."""
        # Looked up per chunk, just before it is shipped: a rename Docker wrote to
        # config.v2.json meanwhile is on this chunk's records.
        enrich = self._shaping.enrich
        if enrich is not None:
            group.enrichment = enrich()
        processors = self._shaping.processors
        if processors is not None and group:
            processors.apply(group)

    def flush_pending(self, *, everything: bool = True) -> None:
        """Ship the records waiting for more lines: all of them (the container stopped, or
        its files are gone), or those that waited past their timeouts."""
        now = time.monotonic()
        multiline = self._shaping.multiline
        reason = "stop" if everything else "timeout"
        partials = (
            self._joiner.take_all()
            if everything
            else self._joiner.expired(now, self._settings.partial_flush_timeout)
        )
        groups: list[RecordGroup] = []
        if partials:
            self._count_flushed(len(partials), "partial", reason)
            group = group_of(partials)
            # A line given up on may still be part of a multiline record.
            groups.append(multiline.apply(group, None, now) if multiline is not None else group)
        if multiline is not None:
            waiting = (
                multiline.take_all()
                if everything
                else multiline.expired(now, self._shaping.multiline_timeout)
            )
            if waiting is not None:
                self._count_flushed(len(waiting), "multiline", reason)
                groups.append(waiting)
        for group in groups:
            if group:
                self._finish_group(group)
            self._pipeline.route(group, group.held, 0)

    def _count_flushed(self, records: int, kind: str, reason: str) -> None:
        self._telemetry.inc(
            "shipper_pending_flushed_total", records, source=self.source, kind=kind, reason=reason
        )

    def _refresh_identity(self, generation: _Generation) -> None:
        """A young file grew: its fingerprint covers more bytes now (a growing prefix), and its
        first line may be complete."""
        reader = generation.reader
        head = reader.head()
        if not head:
            return  # still empty: nothing to know yet
        if not generation.file.fingerprint:
            line = reader.first_line()
            if line is not None:
                generation.file = _with_fingerprint(generation.file, stable_id(line))
        generation.identity_final = bool(generation.file.fingerprint) and _final(head)
        generation.prefix = head[:HEAD_BYTES]
        entry = generation.entry
        if entry is not None and len(head) <= entry.head_len:
            return
        new = FileCheckpoint(
            fingerprint=fingerprint(head),
            head_len=len(head),
            path=generation.path,
            device=generation.device,
            inode=generation.inode,
            offset=entry.offset if entry else generation.offset,
            source=self.source,
            updated_at=time.time(),
            size=max(generation.size, len(head)),
        )
        if entry is None:
            self._store.set(new)
        else:
            self._store.rekey(entry.key, new)
        generation.entry = new

    def _settled(self, generation: _Generation, offset: int) -> None:
        """The AckTracker moved this file's settled offset: that is its checkpoint."""
        entry = generation.entry
        if entry is not None and self._store.get(entry.key) is not None:
            generation.entry = self._store.update_offset(entry.key, offset, size=generation.size)
        if self._backfill is not None and offset > generation.once_settled:
            self._backfill.settle(offset - generation.once_settled)
            generation.once_settled = offset
        if generation.finished and offset >= generation.offset:
            self._pipeline.tracker.forget(generation.file.handle)
            self._unsettled.pop(generation.file.handle, None)
            if not generation.handed_over:
                generation.reader.close()

    def _superseded(self, generation: _Generation) -> bool:
        """Whether Docker is done writing this file: the current log name no longer holds it
        (rotated, or the container removed). Docker closes a file before renaming it."""
        if generation.released:
            return True
        try:
            stat = os.stat(self.current_path)
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != generation.key

    async def _check_lingering(self, *, give_up: bool = False) -> None:
        """Read what the writers of renamed files added since; finish those that did not grow
        for `rotate_wait` (or all of them: `give_up`, the directory is gone)."""
        for handle, (generation, deadline) in list(self._lingering.items()):
            try:
                data = self._read(generation)
            except OSError:
                data = b""
            cut = data.rfind(b"\n")
            if cut >= 0:
                await self._emit(generation, data[: cut + 1])
                self._lingering[handle] = (
                    generation,
                    time.monotonic() + self._settings.rotate_wait,
                )
                continue
            if not give_up and time.monotonic() < deadline:
                continue
            del self._lingering[handle]
            if data:  # a line that will never be finished: ship it as it is
                await self._emit(generation, data)
            self._close(generation)

    def _finish(self, generation: _Generation) -> None:
        self._pending.popleft()
        self._close(generation)

    def _close(self, generation: _Generation) -> None:
        """A file is drained: close it; its checkpoint lives on until its ranges settle."""
        generation.finished = True
        # The reader stays open until its ranges settle (`_settled` closes it): if Docker
        # deletes the file meanwhile and a reload restarts the pipeline, the next one reads
        # what was not confirmed again, through this descriptor.
        self._telemetry.inc("shipper_files_closed_total", source=self.source)
        log.info(
            "Finished log file.",
            extra={"path": generation.path, "offset": generation.offset},
        )
        tracker = self._pipeline.tracker
        handle = generation.file.handle
        self._unsettled[handle] = generation
        if tracker.unsettled(handle) == 0:
            self._settled(generation, tracker.settled_offset(handle))

    def _rewritten(self, generation: _Generation) -> bool:
        """Whether the file's first bytes changed: truncated in place and written again (it
        may already be longer than our offset). Checked after each read, so bytes read are
        known to be of the content read so far; a compressed file never changes."""
        prefix = generation.prefix
        if not prefix or generation.reader.compressed:
            return False
        return generation.reader.read(0, len(prefix)) != prefix

    def _truncated(self, generation: _Generation) -> bool:
        """The current file was truncated in place (Docker 20.10 with max-file=1): read it again
        from the start as new content."""
        size = generation.reader.content_size()
        if size >= generation.offset and not self._rewritten(generation):
            generation.size = max(generation.size, size)
            return False
        self._restart(generation, size)
        return True

    def _restart(self, generation: _Generation, size: int) -> None:
        """Read a truncated file again from the start, as a new file: what was not read of the
        old content is counted as lost, unless a copy of it is there to finish reading."""
        self._count_truncation(generation.path, generation.offset, size)
        if self._continue_in_copy(generation):
            return
        entry = generation.entry
        lost = generation.size - generation.offset
        if lost > 0:
            self._lost(generation.path, lost, "truncated")
        if entry is not None:
            self._store.remove(entry.key)
        generation.entry = None
        generation.offset = generation.size = 0
        generation.prefix = b""
        generation.identity_final = False
        # New content, so a new lane: ranges of the old content may still settle, but can no
        # longer move this file's checkpoint.
        self._pipeline.tracker.forget(generation.file.handle)
        generation.file = LogFile(
            source=self.source,
            container_id=self.container_id,
            path=generation.path,
            handle=f"{generation.file.handle}+",
        )
        self._pipeline.tracker.track(
            generation.file.handle, 0, functools.partial(self._settled, generation)
        )

    def _continue_in_copy(self, generation: _Generation) -> bool:
        """logrotate's `copytruncate` copies the live file to a rotated name, then truncates it:
        when shipper had not read everything yet, the rest is in the copy. Go on reading the
        old content there, as the same file (same checkpoint, same pending ranges); the live
        file's new content is opened as a new file by the next listing."""
        entry = generation.entry
        if entry is None or not generation.prefix:
            return False
        try:
            names = os.listdir(self.directory)
        except OSError:
            return False
        open_keys = {g.key for g in self._open_generations()}
        for age, path in self._generations(names):
            if age == 0:
                continue
            try:
                reader = open_log(path)
            except OSError:
                continue
            try:
                stat = reader.stat()
                key = (stat.st_dev, stat.st_ino)
                same = (
                    key not in open_keys
                    and reader.content_size() >= generation.offset
                    and fingerprint(reader.head()[: entry.head_len]) == entry.fingerprint
                )
            except OSError:
                same = False
            if not same:
                reader.close()
                continue
            log.info(
                "Log file was copied and truncated; reading the rest from the copy.",
                extra={"path": generation.path, "copy": path, "offset": generation.offset},
            )
            generation.reader.close()
            generation.reader = reader
            generation.path = path
            generation.device, generation.inode = key
            generation.size = max(generation.size, reader.content_size())
            generation.superseded = True  # a copy does not grow
            self._ignored.pop(key, None)
            generation.entry = _moved(entry, path, stat)
            self._store.set(generation.entry)
            self.reconcile()  # the live file's new content, after this one
            return True
        return False

    async def _idle(self) -> None:
        """Nothing to read: ship records that waited long enough for more, wait, look again."""
        if self._lingering:
            await self._check_lingering()
        self.flush_pending(everything=False)
        await self._pause()
        if not self.watched or self._relist:
            # Without a watch, only listing finds a new or renamed generation. With one, the
            # hints list (see hint) and the source still looks at every rescan_interval: a
            # listing and two stats per idle follower four times a second cost 0.4 of a core
            # for 1,000 idle containers (bench/many_containers.py).
            self.reconcile()

    def refresh(self) -> None:
        """What a look measures (lag, stall, pinned bytes), without listing the directory
        unless the last listing was left incomplete."""
        if self._relist:
            self.reconcile()
            return
        self._account_pinned()
        self._measure()

    async def _pause(self) -> None:
        self._wake.clear()
        # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
        # arrives as the event is set, and a follower stopped at shutdown would read on.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.poll_interval):
                await self._wake.wait()

    # -- bookkeeping -------------------------------------------------------------------------

    def _measure(self) -> None:
        """Lag and read stall, at each look (a stat per open file, never work per line).

        Lag: of each open file, its size now minus its checkpoint (delivered) offset; of each
        drained one still settling, what it read minus that. A file given up at the pinned
        cap counts what was read of it: the rest is counted as lost, not as behind.

        Stall: a file holds bytes past what the last read saw (so not an unfinished last line
        being waited for), no read has returned new bytes since, and the follower is not
        waiting for the memory budget (a full budget means slow outputs, which readiness
        judges on its own).
        """
        lag = 0
        unread = False
        for generation in self._open_generations():
            if generation.released:
                continue
            try:
                size = generation.reader.content_size()
            except OSError:
                size = generation.size
            if size > generation.size:
                self._grew(generation, size)
            lag += max(0, size - self._delivered(generation))
            if size > max(generation.offset, generation.seen):
                unread = True
        for generation in self._unsettled.values():
            lag += max(0, generation.offset - self._delivered(generation))
        self.lag_bytes = lag
        if unread and not self.ingesting:
            now = time.monotonic()
            if self._unread_since is None:
                self._unread_since = now
            self.stalled_since = max(self._unread_since, self._read_at)
        else:
            self._unread_since = self.stalled_since = None

    def _grew(self, generation: _Generation, size: int) -> None:
        """A file holds more than was read of it: its checkpoint records that size, so if it
        is gone at the next start (deleted while shipper was behind or stopped), all that was
        unread in it is counted lost, not only the part read but not delivered."""
        generation.size = size
        entry = generation.entry
        current = self._store.get(entry.key) if entry is not None else None
        if current is not None:
            generation.entry = self._store.update_offset(current.key, current.offset, size=size)

    @staticmethod
    def _delivered(generation: _Generation) -> int:
        """Where the file's checkpoint is: everything before it reached a final outcome (no
        checkpoint yet: nothing was read, or a truncation started the file over)."""
        entry = generation.entry
        return entry.offset if entry is not None else generation.offset

    def _account_pinned(self) -> None:
        """Sum the disk held by deleted files still open; give the oldest up past the cap."""
        pinned = 0
        deleted: list[tuple[_Generation, int]] = []
        for generation in self._pending:
            if generation.released:
                continue
            stat = generation.reader.stat()
            if stat.st_nlink == 0:
                pinned += stat.st_size
                deleted.append((generation, stat.st_size))
        cap = self._settings.max_pinned_bytes
        if cap is not None:
            for generation, disk in deleted:
                if pinned <= cap:
                    break
                self._release(generation)
                pinned -= disk
        self.pinned_bytes = pinned

    def _release(self, generation: _Generation) -> None:
        """Give a deleted file up before it was drained: its unread bytes are lost, counted."""
        unread = max(0, generation.reader.content_size() - generation.offset)
        generation.released = True
        if unread:
            self._lost(generation.path, unread, "pinned_limit")
        if generation is not self._pending[0]:
            self._pending.remove(generation)
            generation.finished = True
            generation.reader.close()
            self._unsettled[generation.file.handle] = generation

    def _collect_garbage(
        self, checkpoints: list[FileCheckpoint], deferred: set[tuple[int, int]]
    ) -> None:
        """Checkpoints of this container's files that exist no more: gone, and counted as lost
        where they were not read to the end. A file is known by its content, not its inode
        (Docker's next file often gets the inode number of the one it deleted): a checkpoint
        lives while a generation holds it or a listed file was matched to it."""
        referenced = self._busy_keys()
        referenced.update(entry for _, entry in self._ignored.values() if entry is not None)
        for listed in checkpoints:
            entry = self._store.get(listed.key)  # listed before this look: may have moved on
            if entry is None or entry.key in referenced or (entry.device, entry.inode) in deferred:
                continue
            if entry.size > entry.offset:
                self._lost(entry.path, entry.size - entry.offset, "deleted_unread")
                # Lines split by Docker whose first part went with the file: their rest, at
                # the start of the next file, ships flagged `partial_head_lost`.
                self._joiner.head_lost.update(entry.open_partials)
            self._store.remove(entry.key)

    def _lost(self, path: str, count: int, reason: str) -> None:
        self._telemetry.inc("shipper_bytes_lost_total", count, source=self.source, reason=reason)
        log.error(
            "Log bytes lost: the file was gone before they were read.",
            extra={"path": path, "bytes": count, "reason": reason},
        )

    def _count_truncation(self, path: str, offset: int, size: int) -> None:
        self._telemetry.inc("shipper_truncations_total", source=self.source)
        log.warning(
            "Log file was truncated; reading it again from the start.",
            extra={"path": path, "offset": offset, "size": size},
        )


def _deleted(reader: LogReader) -> bool:
    try:
        return reader.stat().st_nlink == 0
    except OSError:
        return False


def _final(identity: bytes) -> bool:
    """Whether these identity bytes are all there will ever be (shipper.sources.identity)."""
    return len(identity) == IDENTITY_BYTES or (
        len(identity) >= HEAD_BYTES and b"\n" in identity[:HEAD_BYTES]
    )


def _with_fingerprint(file: LogFile, fingerprint_: str) -> LogFile:
    return LogFile(
        source=file.source,
        container_id=file.container_id,
        path=file.path,
        handle=file.handle,
        fingerprint=fingerprint_,
    )


def _moved(entry: FileCheckpoint, path: str, stat: os.stat_result) -> FileCheckpoint:
    return FileCheckpoint(
        fingerprint=entry.fingerprint,
        head_len=entry.head_len,
        path=path,
        device=stat.st_dev,
        inode=stat.st_ino,
        offset=entry.offset,
        source=entry.source,
        updated_at=entry.updated_at,
        size=entry.size,
    )
