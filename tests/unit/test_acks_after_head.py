"""The hold a record takes in a later file than the one it starts in (shipper.pipeline.acks
after_head): kept after the record settles until the first file has settled past the record's
start, so that a restart reads both halves of a line Docker split across a rotation, or neither
(the whole story: test_split_line_restart.py)."""

from __future__ import annotations

import pytest

from shipper.pipeline.acks import AckTracker, after_head


def two_files() -> tuple[AckTracker, dict[str, list[int]]]:
    tracker = AckTracker()
    advances: dict[str, list[int]] = {"old": [], "new": []}
    for key, log in advances.items():
        tracker.track(key, 0, log.append)
    return tracker, advances


def test_a_later_files_hold_outlasts_the_record_until_its_first_file_passed_its_start() -> None:
    tracker, advances = two_files()
    before = tracker.register("old", 100)  # lines before the first part, not delivered yet
    old = tracker.register("old", 200)  # ... then the first part, from 150
    new = tracker.register("new", 80)  # the rest, from 0, and more lines
    head = old.hold_from(150)
    rest = after_head(new.hold_from(0), head)
    old.release()  # the groups decoded from the two chunks settle ...
    new.release()
    head.release()  # ... and so does the joined record
    rest.release()
    assert advances == {"old": [], "new": []}  # a restart reads the first part and its rest
    before.release()
    assert advances == {"old": [200], "new": [80]}
    assert tracker.unsettled("old") == tracker.unsettled("new") == 0


def test_a_later_files_hold_goes_with_the_record_when_its_first_file_is_past_already() -> None:
    tracker, advances = two_files()
    old = tracker.register("old", 200)
    new = tracker.register("new", 80)
    head = old.hold_from(150)
    rest = after_head(new.hold_from(0), head)
    old.release()
    assert advances["old"] == [150]
    new.release()
    assert advances["new"] == []
    head.release()
    assert advances == {"old": [150, 200], "new": []}
    rest.release()
    assert advances == {"old": [150, 200], "new": [80]}
    with pytest.raises(RuntimeError):
        rest.release()


@pytest.mark.parametrize("how", ["forget", "track again"])
def test_a_later_files_hold_goes_when_its_first_file_is_no_longer_tracked(how: str) -> None:
    tracker, advances = two_files()
    tracker.register("old", 100)  # never settles
    old = tracker.register("old", 200)
    new = tracker.register("new", 80)
    rest = after_head(new.hold_from(0), old.hold_from(150))
    new.release()
    rest.release()
    assert advances["new"] == []
    if how == "forget":
        tracker.forget("old")
    else:
        tracker.track("old", 0, advances["old"].append)  # truncated: read again as new content
    assert advances["new"] == [80]


def test_only_a_tail_hold_of_the_tracker_is_waited_for() -> None:
    tracker, _ = two_files()
    new = tracker.register("new", 80)
    rest = new.hold_from(0)
    assert after_head(rest, new) is rest  # a whole ticket is no record's head
