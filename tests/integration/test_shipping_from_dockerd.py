"""End to end: shipper (the in-process App) ships what a real dockerd's json-file driver writes.

shipper starts before the containers, so it follows them live: Docker rotates (and gzips, and
deletes) while shipper reads. Every container writes lines whose text the test knows in advance
(`scripts.py`), so the output is compared with it line for line, per container and stream:
each line once, in order, long lines rejoined byte for byte, nothing flagged, nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.app import App
from shipper.config import Config, parse_config
from shipper.docker_writer import SEQ_PATTERN
from tests.integration import jsonlog, scripts
from tests.integration.dockerd import Dockerd

Key = tuple[str, str]  # (container name, stream)
Expected = dict[Key, list[str]]  # the messages of each stream, in order

DELIVERY_TIMEOUT = 30.0  # after the containers exited; ~2 s is enough when shipper is well


def shipper_config(dockerd: Dockerd, tmp: Path) -> Config:
    """Reads the daemon's containers folder into `tmp/out.ndjson`, state in `tmp/state`."""
    return parse_config(
        f"""
state_dir: {tmp / "state"}
sources:
  docker:
    type: docker_json
    root: {dockerd.containers_root}
    poll_interval: 20ms
    partial_flush_timeout: 500ms
outputs:
  archive:
    type: file
    path: {tmp / "out.ndjson"}
    batch:
      linger: 20ms
checkpoints:
  flush_interval: 100ms
""",
        origin="<test>",
    )


