"""The dead-letter file: records no destination will ever accept, kept with the reason why."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from shipper.model import RecordGroup, Rejection
from shipper.sinks.ecs import encode_spliced


class DeadLetterFile:
    """Appends one NDJSON line per rejected record and fsyncs before the checkpoint may move.

    Each line holds the time, the output, the reason, the file and offset the record came from
    and the document itself, so it can be inspected and sent again later.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    async def write(
        self, output: str, rejected: Sequence[tuple[RecordGroup, int, str | Rejection]]
    ) -> None:
        now = time.time()
        lines = b"".join(
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
                    # The record exactly as the outputs got it: processed and redacted when
                    # the source has processors, so no secret reaches this file either.
                    "document": orjson.Fragment(encode_spliced(group, (index,))[:-1]),
                }
            )
            + b"\n"
            for group, index, reason in rejected
        )
        await asyncio.to_thread(self._append, lines)

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)


def _details(reason: str | Rejection) -> dict[str, object]:
    if not isinstance(reason, Rejection):
        return {}
    details: dict[str, object] = {}
    if reason.status is not None:
        details["status"] = reason.status
    if reason.error_type is not None:
        details["error_type"] = reason.error_type
    return details
