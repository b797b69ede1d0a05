"""The `cri` source end to end: a real App follows pod logs on disk, written the way containerd's
CRI logger writes them and rotated the way the kubelet rotates them, into the file output.

`CriLog` is the stand-in for both. containerd (pkg/cri/io/logger.go) writes one entry a line,
`<time> <stream> <P|F> <bytes>`, the time in the layout "2006-01-02T15:04:05.000000000Z07:00" of
its local zone, a line longer than max_container_log_line_size (16 KiB) cut by bytes into `P`
entries and an `F` entry with the rest, each entry one write(2). The kubelet's rotateLog
(pkg/kubelet/logs/container_log_manager.go) removes rotated files beyond MaxFiles, gzips every
rotated file not yet compressed (`<name>.tmp`, renamed to `<name>.gz`, then `<name>` removed),
renames `<n>.log` to `<n>.log.<YYYYMMDD-HHMMSS>` and then asks the runtime to reopen the log:
until it has, containerd goes on writing into the renamed file.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import itertools
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from shipper import __version__
from shipper.app import App
from shipper.config import Config, parse_config
from shipper.docker_writer import DockerRootWriter
from shipper.processing.metadata import ECS_VERSION, default_host_name
from tests.helpers import wait_until
from tests.scenarios.test_delivery import delivered, start
from tests.scenarios.test_rotation import gated_sinks

UID = "0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b"
UID_2 = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
STATIC_UID = "3c9ac3b2e8a1f0d94c6e2b7a5d8f1e04"  # a static pod's uid: the MD5 of its manifest
T0 = 1_714_564_800_123_456_789  # 2024-05-01T12:00:00.123456789Z
MAX_LINE = 16 * 1024  # containerd's default max_container_log_line_size
SEQ = re.compile(r"seq=(\d+)")


def containerd_time(time_ns: int, zone: timezone) -> str:
    """containerd's timestampFormat: nine fraction digits always, `Z` or the zone's offset."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    local = datetime.fromtimestamp(seconds, zone)
    offset = local.utcoffset() or timedelta(0)
    if not offset:
        suffix = "Z"
    else:
        minutes = int(abs(offset).total_seconds()) // 60
        suffix = f"{'-' if offset < timedelta(0) else '+'}{minutes // 60:02d}:{minutes % 60:02d}"
    return f"{local:%Y-%m-%dT%H:%M:%S}.{nanos:09d}{suffix}"


def utc(time_ns: int) -> str:
    """What shipper writes as @timestamp: UTC, nine digits."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


class CriLog:
    """One container's `<root>/<ns>_<pod>_<uid>/<container>/<restart>.log` as containerd writes
    it and the kubelet rotates it (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        namespace: str,
        pod: str,
        uid: str,
        container: str,
        *,
        restart: int = 0,
        zone: timezone = UTC,
        max_files: int | None = None,
    ) -> None:
        self.directory = root / f"{namespace}_{pod}_{uid}" / container
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{restart}.log"
        self.zone = zone
        self.max_files = max_files
        self.time_ns = T0
        self.rotations = 0
        self.fd = self._open()
        self._next_fd: int | None = None

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        return os.open(self.path, flags, 0o640)

    def entry(self, data: bytes, *, stream: str = "stdout", tag: str = "F") -> int:
        """Write one entry; returns its time."""
        self.time_ns += 1_000_000 + 1  # a millisecond and a nanosecond later: no zeros to trim
        stamp = containerd_time(self.time_ns, self.zone)
        os.write(self.fd, f"{stamp} {stream} {tag} ".encode() + data + b"\n")
        return self.time_ns

    def parts(self, line: str | bytes) -> list[tuple[bytes, str]]:
        """The entries containerd makes of one line: (bytes, tag)."""
        data = line.encode() if isinstance(line, str) else line
        pieces = [data[n : n + MAX_LINE] for n in range(0, len(data), MAX_LINE)] or [b""]
        return [(piece, "F" if n == len(pieces) - 1 else "P") for n, piece in enumerate(pieces)]

    def write(self, line: str | bytes, *, stream: str = "stdout") -> int:
        """Write one line the application wrote (without its newline); returns its first
        entry's time (the time a joined record carries)."""
        times = [self.entry(piece, stream=stream, tag=tag) for piece, tag in self.parts(line)]
        return times[0]

    # -- the kubelet's rotation -----------------------------------------------------------------

    def rotated(self) -> list[Path]:
        prefix = self.path.name + "."
        return sorted(p for p in self.directory.iterdir() if p.name.startswith(prefix))

    def rename(self) -> Path:
        """rotateLog up to the rename: excess files removed, older ones gzipped, the live file
        renamed. containerd still writes into the renamed file until `reopen`."""
        rotated = [p for p in self.rotated() if not p.name.endswith(".tmp")]
        if self.max_files is not None:
            while len(rotated) > self.max_files - 2:
                rotated.pop(0).unlink()
        for path in rotated:
            if path.suffix != ".gz":
                compress_like_kubelet(path)
        self.rotations += 1
        when = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC) + timedelta(seconds=self.rotations)
        target = self.path.with_name(f"{self.path.name}.{when:%Y%m%d-%H%M%S}")
        os.rename(self.path, target)
        return target

    def create_next(self) -> None:
        """ReopenContainerLog, first half: containerd creates the new live file..."""
        self._next_fd = self._open()

    def switch(self) -> None:
        """...then swaps its writers to it and closes the renamed file."""
        assert self._next_fd is not None
        os.close(self.fd)
        self.fd, self._next_fd = self._next_fd, None

    def reopen(self) -> None:
        self.create_next()
        self.switch()

    def rotate(self, before_reopen: Callable[[], object] | None = None) -> Path:
        """A whole rotation; `before_reopen` writes what containerd writes meanwhile."""
        target = self.rename()
        if before_reopen is not None:
            before_reopen()
        self.reopen()
        return target

    def close(self) -> None:
        os.close(self.fd)