@contextlib.asynccontextmanager
async def running(app: App) -> AsyncIterator[asyncio.Task[None]]:
    """The App runs (its task is yielded, to notice it stopping by itself); stopped on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        await asyncio.wait_for(app.started.wait(), 10)
        yield task
    finally:
        stop.set()
        await task


@dataclass
class Spec:
    """One container to run: its script, log options and the lines it writes, per stream."""

    name: str
    script: str
    log_opts: dict[str, str]
    expected: dict[str, list[str]]
    nothing_deleted: bool  # max-file leaves room for every line: Docker deletes nothing


@dataclass
class Shipped:
    """The output file, read incrementally (only the new bytes at each refresh)."""

    path: Path
    names: dict[str, str] = field(default_factory=dict)  # container ID -> name
    documents: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    offset: int = 0

    def refresh(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as file:
            file.seek(self.offset)
            data = file.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            document = orjson.loads(line)
            name = self.names.get(document["container"]["id"])
            if name is not None:  # other tests' containers are shipped too: not ours to check
                self.documents[name].append(document)

    def count(self, name: str) -> int:
        return len(self.documents[name])


def label(message: str) -> str:
    """A message in a report: its seq and size, not its 70,000 bytes."""
    match = SEQ_PATTERN.search(message[:40])
    seq = f"seq={match[1]}" if match else repr(message[:30])
    return f"{seq} ({len(message.encode())} B)"


def where(document: dict[str, Any]) -> str:
    log = document["log"]
    flags = f" flags={log['flags']}" if "flags" in log else ""
    return f"{Path(log['file']['path']).name}@{log['offset']}{flags}"


def seq_ranges(messages: list[str]) -> str:
    """`seq=000010-000019, seq=000042` for a list of numbered messages (others by label)."""
    seqs = sorted(int(m[1]) for m in map(SEQ_PATTERN.search, messages) if m)
    others = [label(m) for m in messages if not SEQ_PATTERN.search(m)]
    ranges: list[list[int]] = []
    for seq in seqs:
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1][1] = seq
        else:
            ranges.append([seq, seq])
    text = [f"{a:06d}" if a == b else f"{a:06d}-{b:06d}" for a, b in ranges]
    shown = ", ".join([*text[:20], *(["…"] if len(text) > 20 else []), *others[:5]])
    return f"{len(messages)}: seq {shown}"


def problems(expected: Expected, shipped: Shipped) -> list[str]:
    """What differs between the lines written and the documents shipped, per stream."""
    got: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    found: list[str] = []
    for name in {name for name, _ in expected}:
        for document in shipped.documents[name]:
            got[(name, document.get("stream", ""))].append(document)
            if "flags" in document["log"]:
                found.append(f"{name}: {label(document['message'])} flagged at {where(document)}")
    for key in sorted(expected.keys() | got.keys()):
        want = expected.get(key, [])
        documents = got.get(key, [])
        have = [d["message"] for d in documents]
        if have == want:
            continue
        name, stream = key
        head = f"{name}/{stream}: {len(have)} shipped, {len(want)} written"
        missing = list((Counter(want) - Counter(have)).elements())
        extra = Counter(have) - Counter(want)
        wanted = set(want)
        if missing:
            found.append(f"{head}; MISSING {seq_ranges(missing)}")
        for message, times in extra.items():
            at = ", ".join(where(d) for d in documents if d["message"] == message)
            if message in wanted:
                found.append(f"{head}; DUPLICATED {times + 1} times: {label(message)} at {at}")
            else:
                found.append(
                    f"{head}; MANGLED {label(message)} {message[:40]!r}…{message[-20:]!r} at {at}"
                )
        if not missing and not extra:
            index = next(i for i, (a, b) in enumerate(zip(have, want, strict=True)) if a != b)
            found.append(
                f"{head}; OUT OF ORDER from position {index}: shipped {label(have[index])} "
                f"at {where(documents[index])}, written {label(want[index])}"
            )
    return found


def written_by_docker(dockerd: Dockerd, container_id: str) -> dict[str, list[str]]:
    """The lines in the container's json-file logs (parts joined), per stream: when Docker
    deleted nothing, exactly what the script wrote."""
    lines: dict[str, list[str]] = defaultdict(list)
    pending: dict[str, str] = {}
    for path in jsonlog.generations(dockerd.json_log(container_id)):
        for entry in jsonlog.read_entries(path):
            stream, text = entry["stream"], pending.pop(entry["stream"], "") + entry["log"]
            if text.endswith("\n"):
                lines[stream].append(text[:-1])
            else:
                pending[stream] = text
    for stream, text in pending.items():
        lines[stream].append(text)
    return dict(lines)


def settled_to_end(app: App, dockerd: Dockerd, container_ids: Iterable[str]) -> bool:
    """Whether each container's current log is checkpointed at its end: everything read and
    settled, no part of a line left waiting, so no record can still come."""
    offsets = {entry.path: entry.offset for entry in app.store.entries()}
    for container_id in container_ids:
        path = dockerd.json_log(container_id)
        try:
            if offsets.get(str(path)) != path.stat().st_size:
                return False
        except FileNotFoundError:  # between Docker's rename and its create
            return False
    return True


async def wait_for_delivery(
    shipped: Shipped,
    expected: Expected,
    task: asyncio.Task[None],
    settled: Callable[[], bool],
    *,
    timeout: float = DELIVERY_TIMEOUT,
) -> None:
    """Until every container has as many documents as it wrote lines and `settled()` (nothing
    more can come), or fail saying what is missing: at once when everything settled short of
    that, or shipper stopped by itself."""
    totals: Counter[str] = Counter()
    for (name, _), messages in expected.items():
        totals[name] += len(messages)
    deadline = time.monotonic() + timeout
    while True:
        done = settled()  # before the refresh: what settled was written to the output before
        shipped.refresh()
        if all(shipped.count(name) >= total for name, total in totals.items()):
            if done:
                return
        elif done:
            report = "\n".join(problems(expected, shipped))
            pytest.fail(f"everything was read and settled, yet lines are missing:\n{report}")
        if task.done():
            await task  # shipper stopped by itself: its error
            pytest.fail("shipper stopped by itself before everything was delivered")
        if time.monotonic() > deadline:
            report = "\n".join(problems(expected, shipped))
            pytest.fail(f"not everything was delivered within {timeout}s:\n{report}")
        await asyncio.sleep(0.05)


async def run_containers(dockerd: Dockerd, specs: list[Spec]) -> dict[str, str]:
    """Start every container (off the event loop: shipper keeps running meanwhile) → name: ID."""
    ids = {}
    for spec in specs:
        ids[spec.name] = await asyncio.to_thread(
            dockerd.run_container, spec.name, spec.script, log_opts=spec.log_opts
        )
    return ids


async def remove(dockerd: Dockerd, ids: dict[str, str]) -> None:
    """`docker rm -f`: later tests' shippers need not read these logs again."""
    if ids:
        await asyncio.to_thread(dockerd.docker, "rm", "-f", *ids.values())


