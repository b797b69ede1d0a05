"""SIGKILL `shipper run` at random moments, again and again, while it ships into Splunk HEC with
indexer acknowledgement.

The model is test_crash_cycles.py (file output), whose writer (three containers logging and
rotating, one gzipping its rotated files, a few lines over 16 KiB that come in parts) and whose
reading of checkpoint entries as the files on disk (`Disk`) are used here as they are. The
destination is the fake HEC of tests/fake_splunk.py, in the test process, so it outlives every
shipper it serves. Acks become true 50 ms after each request and are polled every 50 ms, a few
requests are answered 503 (busy) all along, several requests are in flight and bodies are
gzipped: kills land between a request and its answer, between an answer and its ack, and
between an ack and the next checkpoint flush.

HEC has no idempotency: what a killed run had sent past its last flushed checkpoint is sent
again by the next run and indexed twice. The promise, checked kill by kill:
- nothing is lost: every line written is in HEC, with an acknowledged copy;
- a checkpoint never passes a line not acknowledged: every line of a file before the offset
  flushed by kill i has a copy HEC acknowledged to a run before that kill;
- a line sent again lies after the checkpoint: each event a run sends that an earlier run had
  already indexed is at or after the offset flushed before the kill that ended the run before
  it, in its file; and no run sends a line twice itself.
Each shipper has its own data channel (a uuid4 per output and process), so the channel of an
event tells which run sent it. The checkpoint file is read right after each kill, which is what
it held at the kill: only that process wrote it.
"""

from __future__ import annotations

import base64
import random
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.docker_writer import SEQ_PATTERN
from tests.fake_splunk import Event, FakeSplunk
from tests.helpers import start_shipper, wait_started, wait_until_sync
from tests.scenarios.test_crash_cycles import CrashWriter, Disk

CYCLES = 24
SEED = 20241129
STUCK = 10.0  # seconds without a new event: what is missing will not come
BUSY_SHARE = 0.03  # requests HEC answers 503 code 9
TOKEN = "9b1f4e2a-c0de-4b5e-8d1f-5h1pp3r-crash"
INDEX = "containers"

Key = tuple[str, int]  # (container id, seq): seqs are unique per container across streams


# -- shipper --------------------------------------------------------------------------------------


def write_config(tmp: Path, hec: FakeSplunk) -> Path:
    config = tmp / "shipper.yaml"
    config.write_text(
        f"""
state_dir: {tmp / "state"}
# Any free port: shipper processes of several tests may overlap.
monitoring:
  port: 0
sources:
  docker:
    type: docker_json
    root: {tmp / "containers"}
    poll_interval: 20ms
outputs:
  hec:
    type: splunk_hec
    url: "{hec.url}"
    token: ${{HEC_TOKEN}}
    event: record
    index: {INDEX}
    max_in_flight: 4
    compression:
      enabled: true
    ack:
      enabled: true
      poll_interval: 50ms
      timeout: 10s
    batch:
      max_records: 200
      linger: 50ms
    retry:
      initial_backoff: 50ms
      max_backoff: 200ms
checkpoints:
  flush_interval: 200ms
logging:
  level: debug
"""
    )
    return config


@dataclass(frozen=True, slots=True)
class Kill:
    """What was durable when a shipper died: its checkpoints, and the channels used so far."""

    checkpoint: dict[str, int]  # stable file id (log.file.fingerprint) -> offset
    channels: frozenset[str]


def settle(hec: FakeSplunk) -> None:
    """Until HEC answered (or dropped) every request it read: a killed shipper's last bytes
    may still be in the socket when it dies."""
    wait_until_sync(
        lambda: all(r.status is not None or r.dropped for r in hec.requests),
        timeout=10,
        what="HEC done with the killed shipper's requests",
    )


def channels(hec: FakeSplunk) -> frozenset[str]:
    return frozenset(r.channel for r in hec.ingest_requests() if r.channel is not None)


def snapshot(tmp: Path, hec: FakeSplunk, disk: Disk) -> Kill:
    settle(hec)
    checkpoint: dict[str, int] = {}
    path = tmp / "state" / "checkpoints.json"
    if path.exists():
        for entry in orjson.loads(path.read_bytes())["files"]:
            stable = disk.stable_id(entry)
            assert stable not in checkpoint, f"two checkpoint entries for one file: {entry}"
            checkpoint[stable] = entry["offset"]
    return Kill(checkpoint, channels(hec))


