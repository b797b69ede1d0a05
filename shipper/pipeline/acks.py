"""AckTracker: turns out-of-order settlements into each file's highest contiguous settled offset.

The invariant it keeps (DESIGN.md §1): a checkpoint never passes a byte whose record has no final
outcome. Byte ranges are registered in file order before they enter the pipeline; each becomes a
Ticket that may be held by several parties (every record group that covers part of it). When a
ticket's last hold is released and every earlier ticket of its file is settled too, the file's
settled offset advances and that file's `on_advance` callback is told.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


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


class _Lane:
    """The tickets of one file identity, oldest first."""

    __slots__ = ("detached", "key", "offset", "on_advance", "tickets")

    def __init__(self, key: str, offset: int, on_advance: Callable[[int], None]) -> None:
        self.key = key
        self.offset = offset
        self.tickets: deque[Ticket] = deque()
        self.on_advance = on_advance
        self.detached = False

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
            old.detached = True
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
            lane.detached = True

    def tracked(self) -> list[str]:
        return list(self._lanes)
