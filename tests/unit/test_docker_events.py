"""DockerEvents against a faithful Engine API server on a real unix socket (tests/engine_api.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper.errors import ConfigError
from shipper.sources.docker_events import (
    ACTIONS,
    MAX_EVENT_BYTES,
    ContainerEvent,
    DockerEvents,
    socket_path_from_docker_host,
)
from shipper.telemetry.counters import Telemetry
from tests.engine_api import NANOS_PER_SECOND, EngineApi
from tests.helpers import wait_until

WEB = "a" * 64
DB = "b" * 64
CONNECT_TIMEOUT = 10.0


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logs() -> Iterator[list[logging.LogRecord]]:
    """Every record of the module's logger, whatever the suite did to logging's propagation."""
    logger = logging.getLogger("shipper.sources.docker_events")
    collector = _Collector()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(collector)
    try:
        yield collector.records
    finally:
        logger.removeHandler(collector)
        logger.setLevel(level)


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # A short folder: a unix socket path must fit in 107 bytes, pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="shipper-events-") as folder:
        yield Path(folder) / "docker.sock"


@pytest.fixture
async def daemon(socket_path: Path) -> AsyncIterator[EngineApi]:
    async with EngineApi(socket_path) as server:
        yield server


@contextlib.asynccontextmanager
async def following(
    socket_path: Path,
    *,
    on_event: Callable[[ContainerEvent], None] | None = None,
    telemetry: Telemetry | None = None,
) -> AsyncIterator[tuple[DockerEvents, list[ContainerEvent]]]:
    """A running DockerEvents on the socket with short backoffs; cancelled at the end."""
    received: list[ContainerEvent] = []
    events = DockerEvents(
        f"unix://{socket_path}",
        on_event or received.append,
        telemetry=telemetry,
        min_backoff=0.01,
        max_backoff=0.05,
    )
    task = asyncio.create_task(events.run())
    try:
        yield events, received
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def subscribed(events: DockerEvents) -> None:
    await asyncio.wait_for(events.connected.wait(), CONNECT_TIMEOUT)


def expected(message: dict[str, Any]) -> ContainerEvent:
    """The ContainerEvent a stored server message must become."""
    return ContainerEvent(
        action=message["Action"],
        container_id=message["Actor"]["ID"],
        name=message["Actor"]["Attributes"].get("name"),
        time_nano=message["timeNano"],
    )


def this_second() -> int:
    return time.time_ns() // NANOS_PER_SECOND * NANOS_PER_SECOND


def warnings(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [record for record in records if record.levelno == logging.WARNING]


async def test_events_are_delivered_in_order_with_their_names(
    daemon: EngineApi, socket_path: Path
) -> None:
    telemetry = Telemetry()
    async with following(socket_path, telemetry=telemetry) as (events, received):
        await subscribed(events)
        sent = [
            daemon.event("create", WEB, name="web-1"),
            daemon.event("start", WEB, name="web-1"),
            daemon.event("rename", WEB, name="web-2", attributes={"oldName": "/web-1"}),
            daemon.event("die", WEB, name="web-2", attributes={"exitCode": "0"}),
            daemon.event("destroy", WEB, name="web-2"),
        ]
        await wait_until(lambda: len(received) == len(sent), what="five events")

    assert received == [expected(message) for message in sent]
    assert [event.name for event in received] == ["web-1", "web-1", "web-2", "web-2", "web-2"]
    assert telemetry.value("shipper_docker_events_total", action="start") == 1
    assert telemetry.value("shipper_docker_events_total") == 5
    await wait_until(lambda: daemon.subscribers == 0, what="cancelling run() to close the stream")


async def test_subscribes_to_container_actions_only_and_asks_no_past_at_first(
    daemon: EngineApi, socket_path: Path
) -> None:
    async with following(socket_path) as (events, received):
        await subscribed(events)
        (request,) = daemon.event_requests()
        filters = request.param("filters")
        assert filters is not None
        assert json.loads(filters) == {"type": ["container"], "event": list(ACTIONS)}
        assert request.param("since") is None, "the files cover the past"

        daemon.event("create", "n" * 64, event_type="network", name="bridge")
        daemon.event("pause", WEB, name="web")
        daemon.event("exec_start: sh -c true", WEB, name="web")
        last = daemon.event("start", WEB, name="web")
        await wait_until(lambda: len(received) >= 1, what="the start event")

    assert received == [expected(last)]


@pytest.mark.parametrize("since_precision", ["second", "nanosecond"])
async def test_resumes_after_an_outage_from_the_last_event_without_loss_or_duplicate(
    socket_path: Path, since_precision: Any
) -> None:
    # Times a minute back, before the subscription's Date: the resume point is the last event,
    # whatever the clocks say.
    second = this_second() - 60 * NANOS_PER_SECOND
    telemetry = Telemetry()
    async with (
        EngineApi(socket_path, since_precision=since_precision) as daemon,
        following(socket_path, telemetry=telemetry) as (events, received),
    ):
        await subscribed(events)
        sent = [
            daemon.event("create", WEB, name="web", time_nano=second + 1000),
            daemon.event("start", WEB, name="web", time_nano=second + 2000),
        ]
        await wait_until(lambda: len(received) == 2, what="the first two events")

        # A crashed daemon: streams reset, connections refused while it is down.
        async with daemon.down(remove_socket=False):
            await wait_until(lambda: not events.connected.is_set(), what="the stream to break")
            # The same timeNano as the last delivered event, another container: not a repeat.
            sent.append(daemon.event("start", DB, name="db", time_nano=second + 2000))
            sent.append(daemon.event("die", WEB, name="web", time_nano=second + 3000))
        await subscribed(events)
        # Anything sent twice would come before this one.
        sent.append(daemon.event("destroy", WEB, name="web"))
        await wait_until(lambda: len(received) >= 5, what="the events after the outage")

    assert received == [expected(message) for message in sent]
    first, resumed = daemon.event_requests()
    assert first.param("since") is None
    assert resumed.param("since") == f"{second // NANOS_PER_SECOND}.{2000:09d}"
    assert telemetry.value("shipper_docker_events_reconnects_total") == 1


async def test_an_event_cut_mid_write_is_delivered_once_after_reconnecting(
    daemon: EngineApi, socket_path: Path
) -> None:
    async with following(socket_path) as (events, received):
        await subscribed(events)
        sent = [daemon.event("start", WEB, name="web")]
        await wait_until(lambda: len(received) == 1, what="the first event")
        # The daemon dies while writing the second event: half a chunk, then a reset.
        sent.append(daemon.event("die", WEB, name="web", cut_streams=True))
        await wait_until(lambda: events.subscriptions == 2, what="the resubscription")
        sent.append(daemon.event("destroy", WEB, name="web"))
        await wait_until(lambda: len(received) >= 3, what="the replayed and the new event")

    assert received == [expected(message) for message in sent]


async def test_a_daemon_down_at_start_is_waited_for_with_one_warning_per_outage(
    socket_path: Path, logs: list[logging.LogRecord]
) -> None:
    daemon = EngineApi(socket_path)  # not started: no socket file yet
    async with following(socket_path) as (events, received):
        await wait_until(
            lambda: sum(r.getMessage() == "Docker events still unavailable." for r in logs) >= 3,
            what="several attempts",
        )
        assert len(warnings(logs)) == 1
        assert not events.connected.is_set()

        await daemon.start()
        try:
            await subscribed(events)
            assert daemon.event_requests()[0].param("since") is None, "the files cover the past"
            sent = [daemon.event("start", WEB, name="web")]
            await wait_until(lambda: len(received) == 1, what="the first event")
            assert [r.getMessage() for r in logs if r.levelno == logging.INFO] == [
                "Docker events followed again."
            ]

            # A second outage: one more warning, however many attempts it takes.
            async with daemon.down():
                await wait_until(lambda: len(warnings(logs)) == 2, what="the second warning")
                attempts = len(logs)
                await wait_until(lambda: len(logs) >= attempts + 3, what="more attempts")
                sent.append(daemon.event("die", WEB, name="web"))
            await subscribed(events)
            await wait_until(lambda: len(received) == 2, what="the event from the outage")
        finally:
            await daemon.stop()

    assert received == [expected(message) for message in sent]
    assert len(warnings(logs)) == 2
    assert sum(r.getMessage() == "Docker events followed again." for r in logs) == 2
    assert daemon.event_requests()[1].param("since") is not None


async def test_an_error_answer_is_retried_like_an_absent_daemon(
    daemon: EngineApi, socket_path: Path, logs: list[logging.LogRecord]
) -> None:
    daemon.events_status = 500
    async with following(socket_path) as (events, received):
        await wait_until(lambda: len(daemon.event_requests()) >= 3, what="several attempts")
        assert not events.connected.is_set()
        (warning,) = warnings(logs)
        assert "HTTP 500" in warning.__dict__["reason"]

        daemon.events_status = None
        await subscribed(events)
        sent = daemon.event("start", WEB, name="web")
        await wait_until(lambda: len(received) == 1, what="the event")

    assert received == [expected(sent)]


async def test_malformed_lines_are_skipped_with_a_warning_and_the_stream_goes_on(
    daemon: EngineApi, socket_path: Path, logs: list[logging.LogRecord]
) -> None:
    async with following(socket_path) as (events, received):
        await subscribed(events)
        sent = [daemon.event("create", WEB, name="web")]
        daemon.send_raw(b'{"Actor":{"Attributes":{"PASSWORD":"hunter2"}\n')  # cut JSON
        daemon.send_raw(b'["start"]\n')
        daemon.send_raw(b'{"Type":"container","Action":"start","timeNano":1}\n')  # no id
        daemon.send_raw(b"\n")  # an empty line is no event, and no problem either
        # An event split across two chunks is one event.
        split_time = time.time_ns()
        split = {
            "Type": "container",
            "Action": "start",
            "Actor": {"ID": WEB, "Attributes": {"name": "/web"}},
            "time": split_time // NANOS_PER_SECOND,
            "timeNano": split_time,
        }
        line = json.dumps(split).encode() + b"\n"
        daemon.send_raw(line[:20])
        daemon.send_raw(line[20:])
        sent.append(daemon.event("die", WEB, name="web"))
        await wait_until(lambda: len(received) >= 3, what="the events around the bad lines")

    assert received == [
        expected(sent[0]),
        ContainerEvent("start", WEB, "web", split_time),
        expected(sent[1]),
    ]
    reasons = [record.__dict__["reason"] for record in warnings(logs)]
    assert reasons == ["not JSON", "not a JSON object", "no container id or time"]
    assert not any("hunter2" in str(record.__dict__) for record in logs), "no content logged"


async def test_an_overlong_line_is_skipped_without_buffering_it(
    daemon: EngineApi, socket_path: Path, logs: list[logging.LogRecord]
) -> None:
    async with following(socket_path) as (events, received):
        await subscribed(events)
        piece = b"x" * 65536
        for _ in range(MAX_EVENT_BYTES // len(piece) + 2):
            daemon.send_raw(piece)
        daemon.send_raw(b"tail of the long line\n")
        sent = daemon.event("start", WEB, name="web")
        await wait_until(lambda: len(received) >= 1, what="the event after the long line")

    assert received == [expected(sent)]
    assert [record.__dict__["reason"] for record in warnings(logs)] == ["longer than the limit"]


async def test_a_failing_consumer_does_not_stop_the_events(
    daemon: EngineApi, socket_path: Path, logs: list[logging.LogRecord]
) -> None:
    received: list[ContainerEvent] = []

    def consume(event: ContainerEvent) -> None:
        if event.action == "create":
            raise RuntimeError("consumer bug")
        received.append(event)

    async with following(socket_path, on_event=consume) as (events, _):
        await subscribed(events)
        daemon.event("create", WEB, name="web")
        sent = daemon.event("start", WEB, name="web")
        await wait_until(lambda: len(received) >= 1, what="the event after the failure")

    assert received == [expected(sent)]
    assert [r.getMessage() for r in logs if r.levelno == logging.ERROR] == [
        "Handling a Docker event failed."
    ]


@pytest.mark.parametrize(
    ("docker_host", "path"),
    [
        ("unix:///var/run/docker.sock", "/var/run/docker.sock"),
        ("/run/user/1000/docker.sock", "/run/user/1000/docker.sock"),
    ],
)
def test_docker_host_names_a_unix_socket(docker_host: str, path: str) -> None:
    assert socket_path_from_docker_host(docker_host) == path


@pytest.mark.parametrize(
    ("docker_host", "got"),
    [
        ("tcp://admin:s3cret@10.0.0.7:2376", "a tcp:// address"),
        ("npipe:////./pipe/docker_engine", "a npipe:// address"),
        ("unix://run/docker.sock", "a relative or empty path"),
        ("docker.sock", "a relative or empty path"),
        ("unix://", "a relative or empty path"),
        ("", "a relative or empty path"),
    ],
)
def test_a_docker_host_that_is_not_a_unix_socket_is_rejected_clearly(
    docker_host: str, got: str
) -> None:
    with pytest.raises(ConfigError, match=r"^docker_host: only a local unix socket") as raised:
        DockerEvents(docker_host, lambda event: None)
    message = str(raised.value)
    assert message.endswith(f"got {got}")
    assert "s3cret" not in message and "10.0.0.7" not in message, "the value is never quoted"