def expected_of(specs: list[Spec]) -> Expected:
    return {
        (spec.name, stream): lines
        for spec in specs
        for stream, lines in spec.expected.items()
        if lines
    }


def check_docker_kept_everything(dockerd: Dockerd, spec: Spec, container_id: str) -> None:
    """A precondition, not shipper's business: the script wrote what the test expects and
    Docker deleted none of it (else a missing line would not be shipper's fault)."""
    on_disk = written_by_docker(dockerd, container_id)
    assert on_disk == {s: lines for s, lines in spec.expected.items() if lines}, (
        f"{spec.name}: the json-file logs do not hold what the script should have written"
    )


# --- the containers -----------------------------------------------------------------------------

PAYLOAD = "GET /api/v1/orders?page=2 HTTP/1.1 200 13ms"
STEADY_LINES = 1500  # per stream
# Special characters json-file escapes (`<>&` as \u003c…, `"`, `\`, TAB), straddling part edges.
ESCAPED_PATTERN = '<tag attr="v">&amp;\\path\tcol;'
PLAIN_PATTERN = "0123456789abcdefghijklmnopqrstuvwxyz"
# Around and over json-file's 16384-byte parts: one part and a lone "\n", two parts, three…
LONG_SIZES = (20_000, 40_000, 70_000, 16_383, 16_384, 16_385, 32_768)
FLOOD_LINES = 10_000  # per stream


def steady(name: str, *, compress: bool) -> Spec:
    """Both streams at ~500 lines/s each with max-size=10k, max-file=20: a rotation every
    ~100 ms and Docker deleting the oldest file all along, so each file lives about two
    seconds. Shipper must open each one within that while the flood beside it keeps both
    cores busy; with max-file=5 or 10 it did not always manage on 2 cores and lost a whole
    file now and then (it warns, but cannot count what it never saw): an open limitation."""
    opts = {"max-size": "10k", "max-file": "20"} | ({"compress": "true"} if compress else {})
    streams: tuple[scripts.Stream, ...] = ("stdout", "stderr")
    payloads = {stream: f"{PAYLOAD} {name} {stream}" for stream in streams}
    script = scripts.in_parallel(
        *(
            scripts.paced_numbered_lines(
                STEADY_LINES, payload=payload, stream=stream, burst=5, pause_ms=10
            )
            for stream, payload in payloads.items()
        )
    )
    expected: dict[str, list[str]] = {
        stream: scripts.expected_paced_numbered_lines(STEADY_LINES, payload=payload)
        for stream, payload in payloads.items()
    }
    return Spec(name, script, opts, expected, nothing_deleted=False)


def long_lines(name: str) -> Spec:
    """Lines over 16 KiB on both streams between short ones, rotating every file or two (so
    parts straddle rotations), and a last line without newline."""
    fragments: list[str] = []
    expected: dict[str, list[str]] = {"stdout": [], "stderr": []}
    patterns = {"stdout": ESCAPED_PATTERN, "stderr": PLAIN_PATTERN}

    def write(stream: scripts.Stream, size: int | None = None) -> None:
        prefix = f"seq={len(expected[stream]):06d} "
        if size is None:
            text = f"{prefix}short {stream}"
            fragments.append(scripts.text_line(text, stream=stream))
        else:
            text = scripts.patterned_text(prefix, size, patterns[stream])
            fragments.append(scripts.patterned_line(prefix, size, patterns[stream], stream=stream))
        expected[stream].append(text)

    for size in LONG_SIZES:
        for stream in ("stdout", "stderr"):
            write(stream)
            write(stream, size)
        write("stdout")
    last = f"seq={len(expected['stdout']):06d} last-line-no-newline"
    fragments.append(scripts.no_trailing_newline(last))
    expected["stdout"].append(last)
    opts = {"max-size": "30k", "max-file": "100"}
    return Spec(name, scripts.chain(*fragments), opts, expected, nothing_deleted=True)


