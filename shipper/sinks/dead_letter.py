"""The dead-letter file: records no destination will ever accept, kept with the reason why."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from shipper.fileio import fsync_directory
from shipper.model import RecordGroup, Rejection
from shipper.sinks.ecs import encode_spliced

# How long an appender waits between two tries at the lock another appender holds (milliseconds
# of writing and one fsync): a poll, so that it notices meanwhile when the file was set aside.
_LOCK_POLL = 0.002


class DeadLetterFile:
    """Appends one NDJSON line per rejected record and fsyncs before the checkpoint may move.

    Each line holds the time, the output, the reason, where the record was read and the
    document itself, so it can be inspected and sent again later (`shipper
    replay-dead-letters`):

        {"time": 1714564800.1, "output": "es", "reason": "400 document_parsing_exception: …",
         "status": 400, "error_type": "document_parsing_exception",
         "log_file": "/var/lib/docker/containers/…-json.log", "offset": 1234, "end": 1301,
         "fingerprint": "…", "document": {…}}

    `status` and `error_type` are there when the destination gave them; `end` (the byte after
    the record), `fingerprint` (the stable id of the file the record starts in) and `head_file`
    (that file's path, only when it is not `log_file`: a record joined across a rotation) are
    what its Elasticsearch `_id` is made of, so a replay sends it with the id it had.

    Appenders and a replay share the file safely: an append holds an exclusive lock (flock) on
    the file while it writes, and checks under the lock that the file it opened is still the
    one at the path. A replay renames the file aside and then takes the same lock, so once it
    has the lock no append can reach the renamed file any more: the next ones create a new file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    async def write(
        self, output: str, rejected: Sequence[tuple[RecordGroup, int, str | Rejection]]
    ) -> None:
        await self.append(self.encode(output, rejected))

    def encode(
        self, output: str, rejected: Sequence[tuple[RecordGroup, int, str | Rejection]]
    ) -> bytes:
        """The lines `write` appends for these records."""
        now = time.time()
        return b"".join(
            orjson.dumps(
                {
                    "time": now,
                    "output": output,
                    "reason": str(reason),
                    # What the destination said, where it said it: for scripts that sort the
                    # file by cause (a mapping conflict, a parse error...).
                    **_details(reason),
                    "log_file": group.file.path,
                    "offset": group.offsets[index],
                    **_origin(group, index),
                    # The record exactly as the outputs got it: processed and redacted when
                    # the source has processors, so no secret reaches this file either.
                    "document": orjson.Fragment(encode_spliced(group, (index,))[:-1]),
                }
            )
            + b"\n"
            for group, index, reason in rejected
        )

    async def append(self, data: bytes) -> None:
        """Append finished lines (each ending in a newline) and fsync them."""
        if data:
            await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        while True:
            created = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                if not _lock_if_current(fd, self.path):
                    continue  # set aside by a replay since it was opened: open the new one
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)  # releases the lock
            if created:
                # A new file is a new directory entry: durable only once the directory is.
                fsync_directory(directory)
            return


def _lock_if_current(fd: int, path: Path) -> bool:
    """Lock `fd` exclusively and return True while it is still the file at `path`; False (not
    locked) once it is not: a replay renamed it aside, and may hold its lock for long."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not _is_current(fd, path):
                return False
            time.sleep(_LOCK_POLL)  # another appender is writing: milliseconds
            continue
        if _is_current(fd, path):
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False


def _is_current(fd: int, path: Path) -> bool:
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _details(reason: str | Rejection) -> dict[str, object]:
    if not isinstance(reason, Rejection):
        return {}
    details: dict[str, object] = {}
    if reason.status is not None:
        details["status"] = reason.status
    if reason.error_type is not None:
        details["error_type"] = reason.error_type
    return details


def _origin(group: RecordGroup, index: int) -> dict[str, object]:
    """What the record's id is made of besides its start offset (see record_ids): where it ends
    and which file it starts in, as the file's stable id, or its path when it has none."""
    fields: dict[str, object] = {}
    ends = group.ends
    if index < len(ends) and ends[index] >= 0:
        fields["end"] = ends[index]
    origin = group.heads.get(index, group.file)
    if origin.fingerprint:
        fields["fingerprint"] = origin.fingerprint
    if origin.path != group.file.path:
        fields["head_file"] = origin.path
    return fields
