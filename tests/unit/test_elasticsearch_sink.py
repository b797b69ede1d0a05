"""Tests for the `elasticsearch` output against tests/fake_elasticsearch.py with the real client."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import socket
import threading
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from shipper.app import App
from shipper.config import ConfigError, ElasticsearchOutputConfig, parse_config
from shipper.docker_writer import DockerRootWriter
from shipper.errors import FatalSinkError, HeldSinkError, RetryableSinkError
from shipper.model import Batch, Enrichment, LogFile, Outcome, RecordGroup, Rejection
from shipper.pipeline.sender import Sender
from shipper.sinks.elasticsearch import ElasticsearchSink, RetryLaterError
from shipper.sinks.record_ids import record_ids
from shipper.telemetry.counters import Telemetry
from tests.fake_elasticsearch import BulkItem, FakeElasticsearch
from tests.helpers import wait_until

D, R, X, DUP = Outcome.DELIVERED, Outcome.RETRY, Outcome.DEAD_LETTERED, Outcome.DUPLICATE

PASSWORD = "pw-s3cr3t-hunter2"
API_KEY_SECRET = "key-s3cr3t-7f3a9b"
TOKEN = "tok-s3cr3t-bearer-99"


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def es() -> Iterator[FakeElasticsearch]:
    with FakeElasticsearch() as server:
        yield server
    assert server.internal_errors == []


def output_config(
    options: dict[str, Any], environ: dict[str, str] | None = None
) -> ElasticsearchOutputConfig:
    text = yaml.safe_dump(
        {
            "sources": {"docker": {"type": "docker_json"}},
            "outputs": {"es": {"type": "elasticsearch", **options}},
        }
    )
    output = parse_config(text, "es.yaml", environ=environ or {}).outputs["es"]
    assert isinstance(output, ElasticsearchOutputConfig)
    return output


@asynccontextmanager
async def opened(
    config: ElasticsearchOutputConfig, telemetry: Telemetry | None = None
) -> AsyncIterator[ElasticsearchSink]:
    sink = ElasticsearchSink(config, name="es", telemetry=telemetry)
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


def make_group(
    *messages: str,
    start: int = 0,
    day: str = "2024-05-06",
    labels: dict[str, str] | None = None,
    fingerprint: str = "fp-1",
) -> RecordGroup:
    group = RecordGroup(
        file=LogFile("docker", "c0ffee", "/logs/c0ffee-json.log", "h", fingerprint),
        start=start,
        end=start + 100 * len(messages),
    )
    for n, message in enumerate(messages):
        group.messages.append(message)
        group.timestamps.append(f"{day}T07:08:09.{n:09d}Z")
        group.streams.append("stdout")
        group.offsets.append(start + 100 * n)
    if labels is not None:
        document = {"container": {"id": "c0ffee", "name": "web", "labels": labels}}
        group.enrichment = Enrichment(document, orjson.dumps(document)[1:-1])
    return group


def messages_of(items: list[BulkItem]) -> list[str]:
    return [item.source["message"] for item in items]


def failing(*messages: str) -> Any:
    return lambda item: item.source is not None and item.source.get("message") in messages


class DeadLetters:
    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []  # message, reason

    async def __call__(self, output: str, rejected: list[tuple[RecordGroup, int, str]]) -> None:
        self.records.extend(
            (group.messages[index], str(reason)) for group, index, reason in rejected
        )


def sender(sink: ElasticsearchSink, dead: DeadLetters, *, attempts: int = 0) -> Sender:
    return Sender(
        "es",
        sink,
        initial_backoff=0.01,
        max_backoff=0.02,
        max_attempts=attempts,
        dead_letter=dead,
        telemetry=Telemetry(),
    )


# --- exactly once: create, _id, 409 ---------------------------------------------------------------


@pytest.mark.parametrize("version", ["8.19.2", "9.1.3"])
async def test_creates_with_record_ids_and_a_replay_is_duplicate(
    version: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shipper")
    with FakeElasticsearch(version=version) as es:
        async with opened(output_config({"hosts": [es.url]})) as sink:
            assert sink.version == version
            group = make_group("one", 'two "quoted"', "three\u2028")
            batch = Batch.of([group])
            first = await sink.send(batch)
            assert first.outcomes == [D, D, D]
            # The whole batch again, as after a crash before the checkpoint moved.
            again = await sink.send(batch)
            assert again.outcomes == [DUP, DUP, DUP]
        documents = es.documents("logs-docker-default")
        assert [doc.source["message"] for doc in documents] == [
            "one",
            'two "quoted"',
            "three\u2028",
        ]
        assert [doc.id for doc in documents] == record_ids(group, range(3))
        assert all(doc.index.startswith(".ds-logs-docker-default-") for doc in documents)
        assert {item.action for item in es.items()} == {"create"}
        assert {item.target for item in es.items()} == {"logs-docker-default"}
        assert es.internal_errors == []
    connected = [r for r in caplog.records if r.getMessage() == "Connected to Elasticsearch."]
    assert connected
    assert connected[0].version == version  # type: ignore[attr-defined]
    assert connected[0].cluster == "docker-cluster"  # type: ignore[attr-defined]


async def test_only_the_records_asked_again_are_resent(es: FakeElasticsearch) -> None:
    async with opened(output_config({"hosts": [es.url]})) as sink:
        await sink.send(Batch.of([make_group("a", "b", "c", "d")]))
        result = await sink.send(Batch([make_group("a", "b", "c", "d")], [[3, 1]]))
    assert result.outcomes == [DUP, DUP]
    assert len(es.documents("logs-docker-default")) == 4


async def test_rollover_caveat_replay_lands_in_the_new_backing_index(
    es: FakeElasticsearch,
) -> None:
    # Documented, not wanted: exactly-once holds within one backing index.
    async with opened(output_config({"hosts": [es.url]})) as sink:
        batch = Batch.of([make_group("before rollover")])
        assert (await sink.send(batch)).outcomes == [D]
        es.rollover("logs-docker-default")
        assert (await sink.send(batch)).outcomes == [D]
    assert len(es.documents("logs-docker-default")) == 2


# --- per-document outcomes ------------------------------------------------------------------------


async def test_overloaded_items_are_retried_alone(es: FakeElasticsearch) -> None:
    es.fail_items(failing("b"), status=429)
    es.fail_items(failing("c"), status=500)
    es.fail_items(failing("d"), status=429, error_type="cluster_block_exception")
    es.fail_items(failing("e"), status=403, error_type="cluster_block_exception")
    async with opened(output_config({"hosts": [es.url]})) as sink:
        batch = Batch.of([make_group("a", "b", "c", "d", "e", "f")])
        result = await sink.send(batch)
        assert result.outcomes == [D, R, R, R, R, D]
        assert result.held is None
        assert result.reasons == {}
        es.clear_failures()
        again = await sink.send(batch.subset([outcome is R for outcome in result.outcomes]))
        assert again.outcomes == [D, D, D, D]

    # Through the Sender, only those four are sent again, and all end delivered once.
    es2_items_before = len(es.items())
    es.fail_items(failing("x2"), status=429, times=2)
    async with opened(output_config({"hosts": [es.url]})) as sink:
        dead = DeadLetters()
        await sender(sink, dead).deliver(Batch.of([make_group("x1", "x2", "x3", start=1000)]))
    assert dead.records == []
    resent = messages_of(es.items()[es2_items_before:])
    assert resent == ["x1", "x2", "x3", "x2", "x2"]
    stored = [doc.source["message"] for doc in es.documents("logs-docker-default")]
    assert sorted(stored) == ["a", "b", "c", "d", "e", "f", "x1", "x2", "x3"]


async def test_mapping_errors_are_dead_lettered_with_their_reason(es: FakeElasticsearch) -> None:
    es.fail_items(failing("scripted"), status=400)
    ok = make_group("fine", "scripted")
    # A real mapping conflict: `count` is mapped long by the first document.
    processed = make_group("p1", "p2", start=500)
    processed.documents = [
        orjson.dumps({"@timestamp": "2024-05-06T07:08:09.000000000Z", "message": "p1", "count": 1})
        + b"\n",
        orjson.dumps(
            {"@timestamp": "2024-05-06T07:08:09.000000001Z", "message": "p2", "count": "many"}
        )
        + b"\n",
    ]
    telemetry = Telemetry()
    async with opened(output_config({"hosts": [es.url]}), telemetry) as sink:
        result = await sink.send(Batch.of([ok, processed]))
    assert result.outcomes == [D, X, D, X]
    assert result.held is None
    assert str(result.reasons[1]).startswith("400 document_parsing_exception: ")
    assert str(result.reasons[3]).startswith("400 document_parsing_exception: ")
    assert "count" in str(result.reasons[3])
    assert result.reasons[3] == Rejection(
        str(result.reasons[3]), status=400, error_type="document_parsing_exception"
    )
    assert (
        telemetry.value(
            "shipper_es_items_total",
            output="es",
            status_class="4xx",
            error_type="document_parsing_exception",
        )
        == 2
    )
    assert (
        telemetry.value("shipper_es_items_total", output="es", status_class="2xx", error_type="")
        == 2
    )


async def test_dead_letters_go_through_the_sender(es: FakeElasticsearch) -> None:
    es.fail_items(failing("bad"), status=400, error_type="mapper_parsing_exception", reason="nope")
    async with opened(output_config({"hosts": [es.url]})) as sink:
        dead = DeadLetters()
        await sender(sink, dead).deliver(Batch.of([make_group("good", "bad")]))
    assert dead.records == [("bad", "400 mapper_parsing_exception: nope")]
    assert [d.source["message"] for d in es.documents("logs-docker-default")] == ["good"]


async def test_privilege_and_missing_index_refusals_are_held_not_dead_lettered(
    es: FakeElasticsearch,
) -> None:
    es.fail_items(failing("forbidden"), status=403, error_type="security_exception")
    async with opened(output_config({"hosts": [es.url]})) as sink:
        result = await sink.send(Batch.of([make_group("allowed", "forbidden")]))
    assert result.outcomes == [D, R]
    assert result.reasons == {}
    assert result.held is not None
    assert "logs-docker-default" in result.held
    assert "create_doc" in result.held

    es.auto_create_index = False
    async with opened(output_config({"hosts": [es.url], "index": "app-logs"})) as sink:
        result = await sink.send(Batch.of([make_group("nowhere")]))
        assert result.outcomes == [R]
        assert result.held is not None
        assert "app-logs" in result.held
        assert "index_not_found_exception" in result.held

        # The Sender holds them, whatever the attempt limit, until someone fixes it.
        dead = DeadLetters()
        delivery = sender(sink, dead, attempts=1).deliver(Batch.of([make_group("later")]))
        task = asyncio.create_task(delivery)
        await es.until(lambda: sum(1 for i in es.items() if i.target == "app-logs") >= 4)
        assert not task.done()
        es.auto_create_index = True
        await asyncio.wait_for(task, 10)
    assert dead.records == []
    assert [d.source["message"] for d in es.documents("app-logs")] == ["later"]


async def test_a_missing_pipeline_holds_and_the_pipeline_is_sent(es: FakeElasticsearch) -> None:
    config = output_config({"hosts": [es.url], "pipeline": "parse-logs"})
    async with opened(config) as sink:
        result = await sink.send(Batch.of([make_group("one")]))
        assert result.outcomes == [R]
        assert result.held is not None
        assert "pipeline" in result.held
        es.pipelines["parse-logs"] = {"processors": []}
        result = await sink.send(Batch.of([make_group("one")]))
        assert result.outcomes == [D]
    (document,) = es.documents("logs-docker-default")
    assert document.pipeline == "parse-logs"
    assert es.bulk_requests()[-1].param("pipeline") == "parse-logs"


async def test_an_answer_without_every_item_marks_nothing_delivered(es: FakeElasticsearch) -> None:
    es.fail_requests(1, status=200, body={"errors": False, "items": [{"create": {"status": 201}}]})
    async with opened(output_config({"hosts": [es.url]})) as sink:
        with pytest.raises(RetryableSinkError, match="1 items for 2 documents"):
            await sink.send(Batch.of([make_group("a", "b")]))
        es.fail_requests(1, status=200, body="not json at all")
        with pytest.raises(RetryableSinkError):
            await sink.send(Batch.of([make_group("a", "b")]))


# --- whole-request outcomes -----------------------------------------------------------------------


async def test_a_too_large_request_is_split_and_a_too_large_document_dead_lettered() -> None:
    with FakeElasticsearch(max_content_length=4096) as es:
        telemetry = Telemetry()
        async with opened(output_config({"hosts": [es.url]}), telemetry) as sink:
            messages = [f"line {n} " + "x" * 300 for n in range(30)]
            result = await sink.send(Batch.of([make_group(*messages)]))
            assert result.outcomes == [D] * 30
            assert telemetry.value("shipper_es_splits_total", output="es") >= 1
            assert es.statuses[413] >= 1
            # Later requests are cut smaller: no more 413 for the same load.
            refused = es.statuses[413]
            more = [f"more {n} " + "x" * 300 for n in range(30)]
            assert (await sink.send(Batch.of([make_group(*more, start=10_000)]))).outcomes == [
                D
            ] * 30
            assert es.statuses[413] == refused

            huge = make_group("small", "y" * 8000, "also small", start=50_000)
            result = await sink.send(Batch.of([huge]))
        assert result.outcomes == [D, X, D]
        assert "larger than the cluster accepts" in str(result.reasons[1])
        stored = [d.source["message"] for d in es.documents("logs-docker-default")]
        assert sorted(stored) == sorted([*messages, *more, "small", "also small"])
        assert es.internal_errors == []


async def test_max_request_bytes_cuts_a_batch_into_several_requests(es: FakeElasticsearch) -> None:
    telemetry = Telemetry()
    config = output_config({"hosts": [es.url], "max_request_bytes": "2KiB"})
    messages = [f"record {n:03d} " + "z" * 150 for n in range(40)]
    async with opened(config, telemetry) as sink:
        result = await sink.send(Batch.of([make_group(*messages)]))
    assert result.outcomes == [D] * 40
    requests = es.bulk_requests()
    assert len(requests) > 3
    assert all(request.body_size <= 2048 for request in requests)
    assert messages_of(es.items()) == messages  # in order, each once
    assert telemetry.value("shipper_es_request_bytes_total", output="es") == sum(
        request.body_size for request in requests
    )


async def test_a_failure_after_earlier_requests_keeps_their_outcomes(es: FakeElasticsearch) -> None:
    config = output_config({"hosts": [es.url], "max_request_bytes": "1KiB"})
    messages = [f"record {n:03d} " + "z" * 150 for n in range(12)]
    async with opened(config) as sink:
        es.fail_requests(1, status=503, match=lambda r: r.is_bulk and len(es.bulk_requests()) > 1)
        result = await sink.send(Batch.of([make_group(*messages)]))
    delivered = result.outcomes.count(D)
    assert 0 < delivered < 12
    assert result.outcomes == [D] * delivered + [R] * (12 - delivered)


@pytest.mark.parametrize(
    ("retry_after", "proxy", "expected"),
    [(7, False, 7.0), ("3", True, 3.0), ("Fri, 31 Dec 2100 23:59:59 GMT", False, None)],
)
async def test_whole_request_overload_carries_retry_after(
    es: FakeElasticsearch, retry_after: Any, proxy: bool, expected: float | None
) -> None:
    es.fail_requests(1, status=503 if not proxy else 429, retry_after=retry_after, proxy=proxy)
    async with opened(output_config({"hosts": [es.url]})) as sink:
        with pytest.raises(RetryLaterError) as caught:
            await sink.send(Batch.of([make_group("a")]))
        assert isinstance(caught.value, RetryableSinkError)
        if expected is None:  # an HTTP date: seconds until then
            assert caught.value.retry_after is not None
            assert caught.value.retry_after > 365 * 86400
        else:
            assert caught.value.retry_after == expected
        assert (await sink.send(Batch.of([make_group("a")]))).outcomes == [D]


async def test_timeouts_and_lost_connections_are_retryable(es: FakeElasticsearch) -> None:
    async with opened(output_config({"hosts": [es.url], "timeout": "300ms"})) as sink:
        es.slow_next(1, 2.0)
        with pytest.raises(RetryableSinkError, match=r"no answer from Elasticsearch within 0\.3s"):
            await sink.send(Batch.of([make_group("slow")]))
        es.drop_next(1)
        with pytest.raises(RetryableSinkError):
            await sink.send(Batch.of([make_group("dropped")]))
        with es.down(), pytest.raises(RetryableSinkError, match="cannot reach Elasticsearch"):
            await sink.send(Batch.of([make_group("down")]))
        result = await sink.send(Batch.of([make_group("slow", "dropped", "down")]))
    # "slow" may have been stored before its answer was given up on: then it is a duplicate.
    assert result.outcomes[1:] == [D, D]
    assert result.outcomes[0] in (D, DUP)


async def test_authentication_failure_holds(es: FakeElasticsearch) -> None:
    es.add_user("shipper", "the-right-one", indices={"logs-*": {"create_doc", "auto_configure"}})
    config = output_config({"hosts": [es.url], "username": "shipper", "password": PASSWORD})
    async with opened(config) as sink:  # does not raise: sends hold until fixed
        with pytest.raises(HeldSinkError, match=r"401.*username/password") as caught:
            await sink.send(Batch.of([make_group("a")]))
    assert PASSWORD not in str(caught.value)


async def test_whole_request_403_holds_with_what_to_check(es: FakeElasticsearch) -> None:
    es.fail_requests(1, status=403)
    async with opened(output_config({"hosts": [es.url]})) as sink:
        with pytest.raises(HeldSinkError, match="create_doc") as caught:
            await sink.send(Batch.of([make_group("a")]))
    assert "logs-docker-default" in str(caught.value)


# --- targets --------------------------------------------------------------------------------------


async def test_dated_index_takes_the_date_of_each_record(es: FakeElasticsearch) -> None:
    config = output_config({"hosts": [es.url], "index": "docker-%Y.%m.%d"})
    async with opened(config) as sink:
        result = await sink.send(
            Batch.of(
                [make_group("monday", day="2024-05-06"), make_group("tuesday", day="2024-05-07")]
            )
        )
    assert result.outcomes == [D, D]
    assert [d.source["message"] for d in es.documents("docker-2024.05.06")] == ["monday"]
    assert [d.source["message"] for d in es.documents("docker-2024.05.07")] == ["tuesday"]
    assert not es.data_streams


async def test_field_templates_route_only_to_allowed_indices(es: FakeElasticsearch) -> None:
    config = output_config(
        {
            "hosts": [es.url],
            "index": "docker-{container.labels.team}-%Y.%m.%d",
            "allowed_indices": ["docker-payments-*", "docker-web-*"],
            "fallback_index": "docker-unrouted-%Y.%m.%d",
        }
    )
    hostile = [
        "secrets",  # a valid name, not allowed
        "payments-2024.05.06,secrets",  # a second index
        "*",
        "../secrets",
        "%Y",  # would be a date code if formatted after substitution
        "web>x",
        "",
    ]
    groups = [
        make_group("to payments", labels={"team": "payments"}),
        make_group("upper case", labels={"team": "Web"}, start=1000),
        make_group("no label", labels={}, start=2000),
        make_group("no metadata", start=3000),
        *(
            make_group(f"hostile {n}", labels={"team": value}, start=4000 + 100 * n)
            for n, value in enumerate(hostile)
        ),
    ]
    async with opened(config) as sink:
        result = await sink.send(Batch.of(groups))
    assert result.outcomes == [D] * len(groups)
    indices = {index for index in es.indices if not index.startswith(".")}
    assert indices == {
        "docker-payments-2024.05.06",
        "docker-web-2024.05.06",
        "docker-unrouted-2024.05.06",
    }
    unrouted = [d.source["message"] for d in es.documents("docker-unrouted-2024.05.06")]
    assert sorted(unrouted) == sorted(
        ["no label", "no metadata", *(f"hostile {n}" for n in range(len(hostile)))]
    )


async def test_templates_read_processed_documents(es: FakeElasticsearch) -> None:
    config = output_config(
        {
            "hosts": [es.url],
            "data_stream": "logs-{service.name}-default",
            "allowed_indices": ["logs-checkout-default"],
            "fallback_index": "logs-docker-default",
        }
    )
    group = make_group("a", "b")
    group.documents = [
        orjson.dumps(
            {"@timestamp": group.timestamps[0], "message": "a", "service": {"name": "checkout"}}
        )
        + b"\n",
        orjson.dumps({"@timestamp": group.timestamps[1], "message": "b", "service.name": "other"})
        + b"\n",
    ]
    async with opened(config) as sink:
        assert (await sink.send(Batch.of([group]))).outcomes == [D, D]
    assert [d.source["message"] for d in es.documents("logs-checkout-default")] == ["a"]
    assert [d.source["message"] for d in es.documents("logs-docker-default")] == ["b"]


async def test_processed_documents_are_sent_as_they_are(es: FakeElasticsearch) -> None:
    group = make_group("raw text")
    document = {
        "@timestamp": group.timestamps[0],
        "message": "parsed",
        "http": {"status": 200},
        "unicode": "é \u2028 \U0001f600",
    }
    group.documents = [orjson.dumps(document) + b"\n"]
    async with opened(output_config({"hosts": [es.url]})) as sink:
        assert (await sink.send(Batch.of([group]))).outcomes == [D]
    (item,) = es.items()
    assert item.raw_source == orjson.dumps(document)
    assert es.sources("logs-docker-default") == [document]


async def test_a_processed_line_with_a_raw_newline_keeps_the_framing(
    es: FakeElasticsearch,
) -> None:
    group = make_group("a", "b", "c")
    group.documents = [
        b'{"@timestamp":"2024-05-06T07:08:09.000000000Z",\n"message":"a"}\n',  # JSON whitespace
        b'{"@timestamp":"2024-05-06T07:08:09.000000001Z","message":"b"}',  # no final newline
        b'{"@timestamp":"2024-05-06T07:08:09.000000002Z","message":"c"}\n',
    ]
    async with opened(output_config({"hosts": [es.url]})) as sink:
        assert (await sink.send(Batch.of([group]))).outcomes == [D, D, D]
    assert [s["message"] for s in es.sources("logs-docker-default")] == ["a", "b", "c"]


async def test_gzip_request_bodies(es: FakeElasticsearch) -> None:
    telemetry = Telemetry()
    config = output_config({"hosts": [es.url], "compression": {"enabled": True, "level": 6}})
    messages = [f"compressible line {n} " + "abc" * 50 for n in range(50)]
    async with opened(config, telemetry) as sink:
        assert (await sink.send(Batch.of([make_group(*messages)]))).outcomes == [D] * 50
    (request,) = es.bulk_requests()
    assert request.content_encoding == "gzip"
    assert request.wire_size < request.body_size / 5
    assert messages_of(es.items()) == messages
    assert telemetry.value("shipper_es_request_sent_bytes_total", output="es") < (
        telemetry.value("shipper_es_request_bytes_total", output="es")
    )


async def test_custom_headers_are_sent(es: FakeElasticsearch) -> None:
    config = output_config({"hosts": [es.url], "headers": {"X-Opaque-Id": "shipper-node-1"}})
    async with opened(config) as sink:
        await sink.send(Batch.of([make_group("a")]))
    assert es.bulk_requests()[0].headers["x-opaque-id"] == "shipper-node-1"


# --- start-up -------------------------------------------------------------------------------------


async def test_start_up_without_monitor_privilege_warns_and_ships(
    es: FakeElasticsearch, caplog: pytest.LogCaptureFixture
) -> None:
    encoded = es.add_api_key(
        "key-id-1", API_KEY_SECRET, indices={"logs-*": {"create_doc", "auto_configure"}}
    )
    config = output_config({"hosts": [es.url], "api_key": f"key-id-1:{API_KEY_SECRET}"})
    async with opened(config) as sink:
        assert sink.version is None
        assert (await sink.send(Batch.of([make_group("a")]))).outcomes == [D]
    assert any(r.levelno == logging.WARNING and "monitor" in r.getMessage() for r in caplog.records)
    # The encoded form works too.
    async with opened(output_config({"hosts": [es.url], "api_key": encoded})) as sink:
        assert (await sink.send(Batch.of([make_group("b")]))).outcomes == [D]


async def test_start_up_with_the_cluster_down_warns_then_ships(
    es: FakeElasticsearch, caplog: pytest.LogCaptureFixture
) -> None:
    config = output_config({"hosts": [es.url]})
    with es.down():
        sink = ElasticsearchSink(config)
        await sink.open()
    try:
        assert any("not reachable" in r.getMessage() for r in caplog.records)
        assert (await sink.send(Batch.of([make_group("a")]))).outcomes == [D]
    finally:
        await sink.close()


async def test_start_up_refuses_what_is_not_elasticsearch(es: FakeElasticsearch) -> None:
    es.fail_requests(None, status=200, proxy=True, body="hello", match=lambda r: r.path == "/")
    with pytest.raises(FatalSinkError, match="not Elasticsearch"):
        await ElasticsearchSink(output_config({"hosts": [es.url]})).open()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"status": 200, "body": {"name": "old", "version": {"number": "7.17.22"}}}, "7.17.22"),
        ({"status": 200, "body": {"name": "new", "version": {"number": "10.0.0"}}}, "10.0.0"),
        ({"status": 400}, "7.x and older are not supported"),
    ],
)
async def test_start_up_refuses_unsupported_versions(
    es: FakeElasticsearch, answer: dict[str, Any], expected: str
) -> None:
    es.fail_requests(None, match=lambda r: r.path == "/", **answer)
    with pytest.raises(FatalSinkError, match=re.escape(expected)) as caught:
        await ElasticsearchSink(output_config({"hosts": [es.url]})).open()
    assert "8.x and 9.x" in str(caught.value)


async def test_tls_settings_reach_the_client(caplog: pytest.LogCaptureFixture) -> None:
    # No TLS server here: what is checked is that the settings are used and that problems are
    # said in shipper's words (a missing CA file stops the start, verify: false warns once).
    missing = output_config({"hosts": ["https://127.0.0.1:9"], "tls": {"ca_file": "/nonexistent"}})
    with pytest.raises(FatalSinkError, match="cannot set up the Elasticsearch client"):
        await ElasticsearchSink(missing).open()
    insecure = output_config({"hosts": ["https://127.0.0.1:9"], "tls": {"verify": False}})
    sink = ElasticsearchSink(insecure)
    await sink.open()  # nothing listens on port 9: a warning, not a failure
    try:
        assert any("verification is off" in r.getMessage() for r in caplog.records)
        with pytest.raises(RetryableSinkError):
            await sink.send(Batch.of([make_group("a")]))
    finally:
        await sink.close()


async def test_missing_secret_file_is_fatal_and_named(tmp_path: Path) -> None:
    config = output_config(
        {"hosts": ["http://127.0.0.1:9"], "username": "u", "password_file": str(tmp_path / "pw")}
    )
    with pytest.raises(FatalSinkError, match=r"password_file .*pw: No such file"):
        await ElasticsearchSink(config).open()


async def test_secrets_from_files_are_read_and_stripped(
    es: FakeElasticsearch, tmp_path: Path
) -> None:
    es.add_token(TOKEN, superuser=True)
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    config = output_config({"hosts": [es.url], "bearer_token_file": str(tmp_path / "token")})
    async with opened(config) as sink:
        assert sink.version == es.version
        assert (await sink.send(Batch.of([make_group("a")]))).outcomes == [D]


# --- the whole pipeline --------------------------------------------------------------------------


async def test_the_app_ships_container_logs_each_once_through_failures(
    es: FakeElasticsearch, tmp_path: Path
) -> None:
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("web", labels={"team": "payments"})
    for n in range(300):
        log.write(f"line {n:04d}", stream="stderr" if n % 7 == 0 else "stdout")
    es.fail_items(3, status=429)  # an overload storm on the first items
    es.fail_items(failing("line 0100"), status=400, error_type="mapper_parsing_exception")
    es.fail_requests(1, status=503, retry_after=0)
    config = parse_config(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "sources": {
                    "docker": {
                        "type": "docker_json",
                        "root": str(tmp_path / "containers"),
                        "poll_interval": "20ms",
                    }
                },
                "outputs": {
                    "es": {
                        "type": "elasticsearch",
                        "hosts": [es.url],
                        "batch": {"linger": "20ms", "max_records": 50},
                        "max_in_flight": 4,
                        "retry": {"initial_backoff": "10ms", "max_backoff": "50ms"},
                    }
                },
            }
        ),
        "<test>",
    )
    app = App(config)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    final = ("delivered", "duplicate", "dead_lettered")

    def settled() -> float:
        return sum(
            app.telemetry.value("shipper_records_total", output="es", outcome=o) for o in final
        )

    await wait_until(lambda: settled() >= 300, what="300 records settled")
    stop.set()
    await task
    stored = es.documents("logs-docker-default")
    messages = sorted(d.source["message"] for d in stored)
    assert messages == [f"line {n:04d}" for n in range(300) if n != 100]
    assert len({d.id for d in stored}) == 299
    assert stored[0].source["container"]["labels"] == {"team": "payments"}
    dead_letters = (tmp_path / "state" / "dead-letter.ndjson").read_bytes()
    dead = [orjson.loads(line) for line in dead_letters.splitlines()]
    assert [d["document"]["message"] for d in dead] == ["line 0100"]
    assert dead[0]["reason"].startswith("400 mapper_parsing_exception")


# --- proxy (from the environment) ----------------------------------------------------------------


class ForwardProxy:
    """A minimal HTTP forward proxy: one request per connection, relayed to its origin."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        # Each request goes upstream on a connection of its own, closed after the answer, so
        # the answer ends where the upstream connection does; the client's stays open.
        with closing(client):
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, target, version = lines[0].split(b" ")
                self.requests.append(lines[0])
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(data) < length:
                    data += client.recv(65536)
                body, data = data[:length], data[length:]
                _, _, authority, path = target.split(b"/", 3)  # http: '' host:port path
                host, port = authority.split(b":")
                headers = [
                    line for line in lines[1:] if not line.lower().startswith(b"connection:")
                ]
                request = b"\r\n".join(
                    [method + b" /" + path + b" " + version, *headers, b"Connection: close"]
                )
                with closing(socket.create_connection((host.decode(), int(port)))) as upstream:
                    upstream.sendall(request + b"\r\n\r\n" + body)
                    while chunk := upstream.recv(65536):
                        client.sendall(chunk)