def flood(name: str) -> Spec:
    """As fast as busybox can print (~40,000 lines/s), on both streams, max-size=20k: ~80
    rotations in half a second; max-file leaves room for all of it, so whatever is missing is
    shipper's doing."""
    script = scripts.in_parallel(
        scripts.numbered_lines(FLOOD_LINES, stream="stdout"),
        scripts.numbered_lines(FLOOD_LINES, stream="stderr"),
    )
    lines = [scripts.numbered_line(seq) for seq in range(FLOOD_LINES)]
    # ~81 bytes an entry: 2 x 10,000 lines ≈ 1.6 MB ≈ 82 files of 20k; 200 leaves room.
    opts = {"max-size": "20k", "max-file": "200"}
    return Spec(name, script, opts, {"stdout": lines, "stderr": lines}, nothing_deleted=True)


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_containers_logging_at_once_are_shipped_once_in_order(
    dockerd: Dockerd, tmp_path: Path
) -> None:
    """Four containers at once, followed live: rotation with deletion (plain and gzip), long
    lines split into parts across rotations, a flood into ~80 small files; every line once,
    in order within its stream, long lines byte for byte, the last line without newline
    flushed after the timeout, nothing flagged, nothing counted lost."""
    specs = [
        steady("ship-rotate", compress=False),
        steady("ship-gzip", compress=True),
        long_lines("ship-long"),
        flood("ship-flood"),
    ]
    expected = expected_of(specs)
    app = App(shipper_config(dockerd, tmp_path))
    shipped = Shipped(tmp_path / "out.ndjson")
    ids: dict[str, str] = {}
    try:
        async with running(app) as task:
            ids.update(await run_containers(dockerd, specs))
            shipped.names = {container_id: name for name, container_id in ids.items()}
            for spec in specs:
                code = await asyncio.to_thread(dockerd.wait_exited, ids[spec.name], 60)
                assert code == 0, f"{spec.name} exited with {code}"
                if spec.nothing_deleted:
                    check_docker_kept_everything(dockerd, spec, ids[spec.name])
            gzip_folder = dockerd.container_dir(ids["ship-gzip"])
            assert any(path.suffix == ".gz" for path in gzip_folder.iterdir())  # it compressed
            await wait_for_delivery(
                shipped, expected, task, lambda: settled_to_end(app, dockerd, ids.values())
            )
    finally:
        await remove(dockerd, ids)
    shipped.refresh()
    assert problems(expected, shipped) == []
    assert app.telemetry.value("shipper_bytes_lost_total") == 0


async def test_a_container_silent_at_first_is_shipped(dockerd: Dockerd, tmp_path: Path) -> None:
    """Docker creates the -json.log when the container starts: it stays empty until the
    application writes. shipper follows it meanwhile (an empty file once made it store a
    checkpoint with head_len=0, a ValueError that stopped the App), then ships its lines."""
    count = 200
    spec = Spec(
        "ship-silent",
        scripts.chain("sleep 1", scripts.numbered_lines(count)),
        {},
        {"stdout": [scripts.numbered_line(seq) for seq in range(count)]},
        nothing_deleted=True,
    )
    expected = expected_of([spec])
    app = App(shipper_config(dockerd, tmp_path))
    shipped = Shipped(tmp_path / "out.ndjson")
    ids: dict[str, str] = {}
    try:
        async with running(app) as task:
            ids.update(await run_containers(dockerd, [spec]))
            shipped.names = {ids[spec.name]: spec.name}
            assert await asyncio.to_thread(dockerd.wait_exited, ids[spec.name], 30) == 0
            await wait_for_delivery(
                shipped, expected, task, lambda: settled_to_end(app, dockerd, ids.values())
            )
    finally:
        await remove(dockerd, ids)
    shipped.refresh()
    assert problems(expected, shipped) == []


