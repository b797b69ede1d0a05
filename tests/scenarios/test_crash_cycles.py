"""SIGKILL shipper at random moments, again and again, while containers log and rotate.

Each kill may leave a torn output line and a checkpoint up to one flush interval old. The promise
(README, "What it guarantees"): nothing is lost while Docker keeps the files, and a line shipped
twice lies after the checkpoint flushed before the kill. The test holds shipper to both, cycle by
cycle: for each kill it keeps the checkpoint file as flushed and how many whole lines the output
had, then checks every repeat in the next run's part of the output against that checkpoint.

Checkpoint entries name a file by (device, inode, path) and a fingerprint of its first bytes;
records name it by `log.file.fingerprint`, the sha256 of its whole first line. The test joins the
two through the files on disk, right after each kill: max-file leaves ample headroom, so Docker
deletes nothing, and a `.N` that became `.N.gz` still has the same content.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pytest

from shipper.docker_writer import SEQ_PATTERN, DockerRootWriter, realistic_lines
from tests.helpers import start_shipper, wait_started, wait_until_sync

CYCLES = 24
SEED = 20240501
KiB = 1024
MAX_SIZE = 64 * KiB
MAX_FILE = 1000  # headroom: at this rate a container writes a few hundred files in all
STUCK = 10.0  # seconds without a new record: what is missing will not come
LONG_LINE_SHARE = 0.005  # lines over 16 KiB, which Docker splits into parts
# Identity bytes of a checkpoint fingerprint (shipper.sources.identity, restated here so that the
# test does not lean on the code it checks): the first KiB of content, plus the last 64 bytes of
# the first line when that line is longer than a KiB.
HEAD_BYTES = 1024
TAIL_BYTES = 64
GZIP_MAGIC = b"\x1f\x8b"


class CrashWriter(threading.Thread):
    """Three containers logging and rotating (one with compress=true) until told to stop."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True, name="crash-writer")
        self.docker = DockerRootWriter(root)  # one clock: every container's first line differs
        self.logs = [
            self.docker.add_container(
                f"app-{n}", max_size=MAX_SIZE, max_file=MAX_FILE, compress=n == 2
            )
            for n in range(3)
        ]
        self.expected: set[tuple[str, int]] = set()
        self.long_lines = 0
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def _write(self) -> None:
        rng = random.Random(SEED)
        generators = [
            realistic_lines(random.Random(SEED + n), 10_000_000, container=log.name)
            for n, log in enumerate(self.logs)
        ]
        while not self.halt.is_set():
            for log, lines in zip(self.logs, generators, strict=True):
                for _ in range(2):
                    stream, message = next(lines)
                    if rng.random() < LONG_LINE_SHARE:
                        # 20-40 KiB, random so that no two parts of long lines look alike; the seq
                        # stays at the end, in the last part.
                        blob = rng.randbytes(rng.randint(10 * KiB, 20 * KiB)).hex()
                        message = f"blob={blob} {message}"
                        self.long_lines += 1
                    log.write(message, stream=stream)
                    (seq,) = map(int, SEQ_PATTERN.findall(message))
                    with self.lock:
                        self.expected.add((log.id, seq))
            self.halt.wait(0.004)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        self.docker.close()  # waits for a compression in flight: every .gz is whole
        if self.error is not None:
            raise self.error


# -- shipper --------------------------------------------------------------------------------------


def write_config(tmp: Path) -> Path:
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
  archive:
    type: file
    path: {tmp / "out.ndjson"}
    batch:
      max_records: 100
      linger: 50ms
checkpoints:
  flush_interval: 100ms
