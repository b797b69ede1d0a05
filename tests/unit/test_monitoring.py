"""The monitoring endpoint's parts: metric declarations and their export, series removal,
readiness rules (failing outputs, stalled reading), the HTTP routes and `shipper health`."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shipper import __version__
from shipper.app import App
from shipper.checkpoints import CheckpointStore
from shipper.config import HealthConfig, MonitoringConfig
from shipper.docker_writer import DockerRootWriter
from shipper.errors import HeldSinkError, RetryableSinkError
from shipper.model import Batch, BatchResult, LogFile, Outcome, RecordGroup
from shipper.pipeline.budget import ByteBudget
from shipper.pipeline.pipeline import Pipeline
from shipper.pipeline.sender import Sender
from shipper.sources.tailer import ContainerFollower, TailSettings
from shipper.telemetry import server as server_module
from shipper.telemetry.counters import DEFINITIONS, Kind, Telemetry
from shipper.telemetry.health import (
    MAX_REASONS,
    NOT_STARTED,
    READY,
    assess,
    failing_outputs,
    stalled_reading,
)
from shipper.telemetry.server import MonitoringServer, probe
from tests.helpers import make_config, wait_until

# --- declarations --------------------------------------------------------------------------------


def test_names_follow_prometheus_conventions() -> None:
    for name, definition in DEFINITIONS.items():
        assert re.fullmatch(r"shipper_[a-z][a-z0-9_]*[a-z0-9]", name), name
        assert definition.help.strip(), name
        # prometheus_client appends `_total` to every counter it exposes: a counter without it
        # would not come out under its declared name, and a gauge must not look like a counter.
        assert name.endswith("_total") == (definition.kind is Kind.COUNTER), name
        if name.endswith(("_seconds", "_bytes")) or "_seconds_" in name or "_bytes_" in name:
            continue
        assert definition.kind is not Kind.HISTOGRAM, f"{name}: a histogram needs its unit"
    assert set(DEFINITIONS) >= {
        "shipper_lag_bytes",
        "shipper_checkpoint_age_seconds",
        "shipper_batch_duration_seconds",
        "shipper_output_failing_seconds",
        "shipper_ready",
        "shipper_build_info",
    }


def test_batch_duration_buckets_span_5ms_to_5min() -> None:
    buckets = DEFINITIONS["shipper_batch_duration_seconds"].buckets
    assert list(buckets) == sorted(set(buckets))
    assert buckets[0] == 0.005
    assert buckets[-1] == 300.0


def exposition(server: MonitoringServer) -> str:
    return generate_latest(server.registry).decode()


def test_every_declared_family_is_exported_with_its_type_and_help() -> None:
    telemetry = Telemetry()
    telemetry.inc("shipper_lines_read_total", 7, source="docker")
    telemetry.set("shipper_lag_bytes", 12, source="docker", container="c1")
    telemetry.observe("shipper_batch_duration_seconds", 0.3, output="es")
    text = exposition(MonitoringServer(MonitoringConfig(port=0), telemetry))
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name, definition in DEFINITIONS.items():
        # The parser names a counter's family without `_total`, as OpenMetrics does.
        family = families[name.removesuffix("_total") if definition.kind is Kind.COUNTER else name]
        assert family.type == definition.kind.value, name
        assert family.documentation == definition.help, name
        # The exposed names are exactly the declared ones, not renamed by the client.
        assert f"# TYPE {name} {definition.kind.value}\n" in text
    assert 'shipper_lines_read_total{source="docker"} 7.0' in text
    assert 'shipper_lag_bytes{container="c1",source="docker"} 12.0' in text
    assert f'shipper_build_info{{version="{__version__}"}} 1.0' in text
    assert "shipper_ready 0.0" in text  # nothing watched yet: not ready
    assert "process_open_fds " in text
    assert "process_max_fds " in text
    assert "process_resident_memory_bytes " in text


def test_histogram_buckets_are_cumulative_with_le_semantics() -> None:
    telemetry = Telemetry()
    for value in (0.005, 0.006, 1.0, 400.0):
        telemetry.observe("shipper_batch_duration_seconds", value, output="es")
    text = exposition(MonitoringServer(MonitoringConfig(port=0), telemetry))
    [family] = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "shipper_batch_duration_seconds"
    ]
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets["0.005"] == 1  # a value on a bound is counted in it (`le`)
    assert buckets["0.01"] == 2
    assert buckets["1.0"] == 3
    assert buckets["300.0"] == 3
    assert buckets["+Inf"] == 4
    [count] = [s.value for s in family.samples if s.name.endswith("_count")]
    [total] = [s.value for s in family.samples if s.name.endswith("_sum")]
    assert count == 4
    assert total == pytest.approx(401.011)
    assert telemetry.value("shipper_batch_duration_seconds") == 4
    assert telemetry.histogram("shipper_batch_duration_seconds", output="es").count == 4


def test_two_servers_keep_their_own_registries() -> None:
    one, two = Telemetry(), Telemetry()
    one.inc("shipper_retries_total", output="a")
    two.inc("shipper_retries_total", output="b")
    text_one = exposition(MonitoringServer(MonitoringConfig(port=0), one))
    text_two = exposition(MonitoringServer(MonitoringConfig(port=0), two))
    assert 'output="a"' in text_one
    assert 'output="b"' not in text_one
    assert 'output="b"' in text_two


# --- removing series -----------------------------------------------------------------------------


def test_remove_drops_the_series_matching_the_given_labels() -> None:
    telemetry = Telemetry()
    telemetry.set("shipper_lag_bytes", 1, source="a", container="x")
    telemetry.set("shipper_lag_bytes", 2, source="a", container="y")
    telemetry.set("shipper_lag_bytes", 4, source="b", container="x")
    telemetry.set("shipper_open_files", 3, source="a")
    telemetry.observe("shipper_batch_duration_seconds", 1.0, output="es")
    telemetry.remove("shipper_lag_bytes", source="a", container="x")
    assert telemetry.value("shipper_lag_bytes") == 6
    telemetry.remove("shipper_lag_bytes", source="a")  # every container of source a
    assert [(labels, value) for _, labels, value in telemetry.samples()] == [
        ({"source": "b", "container": "x"}, 4),
        ({"source": "a"}, 3),
    ]
    telemetry.remove("shipper_batch_duration_seconds")
    assert telemetry.histograms() == []
    with pytest.raises(ValueError, match="takes labels"):
        telemetry.remove("shipper_lag_bytes", output="x")
    text = exposition(MonitoringServer(MonitoringConfig(port=0), telemetry))
    assert 'source="a"' not in text.split("# HELP shipper_lag_bytes")[1].split("# HELP")[0]


# --- readiness rules -----------------------------------------------------------------------------


class Output:
    def __init__(self, name: str, failing_since: float | None) -> None:
        self.name = name
        self.failing_since = failing_since


def test_an_output_is_failing_once_past_the_threshold() -> None:
    outputs = [Output("es", 100.0), Output("hec", None), Output("file", 130.0)]
    assert failing_outputs(outputs, now=159.0, after=60) == []
    [reason] = failing_outputs(outputs, now=160.0, after=60)
    assert reason == "output es: every attempt failed for 60s"


def test_reading_is_stalled_once_past_the_threshold_and_many_files_are_summed_up() -> None:
    assert stalled_reading([("/a.log", 100.0)], now=159.9, after=60) == []
    assert stalled_reading([("/a.log", 100.0)], now=160.0, after=60) == [
        "reading /a.log: unread bytes, no progress for 60s"
    ]
    many = [(f"/{n}.log", float(n)) for n in range(MAX_REASONS + 5)]
    reasons = stalled_reading(many, now=1000.0, after=60)
    assert len(reasons) == MAX_REASONS + 1
    assert reasons[0].startswith("reading /0.log")  # the longest stalled first
    assert reasons[-1] == "reading stalled in 5 more file(s)"


async def test_an_app_is_ready_once_started(tmp_path: Path) -> None:
    health = HealthConfig()
    assert assess(None, time.monotonic(), health) == NOT_STARTED
    app = App(make_config(tmp_path))
    assert assess(app, time.monotonic(), health) == NOT_STARTED
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    await asyncio.wait_for(app.started.wait(), 10)
    try:
        assert assess(app, time.monotonic(), health) == READY
        # Its output failing for longer than the threshold makes it unready.
        app.outputs[0]._sender.failing_since = time.monotonic() - 61
        verdict = assess(app, time.monotonic(), health)
        assert not verdict.ready
        assert verdict.reasons[0].startswith("output archive: every attempt failed for 6")
    finally:
        stop.set()
        await task


# --- the Sender's failing clock ------------------------------------------------------------------


class Sink:
    """Answers each send with the next scripted response, noting the sender's clock then."""

    def __init__(self, *responses: BatchResult | BaseException) -> None:
        self.responses = list(responses)
        self.sender: Sender | None = None
        self.clock_at_send: list[float | None] = []

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, batch: Batch) -> BatchResult:
        assert self.sender is not None
        self.clock_at_send.append(self.sender.failing_since)
        response = (
            self.responses.pop(0)
            if self.responses
            else BatchResult.uniform(Outcome.DELIVERED, len(batch))
        )
        if isinstance(response, BaseException):
            raise response
        return response


