"""ByteBudget: bounds the bytes read but not yet settled, so a stalled output stops reading."""

from __future__ import annotations

import asyncio
from collections import deque

from shipper.telemetry.counters import Telemetry


class ByteBudget:
    """A first-come, first-served semaphore counted in bytes.

    A reader acquires a chunk's size before decoding it and the pipeline releases it when every
    output has settled the chunk's records. Memory therefore stays flat whatever the backlog: the
    log files on disk are the buffer (DESIGN.md §1). Waiters are served in arrival order, so a
    large chunk is not starved by a stream of small ones; one chunk larger than the whole budget
    is let through when nothing else is held, so an oversized line cannot deadlock reading.
    """

    def __init__(self, limit: int, telemetry: Telemetry) -> None:
        self.limit = limit
        self.used = 0
        self._telemetry = telemetry
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, size: int) -> None:
        if not self._waiters and self._fits(size):
            self._take(size)
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiters.append((size, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(size)  # granted just as we were cancelled: give it back
            else:
                self._waiters.remove((size, granted))
                self._serve()  # we may have been the head that blocked smaller waiters
            raise

    def release(self, size: int) -> None:
        self.used -= size
        self._telemetry.set("shipper_buffered_bytes", self.used)
        self._serve()

    def _fits(self, size: int) -> bool:
        return self.used + size <= self.limit or self.used == 0

    def _take(self, size: int) -> None:
        self.used += size
        self._telemetry.set("shipper_buffered_bytes", self.used)

    def _serve(self) -> None:
        while self._waiters:
            size, granted = self._waiters[0]
            if not self._fits(size):
                return
            self._waiters.popleft()
            self._take(size)
            granted.set_result(None)
