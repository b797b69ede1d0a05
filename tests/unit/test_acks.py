"""Tests for the AckTracker: checkpoints move only to the highest contiguous settled offset."""

from __future__ import annotations

import pytest

from shipper.pipeline.acks import AckTracker


def tracked(offset: int = 0, key: str = "f") -> tuple[AckTracker, list[int]]:
    tracker = AckTracker()
    advances: list[int] = []
    tracker.track(key, offset, advances.append)
    return tracker, advances


def test_in_order_releases_advance_each_time() -> None:
    tracker, advances = tracked(100)
    tickets = [tracker.register("f", end) for end in (150, 200, 260)]
    assert tracker.settled_offset("f") == 100
    assert tracker.unsettled("f") == 3
    for ticket in tickets:
        ticket.release()
    assert advances == [150, 200, 260]
    assert tracker.settled_offset("f") == 260
    assert tracker.unsettled("f") == 0


def test_out_of_order_releases_advance_only_to_contiguous_end() -> None:
    tracker, advances = tracked()
    t1, t2, t3, t4 = (tracker.register("f", end) for end in (10, 20, 30, 40))
    t3.release()
    t2.release()
    assert advances == []
    assert tracker.settled_offset("f") == 0
    t1.release()
    assert advances == [30]  # one call, with the highest contiguous end, not 10 then 20 then 30
    assert tracker.settled_offset("f") == 30
    assert tracker.unsettled("f") == 1
    t4.release()
    assert advances == [30, 40]


def test_reverse_order_release_advances_once_at_the_end() -> None:
    tracker, advances = tracked()
    tickets = [tracker.register("f", end) for end in range(1, 11)]
    for ticket in reversed(tickets[1:]):
        ticket.release()
    assert advances == []
    tickets[0].release()
    assert advances == [10]


def test_a_tail_hold_lets_the_offset_reach_its_start_and_no_further() -> None:
    tracker, advances = tracked()
    t1 = tracker.register("f", 10)
    t2 = tracker.register("f", 20)
    waiting = t1.hold_from(6)  # a record from byte 6 waits for its next line
    t1.release()  # the group decoded from t1 settled
    assert advances == [6]
    t2.release()
    assert advances == [6]
    waiting.release()
    assert advances == [6, 20]
    assert tracker.settled_offset("f") == 20


def test_the_lowest_tail_hold_bounds_the_offset() -> None:
    tracker, advances = tracked()
    t1 = tracker.register("f", 100)
    later = t1.hold_from(70)
    earlier = t1.hold_from(40)
    t1.release()
    assert advances == [40]
    earlier.release()
    assert advances == [40, 70]
    later.release()
    assert advances == [40, 70, 100]


def test_a_tail_hold_on_a_later_range_waits_for_the_earlier_ranges() -> None:
    tracker, advances = tracked()
    t1 = tracker.register("f", 10)
    t2 = tracker.register("f", 20)
    waiting = t2.hold_from(15)
    t2.release()
    assert advances == []
    t1.release()
    assert advances == [15]
    waiting.release()
    assert advances == [15, 20]


def test_a_tail_hold_at_the_start_of_its_range_moves_nothing() -> None:
    tracker, advances = tracked()
    t1 = tracker.register("f", 10)
    waiting = t1.hold_from(0)
    t1.release()
    assert advances == []
    waiting.release()
    assert advances == [10]


def test_a_tail_hold_released_twice_raises() -> None:
    tracker, _ = tracked()
    t1 = tracker.register("f", 10)
    waiting = t1.hold_from(5)
    waiting.release()
    with pytest.raises(RuntimeError, match="released twice"):
        waiting.release()


def test_a_tail_hold_outside_the_range_is_refused() -> None:
    tracker, _ = tracked()
    t1 = tracker.register("f", 10)
    with pytest.raises(ValueError, match="inside the range"):
        t1.hold_from(10)


def test_several_files_are_independent() -> None:
    tracker = AckTracker()
    a_advances: list[int] = []
    b_advances: list[int] = []
    tracker.track("a", 0, a_advances.append)
    tracker.track("b", 1000, b_advances.append)
    a1 = tracker.register("a", 5)
    b1 = tracker.register("b", 1100)
    a2 = tracker.register("a", 9)
    b2 = tracker.register("b", 1200)
    b2.release()
    a2.release()
    assert (a_advances, b_advances) == ([], [])
    b1.release()
    assert (a_advances, b_advances) == ([], [1200])
    a1.release()
    assert (a_advances, b_advances) == ([9], [1200])
    assert tracker.settled_offset("a") == 9
    assert tracker.settled_offset("b") == 1200
    assert sorted(tracker.tracked()) == ["a", "b"]


def test_track_again_detaches_old_tickets() -> None:
    tracker, old_advances = tracked()
    old1 = tracker.register("f", 500)
    old2 = tracker.register("f", 900)
    new_advances: list[int] = []
    tracker.track("f", 0, new_advances.append)  # truncated: read again from 0
    assert tracker.settled_offset("f") == 0
    assert tracker.unsettled("f") == 0
    new1 = tracker.register("f", 40)
    old1.release()
    old2.release()
    assert old_advances == []
    assert new_advances == []
    assert tracker.settled_offset("f") == 0
    new1.release()
    assert new_advances == [40]
    assert old_advances == []


def test_old_ticket_released_after_track_again_does_not_block_new_lane() -> None:
    tracker, _ = tracked()
    stuck = tracker.register("f", 500)  # never released
    advances: list[int] = []
    tracker.track("f", 0, advances.append)
    tracker.register("f", 10).release()
    assert advances == [10]
    assert stuck.holds == 1


def test_forget_stops_tracking_and_ignores_late_releases() -> None:
    tracker, advances = tracked()
    ticket = tracker.register("f", 10)
    tracker.forget("f")
    assert tracker.tracked() == []
    assert tracker.unsettled("f") == 0
    ticket.release()
    assert advances == []
    tracker.forget("f")  # forgetting twice is harmless
    with pytest.raises(KeyError):
        tracker.register("f", 20)


def test_releasing_more_than_held_raises() -> None:
    tracker, advances = tracked()
    ticket = tracker.register("f", 10)
    ticket.release()
    assert advances == [10]
    with pytest.raises(RuntimeError, match="released more often than held"):
        ticket.release()
    assert advances == [10]


def test_releasing_more_than_held_raises_for_a_held_ticket() -> None:
    tracker, advances = tracked()
    tracker.register("f", 5)  # an earlier range keeps the ticket queued
    ticket = tracker.register("f", 10)
    ticket.release()
    with pytest.raises(RuntimeError, match="released more often than held"):
        ticket.release()
    assert advances == []


def test_an_over_release_does_not_stall_the_file() -> None:
    tracker, advances = tracked()
    blocker = tracker.register("f", 5)
    ticket = tracker.register("f", 10)
    ticket.release()
    with pytest.raises(RuntimeError):
        ticket.release()
    blocker.release()
    assert advances == [10]