def sender_for(sink: Sink, *, max_attempts: int = 0) -> Sender:
    async def dead_letter(output: str, rejected: list[Any]) -> None:
        del output, rejected

    sender = Sender(
        "out",
        sink,
        initial_backoff=0.001,
        max_backoff=0.002,
        max_attempts=max_attempts,
        dead_letter=dead_letter,
        telemetry=Telemetry(),
    )
    sink.sender = sender
    return sender


def batch() -> Batch:
    group = RecordGroup(file=LogFile("docker", "c", "/logs/c.log", "c"), start=0, end=20)
    for n in range(2):
        group.messages.append(f"m{n}")
        group.timestamps.append("2024-05-06T07:08:09.000000000Z")
        group.streams.append("stdout")
        group.offsets.append(10 * n)
    return Batch.of([group])


@pytest.mark.parametrize(
    "failure",
    [
        RetryableSinkError("connection refused"),
        HeldSinkError("403 forbidden"),
        BatchResult([Outcome.RETRY, Outcome.RETRY]),  # every record refused for now
    ],
    ids=["retryable", "held", "all-records-retry"],
)
async def test_a_failed_attempt_starts_the_clock_and_a_success_stops_it(
    failure: BatchResult | BaseException,
) -> None:
    sink = Sink(failure, failure)
    sender = sender_for(sink)
    await sender.deliver(batch())
    first, second, third = sink.clock_at_send
    assert first is None
    assert second is not None
    assert third == second  # the first failure since the last success, not the latest
    assert sender.failing_since is None