"""
    )
    return config


# -- files on disk: from a checkpoint entry to the identity records carry ------------------------


@dataclass(frozen=True, slots=True)
class Content:
    identity: bytes  # the bytes a checkpoint fingerprint covers (at most HEAD_BYTES + TAIL_BYTES)
    first_line: bytes | None  # with its newline; None while unfinished

    @property
    def stable_id(self) -> str | None:
        return hashlib.sha256(self.first_line).hexdigest() if self.first_line else None

    def matches(self, fingerprint: str, head_len: int) -> bool:
        return (
            len(self.identity) >= head_len
            and hashlib.sha256(self.identity[:head_len]).hexdigest() == fingerprint
        )


def read_content_head(raw: BinaryIO) -> bytes:
    """Up to 1 MiB of a file's content, decompressed, enough for its first line."""
    limit = 1024 * KiB
    stream: BinaryIO = raw
    if raw.read(2) == GZIP_MAGIC:
        stream = gzip.GzipFile(fileobj=raw)  # type: ignore[assignment]
    raw.seek(0)
    data = b""
    with contextlib.suppress(EOFError):  # a .gz still being written: what is there
        while b"\n" not in data and len(data) < limit:
            more = stream.read(4 * KiB if not data else 64 * KiB)
            if not more:
                break
            data += more
    return data


def content_of(data: bytes) -> Content:
    end = data.find(b"\n")
    line = data[: end + 1] if end >= 0 else None
    head = data[:HEAD_BYTES]
    identity = head
    if len(head) == HEAD_BYTES and b"\n" not in head and line is not None:
        identity = head + line[-TAIL_BYTES:]
    return Content(identity, line)


@dataclass(frozen=True, slots=True)
class Seen:
    """One file of a container directory, read through one descriptor: Docker renames files
    all the time, so a name stat-ed a moment before may hold another file by now."""

    name: str
    inode: tuple[int, int]  # (device, inode)
    size: int
    content: Content | None  # None: not readable (yet), e.g. a .gz just begun


class Disk:
    """The container directories, read as shipper's identities; rotated files are cached."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int, int, int], Content] = {}

    def files(self, directory: str) -> list[Seen]:
        found = []
        for name in sorted(os.listdir(directory)):
            if "-json.log" not in name:
                continue
            try:
                raw = open(os.path.join(directory, name), "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:  # rotated away since the listing
                continue
            with raw:
                stat = os.fstat(raw.fileno())
                found.append(
                    Seen(name, (stat.st_dev, stat.st_ino), stat.st_size, self._content(raw, stat))
                )
        return found

    def _content(self, raw: BinaryIO, stat: os.stat_result) -> Content | None:
        key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            content = content_of(read_content_head(raw))
        except gzip.BadGzipFile:
            return None
        if content.first_line is not None and len(content.identity) >= HEAD_BYTES:
            self._cache[key] = content  # final: the identity can grow no more
        return content

    def stable_id(self, entry: dict[str, Any]) -> str:
        """The `log.file.fingerprint` of the file a checkpoint entry describes."""
        fingerprint, head_len = entry["fingerprint"], entry["head_len"]
        directory = os.path.dirname(entry["path"])
        by_id: dict[str, bool] = {}  # stable id -> whether that file has the entry's inode
        for _ in range(50):
            by_id.clear()
            unfinished = False
            for seen in self.files(directory):
                content = seen.content
                if content is None or not content.matches(fingerprint, head_len):
                    continue
                stable = content.stable_id
                if stable is None:
                    unfinished = True  # the first line is still being written: look again
                    continue
                same_inode = seen.inode == (entry["device"], entry["inode"])
                by_id[stable] = by_id.get(stable, False) or same_inode
            if by_id and not unfinished:
                break
            time.sleep(0.02)
        if len(by_id) > 1:
            same = [stable for stable, inode in by_id.items() if inode]
            assert len(same) == 1, f"checkpoint entry {entry} matches several files"
            return same[0]
        assert by_id, f"no file on disk matches checkpoint entry {entry}:\n" + self.describe(
            directory
        )
        return next(iter(by_id))

    def describe(self, directory: str) -> str:
        """The files of a container directory as the test sees them, for a failure message."""
        return "\n".join(
            f"  {seen.name[64:]} inode {seen.inode[1]} size {seen.size}: "
            + (
                "unreadable"
                if seen.content is None
                else f"identity {len(seen.content.identity)} bytes, "
                f"first line {len(seen.content.first_line or b'')} bytes"
            )
            for seen in self.files(directory)
        )


# -- snapshots and the output ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What was durable when shipper died: its checkpoints, and the whole lines of the output."""

    checkpoint: dict[str, int]  # stable file id -> offset
    lines: int  # whole lines in the output
    prefix_len: int
    prefix_sha: str