def compress_like_kubelet(path: Path) -> None:
    """compressLog: gzip into `<name>.tmp`, rename it to `<name>.gz`, remove `<name>`."""
    temporary = path.with_name(path.name + ".tmp")
    with (
        path.open("rb") as source,
        temporary.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb") as compressed,
    ):
        compressed.write(source.read())
    os.rename(temporary, path.with_name(path.name + ".gz"))
    path.unlink()


def link_container(links: Path, log: CriLog, pod: str, namespace: str, container_id: str) -> None:
    """The kubelet's `/var/log/containers/<pod>_<ns>_<container>-<id>.log` link."""
    name = f"{pod}_{namespace}_{log.directory.name}-{container_id}.log"
    (links / name).symlink_to(log.path)


@pytest.fixture(autouse=True)
def links(tmp_path: Path) -> Path:
    """The directory standing in for /var/log/containers (`container_links` in every config
    here, so no test reads the host's own)."""
    directory = tmp_path / "var-log-containers"
    directory.mkdir()
    return directory


def cri_config(
    tmp: Path, *, source: str = "", sources: str = "", docker_root: Path | None = None
) -> Config:
    text = f"""
state_dir: {tmp / "state"}
sources:
  pods:
    type: cri
    root: {tmp / "pods"}
    docker_root: {docker_root or "null"}
    container_links: {tmp / "var-log-containers"}
    poll_interval: 20ms
{source}
{sources}
outputs:
  archive:
    type: file
    path: {tmp / "out.ndjson"}
    batch:
      linger: 20ms
"""
    return parse_config(text, origin="<test>")


