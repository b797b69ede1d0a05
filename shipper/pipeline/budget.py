"""ByteBudget: bounds the bytes read but not yet settled, so a stalled output stops reading."""

from __future__ import annotations

import asyncio

from shipper.telemetry.counters import Telemetry


class ByteBudget:
    """A semaphore counted in bytes.

    A reader acquires a chunk's size before decoding it and the pipeline releases it when every
    output has settled the chunk's records. Memory therefore stays flat whatever the backlog: the
    log files on disk are the buffer (DESIGN.md §1). One chunk larger than the whole budget is
    still let through when nothing else is held, so an oversized line cannot deadlock reading.
    """

    def __init__(self, limit: int, telemetry: Telemetry) -> None:
        self.limit = limit
        self.used = 0
        self._telemetry = telemetry
        self._freed = asyncio.Event()

    async def acquire(self, size: int) -> None:
        while self.used + size > self.limit and self.used > 0:
            self._freed.clear()
            await self._freed.wait()
        self.used += size
        self._telemetry.set("shipper_buffered_bytes", self.used)

    def release(self, size: int) -> None:
        self.used -= size
        self._telemetry.set("shipper_buffered_bytes", self.used)
        self._freed.set()  # every waiter looks again; the ones that fit go on