def snapshot(tmp: Path, disk: Disk) -> Snapshot:
    data = (tmp / "out.ndjson").read_bytes() if (tmp / "out.ndjson").exists() else b""
    prefix_len = data.rfind(b"\n") + 1  # a torn last line is cut at the next start
    checkpoint: dict[str, int] = {}
    path = tmp / "state" / "checkpoints.json"
    if path.exists():
        for entry in orjson.loads(path.read_bytes())["files"]:
            stable = disk.stable_id(entry)
            assert stable not in checkpoint, f"two checkpoint entries for one file: {entry}"
            checkpoint[stable] = entry["offset"]
    return Snapshot(
        checkpoint=checkpoint,
        lines=data.count(b"\n", 0, prefix_len),
        prefix_len=prefix_len,
        prefix_sha=hashlib.sha256(data[:prefix_len]).hexdigest(),
    )


def keys_of(document: dict[str, Any]) -> list[tuple[str, int]]:
    container = document["container"]["id"]
    return [(container, int(seq)) for seq in SEQ_PATTERN.findall(document["message"])]


class Output:
    """The output file parsed as it grows, whole lines only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.documents: list[dict[str, Any]] = []
        self.keys: set[tuple[str, int]] = set()
        self._offset = 0

    def refresh(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            document = orjson.loads(line)
            self.documents.append(document)
            self.keys.update(keys_of(document))
        self._offset += end


def kill_cycles(tmp: Path, config: Path, writer: CrashWriter) -> list[Snapshot]:
    """Start shipper, SIGKILL it after a random moment, keep what was durable; CYCLES times."""
    rng = random.Random(SEED)
    disk = Disk()
    snapshots: list[Snapshot] = []
    for cycle in range(CYCLES):
        process, stderr = start_shipper(tmp, config, f"run-{cycle:02d}")
        try:
            wait_started(process, stderr)
            # The point of the test: a kill at a moment nobody chose.
            time.sleep(rng.uniform(0.2, 1.0))
            assert process.poll() is None, stderr.read_text()
        finally:
            process.kill()  # SIGKILL
            process.wait(timeout=30)
        snapshots.append(snapshot(tmp, disk))
    return snapshots


def final_run(tmp: Path, config: Path, expected: set[tuple[str, int]]) -> Output:
    """Run until every written line is in the output (or the output stops growing: the checks
    then say what is missing), then stop cleanly."""
    output = Output(tmp / "out.ndjson")
    process, stderr = start_shipper(tmp, config, "final")
    try:
        wait_started(process, stderr)
        progress = (len(output.documents), time.monotonic())

        def shipped_or_stuck() -> bool:
            nonlocal progress
            output.refresh()
            assert process.poll() is None, stderr.read_text()
            if len(output.documents) != progress[0]:
                progress = (len(output.documents), time.monotonic())
            return expected <= output.keys or time.monotonic() - progress[1] > STUCK

        wait_until_sync(shipped_or_stuck, timeout=120, what="every written line in the output")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, stderr.read_text()
    finally:
        process.kill()
        process.wait()
    output.refresh()
    return output


def check_nothing_lost(output: Output, expected: set[tuple[str, int]]) -> None:
    documents = output.documents
    assert len(documents) == output.path.read_bytes().count(b"\n")
    assert all(keys_of(document) for document in documents), "a record without its seq"
    lost = sorted(expected - output.keys)
    assert lost == [], f"{len(lost)} line(s) lost, first (container, seq): {lost[:10]}"
    assert output.keys <= expected, sorted(output.keys - expected)[:10]
    # Nothing was cut, mangled or taken for a torn head: no record carries a flag.
    flagged = [document["log"] for document in documents if document["log"].get("flags")]
    assert flagged == [], flagged[:5]


def check_durable_prefixes(output: Output, snapshots: list[Snapshot]) -> None:
    """What was in the output at each kill stayed as it was: a restart only cuts a torn line."""
    data = output.path.read_bytes()
    for cycle, shot in enumerate(snapshots):
        assert hashlib.sha256(data[: shot.prefix_len]).hexdigest() == shot.prefix_sha, cycle


def check_checkpoints_behind_delivery(output: Output, snapshots: list[Snapshot]) -> None:
    """The invariant behind both promises: a checkpoint never passes a line not delivered.

    Every record of a file that starts before the offset flushed before kill i was in the output
    before kill i (a line Docker split is one record, at the offset of its first part).
    """
    documents = output.documents
    offsets: dict[str, set[int]] = {}
    for document in documents:
        log = document["log"]
        offsets.setdefault(log["file"]["fingerprint"], set()).add(log["offset"])
    passed: list[str] = []
    for cycle, shot in enumerate(snapshots):
        assert shot.checkpoint, f"no checkpoint flushed by kill {cycle}"
        delivered = {
            (document["log"]["file"]["fingerprint"], document["log"]["offset"])
            for document in documents[: shot.lines]
        }
        passed.extend(
            f"kill {cycle}: line at {offset} of file {stable[:12]}, checkpoint {floor}"
            for stable, floor in shot.checkpoint.items()
            for offset in sorted(offsets.get(stable, ()))
            if offset < floor and (stable, offset) not in delivered
        )
    assert passed == [], f"{len(passed)} undelivered line(s) behind a checkpoint:\n" + "\n".join(
        passed[:20]
    )


def check_repeats_after_checkpoints(output: Output, snapshots: list[Snapshot]) -> int:
    """Run i+1 wrote documents[snapshots[i].lines : snapshots[i+1].lines]: every line it
    repeats from before kill i lies at or after the checkpoint flushed before kill i, and it
    repeats nothing of its own. Returns how many repeats there were."""
    documents = output.documents
    bounds = [shot.lines for shot in snapshots] + [len(documents)]
    repeats = 0
    late: list[str] = []
    for cycle, shot in enumerate(snapshots):
        before = {key for document in documents[: shot.lines] for key in keys_of(document)}
        segment = documents[bounds[cycle] : bounds[cycle + 1]]
        within = Counter(key for document in segment for key in keys_of(document))
        twice = [key for key, count in within.items() if count > 1]
        assert twice == [], f"run {cycle + 1} shipped these twice itself: {twice[:10]}"
        for document in segment:
            if not any(key in before for key in keys_of(document)):
                continue
            repeats += 1
            log = document["log"]
            floor = shot.checkpoint.get(log["file"]["fingerprint"], 0)  # unknown file: 0
            if log["offset"] < floor:
                late.append(
                    f"kill {cycle}: {keys_of(document)} at offset {log['offset']} "
                    f"of {log['file']['path']}, checkpoint {floor}"
                )
    assert late == [], f"{len(late)} repeat(s) before the checkpoint:\n" + "\n".join(late[:20])
    return repeats


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_at_random_moments_loses_nothing_and_repeats_only_after_the_checkpoint(
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    config = write_config(tmp_path)
    writer = CrashWriter(tmp_path / "containers")
    writer.start()
    try:
        snapshots = kill_cycles(tmp_path, config, writer)
    finally:
        writer.stop()
    cycles_done = time.monotonic()
    output = final_run(tmp_path, config, writer.expected)
    finished = time.monotonic()

    check_nothing_lost(output, writer.expected)
    check_durable_prefixes(output, snapshots)
    check_checkpoints_behind_delivery(output, snapshots)
    repeats = check_repeats_after_checkpoints(output, snapshots)

    files = sum(len(log.log_files()) for log in writer.logs)
    print(
        f"\n{CYCLES} kills, {len(writer.expected)} lines ({writer.long_lines} over 16 KiB), "
        f"{files} log files, {len(output.documents)} records, {repeats} repeats after a kill; "
        f"cycles {cycles_done - began:.1f}s, final run {finished - cycles_done:.1f}s"
    )