async def test_an_attempt_that_settles_some_records_is_no_failure() -> None:
    sink = Sink(BatchResult([Outcome.DELIVERED, Outcome.RETRY]))
    sender = sender_for(sink)
    await sender.deliver(batch())
    assert sink.clock_at_send == [None, None]


async def test_giving_up_leaves_the_output_failing() -> None:
    sink = Sink(RetryableSinkError("down"))
    sender = sender_for(sink, max_attempts=1)
    await sender.deliver(batch())  # dead-lettered after its one attempt
    assert sender.failing_since is not None


# --- a follower's lag and stall ------------------------------------------------------------------


def follower_in(
    tmp_path: Path, budget_bytes: int = 1 << 20
) -> tuple[ContainerFollower, Pipeline, DockerRootWriter]:
    telemetry = Telemetry()
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("web-1")
    store = CheckpointStore(tmp_path / "checkpoints.json", on_corrupt="fail")
    store.load()
    pipeline = Pipeline([], ByteBudget(budget_bytes, telemetry), telemetry)
    follower = ContainerFollower(
        source="docker",
        directory=str(log.directory),
        container_id=log.id,
        settings=TailSettings(
            read_chunk_size=64 * 1024,
            poll_interval=0.02,
            partial_flush_timeout=60.0,
            max_message_bytes=1 << 20,
        ),
        store=store,
        pipeline=pipeline,
        telemetry=telemetry,
    )
    return follower, pipeline, writer