def documents(tmp: Path) -> list[dict]:
    """The output's documents; only whole lines (the last may be half written)."""
    path = tmp / "out.ndjson"
    data = path.read_bytes() if path.exists() else b""
    return [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def seqs_by_stream(docs: list[dict]) -> dict[str, list[int]]:
    by_stream: dict[str, list[int]] = defaultdict(list)
    for doc in docs:
        match = SEQ.search(doc["message"])
        if match:
            by_stream[doc["stream"]].append(int(match[1]))
    return dict(by_stream)


async def stop_app(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await task


async def give_chances(condition: Callable[[], bool], seconds: float) -> None:
    """Let shipper run for up to `seconds`, returning as soon as `condition` holds: used where a
    wrong shipper would do something observable, and a right one does nothing to wait for."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.02)


# --- pod fields --------------------------------------------------------------------------------


async def test_records_carry_pod_fields_from_the_path_and_the_container_id_from_its_link(
    tmp_path: Path, links: Path
) -> None:
    pods = tmp_path / "pods"
    web = CriLog(pods, "shop", "web-7d4b9c-x2x9z", UID, "nginx")
    web_id = "a1" * 32
    link_container(links, web, "web-7d4b9c-x2x9z", "shop", web_id)
    static = CriLog(pods, "kube-system", "etcd-node-1", STATIC_UID, "etcd")  # no link
    web_time = web.write("GET / 200")
    static.write("etcd started", stream="stderr")
    # Not the kubelet's layout: never shipped.
    stray = pods / "not-a-pod-directory" / "x"
    stray.mkdir(parents=True)
    (stray / "0.log").write_text("2024-05-01T12:00:00.000000000Z stdout F stray\n")

    app = App(cri_config(tmp_path))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 2, what="both pods' lines")
    web.write("GET /cart 200")
    await wait_until(lambda: delivered(app) >= 3, what="a later line")
    await give_chances(lambda: delivered(app) > 3, 0.3)
    await stop_app(stop, task)

    docs = documents(tmp_path)
    assert len(docs) == 3
    by_message = {d["message"]: d for d in docs}
    first = by_message["GET / 200"]
    assert first["@timestamp"] == utc(web_time)
    assert first["stream"] == "stdout"
    assert first["container"] == {"id": web_id, "name": "nginx"}
    assert first["kubernetes"] == {
        "namespace": "shop",
        "pod": {"name": "web-7d4b9c-x2x9z", "uid": UID},
        "container": {"name": "nginx"},
    }
    assert first["host"] == {"name": default_host_name()}
    assert first["agent"] == {"type": "shipper", "version": __version__}
    assert first["ecs"] == {"version": ECS_VERSION}
    assert first["log"]["file"]["path"] == str(web.path)
    assert by_message["GET /cart 200"]["container"]["id"] == web_id
    etcd = by_message["etcd started"]
    assert etcd["container"] == {"name": "etcd"}  # no link: no id, nothing made up
    assert etcd["kubernetes"]["pod"] == {"name": "etcd-node-1", "uid": STATIC_UID}
    assert etcd["stream"] == "stderr"


# --- P/F -----------------------------------------------------------------------------------------


async def test_partial_entries_are_joined_per_stream_and_zone_offsets_become_utc(
    tmp_path: Path,
) -> None:
    """A 40 KiB line is three entries (P, P, F) with stderr lines between them; the node's
    containerd writes local times (+02:00, where 01:30 is the previous day in UTC)."""
    log = CriLog(tmp_path / "pods", "shop", "web-1", UID, "app", zone=timezone(timedelta(hours=2)))
    log.time_ns = 1_714_519_800_000_000_000  # 2024-05-01T01:30:00+02:00
    long_line = "".join(f"{n:05d}abcdefghijklmnopqrstuvwxyz " for n in range(1300))[: 40 * 1024]
    assert len(long_line) == 40 * 1024
    parts = log.parts(long_line)
    assert [tag for _, tag in parts] == ["P", "P", "F"]
    times = {}
    times["short before"] = log.write("short before")
    long_offset = log.path.stat().st_size
    times["long"] = log.entry(parts[0][0], tag="P")
    times["err 1"] = log.write("err 1", stream="stderr")
    log.entry(parts[1][0], tag="P")
    times["err 2"] = log.write("err 2", stream="stderr")
    log.entry(parts[2][0], tag="F")
    times["short after"] = log.write("short after")
    assert "+02:00 stdout P " in log.path.read_text()

    app = App(cri_config(tmp_path))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 5, what="five records")
    # The rest of a line goes on in a later read: the P waits for it.
    times["joined later"] = log.entry(b"half a line, ", tag="P")
    await give_chances(lambda: delivered(app) > 5, 0.2)
    assert delivered(app) == 5
    log.entry(b"its end", tag="F")
    await wait_until(lambda: delivered(app) >= 6, what="the line finished later")
    await stop_app(stop, task)

    docs = documents(tmp_path)
    by_stream = defaultdict(list)
    for doc in docs:
        by_stream[doc["stream"]].append(doc["message"])
    assert by_stream == {
        "stdout": ["short before", long_line, "short after", "half a line, its end"],
        "stderr": ["err 1", "err 2"],
    }
    stamps = {d["message"] if d["message"] != long_line else "long": d["@timestamp"] for d in docs}
    assert stamps["long"] == utc(times["long"])  # the first part's time
    assert stamps["long"].startswith("2024-04-30T23:30:00.")
    assert stamps["err 1"] == utc(times["err 1"])
    assert stamps["half a line, its end"] == utc(times["joined later"])
    assert all("flags" not in d["log"] for d in docs)
    joined = next(d for d in docs if d["message"] == long_line)
    assert joined["log"]["offset"] == long_offset  # where its first part's entry is


# --- kubelet rotation ----------------------------------------------------------------------------


async def test_kubelet_rotation_while_running_ships_every_line_once_in_order(
    tmp_path: Path,
) -> None:
    """Rotations in bursts (several before shipper looks), older files gzipped and the oldest
    removed, lines written between the rename and the reopen, long lines whose parts straddle a
    rotation: every line arrives once, in order within its stream."""
    log = CriLog(tmp_path / "pods", "shop", "web-1", UID, "app", max_files=5)
    expected: dict[str, list[int]] = defaultdict(list)
    numbers = itertools.count()
    longs = 0

    def lines(count: int) -> None:
        for _ in range(count):
            n = next(numbers)
            stream = "stderr" if n % 3 == 0 else "stdout"
            log.write(f"seq={n:06d} {stream} " + "x" * (n % 200), stream=stream)
            expected[stream].append(n)

    def long_line_across_a_rotation() -> None:
        nonlocal longs
        n = next(numbers)
        parts = log.parts(f"seq={n:06d} long " + "y" * 40_000)
        log.entry(parts[0][0], tag="P")
        log.rotate(before_reopen=lambda: log.entry(parts[1][0], tag="P"))
        log.entry(parts[2][0], tag="F")
        expected["stdout"].append(n)
        longs += 1

    lines(50)
    app = App(cri_config(tmp_path))
    stop, task = await start(app)
    for _ in range(5):
        lines(60)
        log.rotate(before_reopen=lambda: lines(3))  # containerd writes until it reopens
        lines(60)
        long_line_across_a_rotation()
        lines(60)
        log.rotate()
        lines(20)
        total = sum(len(v) for v in expected.values())
        # Reading keeps up between bursts (the kubelet rotates at most every 10 s by default):
        # with max_files, a file never opened could otherwise be removed unread.
        await wait_until(lambda n=total: delivered(app) >= n, what="the burst's lines")
    total = sum(len(v) for v in expected.values())
    await give_chances(lambda: delivered(app) > total, 0.3)
    await stop_app(stop, task)
    log.close()

    names = [p.name for p in log.rotated()]
    assert any(name.endswith(".gz") for name in names)  # the kubelet did compress...
    assert len(names) == 4  # ...and remove
    docs = documents(tmp_path)
    assert len(docs) == total
    assert seqs_by_stream(docs) == dict(expected)
    joined = [d for d in docs if " long " in d["message"]]
    assert len(joined) == longs
    assert all(len(d["message"]) == len(joined[0]["message"]) > 40_000 for d in joined)
    assert all("flags" not in d["log"] for d in docs)
    assert app.telemetry.value("shipper_bytes_lost_total") == 0


@pytest.mark.parametrize("output", ["keeping_up", "stalled"])
async def test_lines_written_between_the_kubelets_rename_and_the_reopen_are_not_lost(
    tmp_path: Path, output: str
) -> None:
    """The kubelet renames `0.log`, then calls ReopenContainerLog over gRPC; until containerd
    has reopened, the container's lines still go into the renamed file. A follower that sees
    `0.log` gone meanwhile must not give the renamed file up for good, whether or not what it
    read from it has been delivered yet."""
    log = CriLog(tmp_path / "pods", "shop", "web-1", UID, "app")
    log.write("seq=1 before the rotation")
    gate = asyncio.Event()
    if output == "keeping_up":
        gate.set()
    app = App(cri_config(tmp_path), sinks=gated_sinks(gate))  # type: ignore[arg-type]
    stop, task = await start(app)
    await wait_until(lambda: app.telemetry.value("shipper_lines_read_total") >= 1, what="reading")
    if output == "keeping_up":
        await wait_until(lambda: delivered(app) >= 1, what="the first line")
    log.rename()  # ReopenContainerLog is in flight
    await give_chances(lambda: app.telemetry.value("shipper_files_closed_total") >= 1, 1.0)
    log.write("seq=2 written while the reopen is in flight")
    log.reopen()
    log.write("seq=3 after the reopen")
    await wait_until(
        lambda: app.telemetry.value("shipper_files_opened_total") >= 2, what="the new 0.log"
    )
    gate.set()
    await wait_until(
        lambda: any("seq=3" in d["message"] for d in documents(tmp_path)), what="the last line"
    )
    await give_chances(lambda: delivered(app) >= 3, 0.5)
    await stop_app(stop, task)
    messages = [d["message"] for d in documents(tmp_path)]
    assert "seq=2 written while the reopen is in flight" in messages, "the late line was lost"
    assert messages == [
        "seq=1 before the rotation",
        "seq=2 written while the reopen is in flight",
        "seq=3 after the reopen",
    ]
    assert app.telemetry.value("shipper_bytes_lost_total") == 0


async def test_a_restarted_container_writes_1_log_beside_0_log_and_both_ship(
    tmp_path: Path, links: Path
) -> None:
    pods = tmp_path / "pods"
    first = CriLog(pods, "shop", "web-1", UID, "app")
    link_container(links, first, "web-1", "shop", "0a" * 32)
    for n in range(20):
        first.write(f"seq={n} first run")
    first.write("seq=20 panic: out of memory", stream="stderr")
    app = App(cri_config(tmp_path))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 21, what="the first run's lines")
    first.close()  # the container died; the kubelet starts it again: a new id and 1.log
    second = CriLog(pods, "shop", "web-1", UID, "app", restart=1)
    link_container(links, second, "web-1", "shop", "1b" * 32)
    for n in range(21, 41):
        second.write(f"seq={n} second run")
    await wait_until(lambda: delivered(app) >= 41, what="the second run's lines")
    await give_chances(lambda: delivered(app) > 41, 0.3)
    await stop_app(stop, task)
    second.close()

    docs = documents(tmp_path)
    assert sorted(int(SEQ.search(d["message"])[1]) for d in docs) == list(range(41))
    for doc in docs:
        run = "0" if "first run" in doc["message"] or "panic" in doc["message"] else "1"
        assert doc["log"]["file"]["path"] == str(pods / f"shop_web-1_{UID}" / "app" / f"{run}.log")
        assert doc["container"] == {"id": ("0a" if run == "0" else "1b") * 32, "name": "app"}
        assert doc["kubernetes"]["pod"] == {"name": "web-1", "uid": UID}


async def test_restarting_shipper_ships_every_line_once_across_rotations_while_it_was_down(
    tmp_path: Path,
) -> None:
    log = CriLog(tmp_path / "pods", "shop", "web-1", UID, "app")
    expected: dict[str, list[int]] = defaultdict(list)
    numbers = itertools.count()

    def lines(count: int) -> None:
        for _ in range(count):
            n = next(numbers)
            stream = "stderr" if n % 4 == 0 else "stdout"
            log.write(f"seq={n:05d} " + "z" * (n % 300), stream=stream)
            expected[stream].append(n)

    def written() -> int:
        return sum(len(v) for v in expected.values())

    lines(100)
    app = App(cri_config(tmp_path))
    stop, task = await start(app)
    lines(50)
    log.rotate()
    lines(50)
    await wait_until(lambda: delivered(app) >= written(), what="the first run's lines")
    # The first two parts of a long line: shipper holds them, waiting for the third.
    n = next(numbers)
    parts = log.parts(f"seq={n:05d} long " + "w" * 36_000)
    log.entry(parts[0][0], tag="P")
    log.entry(parts[1][0], tag="P")
    on_disk = sum(p.stat().st_size for p in log.directory.iterdir())
    await wait_until(
        lambda: app.telemetry.value("shipper_bytes_read_total") >= on_disk,
        what="the parts to be read",
    )
    await stop_app(stop, task)
    first_run = len(documents(tmp_path))
    assert first_run == written()

    # While shipper is down: the line ends, more lines, two rotations (so the file holding the
    # unread tail is gzipped and its plain name removed), more lines.
    log.entry(parts[2][0], tag="F")
    expected["stdout"].append(n)
    lines(40)
    log.rotate()
    lines(40)
    log.rotate()
    lines(40)
    assert any(p.name.endswith(".gz") for p in log.rotated())

    app = App(cri_config(tmp_path))
    stop, task = await start(app)
    lines(30)
    await wait_until(lambda: len(documents(tmp_path)) >= written(), what="the rest")
    await give_chances(lambda: len(documents(tmp_path)) > written(), 0.3)
    await stop_app(stop, task)
    log.close()

    docs = documents(tmp_path)
    assert len(docs) == written()
    assert seqs_by_stream(docs) == dict(expected)
    [long] = [d for d in docs if " long " in d["message"]]
    assert len(long["message"]) == len(f"seq={n:05d} long ") + 36_000
    assert "flags" not in long["log"]
    assert app.telemetry.value("shipper_bytes_lost_total") == 0


# --- dockershim: pod logs that are links into Docker's files -------------------------------------


async def test_a_pod_log_linked_into_the_docker_root_ships_once_through_docker_json(
    tmp_path: Path,
) -> None:
    docker = DockerRootWriter(tmp_path / "containers")
    shim = docker.add_container("k8s_app_web-1_shop")
    for n in range(30):
        shim.write(f"seq={n} via docker")
    # dockershim: /var/log/pods/<ns>_<pod>_<uid>/<container>/0.log -> Docker's own file
    linked = tmp_path / "pods" / f"shop_web-1_{UID}" / "app"
    linked.mkdir(parents=True)
    (linked / "0.log").symlink_to(shim.log_path)
    plain = CriLog(tmp_path / "pods", "shop", "api-1", UID_2, "api")  # a containerd pod
    for n in range(10):
        plain.write(f"seq={100 + n} via cri")
    both = f"""  docker:
    type: docker_json
    root: {tmp_path / "containers"}
    poll_interval: 20ms"""
    config = cri_config(tmp_path, sources=both, docker_root=tmp_path / "containers")
    app = App(config)
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 40, what="both sources' lines")
    for n in range(30, 40):
        shim.write(f"seq={n} via docker")
    plain.write("seq=110 via cri")
    await wait_until(lambda: delivered(app) >= 51, what="the later lines")
    await give_chances(lambda: delivered(app) > 51, 0.5)
    await stop_app(stop, task)
    docker.close()
    plain.close()

    docs = documents(tmp_path)
    via_docker = [d for d in docs if "via docker" in d["message"]]
    assert [int(SEQ.search(d["message"])[1]) for d in via_docker] == list(range(40))
    assert all(d["log"]["file"]["path"] == str(shim.log_path) for d in via_docker)
    assert all("kubernetes" not in d for d in via_docker)
    via_cri = [d for d in docs if "via cri" in d["message"]]
    assert len(via_cri) == 11
    assert all(d["kubernetes"]["pod"]["name"] == "api-1" for d in via_cri)
    assert len(docs) == 51


# --- multiline -----------------------------------------------------------------------------------


def python_log_with_traceback() -> str:
    """What `logger.exception` writes for a chained exception, from the real interpreter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.Logger("shop.orders")
    logger.addHandler(handler)

    def load(order: dict[str, int]) -> int:
        return order["customer"]

    try:
        try:
            load({})
        except KeyError as exc:
            raise RuntimeError("order 4711 could not be saved") from exc
    except RuntimeError:
        logger.exception("request failed")
    return stream.getvalue()


async def test_a_python_traceback_written_as_f_entries_is_one_record(tmp_path: Path) -> None:
    trace = python_log_with_traceback()
    trace_lines = trace.rstrip("\n").split("\n")
    assert "" in trace_lines and "Traceback (most recent call last):" in trace_lines
    log = CriLog(tmp_path / "pods", "shop", "api-1", UID, "api")
    log.write("INFO shop.orders: request started", stream="stderr")
    for n, line in enumerate(trace_lines):
        log.write(line, stream="stderr")  # one F entry a line; a blank line is `... F `
        if n % 5 == 0:
            log.write(f"stdout line {n} between")  # the other stream goes on meanwhile
    log.write("INFO shop.orders: next request", stream="stderr")
    assert b" stderr F \n" in log.path.read_bytes()
    source = """    multiline:
      default: python
      flush_timeout: 100ms"""
    app = App(cri_config(tmp_path, source=source))
    stop, task = await start(app)
    stdout_lines = len(range(0, len(trace_lines), 5))
    await wait_until(lambda: delivered(app) >= 3 + stdout_lines, what="the records")
    await give_chances(lambda: delivered(app) > 3 + stdout_lines, 0.3)
    await stop_app(stop, task)

    docs = documents(tmp_path)
    stderr = [d["message"] for d in docs if d["stream"] == "stderr"]
    assert stderr == [
        "INFO shop.orders: request started",
        trace.rstrip("\n"),
        "INFO shop.orders: next request",
    ]
    assert len([d for d in docs if d["stream"] == "stdout"]) == stdout_lines
