"""AckTracker: turns out-of-order settlements into each file's highest contiguous settled offset.

The invariant it keeps (DESIGN.md §1): a checkpoint never passes a byte whose record has no final
outcome. Byte ranges are registered in file order before they enter the pipeline; each becomes a
Ticket that may be held by several parties (every record group that covers part of it). When a
ticket's last hold is released and every earlier ticket of its file is settled too, the file's
settled offset advances and that file's `on_advance` callback is told.

A record can span files (a line Docker split across a rotation, a multiline record): its first
part in file N, the rest in N+1. A restart reads each file again from its checkpoint, and joins
parts only as they are read, so the two checkpoints must send it back to both halves or to
neither. If N's stayed before the first part while N+1's passed the rest, the first part, read
again, would be joined to whatever line of its stream comes next; if N's passed the first part
while N+1's stayed before the rest (another stream's line before it is not delivered yet), the
rest would ship again on its own. So a record's holds in the files it spans are one joint
(`join_holds`): settled, they are let go together, once every one of those files can move past
its hold; the checkpoints then move in the same step, which no checkpoint write can split.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shipper.model import Hold

_END = float("inf")  # how far a lane with nothing unsettled could move


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

    __slots__ = ("joint", "offset", "owner_done", "ticket")

    def __init__(self, ticket: Ticket, offset: int) -> None:
        self.ticket: Ticket | None = ticket
        self.offset = offset
        self.joint: _Joint | None = None  # the record's holds in other files, if any
        self.owner_done = False  # released by its record, as a joint's member

    def release(self) -> None:
        if self.joint is not None:
            if self.owner_done:
                raise RuntimeError("tail hold released twice")
            self.owner_done = True
            self.joint.member_released()
            return
        self.let_go()

    def let_go(self) -> None:
        ticket, self.ticket = self.ticket, None
        if ticket is None:
            raise RuntimeError("tail hold released twice")
        ticket._release_tail(self)


def join_holds(hold: Hold, head: Hold) -> Hold:
    """`hold`, a record's hold in a later file than the one it starts in, joined with `head`
    (the record's tail hold where it starts) and any other hold joined with it: the record
    releases each, and they are let go together once each of their files can move past its
    hold (see the module docstring). Returns `hold` as it is when either is not a tail hold of
    this tracker still held."""
    if (
        not isinstance(head, TailHold)
        or head.ticket is None
        or head.owner_done
        or not isinstance(hold, TailHold)
        or hold.ticket is None
        or hold.joint is not None
        or hold.ticket._lane.book is not head.ticket._lane.book
    ):
        return hold
    joint = head.joint
    if joint is None:
        joint = head.joint = _Joint(head.ticket._lane.book, head)
    joint.add(hold)
    return hold


class _Joint:
    """A record's tail holds in the files it spans: released by the record one by one, then
    let go together by the book of joints once every file can move past its hold."""

    __slots__ = ("book", "members", "unreleased")

    def __init__(self, book: _JointBook, head: TailHold) -> None:
        self.book = book
        self.members = [head]
        self.unreleased = 1

    def add(self, member: TailHold) -> None:
        member.joint = self
        self.members.append(member)
        self.unreleased += 1

    def member_released(self) -> None:
        self.unreleased -= 1
        if self.unreleased == 0:
            self.book.settled.append(self)
            self.book.resolve()


class _JointBook:
    """The joints whose records settled and whose holds still wait, for every file of one
    tracker: which can be let go now, and letting them go."""

    __slots__ = ("_resolving", "settled")

    def __init__(self) -> None:
        self.settled: list[_Joint] = []
        self._resolving = False

    def resolve(self) -> None:
        """Let go of every settled joint each of whose files can move past its hold, counting
        as blocking only what is not let go in the same step. Joints of records split across
        the same rotation in crossed order (stdout's first part before stderr's in N, its rest
        after stderr's in N+1) wait for each other's holds: they go in one step."""
        if self._resolving or not self.settled:
            return
        self._resolving = True  # letting go moves lanes, whose advance comes back here
        try:
            while self.settled:
                ready = self._ready()
                if not ready:
                    return
                self.settled = [joint for joint in self.settled if joint not in ready]
                for joint in ready:
                    for member in joint.members:
                        if member.ticket is not None:
                            member.let_go()
        finally:
            self._resolving = False

    def _ready(self) -> set[_Joint]:
        ready = set(self.settled)
        while ready:
            blocked = {
                joint
                for joint in ready
                if any(
                    member.ticket is not None
                    and not member.ticket._lane.detached
                    and member.ticket._lane.free_up_to(ready) <= member.offset
                    for member in joint.members
                )
            }
            if not blocked:
                break
            ready -= blocked
        return ready


class _Lane:
    """The tickets of one file identity, oldest first."""

    __slots__ = ("book", "detached", "key", "offset", "on_advance", "tickets")

    def __init__(
        self, key: str, offset: int, on_advance: Callable[[int], None], book: _JointBook
    ) -> None:
        self.key = key
        self.offset = offset
        self.tickets: deque[Ticket] = deque()
        self.on_advance = on_advance
        self.detached = False
        self.book = book

    def free_up_to(self, letting_go: set[_Joint]) -> float:
        """How far this file's settled offset could move if the holds of `letting_go` went."""
        position: float = self.offset
        for ticket in self.tickets:
            if ticket.holds:
                return position
            others = [
                tail.offset
                for tail in ticket.tails
                if tail.joint is None or tail.joint not in letting_go
            ]
            if others:
                return min(others)
            position = ticket.end
        return _END

    def detach(self) -> None:
        """No longer this file's lane (forgotten, or its file started over): nothing it holds
        back can be read again from it, so the joints it was part of need not wait for it."""
        self.detached = True
        self.book.resolve()

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
        if self.book.settled:
            self.book.resolve()  # what blocked a settled joint's hold may have settled now


class AckTracker:
    """Per-file ordered tickets, keyed by the file's handle (`LogFile.handle`)."""

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane] = {}
        self._joints = _JointBook()

    def track(self, key: str, offset: int, on_advance: Callable[[int], None]) -> None:
        """Start tracking a file whose bytes before `offset` are already settled.

        `on_advance(offset)` runs each time the settled prefix grows.

        Tracking again (a truncated file read from 0) detaches the old tickets: they may still
        be released, but can no longer move this file's checkpoint.
        """
        old = self._lanes.get(key)
        if old is not None:
            old.detach()
        self._lanes[key] = _Lane(key, offset, on_advance, self._joints)

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