@pytest.fixture
def tasks() -> Iterator[list[asyncio.Task[None]]]:
    running: list[asyncio.Task[None]] = []
    yield running
    for task in running:
        task.cancel()


async def test_unread_bytes_nobody_reads_are_a_stall_and_lag(
    tmp_path: Path, tasks: list[asyncio.Task[None]]
) -> None:
    follower, _, writer = follower_in(tmp_path)
    log = writer.containers["web-1"]
    for n in range(10):
        log.write(f"line {n}")
    follower.reconcile()  # opens the file; nothing reads it
    size = log.log_path.stat().st_size
    assert follower.lag_bytes == size
    since = follower.stalled_since
    assert since is not None
    follower.reconcile()
    assert follower.stalled_since == since  # the clock runs on, it does not restart
    tasks.append(asyncio.create_task(follower.run()))
    await wait_until(
        lambda: follower.lag_bytes == 0 and follower.stalled_since is None,
        what="read, delivered, no lag and no stall",
    )


async def test_an_unfinished_last_line_is_waited_for_not_stalled_on(
    tmp_path: Path, tasks: list[asyncio.Task[None]]
) -> None:
    follower, _, writer = follower_in(tmp_path)
    log = writer.containers["web-1"]
    for n in range(5):
        log.write(f"line {n}")
    half = b'{"log":"half a line, the rest never comes'
    with log.log_path.open("ab") as file:
        file.write(half)
    tasks.append(asyncio.create_task(follower.run()))
    await wait_until(lambda: follower.lag_bytes == len(half), what="all but the half line")
    follower.reconcile()
    assert follower.stalled_since is None


async def test_waiting_for_the_memory_budget_is_no_stall(
    tmp_path: Path, tasks: list[asyncio.Task[None]]
) -> None:
    follower, pipeline, writer = follower_in(tmp_path, budget_bytes=100)
    log = writer.containers["web-1"]
    for n in range(10):
        log.write(f"a line long enough to need more than the whole budget {n}")
    await pipeline.budget.acquire(50, "another container")  # the outputs are slow
    tasks.append(asyncio.create_task(follower.run()))
    await wait_until(lambda: follower.ingesting, what="the follower waiting for the budget")
    follower.reconcile()
    assert follower.lag_bytes == log.log_path.stat().st_size
    assert follower.stalled_since is None
    pipeline.budget.release(50, "another container")
    await wait_until(lambda: follower.lag_bytes == 0, what="delivered once the budget had room")


