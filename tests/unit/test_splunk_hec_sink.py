"""Tests for the `splunk_hec` output against tests/fake_splunk.py with the real httpx client."""

from __future__ import annotations

import asyncio
import logging
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from shipper.app import SINKS, App
from shipper.config import ConfigError, SplunkHecOutputConfig, parse_config
from shipper.docker_writer import DockerRootWriter
from shipper.errors import FatalSinkError, HeldSinkError, RetryableSinkError
from shipper.model import Batch, BatchResult, Enrichment, LogFile, Outcome, RecordGroup, Rejection
from shipper.pipeline.sender import Sender
from shipper.sinks.ecs import build_document
from shipper.sinks.splunk_hec import RetryLaterError, SplunkHecSink, epoch_text
from shipper.telemetry.counters import Telemetry
from tests.fake_splunk import Event, FakeSplunk
from tests.helpers import wait_until

D, R, X, A, DROP = (
    Outcome.DELIVERED,
    Outcome.RETRY,
    Outcome.DEAD_LETTERED,
    Outcome.AWAITING_ACK,
    Outcome.DROPPED,
)

TOKEN = "0c8d2f1e-hec-s3cr3t-token-7a41"
ACK_TOKEN = "5b1e9c3a-hec-s3cr3t-acked-92d0"


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def hec() -> Iterator[FakeSplunk]:
    with FakeSplunk(indexes=("main", "logs", "fallback", "app-payments", "app-search")) as server:
        server.add_token(
            TOKEN, name="shipper", indexes=("main", "logs", "fallback", "app-payments")
        )
        server.add_token(ACK_TOKEN, name="acked", use_ack=True)
        yield server
    assert server.internal_errors == []


def output_config(
    options: dict[str, Any], environ: dict[str, str] | None = None
) -> SplunkHecOutputConfig:
    text = yaml.safe_dump(
        {
            "sources": {"docker": {"type": "docker_json"}},
            "outputs": {"hec": {"type": "splunk_hec", **options}},
        }
    )
    output = parse_config(text, "hec.yaml", environ=environ or {}).outputs["hec"]
    assert isinstance(output, SplunkHecOutputConfig)
    return output


def config_for(hec: FakeSplunk, **options: Any) -> SplunkHecOutputConfig:
    options.setdefault("token", TOKEN)
    return output_config({"url": hec.url, **options})


@asynccontextmanager
async def opened(
    config: SplunkHecOutputConfig, telemetry: Telemetry | None = None
) -> AsyncIterator[SplunkHecSink]:
    sink = SplunkHecSink(config, name="hec", telemetry=telemetry)
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


def make_group(
    *messages: str,
    start: int = 0,
    labels: dict[str, str] | None = None,
    name: str = "web",
    second: str = "2024-05-01T12:00:00",
    metadata: bool = True,
) -> RecordGroup:
    group = RecordGroup(
        file=LogFile("docker", "c0ffee", "/logs/c0ffee-json.log", "h", "fp-1"),
        start=start,
        end=start + 100 * len(messages),
    )
    for n, message in enumerate(messages):
        group.messages.append(message)
        group.timestamps.append(f"{second}.{n:03d}456789Z")
        group.streams.append("stderr" if n % 2 else "stdout")
        group.offsets.append(start + 100 * n)
    if metadata:
        document: dict[str, Any] = {
            "container": {
                "id": "c0ffee",
                "name": name,
                "image": {"name": "nginx:1.27"},
                "labels": labels or {},
            },
            "host": {"name": "node-1"},
        }
        group.enrichment = Enrichment(document, orjson.dumps(document)[1:-1])
    return group


class DeadLetters:
    def __init__(self) -> None:
        self.records: list[tuple[str, str | Rejection]] = []  # message, reason

    async def __call__(
        self, output: str, rejected: list[tuple[RecordGroup, int, str | Rejection]]
    ) -> None:
        self.records.extend((group.messages[index], reason) for group, index, reason in rejected)


