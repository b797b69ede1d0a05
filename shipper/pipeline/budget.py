"""ByteBudget: bounds the bytes read but not yet settled, and shares them fairly between readers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Hashable

from shipper.telemetry.counters import Telemetry

_Waiter = tuple[int, asyncio.Future[None]]


class ByteBudget:
    """A semaphore counted in bytes, shared fairly between keys (the pipeline uses one key per
    container).

    A reader acquires a chunk's size before decoding it and the pipeline releases it when every
    output has settled the chunk's records. Memory therefore stays flat whatever the backlog: the
    log files on disk are the buffer (DESIGN.md §1).

    A key is active while it holds bytes or waits for some; its share is the limit divided by
    the number of active keys. A key may take another chunk only while it holds less than its
    share (so it may end up to one chunk over, and the keys together can fill the limit): a
    chunk larger than the share still goes when its key holds nothing. Outputs send groups in
    the order they were read, so what a noisy container holds is what a quiet container's next
    chunk queues behind: while the quiet one is active, that is at most a share and a chunk,
    not the whole limit. A lone key's share is the whole limit: it reads as without sharing.

    Waiters are served round-robin by key, one grant per key per turn, and first come, first
    served within a key. A key at or over its share is passed over (only its own releases, or
    fewer active keys, let it go on). The first key that may go but does not fit holds the
    others back until enough is released, so a large chunk is not starved by a stream of small
    ones. A chunk larger than the whole limit goes when nothing else is held, so an oversized
    line cannot deadlock reading.
    """

    def __init__(self, limit: int, telemetry: Telemetry) -> None:
        self.limit = limit
        self.used = 0
        self._telemetry = telemetry
        self._held: dict[Hashable, int] = {}  # by active key; len() is the divisor of the share
        self._ring: dict[Hashable, deque[_Waiter]] = {}  # keys with waiters, next to serve first

    def held(self, key: Hashable = None) -> int:
        """The bytes `key` holds now."""
        return self._held.get(key, 0)

    async def acquire(self, size: int, key: Hashable = None) -> None:
        """Wait until `size` more bytes may be held by `key`, and hold them."""
        if size <= 0:
            return  # nothing to hold; an entry for it would count `key` as active for ever
        held = self._held
        mine = held.get(key, 0)
        used = self.used + size
        if (
            not self._ring
            and (used <= self.limit or used == size)
            and (not mine or mine * len(held) < self.limit)
        ):
            held[key] = mine + size
            self.used = used
            self._telemetry.set("shipper_buffered_bytes", used)
            return
        granted = asyncio.get_running_loop().create_future()
        waiters = self._ring.get(key)
        if waiters is None:
            waiters = self._ring[key] = deque()
            held.setdefault(key, 0)  # waiting makes it active: the others' shares shrink now
        waiters.append((size, granted))
        self._serve()  # it may go at once, past keys that are over their share
        self._telemetry.set("shipper_buffered_bytes", self.used)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.cancelled():
                queued = self._ring.get(key)
                if queued is not None:
                    # _serve may have dropped it already, seeing the future cancelled.
                    with contextlib.suppress(ValueError):
                        queued.remove((size, granted))
                    if not queued:
                        self._leave_ring(key)
                self._serve()  # we may have been the one holding smaller waiters back
                self._telemetry.set("shipper_buffered_bytes", self.used)
            else:
                self.release(size, key)  # granted just as we were cancelled: give it back
            raise

    def release(self, size: int, key: Hashable = None) -> None:
        """Give back `size` bytes that `key` acquired."""
        if size <= 0:
            return
        held = self._held
        mine = held[key] - size
        if mine or key in self._ring:
            held[key] = mine
        else:
            del held[key]  # no longer active: the other keys' shares grow
        self.used -= size
        if self._ring:
            self._serve()
        self._telemetry.set("shipper_buffered_bytes", self.used)

    def _leave_ring(self, key: Hashable) -> None:
        del self._ring[key]
        if not self._held[key]:
            del self._held[key]

    def _serve(self) -> None:
        ring = self._ring
        held = self._held
        while ring:
            # The first key that may go; keys at or over their share are passed over.
            for key, waiters in ring.items():
                size, granted = waiters[0]
                if granted.done():
                    break  # cancelled, and its task has not run yet to take it out
                mine = held[key]
                if mine and mine * len(held) >= self.limit:
                    continue
                if self.used + size > self.limit and self.used:
                    return  # may go but does not fit: nobody passes it, or it could starve
                break
            else:
                return
            waiters.popleft()
            if granted.done():
                # A done future cannot be granted, and must not hold the others back.
                if not waiters:
                    self._leave_ring(key)
                continue
            del ring[key]
            if waiters:
                ring[key] = waiters  # to the back: one grant per key per turn
            held[key] = mine + size
            self.used += size
            granted.set_result(None)