async def test_a_follower_waiting_for_the_budget_has_read_nothing(
    tmp_path: Path, tasks: list[asyncio.Task[None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each follower behind a full budget used to wait holding a whole read (and a copy of it):
    # with 1,000 containers, hundreds of MiB outside the budget. Its backlog stays on disk now.
    follower, pipeline, writer = follower_in(tmp_path, budget_bytes=100)
    log = writer.containers["web-1"]
    for n in range(10):
        log.write(f"a line long enough to need more than the whole budget {n}")
    read_bytes: list[int] = []  # what the follower read of its lines (not identity heads)
    read = ContainerFollower._read

    def counted(self: ContainerFollower, generation: Any) -> bytes:
        data = read(self, generation)
        read_bytes.append(len(data))
        return data

    monkeypatch.setattr(ContainerFollower, "_read", counted)
    await pipeline.budget.acquire(100, "another container")  # the outputs are slow
    tasks.append(asyncio.create_task(follower.run()))
    await wait_until(lambda: follower.ingesting, what="the follower waiting for the budget")
    assert sum(read_bytes) == 0
    assert pipeline.budget.used == 100
    pipeline.budget.release(100, "another container")
    await wait_until(lambda: follower.lag_bytes == 0, what="delivered once the budget had room")
    assert sum(read_bytes) >= log.log_path.stat().st_size


async def test_a_watched_idle_follower_reads_new_lines_without_listing(
    tmp_path: Path, tasks: list[asyncio.Task[None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1,000 idle containers each listing their directory four times a second cost 0.4 of a
    # core; with a working watch, creations and renames come as hints, and appends are found
    # by reading at the end of the file.
    follower, pipeline, writer = follower_in(tmp_path)
    log = writer.containers["web-1"]
    telemetry = pipeline.budget._telemetry
    listed: list[str] = []
    listdir = os.listdir

    def counted(path: str) -> list[str]:
        listed.append(path)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", counted)
    log.write("first")
    follower.reconcile()  # as the source does before it runs a follower
    follower.watched = True
    tasks.append(asyncio.create_task(follower.run()))
    await wait_until(lambda: telemetry.value("shipper_lines_read_total") == 1, what="line 1")
    before = len(listed)
    log.write("second")
    await wait_until(lambda: telemetry.value("shipper_lines_read_total") == 2, what="line 2")
    assert len(listed) == before
    follower.hint()  # a file of the directory was created or renamed
    await wait_until(lambda: len(listed) > before, what="a listing after the hint")
    follower.watched = False  # the watch died: looking means listing again
    after_hint = len(listed)
    await wait_until(lambda: len(listed) > after_hint, what="listing while unwatched")


async def test_a_stopped_source_leaves_no_gauges_behind(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("web-1")
    log.write("hello")
    app = App(make_config(tmp_path))
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    telemetry = app.telemetry
    await wait_until(
        lambda: (
            telemetry.value("shipper_records_total") == 1
            and ("shipper_lag_bytes", {"source": "docker", "container": log.id}, 0)
            in telemetry.samples()
        ),
        what="delivered, and the container's lag measured at 0",
    )
    assert telemetry.value("shipper_open_files", source="docker") == 1
    stop.set()
    await task
    # Counters stay (they only go up); gauges of what no longer runs are no series at all.
    names = {name for name, _, _ in telemetry.samples()}
    assert names.isdisjoint({"shipper_lag_bytes", "shipper_open_files", "shipper_pinned_bytes"})
    assert "shipper_lines_read_total" in names


# --- the HTTP endpoint ---------------------------------------------------------------------------


def fetch(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, method=method)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(server_module.__name__)
    handler = Keep()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
async def server(logged: list[logging.LogRecord]) -> Any:
    monitoring = MonitoringServer(MonitoringConfig(port=0), Telemetry())
    monitoring.start()
    yield monitoring
    monitoring.stop()


async def test_routes_and_the_listening_line(
    server: MonitoringServer, logged: list[logging.LogRecord]
) -> None:
    [listening] = [r for r in logged if r.getMessage() == "Monitoring endpoint listening."]
    url = listening.url  # type: ignore[attr-defined]
    assert url == f"http://127.0.0.1:{server.port}"
    status, kind, body = await asyncio.to_thread(fetch, f"{url}/metrics")
    assert (status, kind.split(";")[0]) == (200, "text/plain")
    assert b"# TYPE shipper_lines_read_total counter" in body
    assert (await asyncio.to_thread(fetch, f"{url}/nope"))[0] == 404
    assert (await asyncio.to_thread(fetch, f"{url}/"))[0] == 404
    assert (await asyncio.to_thread(fetch, f"{url}/metrics", "POST"))[0] == 405
    status, kind, body = await asyncio.to_thread(fetch, f"{url}/livez")
    assert (status, kind, orjson.loads(body)) == (200, "application/json", {"status": "alive"})
    status, _, body = await asyncio.to_thread(fetch, f"{url}/readyz")
    assert (status, orjson.loads(body)) == (503, {"status": "unready", "reasons": ["starting"]})


async def test_ready_once_the_watched_app_started(server: MonitoringServer, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{server.port}/readyz"
    app = App(make_config(tmp_path))
    server.watch(app)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        await asyncio.wait_for(app.started.wait(), 10)
        server.heartbeat()  # the next beat would judge it within a second; now is sooner
        status, _, body = await asyncio.to_thread(fetch, url)
        assert (status, orjson.loads(body)) == (200, {"status": "ready"})
        text = exposition(server)
        assert "shipper_ready 1.0" in text
        assert 'shipper_output_failing_seconds{output="archive"} 0.0' in text
        assert "shipper_checkpoint_age_seconds " in text
        # A reload watches a new App: "starting" until it runs.
        server.watch(App(make_config(tmp_path)))
        status, _, body = await asyncio.to_thread(fetch, url)
        assert (status, orjson.loads(body)["reasons"]) == (503, ["starting"])
    finally:
        stop.set()
        await task


async def test_livez_fails_while_the_event_loop_is_blocked(
    server: MonitoringServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "LIVENESS_TIMEOUT", 0.3)
    url = f"http://127.0.0.1:{server.port}/livez"
    await wait_until(lambda: fetch(url)[0] == 200, what="alive")
    # Block the loop itself (this is the condition under test, not a wait): the heartbeat
    # cannot run, and the HTTP thread, which can, must say so.
    time.sleep(0.5)
    status, _, body = fetch(url)  # from the blocked loop's own thread
    assert status == 503
    assert orjson.loads(body)["reasons"][0].startswith("the event loop has not run for")
    assert fetch(f"http://127.0.0.1:{server.port}/readyz")[0] == 503
    await wait_until(lambda: fetch(url)[0] == 200, what="alive again once the loop runs")


def test_a_port_in_use_is_logged_and_shipper_runs_on(logged: list[logging.LogRecord]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monitoring = MonitoringServer(MonitoringConfig(port=port), Telemetry())
        monitoring.start()  # no exception
        monitoring.stop()
    assert monitoring.port is None
    [error] = [r for r in logged if r.levelno == logging.ERROR]
    assert error.address == f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    assert "in use" in error.error  # type: ignore[attr-defined]


# --- `shipper health` ----------------------------------------------------------------------------


def write_config(tmp_path: Path, host: str, port: int, extra: str = "") -> Path:
    path = tmp_path / "probe.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"sources:\n  docker:\n    type: docker_json\n    root: {tmp_path / 'containers'}\n"
        f"outputs:\n  out:\n    type: file\n    path: {tmp_path / 'out.ndjson'}\n"
        f"monitoring:\n  host: '{host}'\n  port: {port}\n{extra}"
    )
    return path


async def test_probe_exit_codes(
    server: MonitoringServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert server.port is not None
    config = write_config(tmp_path, "127.0.0.1", server.port)
    assert await asyncio.to_thread(probe, config, live=True) == 0
    assert "alive" in capsys.readouterr().out
    assert await asyncio.to_thread(probe, config, live=False) == 1
    assert "not ready: starting" in capsys.readouterr().err
    app = App(make_config(tmp_path))
    server.watch(app)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        await asyncio.wait_for(app.started.wait(), 10)
        server.heartbeat()
        assert await asyncio.to_thread(probe, config, live=False) == 0
        assert capsys.readouterr().out.startswith("ready (http://127.0.0.1:")
    finally:
        stop.set()
        await task


async def test_probe_asks_loopback_for_a_wildcard_bind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wildcard = "0.0.0.0"  # noqa: S104 - binding every interface is the case under test
    monitoring = MonitoringServer(MonitoringConfig(host=wildcard, port=0), Telemetry())
    monitoring.start()
    try:
        assert monitoring.port is not None
        config = write_config(tmp_path, wildcard, monitoring.port)
        assert await asyncio.to_thread(probe, config, live=True) == 0
        assert f"http://127.0.0.1:{monitoring.port}/livez" in capsys.readouterr().out
    finally:
        monitoring.stop()


def test_probe_without_an_answer_or_with_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]  # released: nothing listens there
    assert probe(write_config(tmp_path, "127.0.0.1", free), live=False) == 1
    assert f"no answer from http://127.0.0.1:{free}/readyz" in capsys.readouterr().err
    assert probe(write_config(tmp_path, "127.0.0.1", 0), live=False) == 2
    assert "no fixed port" in capsys.readouterr().err
    disabled = write_config(tmp_path, "127.0.0.1", 9910, "  enabled: false\n")
    assert probe(disabled, live=False) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: {}\noutputs: {}\nmonitoring: {port: 70000}\n")
    assert probe(bad, live=False) == 2
    assert "invalid config" in capsys.readouterr().err