def sender(sink: SplunkHecSink, dead: DeadLetters, telemetry: Telemetry | None = None) -> Sender:
    return Sender(
        "hec",
        sink,
        initial_backoff=0.01,
        max_backoff=0.02,
        max_attempts=0,
        dead_letter=dead,
        telemetry=telemetry or Telemetry(),
    )


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every log record with its extra fields, as a scan for secrets must see them."""
    return "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)


def payloads(events: list[Event]) -> list[Any]:
    return [event.event for event in events]


async def settled(result: BatchResult) -> BatchResult:
    assert result.acknowledged is not None
    return await result.acknowledged


# --- success and the envelope --------------------------------------------------------------------


async def test_events_are_delivered_with_the_default_envelope(
    hec: FakeSplunk, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shipper")
    telemetry = Telemetry()
    async with opened(config_for(hec), telemetry) as sink:
        result = await sink.send(Batch.of([make_group("one", "two", "three")]))
    assert result.outcomes == [D, D, D]
    assert result.acknowledged is None
    events = hec.events()
    assert payloads(events) == ["one", "two", "three"]
    first = events[0]
    assert first.index == "main"  # the token's default: no `index` configured
    assert first.host == "node-1"
    assert first.source == "/logs/c0ffee-json.log"
    assert first.sourcetype == "docker:container:web"
    assert first.fields == {}
    assert [e.time_ns for e in events] == [
        1714564800_000456000,
        1714564800_001456000,
        1714564800_002456000,
    ]
    (request,) = hec.ingest_requests()
    assert request.path == "/services/collector/event"
    assert request.headers["content-type"] == "application/json"
    uuid.UUID(request.headers["x-splunk-request-channel"])
    # The exact bytes: envelopes back to back, `time` a plain decimal.
    assert request.body.split(b"\n")[0] == (
        b'{"host":"node-1","source":"/logs/c0ffee-json.log","sourcetype":"docker:container:web",'
        b'"time":1714564800.000456,"event":"one"}'
    )
    assert telemetry.value("shipper_hec_requests_total", output="hec", status="200", code="0")
    assert telemetry.value("shipper_hec_request_bytes_total", output="hec") == len(request.body)
    assert "does not check the token" in caplog.text


def test_time_is_a_plain_decimal_from_integer_arithmetic() -> None:
    assert epoch_text("2024-05-01T12:00:00.123456789Z") == "1714564800.123456"
    assert epoch_text("2024-05-01T12:00:00.999999999Z") == "1714564800.999999"  # truncated
    assert epoch_text("2024-05-01T12:00:01.000000001Z") == "1714564801.000000"
    assert epoch_text("2024-05-01T12:00:00Z") == "1714564800.000000"
    assert epoch_text("2024-05-01T12:00:00.5Z") == "1714564800.500000"
    assert epoch_text("1970-01-01T00:00:00.000001000Z") == "0.000001"
    assert epoch_text("2038-01-19T03:14:08.000000000Z") == "2147483648.000000"
    assert epoch_text("9999-12-31T23:59:59.999999999Z") == "253402300799.999999"
    # Before 1970, or not a time: no `time` (HEC stamps the event when it arrives).
    assert epoch_text("1969-12-31T23:59:59.999999999Z") is None
    assert epoch_text("2024-02-30T00:00:00.000000000Z") is None
    assert epoch_text("2024-05-01T12:00:00+02:00") is None
    assert epoch_text("garbage") is None


async def test_times_across_seconds_and_before_1970(hec: FakeSplunk) -> None:
    group = make_group("a", "b", "c", "d")
    group.timestamps[:] = [
        "2024-12-31T23:59:59.999999999Z",
        "2025-01-01T00:00:00.000000001Z",  # the next second, day and year
        "2024-12-31T23:59:59.000001000Z",  # the cached second again
        "1969-07-20T20:17:40.000000000Z",
    ]
    async with opened(config_for(hec)) as sink:
        result = await sink.send(Batch.of([group]))
    assert result.outcomes == [D, D, D, D]
    events = hec.events()
    assert [e.time.raw if e.time is not None else None for e in events] == [
        "1735689599.999999",
        "1735689600.000000",
        "1735689599.000001",
        None,
    ]
    assert [e.time_ns for e in events[:3]] == [
        1735689599_999999000,
        1735689600_000000000,
        1735689599_000001000,
    ]
    assert b"E" not in hec.ingest_requests()[0].body.replace(b'"event"', b"")


async def test_indexed_fields_are_flattened_to_strings(hec: FakeSplunk) -> None:
    group = make_group("one", "two", labels={"team": "payments", "tier": "1"})
    group.flags[1] = ("multiline", "truncated")
    config = config_for(
        hec,
        fields={
            "team": "container.labels.team",
            "image": "container.image.name",
            "labels": "container.labels",
            "stream": "stream",
            "offset": "log.offset",
            "flags": "log.flags",
            "missing": "container.labels.nope",
        },
    )
    async with opened(config) as sink:
        result = await sink.send(Batch.of([group]))
    assert result.outcomes == [D, D]
    first, second = hec.events()
    assert first.fields == {
        "team": "payments",
        "image": "nginx:1.27",
        "labels": '{"team":"payments","tier":"1"}',
        "stream": "stdout",
        "offset": "0",
    }
    assert second.fields["flags"] == ["multiline", "truncated"]
    assert second.fields["stream"] == "stderr"
    assert second.fields["offset"] == "100"


async def test_templates_and_an_index_from_a_hostile_label_falls_back(hec: FakeSplunk) -> None:
    config = config_for(
        hec,
        host="{container.name}.example",
        source="docker:{container.name}",
        sourcetype="app:{container.labels.app}",
        index="app-{container.labels.team}",
        allowed_indexes=["app-pay*"],
        fallback_index="fallback",
    )
    groups = [
        make_group("allowed", labels={"team": "Payments", "app": "api"}, name="pay"),
        make_group("not allowed", labels={"team": "search", "app": "api"}, name="search"),
        make_group("hostile", labels={"team": "payments,main", "app": "x"}, name="evil"),
        make_group("no label", name="bare"),
        make_group("no metadata", metadata=False),
    ]
    async with opened(config) as sink:
        result = await sink.send(Batch.of(groups))
    assert result.outcomes == [D] * 5
    where = {e.event: (e.index, e.host, e.source, e.sourcetype) for e in hec.events()}
    assert where["allowed"] == ("app-payments", "pay.example", "docker:pay", "app:api")
    assert where["not allowed"][0] == "fallback"  # app-search is not in allowed_indexes
    assert where["hostile"][0] == "fallback"
    assert where["no label"][0] == "fallback"
    # A template whose field is missing leaves its key out: the token's defaults apply.
    assert where["no label"][3] == "httpevent"
    assert where["no metadata"] == ("fallback", "splunk", "http:shipper", "httpevent")
    # One request per index, each holding events of that index only.
    by_request = {
        r.number: {e.index for e in hec.events() if e.request == r.number}
        for r in hec.ingest_requests()
    }
    assert sorted(by_request.values(), key=sorted) == [{"app-payments"}, {"fallback"}]


async def test_a_batch_is_sent_as_one_request_per_index_in_order(hec: FakeSplunk) -> None:
    config = config_for(
        hec,
        index="{container.labels.idx}",
        allowed_indexes=["main", "logs"],
    )
    groups = [
        make_group("m1", "m2", labels={"idx": "main"}),
        make_group("l1", labels={"idx": "logs"}),
        make_group("m3", labels={"idx": "main"}),
        make_group("l2", "l3", labels={"idx": "logs"}),
    ]
    async with opened(config) as sink:
        result = await sink.send(Batch.of(groups))
    assert result.outcomes == [D] * 6
    requests = hec.ingest_requests()
    assert len(requests) == 2
    assert payloads(hec.events("main")) == ["m1", "m2", "m3"]
    assert payloads(hec.events("logs")) == ["l1", "l2", "l3"]
    for request in requests:
        assert len({e.index for e in hec.events() if e.request == request.number}) == 1


async def test_max_request_bytes_cuts_a_batch_into_several_requests(hec: FakeSplunk) -> None:
    messages = [f"{n:03d} " + "x" * 150 for n in range(40)]
    async with opened(config_for(hec, max_request_bytes="2KiB")) as sink:
        result = await sink.send(Batch.of([make_group(*messages)]))
    assert result.outcomes == [D] * 40
    requests = hec.ingest_requests()
    assert len(requests) > 3
    assert all(request.body_size <= 2048 for request in requests)
    assert payloads(hec.events()) == messages


async def test_gzip_request_bodies(hec: FakeSplunk) -> None:
    telemetry = Telemetry()
    config = config_for(hec, compression={"enabled": True, "level": 6})
    async with opened(config, telemetry) as sink:
        result = await sink.send(Batch.of([make_group(*(["same text"] * 200))]))
    assert result.outcomes == [D] * 200
    (request,) = hec.ingest_requests()
    assert request.content_encoding == "gzip"
    assert request.wire_size < request.body_size / 5
    assert telemetry.value("shipper_hec_request_sent_bytes_total") == request.wire_size
    assert len(hec.events()) == 200


async def test_blank_messages_are_dropped_not_sent(hec: FakeSplunk) -> None:
    async with opened(config_for(hec)) as sink:
        result = await sink.send(Batch.of([make_group("a", "", "  \t", "b")]))
        only_blank = await sink.send(Batch.of([make_group("", " ")]))
    assert result.outcomes == [D, DROP, DROP, D]
    assert only_blank.outcomes == [DROP, DROP]
    assert payloads(hec.events()) == ["a", "b"]
    assert len(hec.ingest_requests()) == 1


# --- event as the whole record; raw ---------------------------------------------------------------


async def test_record_mode_sends_the_whole_ecs_record(hec: FakeSplunk) -> None:
    group = make_group("one", "two", labels={"team": "payments"})
    async with opened(config_for(hec, event="record")) as sink:
        result = await sink.send(Batch.of([group]))
    assert result.outcomes == [D, D]
    assert payloads(hec.events()) == [build_document(group, 0), build_document(group, 1)]


async def test_record_mode_sends_processed_documents_as_they_are(hec: FakeSplunk) -> None:
    group = make_group("one", "two")
    group.documents = [b'{"message":"one","level":"info"}\n', b'{"message":"two","n":2}\n']
    async with opened(config_for(hec, event="record", fields={"level": "level"})) as sink:
        result = await sink.send(Batch.of([group]))
    assert result.outcomes == [D, D]
    first, second = hec.events()
    assert first.event == {"message": "one", "level": "info"}
    assert first.fields == {"level": "info"}
    assert second.event == {"message": "two", "n": 2}
    assert second.fields == {}


@pytest.mark.parametrize("endpoint", ["event", "raw"])
async def test_message_mode_sends_the_message_as_processing_left_it(
    hec: FakeSplunk, endpoint: str
) -> None:
    # The columns keep the line as read; a redact processor changed only the documents. Sending
    # the column would ship the secret the processor removed.
    group = make_group("password is secret-1234", "plain", "structured")
    group.documents = [
        b'{"message":"password is [REDACTED]"}\n',
        b'{"level":"info"}\n',  # a processor dropped the message: nothing to send
        b'{"message":{"user":"ann"}}\n',  # decode_json left an object: sent as JSON text
    ]
    async with opened(config_for(hec, endpoint=endpoint)) as sink:
        await sink.send(Batch.of([group]))
    sent = [event.event for event in hec.events()]
    assert sent == ["password is [REDACTED]", '{"user":"ann"}']
    assert all("secret-1234" not in request.body.decode() for request in hec.ingest_requests())


async def test_raw_mode_sends_lines_with_the_route_in_the_query(hec: FakeSplunk) -> None:
    config = config_for(hec, endpoint="raw", index="{container.labels.idx}", allowed_indexes=["*"])
    groups = [
        make_group("a1", "a2", labels={"idx": "main"}, name="a"),
        make_group("b1", labels={"idx": "logs"}, name="b"),
        make_group("a3", labels={"idx": "main"}, name="a"),
    ]
    async with opened(config) as sink:
        result = await sink.send(Batch.of(groups))
    assert result.outcomes == [D] * 4
    requests = hec.ingest_requests()
    assert len(requests) == 2
    first = requests[0]
    assert first.path == "/services/collector/raw"
    assert first.body == b"a1\na2\na3\n"
    assert first.query["index"] == "main"
    assert first.query["sourcetype"] == "docker:container:a"
    assert first.query["host"] == "node-1"
    assert first.query["channel"] == first.headers["x-splunk-request-channel"]
    assert payloads(hec.events("main")) == ["a1", "a2", "a3"]
    event = hec.events("logs")[0]
    assert (event.event, event.sourcetype, event.endpoint) == ("b1", "docker:container:b", "raw")


# --- the code table ------------------------------------------------------------------------------


async def test_busy_hec_raises_retry_later_and_the_sender_waits_it_out(hec: FakeSplunk) -> None:
    async with opened(config_for(hec)) as sink:
        hec.busy_for(1)
        with pytest.raises(RetryLaterError, match="503, code 9: Server is busy"):
            await sink.send(Batch.of([make_group("a")]))
        hec.fail_requests(1, status=503, body={"text": "Server is busy", "code": 9}, match=None)
        hec.busy_for(3)
        hec.fail_requests(2, status=500)
        dead = DeadLetters()
        telemetry = Telemetry()
        await sender(sink, dead, telemetry).deliver(Batch.of([make_group("b", "c")]))
    assert payloads(hec.events()) == ["b", "c"]
    assert dead.records == []
    assert telemetry.value("shipper_retries_total") >= 5


async def test_retry_after_is_carried(hec: FakeSplunk) -> None:
    async with opened(config_for(hec)) as sink:
        hec.fail_requests(1, status=503, body=b"busy")
        with pytest.raises(RetryLaterError) as caught:
            await sink.send(Batch.of([make_group("a")]))
    assert caught.value.retry_after is None


@pytest.mark.parametrize(
    ("token", "what"),
    [
        ("not-a-known-token-value", "403, code 4: Invalid token"),
        ("disabled-token-value-123", "403, code 1: Token disabled"),
    ],
)
async def test_token_refusals_hold_and_never_show_the_token(
    hec: FakeSplunk, caplog: pytest.LogCaptureFixture, token: str, what: str
) -> None:
    hec.add_token("disabled-token-value-123", disabled=True)
    caplog.set_level(logging.DEBUG)
    async with opened(config_for(hec, token=token)) as sink:
        with pytest.raises(HeldSinkError) as caught:
            await sink.send(Batch.of([make_group("a")]))
    message = str(caught.value)
    assert what in message
    assert "Check `token`" in message
    rendered = "".join(traceback.format_exception(caught.value)) + logged(caplog)
    assert token not in rendered
    assert hec.events() == []


async def test_a_token_from_a_file_is_named_by_its_option(
    hec: FakeSplunk, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = tmp_path / "hec-token"
    good.write_text(f"  {TOKEN}\n")
    async with opened(config_for(hec, token=None, token_file=str(good))) as sink:
        assert (await sink.send(Batch.of([make_group("a")]))).outcomes == [D]
    bad = tmp_path / "bad-token"
    bad.write_text("wrong-token-in-a-file\n")
    async with opened(config_for(hec, token=None, token_file=str(bad))) as sink:
        dead = DeadLetters()
        task = asyncio.create_task(sender(sink, dead).deliver(Batch.of([make_group("b")])))
        await wait_until(lambda: "refuses this output's token" in logged(caplog), what="held")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    text = logged(caplog)
    assert f"Check `token_file` ({bad})" in text
    assert "wrong-token-in-a-file" not in text
    assert TOKEN not in text
    assert dead.records == []
    with pytest.raises(FatalSinkError, match=r"token_file .* is empty"):
        empty = tmp_path / "empty"
        empty.write_text("\n")
        await SplunkHecSink(config_for(hec, token=None, token_file=str(empty))).open()


async def test_incorrect_index_is_dead_lettered(hec: FakeSplunk) -> None:
    config = config_for(hec, index="app-search")  # exists, but the token may not write to it
    async with opened(config) as sink:
        result = await sink.send(Batch.of([make_group("a", "b")]))
    assert result.outcomes == [X, X]
    reason = result.reasons[0]
    assert isinstance(reason, Rejection)
    assert (reason.status, reason.error_type) == (400, "code 7")
    assert "index app-search" in reason.reason
    assert hec.events() == []


async def test_incorrect_index_goes_to_the_fallback_index(hec: FakeSplunk) -> None:
    telemetry = Telemetry()
    config = config_for(hec, index="app-search", fallback_index="fallback")
    async with opened(config, telemetry) as sink:
        first = await sink.send(Batch.of([make_group("a", "b")]))
        second = await sink.send(Batch.of([make_group("c")]))
    assert first.outcomes == [D, D]
    assert second.outcomes == [D]
    assert payloads(hec.events("fallback")) == ["a", "b", "c"]
    # The refused index is remembered: the second batch went straight to the fallback.
    assert [r.code for r in hec.ingest_requests()] == [7, 0, 0]
    assert telemetry.value("shipper_hec_rerouted_events_total") == 2


async def test_invalid_event_number_keeps_before_dead_letters_it_resends_after(
    hec: FakeSplunk,
) -> None:
    group = make_group("zero", "one", "two", "three", "four")
    # Processed records sent whole: an empty object is a blank event to HEC (code 13).
    group.documents = [orjson.dumps({"message": m}) + b"\n" for m in group.messages]
    group.documents[2] = b"{}\n"
    async with opened(config_for(hec, event="record")) as sink:
        result = await sink.send(Batch.of([group]))
        assert result.outcomes == [D, D, X, R, R]
        reason = result.reasons[2]
        assert isinstance(reason, Rejection)
        assert (reason.status, reason.error_type) == (400, "code 13")
        assert "Event field cannot be blank" in reason.reason
        # Through the Sender: only the rest is sent again, each event indexed once.
        dead = DeadLetters()
        await sender(sink, dead).deliver(Batch.of([group]))
    events = [e.event["message"] for e in hec.events()]
    assert sorted(events) == sorted(["zero", "one", "three", "four", "zero", "one"])
    assert [m for m, _ in dead.records] == ["two"]
    # The second delivery resent zero and one (a fresh batch); within it, after the refusal,
    # only three and four were sent again.
    bodies = [r.body.count(b'"event"') for r in hec.ingest_requests()]
    assert bodies[-1] == 2


async def test_a_data_error_naming_no_event_is_halved(hec: FakeSplunk) -> None:
    telemetry = Telemetry()
    async with opened(config_for(hec), telemetry) as sink:
        hec.fail_requests(1, status=400, code=6)
        result = await sink.send(Batch.of([make_group("a", "b", "c", "d")]))
        assert result.outcomes == [D, D, D, D]
        hec.fail_requests(3, status=400, code=6)
        result = await sink.send(Batch.of([make_group("e", "f")]))
    assert result.outcomes == [X, X]
    assert payloads(hec.events()) == ["a", "b", "c", "d"]
    assert telemetry.value("shipper_hec_splits_total", output="hec", reason="data_error") == 2


async def test_too_large_requests_are_halved_and_a_too_large_event_dead_lettered() -> None:
    telemetry = Telemetry()
    with FakeSplunk(max_content_length=900) as server:
        server.add_token(TOKEN)
        messages = [f"{n} " + "y" * 100 for n in range(12)]
        big = "z" * 2000
        async with opened(config_for(server), telemetry) as sink:
            result = await sink.send(Batch.of([make_group(*messages[:6], big, *messages[6:])]))
        assert result.outcomes == [D] * 6 + [X] + [D] * 6
        reason = result.reasons[6]
        assert isinstance(reason, Rejection)
        assert reason.status == 413
        assert payloads(server.events()) == messages
        assert telemetry.value("shipper_hec_splits_total", output="hec", reason="too_large") >= 2
        assert server.internal_errors == []


async def test_connection_failures_and_timeouts_are_retryable(hec: FakeSplunk) -> None:
    async with opened(config_for(hec, timeout="200ms")) as sink:
        hec.drop_next(1)
        with pytest.raises(RetryableSinkError, match="cannot reach Splunk HEC"):
            await sink.send(Batch.of([make_group("a")]))
        hec.slow_next(1, 1.0)
        with pytest.raises(RetryableSinkError, match=r"no answer from Splunk HEC within 0\.2s"):
            await sink.send(Batch.of([make_group("b")]))
        with hec.down(), pytest.raises(RetryableSinkError):
            await sink.send(Batch.of([make_group("c")]))
        assert (await sink.send(Batch.of([make_group("d")]))).outcomes == [D]


async def test_a_proxy_page_with_200_is_never_counted_delivered(hec: FakeSplunk) -> None:
    async with opened(config_for(hec)) as sink:
        hec.fail_requests(1, status=200, body=b"<html>ok</html>")
        with pytest.raises(RetryableSinkError, match="without its success code"):
            await sink.send(Batch.of([make_group("a")]))


async def test_a_400_that_is_not_hecs_word_on_the_events_is_retried(hec: FakeSplunk) -> None:
    async with opened(config_for(hec)) as sink:
        hec.fail_requests(1, status=400, body=b"<html>Unparsable gzip header</html>")
        with pytest.raises(RetryableSinkError, match="refused the request"):
            await sink.send(Batch.of([make_group("a", "b")]))
        assert (await sink.send(Batch.of([make_group("a", "b")]))).outcomes == [D, D]


async def test_a_wrong_url_path_holds(hec: FakeSplunk) -> None:
    config = output_config({"url": hec.url + "/prefix", "token": TOKEN})
    async with opened(config) as sink:
        with pytest.raises(HeldSinkError, match="404"):
            await sink.send(Batch.of([make_group("a")]))


# --- indexer acknowledgement ---------------------------------------------------------------------


def acked(
    hec: FakeSplunk, ack: dict[str, Any] | None = None, **options: Any
) -> SplunkHecOutputConfig:
    return config_for(
        hec,
        token=ACK_TOKEN,
        ack={"enabled": True, "poll_interval": "20ms", **(ack or {})},
        **options,
    )


async def test_acked_records_wait_then_are_delivered_and_a_true_is_recorded_once(
    hec: FakeSplunk,
) -> None:
    telemetry = Telemetry()
    hec.delay_acks(0.1)
    async with opened(acked(hec), telemetry) as sink:
        result = await sink.send(Batch.of([make_group("a", "b")]))
        assert result.outcomes == [A, A]
        final = await settled(result)
        assert final.outcomes == [D, D]
        (request,) = hec.ingest_requests()
        channel = request.headers["x-splunk-request-channel"]
        assert hec.acks_reported == [(channel, 0)]
        polls = hec.ack_requests()
        assert polls
        assert all(p.headers["x-splunk-request-channel"] == channel for p in polls)
        # Nothing pending: the poller stops asking.
        count = len(hec.ack_requests())
        await asyncio.sleep(0.1)
        assert len(hec.ack_requests()) == count
        assert telemetry.value("shipper_hec_acks_total", output="hec", result="confirmed") == 1


async def test_acks_of_several_requests_are_polled_together(hec: FakeSplunk) -> None:
    with hec.hold_acks():
        async with opened(acked(hec, {"poll_interval": "50ms"}), Telemetry()) as sink:
            results = [
                await sink.send(Batch.of([make_group(f"m{n}", labels={"n": str(n)})]))
                for n in range(3)
            ]
            await hec.until(lambda: len(hec.ack_requests()) >= 1)
            body = orjson.loads(hec.ack_requests()[-1].body)
            assert body == {"acks": [0, 1, 2]}
            hec.acks_held = False
            finals = [await settled(r) for r in results]
    assert [f.outcomes for f in finals] == [[D], [D], [D]]


async def test_lost_acks_time_out_and_the_records_are_sent_again(hec: FakeSplunk) -> None:
    telemetry = Telemetry()
    hec.lose_acks(1)
    async with opened(acked(hec, {"timeout": "200ms"}), telemetry) as sink:
        result = await sink.send(Batch.of([make_group("a", "b")]))
        final = await settled(result)
        assert final.outcomes == [R, R]
        assert telemetry.value("shipper_hec_acks_total", output="hec", result="timed_out") == 1
        assert telemetry.value("shipper_hec_resent_events_total") == 2
        # Through the Sender: resent after the timeout, then confirmed.
        hec.lose_acks(1)
        dead = DeadLetters()
        await sender(sink, dead, telemetry).deliver(Batch.of([make_group("c")]))
    assert payloads(hec.events()) == ["a", "b", "c", "c"]  # HEC had no way to say it had c
    assert dead.records == []


async def test_the_checkpoint_waits_for_the_ack(hec: FakeSplunk) -> None:
    done = asyncio.Event()
    with hec.hold_acks():
        async with opened(acked(hec)) as sink:
            dead = DeadLetters()

            async def deliver() -> None:
                await sender(sink, dead).deliver(Batch.of([make_group("a")]))
                done.set()

            task = asyncio.create_task(deliver())
            await hec.until(lambda: len(hec.events()) == 1)
            await asyncio.sleep(0.1)
            assert not done.is_set()  # indexed, but not acknowledged: not final
            hec.acks_held = False
            await asyncio.wait_for(task, 5)


async def test_invalid_event_number_with_acks_counts_the_events_before_delivered(
    hec: FakeSplunk,
) -> None:
    telemetry = Telemetry()
    group = make_group("zero", "one", "two")
    group.documents = [b'{"m":0}\n', b'{"m":1}\n', b"[]\n"]
    async with opened(acked(hec, {"timeout": "1s"}, event="record"), telemetry) as sink:
        result = await sink.send(Batch.of([group]))
    assert result.outcomes == [D, D, X]
    assert result.acknowledged is None
    assert telemetry.value("shipper_hec_unconfirmed_events_total") == 2


async def test_ack_enabled_on_a_token_without_acks_delivers_and_says_so(
    hec: FakeSplunk, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="shipper")
    async with opened(config_for(hec, ack={"enabled": True})) as sink:
        result = await sink.send(Batch.of([make_group("a")]))
        again = await sink.send(Batch.of([make_group("b")]))
    assert result.outcomes == again.outcomes == [D]
    assert caplog.text.count("returned no ackId") == 1


async def test_close_cancels_the_poller_and_the_waiters(hec: FakeSplunk) -> None:
    with hec.hold_acks():
        sink = SplunkHecSink(acked(hec), name="hec")
        await sink.open()
        result = await sink.send(Batch.of([make_group("a")]))
        poller = sink._poller
        assert poller is not None and not poller.done()
        await sink.close()
        assert poller.done()
        assert result.acknowledged is not None
        with pytest.raises(asyncio.CancelledError):
            await result.acknowledged


# --- start-up ------------------------------------------------------------------------------------


async def test_start_up_health_messages(hec: FakeSplunk, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shipper")
    with hec.busy():
        async with opened(config_for(hec)):
            pass
    assert "Splunk HEC says it is unhealthy" in caplog.text
    caplog.clear()
    with hec.down():
        async with opened(config_for(hec)):
            pass
    assert "Splunk HEC is not reachable" in caplog.text


async def test_a_missing_ca_file_refuses_to_start(hec: FakeSplunk, tmp_path: Path) -> None:
    config = config_for(hec, tls={"ca_file": str(tmp_path / "nope.pem")})
    with pytest.raises(FatalSinkError, match="cannot set up TLS"):
        await SplunkHecSink(config).open()


# --- the whole pipeline --------------------------------------------------------------------------


async def test_the_app_ships_container_logs_each_once_with_acks(
    hec: FakeSplunk, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("web", labels={"team": "payments"})
    for n in range(300):
        log.write(f"line {n:04d}", stream="stderr" if n % 7 == 0 else "stdout")
    hec.busy_for(2)
    hec.delay_acks(0.05)
    config = parse_config(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "sources": {
                    "docker": {
                        "type": "docker_json",
                        "root": str(tmp_path / "containers"),
                        "poll_interval": "20ms",
                        "host_name": "node-7",
                    }
                },
                "outputs": {
                    "hec": {
                        "type": "splunk_hec",
                        "url": hec.url,
                        "token": "${HEC_TOKEN}",
                        "fields": {"team": "container.labels.team", "stream": "stream"},
                        "ack": {"enabled": True, "poll_interval": "20ms"},
                        "batch": {"linger": "20ms", "max_records": 50},
                        "max_in_flight": 4,
                        "retry": {"initial_backoff": "10ms", "max_backoff": "50ms"},
                    }
                },
            }
        ),
        "<test>",
        environ={"HEC_TOKEN": ACK_TOKEN},
    )
    app = App(config)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    await wait_until(
        lambda: (
            app.telemetry.value("shipper_records_total", output="hec", outcome="delivered") >= 300
        ),
        what="300 records delivered",
    )
    stop.set()
    await task
    events = hec.events()
    assert sorted(e.event for e in events) == [f"line {n:04d}" for n in range(300)]
    first = events[0]
    assert first.host == "node-7"
    assert first.sourcetype == "docker:container:web"
    assert first.source.endswith("-json.log")
    assert first.fields["team"] == "payments"
    assert {e.fields["stream"] for e in events} == {"stdout", "stderr"}
    assert app.telemetry.value("shipper_hec_acks_total", output="hec", result="confirmed") > 0
    checkpoints = orjson.loads((tmp_path / "state" / "checkpoints.json").read_bytes())
    assert checkpoints
    assert ACK_TOKEN not in logged(caplog)


# --- config ---------------------------------------------------------------------------------------


def test_every_option_parses() -> None:
    config = output_config(
        {
            "url": "https://splunk.example.com/proxy/",
            "token_file": "/run/secrets/hec",
            "endpoint": "event",
            "tls": {"ca_file": "/ca.pem", "verify": False, "client_cert": "/c", "client_key": "/k"},
            "headers": {"X-Tenant": "a"},
            "timeout": "5s",
            "compression": {"enabled": True, "level": 9},
            "host": "{host.name}",
            "source": "docker:{container.name}",
            "sourcetype": "docker:json",
            "index": "k8s-{kubernetes.namespace}",
            "allowed_indexes": ["k8s-prod-*"],
            "fallback_index": "k8s_other",
            "fields": {"namespace": "kubernetes.namespace", "pod": "kubernetes.pod.name"},
            "event": "record",
            "ack": {"enabled": True, "poll_interval": "500ms", "timeout": "2m"},
            "max_request_bytes": "2MiB",
            "batch": {"max_records": 500},
            "max_in_flight": 8,
        }
    )
    assert config.url == "https://splunk.example.com:8088/proxy"
    assert config.index is not None and config.index.fields == (("kubernetes", "namespace"),)
    assert config.ack.timeout == 120.0
    assert config.max_request_bytes == 2 * 1024 * 1024
    raw = output_config({"url": "http://[::1]:9000", "token": "t", "endpoint": "raw"})
    assert raw.url == "http://[::1]:9000"


def test_defaults() -> None:
    config = output_config({"url": "https://splunk", "token": "t"})
    assert config.url == "https://splunk:8088"
    assert config.endpoint == "event"
    assert config.event == "message"
    assert config.host is not None and config.host.text == "{host.name}"
    assert config.source is not None and config.source.text == "{log.file.path}"
    assert config.sourcetype is not None
    assert config.sourcetype.text == "docker:container:{container.name}"
    assert config.index is None and config.fallback_index is None
    assert config.ack.enabled is False
    assert (config.ack.poll_interval, config.ack.timeout) == (1.0, 300.0)
    assert config.max_request_bytes == 1_000_000
    assert config.compression.enabled is False
    assert config.timeout == 30.0


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"token": None}, "outputs.hec: give `token` or `token_file`"),
        ({"token_file": "/f"}, "outputs.hec: give `token` or `token_file`"),
        ({"token": ""}, "outputs.hec.token: must not be empty"),
        ({"url": "splunk:8088"}, "outputs.hec.url: expected an http:// or https://"),
        ({"url": "https://h/services/collector/event"}, "outputs.hec.url: give the base URL"),
        ({"url": "https://u:p@h"}, "outputs.hec.url: credentials in the URL"),
        ({"url": "https://h?x=1"}, "outputs.hec.url: a query or fragment"),
        ({"endpoint": "batch"}, "outputs.hec.endpoint: expected 'event' or 'raw'"),
        ({"event": "json"}, "outputs.hec.event: expected 'message' or 'record'"),
        ({"index": "Main"}, "outputs.hec.index: Splunk index names hold only"),
        ({"index": "_internal"}, "outputs.hec.index: Splunk index names hold only"),
        ({"index": "logs-{a"}, "outputs.hec.index: unbalanced"),
        ({"index": "logs-{x}"}, "allowed_indexes: required when `index` names record fields"),
        ({"allowed_indexes": ["a*"]}, "allowed_indexes: only used when `index` names"),
        ({"fallback_index": "Other"}, "outputs.hec.fallback_index: Splunk index names"),
        ({"host": "{}"}, "outputs.hec.host: {...} must hold a dotted field path"),
        ({"sourcetype": ""}, "outputs.hec.sourcetype: must not be empty"),
        ({"fields": {"_x": "a"}}, "outputs.hec.fields._x: indexed field names"),
        ({"fields": {"index": "a"}}, "outputs.hec.fields.index: a key of the HEC envelope"),
        ({"fields": {"a": "b..c"}}, "outputs.hec.fields.a: "),
        ({"endpoint": "raw", "fields": {"a": "b"}}, "fields: indexed fields are sent on the event"),
        ({"headers": {"Authorization": "x"}}, "outputs.hec.headers.Authorization: set by shipper"),
        ({"headers": {"X-Splunk-Request-Channel": "x"}}, "outputs.hec.headers.X-Splunk-Request"),
        ({"ack": {"poll_interval": "0s"}}, "outputs.hec.ack.poll_interval: must be greater"),
        ({"ack": {"timeout": "1s", "poll_interval": "2s"}}, "outputs.hec.ack: timeout must not"),
        ({"max_request_bytes": "100B"}, "outputs.hec.max_request_bytes: must be at least 1KiB"),
        ({"compression": {"level": 0}}, "outputs.hec.compression.level: "),
        ({"tls": {"client_key": "/k"}}, "outputs.hec.tls: client_key needs client_cert"),
    ],
)
def test_bad_values_name_the_option(options: dict[str, Any], where: str) -> None:
    options = {"url": "https://splunk", "token": "t", **options}
    options = {k: v for k, v in options.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        output_config(options)
    assert where in str(caught.value)


SECRET = "hunter2-very-secret-hec"


@pytest.mark.parametrize(
    "options",
    [
        {"url": "https://x:${S}@splunk"},
        {"url": "${S}"},
        {"url": "https://splunk", "token": ["${S}"]},
        {"url": "https://splunk", "token": {"k": "${S}"}},
        {"url": "https://splunk", "token": "${S}", "token_file": "/f"},
        {"url": "https://splunk", "token": "${S}", "unknown": "${S}"},
        {"url": "https://splunk", "token": "${S}", "index": "${S}-{x}"},
        {"url": "https://splunk", "token": "${S}", "headers": {"Authorization": "${S}"}},
        {"url": "https://splunk", "token": "${S}", "ack": {"enabled": "${S}"}},
    ],
)
def test_the_token_is_not_echoed_by_config_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        output_config(options, {"S": SECRET})
    rendered = "".join(traceback.format_exception(caught.value))
    assert SECRET not in rendered
    assert str(caught.value).startswith("hec.yaml: outputs.hec")


def test_the_sink_is_registered_with_the_outputs_name_and_the_apps_telemetry() -> None:
    telemetry = Telemetry()
    config = output_config({"url": "https://splunk", "token": "t"})
    sink = SINKS["splunk_hec"]("splunk", config, telemetry)
    assert isinstance(sink, SplunkHecSink)
    assert sink.name == "splunk"
    assert sink._telemetry is telemetry