async def test_a_proxy_from_the_environment_is_used(
    es: FakeElasticsearch, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = ForwardProxy()
    try:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with opened(output_config({"hosts": [es.url]})) as sink:
            assert (await sink.send(Batch.of([make_group("via proxy")]))).outcomes == [D]
    finally:
        proxy.close()
    assert any(b"/_bulk" in line and b"http://127.0.0.1" in line for line in proxy.requests)
    assert es.sources("logs-docker-default")[0]["message"] == "via proxy"


# --- secrets --------------------------------------------------------------------------------------


@contextmanager
def client_debug_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """caplog at DEBUG for every logger, and also for the client's request dump, whose logger
    does not propagate (it writes every request's headers and body when someone listens).
    Entered in the test itself: caplog's handler is another one in each test phase."""
    caplog.set_level(logging.DEBUG)
    node = logging.getLogger("elastic_transport.node")
    level = node.level
    node.setLevel(logging.DEBUG)
    node.addHandler(caplog.handler)
    try:
        yield
    finally:
        node.removeHandler(caplog.handler)
        node.setLevel(level)


def _secret_forms(*secrets: str) -> list[str]:
    forms = list(secrets)
    forms.append(base64.b64encode(f"shipper:{PASSWORD}".encode()).decode())
    forms.append(base64.b64encode(f"key-id-9:{API_KEY_SECRET}".encode()).decode())
    return forms


async def test_secrets_never_reach_logs_or_errors(
    es: FakeElasticsearch, caplog: pytest.LogCaptureFixture
) -> None:
    with client_debug_log(caplog):
        await _exercise_every_credential(es, caplog)


async def _exercise_every_credential(
    es: FakeElasticsearch, caplog: pytest.LogCaptureFixture
) -> None:
    es.add_user("shipper", "the-right-one", indices={"logs-*": {"create_doc"}})
    errors: list[BaseException] = []
    configs = [
        output_config(
            {"hosts": [es.url], "username": "shipper", "password": "${ES_PASSWORD}"},
            {"ES_PASSWORD": PASSWORD},
        ),
        output_config({"hosts": [es.url], "api_key": f"key-id-9:{API_KEY_SECRET}"}),
        output_config({"hosts": [es.url], "bearer_token": TOKEN}),
    ]
    for config in configs:
        assert PASSWORD not in repr(config)
        assert API_KEY_SECRET not in repr(config)
        async with opened(config) as sink:
            for script in (
                lambda: None,
                lambda: es.fail_requests(1, status=503, retry_after=1),
                lambda: es.drop_next(1, reset=True),
            ):
                script()
                try:
                    await sink.send(Batch.of([make_group("a")]))
                except RetryableSinkError as exc:
                    errors.append(exc)
        with es.down():
            sink = ElasticsearchSink(config)
            await sink.open()
            try:
                with pytest.raises(RetryableSinkError) as caught:
                    await sink.send(Batch.of([make_group("a")]))
                errors.append(caught.value)
            finally:
                await sink.close()
    assert len(errors) >= 9
    rendered = caplog.text + "".join(
        str(e) + repr(e) + "".join(traceback.format_exception(e)) for e in errors
    )
    assert "401" in rendered
    assert "<hidden>" in rendered  # the client's request dump (Authorization) was captured
    for secret in _secret_forms(PASSWORD, API_KEY_SECRET, TOKEN):
        assert secret not in rendered


async def test_secret_files_never_reach_logs(
    es: FakeElasticsearch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    config = output_config(
        {"hosts": [es.url], "username": "shipper", "password_file": str(tmp_path / "pw")}
    )
    es.add_user("shipper", "other", indices={"logs-*": {"create_doc"}})
    with client_debug_log(caplog):
        async with opened(config) as sink:
            with pytest.raises(HeldSinkError) as caught:
                await sink.send(Batch.of([make_group("a")]))
    assert "> Authorization: Basic <hidden>" in caplog.text
    assert PASSWORD not in caplog.text + str(caught.value) + repr(caught.value)


# --- config ---------------------------------------------------------------------------------------


def test_every_option_parses() -> None:
    config = output_config(
        {
            "hosts": ["https://es1.example.com", "http://[::1]:9201/prefix/"],
            "username": "shipper",
            "password_file": "/run/secrets/es",
            "tls": {
                "ca_file": "/etc/ca.pem",
                "verify": False,
                "client_cert": "/etc/c.pem",
                "client_key": "/etc/k.pem",
            },
            "headers": {"X-Opaque-Id": "node-1"},
            "timeout": "5s",
            "compression": {"enabled": True, "level": 9},
            "index": "logs-{kubernetes.namespace}-%Y.%m.%d-%H",
            "allowed_indices": ["logs-prod-*"],
            "fallback_index": "logs-other-%Y.%m.%d",
            "pipeline": "logs",
            "max_request_bytes": "10MiB",
            "batch": {"max_records": 500},
            "max_in_flight": 4,
        }
    )
    assert config.hosts == ["https://es1.example.com:9200", "http://[::1]:9201/prefix"]
    assert config.tls.verify is False
    assert config.compression.level == 9
    assert config.timeout == 5.0
    assert config.target.fields == (("kubernetes", "namespace"),)
    assert config.target.hourly
    assert config.max_request_bytes == 10 * 1024 * 1024

    cloud = base64.b64encode(b"es.example.com$abc$def").decode()
    assert output_config({"cloud_id": f"dep:{cloud}", "api_key": "abc:def"}).cloud_id


def test_defaults() -> None:
    config = output_config({"hosts": ["http://localhost:9200"]})
    assert config.target.text == "logs-docker-default"
    assert config.index is None
    assert config.timeout == 30.0
    assert config.compression.enabled is False
    assert config.compression.level == 1
    assert config.tls.verify is True
    assert config.max_request_bytes == 5 * 1024 * 1024
    assert config.pipeline is None


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({}, "outputs.es: give `hosts` or `cloud_id`"),
        ({"cloud_id": "x:bm9wZQ=="}, "outputs.es.cloud_id: not an Elastic Cloud id"),
        ({"hosts": []}, "outputs.es.hosts: "),
        ({"hosts": ["localhost:9200"]}, "outputs.es.hosts[0]: expected an http:// or https://"),
        ({"hosts": ["ftp://h"]}, "outputs.es.hosts[0]: expected an http:// or https://"),
        ({"hosts": ["http://h:99999"]}, "outputs.es.hosts[0]: expected an http"),
        ({"hosts": ["http://h?x=1"]}, "outputs.es.hosts[0]: a query or fragment"),
        ({"compression": {"level": 0}}, "outputs.es.compression.level: "),
        ({"compression": {"level": 10}}, "outputs.es.compression.level: "),
        ({"timeout": "0s"}, "outputs.es.timeout: must be greater than zero"),
        ({"max_request_bytes": "10B"}, "outputs.es.max_request_bytes: must be at least 1KiB"),
        ({"headers": {"Content-Type": "x"}}, "outputs.es.headers.Content-Type: set by shipper"),
        ({"headers": {"bad header": "x"}}, "outputs.es.headers.bad header: not a valid HTTP"),
        ({"tls": {"client_key": "/k"}}, "outputs.es.tls: client_key needs client_cert"),
        ({"tls": {"verify": "maybe"}}, "outputs.es.tls.verify: expected true or false"),
        ({"index": "Logs"}, "outputs.es.index: Elasticsearch names must be lowercase"),
        ({"index": "logs-%c"}, "outputs.es.index: unsupported date code"),
        ({"index": "logs-{a"}, "outputs.es.index: unbalanced"),
        ({"index": "logs-{}"}, "outputs.es.index: {...} must hold a dotted field path"),
        ({"index": "logs,other"}, "outputs.es.index: holds a character"),
        ({"index": "_logs"}, "outputs.es.index: Elasticsearch names must not start"),
        ({"data_stream": "logs-%Y"}, "outputs.es: data_stream: date codes belong in `index`"),
        ({"data_stream": "a", "index": "b"}, "outputs.es: give `data_stream` or `index`, not"),
        ({"data_stream": None}, "outputs.es: give `data_stream` or `index`"),
        ({"index": "logs-{x.y}"}, "allowed_indices: required when the target names record"),
        ({"allowed_indices": ["a-*"]}, "allowed_indices: only used when the target names"),
        (
            {"index": "l-{x}", "allowed_indices": ["l-*"], "fallback_index": "l-{y}"},
            "fallback_index: must not name record fields",
        ),
        ({"username": "u"}, "`username` and `password` (or `password_file`) go together"),
        ({"password": "p"}, "`username` and `password` (or `password_file`) go together"),
        ({"api_key": "a", "bearer_token": "b"}, "choose one way to authenticate"),
        ({"api_key": "a", "api_key_file": "/f"}, "give `api_key` or `api_key_file`, not both"),
        ({"api_key": ""}, "outputs.es.api_key: must not be empty"),
        ({"password_file": ""}, "outputs.es.password_file: must not be empty"),
    ],
)
def test_bad_values_name_the_option(options: dict[str, Any], where: str) -> None:
    if "hosts" not in options and "cloud_id" not in options and options:
        options = {"hosts": ["http://localhost:9200"], **options}
    with pytest.raises(ConfigError) as caught:
        output_config(options)
    assert where in str(caught.value)