def kill_cycles(tmp: Path, config: Path, hec: FakeSplunk) -> list[Kill]:
    """Start shipper, SIGKILL it after a random moment, keep what was durable; CYCLES times."""
    rng = random.Random(SEED)
    disk = Disk()
    kills: list[Kill] = []
    for cycle in range(CYCLES):
        process, stderr = start_shipper(tmp, config, f"run-{cycle:02d}")
        try:
            wait_started(process, stderr)
            time.sleep(rng.uniform(0.1, 0.9))  # the point of the test: a moment nobody chose
            assert process.poll() is None, stderr.read_text()
        finally:
            process.kill()  # SIGKILL
            process.wait(timeout=30)
        kills.append(snapshot(tmp, hec, disk))
    return kills


def final_run(tmp: Path, config: Path, hec: FakeSplunk, expected: set[Key]) -> None:
    """Run until every written line has an acknowledged copy in HEC (or HEC stops getting new
    events: the checks then say what is missing), then stop cleanly."""
    process, stderr = start_shipper(tmp, config, "final")
    try:
        wait_started(process, stderr)
        progress = (-1, time.monotonic())

        def acknowledged_or_stuck() -> bool:
            nonlocal progress
            assert process.poll() is None, stderr.read_text()[-3000:]
            events = hec.events()
            if len(events) != progress[0]:
                progress = (len(events), time.monotonic())
            if time.monotonic() - progress[1] > STUCK:
                return True
            return len(events) >= len(expected) and expected <= confirmed_keys(hec, events)

        wait_until_sync(acknowledged_or_stuck, timeout=120, what="every line acknowledged")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, stderr.read_text()[-3000:]
    finally:
        process.kill()
        process.wait()


# -- reading events ------------------------------------------------------------------------------


def record(event: Event) -> dict[str, Any]:
    assert isinstance(event.event, dict), event.event
    return event.event


def key_of(event: Event) -> Key:
    document = record(event)
    seqs = SEQ_PATTERN.findall(document["message"])
    assert len(seqs) == 1, document["message"][-200:]
    return document["container"]["id"], int(seqs[0])


def place_of(event: Event) -> tuple[str, int]:
    """(stable file id, offset) of the line the event was read from."""
    log = record(event)["log"]
    return log["file"]["fingerprint"], log["offset"]


def confirmed(hec: FakeSplunk, events: list[Event]) -> list[Event]:
    """The events of requests whose ackId HEC reported true."""
    reported = set(hec.acks_reported)
    return [e for e in events if e.ack_id is not None and (e.channel, e.ack_id) in reported]


def confirmed_keys(hec: FakeSplunk, events: list[Event]) -> set[Key]:
    return {key_of(event) for event in confirmed(hec, events)}


def runs_of(events: list[Event], kills: list[Kill]) -> list[list[Event]]:
    """The events of each run (len(kills) + 1 runs, the final one last), by data channel."""
    run_of_channel: dict[str, int] = {}
    for run, kill in enumerate(kills):
        for channel in kill.channels:
            run_of_channel.setdefault(channel, run)
    runs: list[list[Event]] = [[] for _ in range(len(kills) + 1)]
    for event in events:
        assert event.channel is not None, "an event without a data channel"
        runs[run_of_channel.get(event.channel, len(kills))].append(event)
    return runs


# -- checks ---------------------------------------------------------------------------------------


def check_nothing_lost(hec: FakeSplunk, events: list[Event], expected: set[Key]) -> Counter[Key]:
    copies = Counter(key_of(event) for event in events)
    lost = sorted(expected - copies.keys())
    assert lost == [], f"{len(lost)} line(s) lost, first (container, seq): {lost[:10]}"
    assert copies.keys() <= expected, sorted(copies.keys() - expected)[:10]
    unconfirmed = sorted(expected - confirmed_keys(hec, events))
    assert unconfirmed == [], f"{len(unconfirmed)} line(s) never acknowledged: {unconfirmed[:10]}"
    assert {event.index for event in events} == {INDEX}
    # Nothing was cut, mangled or taken for a torn head: no record carries a flag.
    flagged = [record(event)["log"] for event in events if record(event)["log"].get("flags")]
    assert flagged == [], flagged[:5]
    return copies


