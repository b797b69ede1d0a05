"""The holds a record takes in the files it spans (shipper.pipeline.acks join_holds): one joint,
let go in one step once every one of those files can move past its hold, so that a restart
reads every part of a line Docker split across a rotation, or none (the whole story:
test_split_line_restart.py)."""

from __future__ import annotations

import pytest

from shipper.pipeline.acks import AckTracker, join_holds


def two_files() -> tuple[AckTracker, dict[str, list[int]]]:
    tracker = AckTracker()
    advances: dict[str, list[int]] = {"old": [], "new": []}
    for key, log in advances.items():
        tracker.track(key, 0, log.append)
    return tracker, advances


def last(advances: dict[str, list[int]]) -> dict[str, int | None]:
    """Where each file's settled offset is now."""
    return {key: log[-1] if log else None for key, log in advances.items()}


def test_the_holds_wait_for_what_comes_before_the_first_part() -> None:
    tracker, advances = two_files()
    before = tracker.register("old", 100)  # lines before the first part, not delivered yet
    old = tracker.register("old", 200)  # ... then the first part, from 150
    new = tracker.register("new", 80)  # the rest, from 0, and more lines
    head = old.hold_from(150)
    rest = join_holds(new.hold_from(0), head)
    old.release()  # the groups decoded from the two chunks settle ...
    new.release()
    head.release()  # ... and so does the joined record
    rest.release()
    assert advances == {"old": [], "new": []}  # a restart reads the first part and its rest
    before.release()
    # Up to the first part (a restart would read both), then past both in one step.
    assert advances == {"old": [150, 200], "new": [80]}
    assert tracker.unsettled("old") == tracker.unsettled("new") == 0


def test_the_holds_wait_for_what_comes_before_the_rest() -> None:
    # Another stream's line comes before the rest in the new file and is not delivered yet:
    # the old file must not pass the first part either, or a restart reads the rest alone.
    tracker, advances = two_files()
    old = tracker.register("old", 200)
    between = tracker.register("new", 50)  # a stderr line, in a chunk of its own
    new = tracker.register("new", 80)  # the rest, from 50
    head = old.hold_from(150)
    rest = join_holds(new.hold_from(50), head)
    old.release()
    new.release()
    head.release()
    rest.release()
    assert advances == {"old": [150], "new": []}
    between.release()  # both move in this one step (a checkpoint write sees both or neither)
    assert last(advances) == {"old": 200, "new": 80}


def test_the_holds_go_with_the_record_when_nothing_else_waits() -> None:
    tracker, advances = two_files()
    old = tracker.register("old", 200)
    new = tracker.register("new", 80)
    head = old.hold_from(150)
    rest = join_holds(new.hold_from(0), head)
    old.release()
    assert advances["old"] == [150]
    new.release()
    assert advances["new"] == []
    head.release()  # the record releases its holds one by one: nothing moves before the last
    assert advances == {"old": [150], "new": []}
    rest.release()
    assert advances == {"old": [150, 200], "new": [80]}
    with pytest.raises(RuntimeError):
        rest.release()


def test_records_split_across_one_rotation_in_crossed_order_go_together() -> None:
    # stdout's first part before stderr's in the old file, its rest after stderr's in the new
    # one: each record's hold in one file stands before the other's. Neither waits forever.
    tracker, advances = two_files()
    old = tracker.register("old", 300)
    new_first = tracker.register("new", 50)  # stderr's rest
    new_second = tracker.register("new", 100)  # stdout's rest
    stdout_head = old.hold_from(100)
    stderr_head = old.hold_from(200)
    stdout_rest = join_holds(new_second.hold_from(50), stdout_head)
    stderr_rest = join_holds(new_first.hold_from(0), stderr_head)
    for hold in (old, new_first, new_second, stdout_head, stdout_rest, stderr_head):
        hold.release()
    assert advances == {"old": [100], "new": []}
    stderr_rest.release()
    assert last(advances) == {"old": 300, "new": 100}


def test_a_record_over_three_files_holds_all_three() -> None:
    tracker = AckTracker()
    advances: dict[str, list[int]] = {"n": [], "n+1": [], "n+2": []}
    for key, log in advances.items():
        tracker.track(key, 0, log.append)
    first = tracker.register("n", 100)
    middle = tracker.register("n+1", 100)
    before_last = tracker.register("n+2", 10)  # not delivered yet
    final = tracker.register("n+2", 60)
    head = first.hold_from(50)
    holds = [head, join_holds(middle.hold_from(0), head), join_holds(final.hold_from(10), head)]
    for hold in (first, middle, final, *holds):
        hold.release()
    assert advances == {"n": [50], "n+1": [], "n+2": []}
    before_last.release()
    assert last(advances) == {"n": 100, "n+1": 100, "n+2": 60}


@pytest.mark.parametrize("how", ["forget", "track again"])
def test_the_holds_go_when_the_first_file_is_no_longer_tracked(how: str) -> None:
    tracker, advances = two_files()
    tracker.register("old", 100)  # never settles
    old = tracker.register("old", 200)
    new = tracker.register("new", 80)
    head = old.hold_from(150)
    rest = join_holds(new.hold_from(0), head)
    new.release()
    head.release()
    rest.release()
    assert advances["new"] == []
    if how == "forget":
        tracker.forget("old")
    else:
        tracker.track("old", 0, advances["old"].append)  # truncated: read again as new content
    assert advances["new"] == [80]


def test_only_a_tail_hold_of_the_tracker_is_joined() -> None:
    tracker, _ = two_files()
    new = tracker.register("new", 80)
    rest = new.hold_from(0)
    assert join_holds(rest, new) is rest  # a whole ticket is no record's head
    assert rest.joint is None