SECRET = "hunter2-very-secret"


@pytest.mark.parametrize(
    "options",
    [
        {"hosts": ["https://shipper:${S}@es.example.com"]},
        {"hosts": ["https://${S}@es.example.com"]},
        {"hosts": ["${S}"]},
        {"hosts": ["http://h"], "password": ["${S}"], "username": "u"},
        {"hosts": ["http://h"], "api_key": {"k": "${S}"}},
        {"hosts": ["http://h"], "bearer_token": "${S}", "api_key": "${S}"},
        {"hosts": ["http://h"], "cloud_id": "${S}"},
        {"hosts": ["http://h"], "index": "${S}-X"},
        {"hosts": ["http://h"], "headers": {"Authorization": "${S}"}},
        {"hosts": ["http://h"], "tls": {"verify": "${S}"}},
    ],
)
def test_secrets_are_not_echoed_by_config_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        output_config(options, {"S": SECRET})
    rendered = "".join(traceback.format_exception(caught.value))
    assert SECRET not in rendered
    assert str(caught.value).startswith("es.yaml: outputs.es")


def test_the_sink_is_registered_with_the_outputs_name_and_the_apps_telemetry() -> None:
    from shipper.app import SINKS  # noqa: PLC0415

    telemetry = Telemetry()
    config = output_config({"hosts": ["http://localhost:9200"]})
    sink = SINKS["elasticsearch"]("search", config, telemetry)
    assert isinstance(sink, ElasticsearchSink)
    assert sink.name == "search"
    assert sink._telemetry is telemetry