def check_checkpoints_behind_acks(hec: FakeSplunk, events: list[Event], kills: list[Kill]) -> None:
    """Every line of a file before the offset flushed by kill i has a copy HEC acknowledged to
    a run before that kill (a line Docker split is one record, at the offset of its first part)."""
    runs = runs_of(events, kills)
    offsets: dict[str, set[int]] = defaultdict(set)
    for event in events:
        stable, offset = place_of(event)
        offsets[stable].add(offset)
    passed: list[str] = []
    acknowledged: set[tuple[str, int]] = set()
    for cycle, kill in enumerate(kills):
        assert kill.checkpoint, f"no checkpoint flushed by kill {cycle}"
        acknowledged.update(place_of(event) for event in confirmed(hec, runs[cycle]))
        passed.extend(
            f"kill {cycle}: line at {offset} of file {stable[:12]}, checkpoint {floor}"
            for stable, floor in kill.checkpoint.items()
            for offset in sorted(offsets.get(stable, ()))
            if offset < floor and (stable, offset) not in acknowledged
        )
    assert passed == [], f"{len(passed)} unacknowledged line(s) behind a checkpoint:\n" + "\n".join(
        passed[:20]
    )


def check_repeats_after_checkpoints(events: list[Event], kills: list[Kill]) -> int:
    """Run i+1 (started after kill i) repeats only lines at or after the checkpoint flushed
    before kill i, and nothing of its own. Returns how many repeats there were."""
    runs = runs_of(events, kills)
    before: set[Key] = set()
    repeats = 0
    late: list[str] = []
    for run, sent in enumerate(runs):
        within = Counter(key_of(event) for event in sent)
        twice = [key for key, count in within.items() if count > 1]
        assert twice == [], f"run {run} sent these twice itself: {twice[:10]}"
        floors = kills[run - 1].checkpoint if run > 0 else {}
        for event in sent:
            if key_of(event) not in before:
                continue
            repeats += 1
            stable, offset = place_of(event)
            floor = floors.get(stable, 0)  # a file the checkpoint did not know yet: 0
            if offset < floor:
                late.append(
                    f"run {run}: {key_of(event)} at offset {offset} of "
                    f"{record(event)['log']['file']['path']}, checkpoint {floor}"
                )
        before.update(within)
    assert late == [], f"{len(late)} repeat(s) before the checkpoint:\n" + "\n".join(late[:20])
    return repeats


def check_no_token_in_logs(tmp: Path) -> None:
    forms = [TOKEN, f"Splunk {TOKEN}", base64.b64encode(TOKEN.encode()).decode()]
    leaked = [
        f"{path.name}: {line[:200]!r}"
        for path in sorted((tmp / "logs").iterdir())
        for line in path.read_text(errors="replace").splitlines()
        if any(form in line for form in forms)
    ]
    assert leaked == [], leaked[:5]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_at_random_moments_loses_nothing_and_repeats_only_after_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    began = time.monotonic()
    monkeypatch.setenv("HEC_TOKEN", TOKEN)  # the config says token: ${HEC_TOKEN}
    with FakeSplunk() as hec:
        hec.add_token(TOKEN, indexes=(INDEX,), use_ack=True)
        hec.delay_acks(0.05)
        busy = random.Random(SEED + 1)
        hec.fail_requests(
            None, status=503, match=lambda r: r.is_ingest and busy.random() < BUSY_SHARE
        )
        config = write_config(tmp_path, hec)
        writer = CrashWriter(tmp_path / "containers")
        writer.start()
        try:
            kills = kill_cycles(tmp_path, config, hec)
        finally:
            writer.stop()
        cycles_done = time.monotonic()
        final_run(tmp_path, config, hec, writer.expected)
        finished = time.monotonic()
        events = hec.events()
        assert hec.internal_errors == []

    copies = check_nothing_lost(hec, events, writer.expected)
    check_checkpoints_behind_acks(hec, events, kills)
    repeats = check_repeats_after_checkpoints(events, kills)
    duplicates = len(events) - len(copies)
    assert repeats == duplicates
    assert duplicates > 0, "no kill made shipper send an indexed line again: the test proved little"
    check_no_token_in_logs(tmp_path)

    files = sum(len(log.log_files()) for log in writer.logs)
    print(
        f"\n{CYCLES} kills, {len(writer.expected)} lines ({writer.long_lines} over 16 KiB), "
        f"{files} log files, {len(events)} events indexed, {duplicates} duplicates (all after "
        f"their run's checkpoint), {hec.codes[9]} requests answered 503, "
        f"{len(hec.acks_reported)} acks confirmed; cycles {cycles_done - began:.1f}s, "
        f"final run {finished - cycles_done:.1f}s"
    )