def restarting(name: str, lines: int) -> Spec:
    """A steady writer (~2,000 lines/s, every 97th line 24,000 bytes: two parts and a tail)
    rotating every ~100 ms; max-file leaves room for it all. One stream: the order of files
    is then never in doubt ."""
    options: dict[str, Any] = {
        "long_every": 97,
        "long_size": 24_000,
        "long_pattern": ESCAPED_PATTERN,
    }
    script = scripts.paced_numbered_lines(lines, payload=PAYLOAD, burst=20, **options)
    expected = scripts.expected_paced_numbered_lines(lines, payload=PAYLOAD, **options)
    # ~2.8 MB in all (the pattern's escapes nearly double the long lines): 60 x 100k holds it.
    opts = {"max-size": "100k", "max-file": "60"}
    return Spec(name, script, opts, {"stdout": expected}, nothing_deleted=True)


@pytest.mark.slow
async def test_a_clean_restart_against_a_live_container_loses_and_repeats_nothing(
    dockerd: Dockerd, tmp_path: Path
) -> None:
    """Stop shipper while a container keeps logging and rotating, let Docker rotate while it
    is down, start a new App on the same state: every line once, none lost, none twice."""
    lines = 5000
    spec = restarting("ship-restart", lines)
    expected = expected_of([spec])
    shipped = Shipped(tmp_path / "out.ndjson")
    ids: dict[str, str] = {}
    try:
        first = App(shipper_config(dockerd, tmp_path))
        async with running(first) as task:
            ids.update(await run_containers(dockerd, [spec]))
            container_id = ids[spec.name]
            shipped.names = {container_id: spec.name}
            deadline = time.monotonic() + DELIVERY_TIMEOUT
            while shipped.count(spec.name) < lines // 3:
                assert time.monotonic() < deadline, "the first run shipped too little"
                if task.done():
                    await task  # shipper stopped by itself: its error
                await asyncio.sleep(0.02)
                shipped.refresh()
        shipped.refresh()
        by_first = shipped.count(spec.name)
        assert first.telemetry.value("shipper_bytes_lost_total") == 0
        state = (await asyncio.to_thread(dockerd.inspect, container_id))["State"]
        assert state["Running"], "the container ended before shipper stopped: not mid-way"

        # Docker rotates twice while shipper is down: files it has never seen, and the
        # files it has checkpoints for renamed.
        current = dockerd.json_log(container_id)

        def inode_now() -> int | None:
            try:  # between Docker's rename and its create, the name holds no file
                return current.stat().st_ino
            except FileNotFoundError:
                return None

        for _ in range(2):
            deadline = time.monotonic() + 10
            inode = inode_now()
            while inode is None:
                assert time.monotonic() < deadline, "no current log file"
                await asyncio.sleep(0.01)
                inode = inode_now()
            while inode_now() in (inode, None):
                assert time.monotonic() < deadline, "no rotation while shipper was down"
                await asyncio.sleep(0.01)

        second = App(shipper_config(dockerd, tmp_path))
        async with running(second) as task:
            assert await asyncio.to_thread(dockerd.wait_exited, container_id, 60) == 0
            check_docker_kept_everything(dockerd, spec, container_id)
            await wait_for_delivery(
                shipped, expected, task, lambda: settled_to_end(second, dockerd, [container_id])
            )
    finally:
        await remove(dockerd, ids)
    shipped.refresh()
    assert 0 < by_first < lines
    assert problems(expected, shipped) == []
    assert second.telemetry.value("shipper_bytes_lost_total") == 0
