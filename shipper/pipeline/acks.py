"""AckTracker: turns out-of-order settlements into each file's highest contiguous settled offset.

The invariant it keeps (DESIGN.md §1): a checkpoint never passes a byte whose record has no final
outcome. Byte ranges are registered in file order before they enter the pipeline; each becomes a
Ticket that may be held by several parties (every record group that covers part of it). When a
ticket's last hold is released and every earlier ticket of its file is settled too, the file's
settled offset advances and that file's `on_advance` callback is told.

A record can span files (a line Docker split across a rotation): its first part in file N, the
rest in N+1. A restart reads each file again from its checkpoint, and joins parts only as they
are read, so the two checkpoints must send it back to both halves or to neither. N's checkpoint
may stay before the first part after the record settled (something earlier in N has no outcome
yet); N+1's must then stay before the rest too, or the first part, read again, would wait for a
rest that is never read again and be joined to whatever line of its stream comes next. So the
holds a record takes in later files are kept after it settles, until the file it starts in has
settled past its first part (`after_head`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shipper.model import Hold


class Ticket:
    """A registered byte range `[.., end)` of one file, settled when its holds drop to zero.

    `holds` counts parties that hold the whole range (the group decoded from it); `tails` are
    parties that hold only from an offset on (a record still waiting for its next line), so the
    file's settled offset may move up to the lowest such offset before the range settles.
    """

    __slots__ = ("_lane", "end", "holds", "tails")

    def __init__(self, lane: _Lane, end: int) -> None:
        self._lane = lane
        self.end = end
        self.holds = 1
        self.tails: list[TailHold] = []

    def hold_from(self, offset: int) -> TailHold:
        """Keep `[offset, end)` unsettled until the returned hold is released."""
        if offset >= self.end:
            raise ValueError("a tail hold must start inside the range")
        tail = TailHold(self, offset)
        self.tails.append(tail)
        return tail

    def release(self) -> None:
        if self.holds <= 0:
            raise RuntimeError("ticket released more often than held")
        self.holds -= 1
        if self.holds == 0:
            self._lane.advance()

    def _release_tail(self, tail: TailHold) -> None:
        self.tails.remove(tail)
        if self.holds == 0:
            self._lane.advance()


class TailHold:
    """A hold on a ticket's range from `offset` on; released once."""

    __slots__ = ("offset", "ticket")

    def __init__(self, ticket: Ticket, offset: int) -> None:
        self.ticket: Ticket | None = ticket
        self.offset = offset

    def release(self) -> None:
        ticket, self.ticket = self.ticket, None
        if ticket is None:
            raise RuntimeError("tail hold released twice")
        ticket._release_tail(self)


def after_head(hold: Hold, head: Hold) -> Hold:
    """`hold`, a record's hold in a later file than the one it starts in, made to outlast the
    record: released, it keeps its range held until the file of `head` (the record's tail hold
    where it starts) has settled past `head`'s offset, or is no longer tracked.

    Without that, N+1's checkpoint could pass the rest of a line whose first part N's checkpoint
    has not passed, and a restart would read that first part again without its rest (see the
    module docstring). Returns `hold` itself when `head` is not a tail hold of this tracker.
    """
    if not isinstance(head, TailHold) or head.ticket is None:
        return hold
    return _AfterHead(hold, head.ticket._lane, head.offset)


class _AfterHead:
    """See `after_head`: released once, by the record; lets `hold` go when the head's file
    has settled past `offset`."""

    __slots__ = ("_hold", "_lane", "_offset")

    def __init__(self, hold: Hold, lane: _Lane, offset: int) -> None:
        self._hold: Hold | None = hold
        self._lane = lane
        self._offset = offset

    def release(self) -> None:
        hold, self._hold = self._hold, None
        if hold is None:
            raise RuntimeError("hold released twice")
        self._lane.release_when_past(self._offset, hold)


class _Lane:
    """The tickets of one file identity, oldest first."""

    __slots__ = ("detached", "key", "offset", "on_advance", "tickets", "waiting")

    def __init__(self, key: str, offset: int, on_advance: Callable[[int], None]) -> None:
        self.key = key
        self.offset = offset
        self.tickets: deque[Ticket] = deque()
        self.on_advance = on_advance
        self.detached = False
        # Holds in later files to release once the settled offset is past theirs (after_head).
        self.waiting: list[tuple[int, Hold]] = []

    def release_when_past(self, offset: int, hold: Hold) -> None:
        """Release `hold` once this file has settled past `offset` (now, if it has)."""
        if self.detached or self.offset > offset:
            hold.release()
        else:
            self.waiting.append((offset, hold))

    def detach(self) -> None:
        """No longer this file's lane (forgotten, or its file started over): nothing it holds
        back can be read again from it, so what waits for it goes."""
        self.detached = True
        self._release_waiting()

    def advance(self) -> None:
        moved = False
        tickets = self.tickets
        while tickets and tickets[0].holds == 0 and not tickets[0].tails:
            self.offset = tickets.popleft().end
            moved = True
        if tickets and tickets[0].holds == 0:
            # Only records waiting for more lines hold the first range: settle up to the first
            # of them, so a restart reads those records again and nothing before them.
            lowest = min(tail.offset for tail in tickets[0].tails)
            if lowest > self.offset:
                self.offset = lowest
                moved = True
        if moved and not self.detached:
            self.on_advance(self.offset)
        if moved and self.waiting:
            self._release_waiting()

    def _release_waiting(self) -> None:
        # Taken off the list before any release: a release moves another file's lane, whose
        # callbacks may come back here.
        if self.detached:
            ready, self.waiting = self.waiting, []
        else:
            ready = [entry for entry in self.waiting if entry[0] < self.offset]
            if not ready:
                return
            self.waiting = [entry for entry in self.waiting if entry[0] >= self.offset]
        for _, hold in ready:
            hold.release()


class AckTracker:
    """Per-file ordered tickets, keyed by the file's handle (`LogFile.handle`)."""

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane] = {}

    def track(self, key: str, offset: int, on_advance: Callable[[int], None]) -> None:
        """Start tracking a file whose bytes before `offset` are already settled.

        `on_advance(offset)` runs each time the settled prefix grows.

        Tracking again (a truncated file read from 0) detaches the old tickets: they may still
        be released, but can no longer move this file's checkpoint.
        """
        old = self._lanes.get(key)
        if old is not None:
            old.detach()
        self._lanes[key] = _Lane(key, offset, on_advance)

    def register(self, key: str, end: int) -> Ticket:
        """The next byte range of `key`, from the previous range's end up to `end`."""
        lane = self._lanes[key]
        ticket = Ticket(lane, end)
        lane.tickets.append(ticket)
        return ticket

    def settled_offset(self, key: str) -> int:
        return self._lanes[key].offset

    def unsettled(self, key: str) -> int:
        """How many registered ranges of `key` wait for an outcome."""
        lane = self._lanes.get(key)
        return len(lane.tickets) if lane else 0

    def forget(self, key: str) -> None:
        """Stop tracking a file (closed and drained); late releases are ignored."""
        lane = self._lanes.pop(key, None)
        if lane is not None:
            lane.detach()

    def tracked(self) -> list[str]:
        return list(self._lanes)
