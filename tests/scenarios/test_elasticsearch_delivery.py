"""The whole pipeline in-process into Elasticsearch: real files, the real client, a fake cluster.

Each test runs the App on container logs written by `shipper.docker_writer` and ships them to
tests/fake_elasticsearch.py, which fails the way a cluster does on request (down, 429 storms,
mapping errors, 413, refused credentials). What a test checks is what the cluster holds at the
end: every line once (count, unique `_id`s, the same seqs per container and stream), and where
a document cannot be indexed, the dead-letter file and checkpoints that moved past it. Outages
last a few backoff cycles of a fast retry policy (50-200 ms), so the suite stays quick.

Waiting is on settled state only: shipper's own outcome counters (a record is counted once it
is final), its checkpoint file, and the fake's request log, all read with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.app import App
from shipper.config import Config, parse_config
from shipper.docker_writer import SEQ_PATTERN, ContainerLog, DockerRootWriter, realistic_lines
from shipper.telemetry.logging import JsonFormatter
from tests.fake_elasticsearch import BulkItem, Document, FakeElasticsearch
from tests.helpers import wait_until

Seqs = dict[tuple[str, str], list[int]]  # (container id, stream) -> seqs
OUTPUT = "es"
TARGET = "logs-docker-default"  # the output's default data stream

PASSWORD = "pw-Sh1pper-d0nt-l0g-me"
KEY_ID = "shipper-key-1"
KEY_SECRET = "k3y-Sh1pper-d0nt-l0g-me-9f2c"
API_KEY = f"{KEY_ID}:{KEY_SECRET}"
WRITER_PRIVILEGES = {"logs-docker-*": {"create_doc", "auto_configure"}}


# --- setting up -----------------------------------------------------------------------------------


@pytest.fixture
def es() -> Iterator[FakeElasticsearch]:
    with FakeElasticsearch() as server:
        yield server
    assert server.internal_errors == []


def es_config(tmp: Path, es: FakeElasticsearch, *, output: str = "", source: str = "") -> Config:
    """One docker_json source on `tmp/containers` into the fake cluster, fast retries and
    checkpoint flushes; `output`/`source` are more lines of those sections (4-space indent)."""
    text = f"""
state_dir: {tmp / "state"}
sources:
  docker:
    type: docker_json
    root: {tmp / "containers"}
    poll_interval: 20ms
{source}
outputs:
  {OUTPUT}:
    type: elasticsearch
    hosts: ["{es.url}"]
    batch:
      linger: 20ms
    retry:
      initial_backoff: 50ms
      max_backoff: 200ms
{output}
checkpoints:
  flush_interval: 100ms
pipeline:
  shutdown_timeout: 2s
"""
    return parse_config(text, origin="<test>")


def write_lines(writer: DockerRootWriter, name: str, count: int, expected: Seqs, seed: int) -> None:
    log = writer.containers.get(name) or writer.add_container(name)
    start = sum(len(seqs) for (cid, _), seqs in expected.items() if cid == log.id)
    lines = realistic_lines(random.Random(seed), count, container=name, start_seq=start)
    for stream, message in lines:
        log.write(message, stream=stream)
        expected[(log.id, stream)].append(seq_of(message))


def seq_of(message: str) -> int:
    match = SEQ_PATTERN.search(message)
    assert match is not None, message[:80]
    return int(match[1])


async def start(app: App) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    await asyncio.wait_for(app.started.wait(), 10)
    return stop, task


async def finish(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, 30)


def records(app: App, outcome: str) -> int:
    return int(app.telemetry.value("shipper_records_total", output=OUTPUT, outcome=outcome))


def settled(app: App) -> int:
    """Records with a final outcome at the output (a 409 replay counts as duplicate)."""
    return sum(records(app, outcome) for outcome in ("delivered", "duplicate", "dead_lettered"))


def total(expected: Seqs) -> int:
    return sum(len(seqs) for seqs in expected.values())


# --- reading what the cluster holds ---------------------------------------------------------------


def indexed(es: FakeElasticsearch) -> tuple[Seqs, list[Document]]:
    """The documents of the data stream, and their seqs by (container id, stream), sorted."""
    documents = es.documents(TARGET)
    by_stream: Seqs = defaultdict(list)
    for document in documents:
        source = document.source
        by_stream[(source["container"]["id"], source["stream"])].append(seq_of(source["message"]))
    return {key: sorted(seqs) for key, seqs in by_stream.items()}, documents


def check_every_line_once(es: FakeElasticsearch, expected: Seqs) -> list[Document]:
    by_stream, documents = indexed(es)
    assert len(documents) == total(expected)
    assert len({document.id for document in documents}) == len(documents), "an _id twice"
    assert by_stream == {key: sorted(seqs) for key, seqs in expected.items()}
    return documents


def statuses_by_id(items: list[BulkItem]) -> dict[str, list[int | None]]:
    """Every answer each `_id` got, in the order its items were sent."""
    answered: dict[str, list[int | None]] = defaultdict(list)
    for item in items:
        assert item.id is not None, "an item without _id: a replay would index it again"
        answered[item.id].append(item.status)
    return answered


def checkpoint_offsets(app: App) -> dict[str, int]:
    """The checkpoint file as last flushed: path -> offset."""
    path = app.config.checkpoint_path
    if not path.exists():
        return {}
    return {entry["path"]: entry["offset"] for entry in orjson.loads(path.read_bytes())["files"]}


def at_end(app: App, logs: list[ContainerLog]) -> bool:
    """Whether the flushed checkpoints of these containers' logs are at their ends."""
    offsets = checkpoint_offsets(app)
    return all(offsets.get(str(log.log_path)) == log.log_path.stat().st_size for log in logs)


def dead_letters(app: App) -> list[dict[str, Any]]:
    path = app.config.dead_letter_path
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# --- secrets ------------------------------------------------------------------------------------


def secret_forms(*secrets: str, username: str | None = None) -> list[str]:
    """A secret as configured and as an Authorization header carries it."""
    forms = list(secrets)
    for secret in secrets:
        forms.append(base64.b64encode(secret.encode()).decode())
        if username is not None:
            forms.append(base64.b64encode(f"{username}:{secret}".encode()).decode())
    return forms


def leaks(caplog: pytest.LogCaptureFixture, forms: list[str], *texts: str) -> list[str]:
    """Log lines (formatted as shipper writes them, with every extra field and traceback) and
    other texts (raised errors) that hold a secret."""
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records] + list(texts)
    return [line[:300] for line in lines if any(form in line for form in forms)]


def errors_of(task: asyncio.Task[None]) -> list[str]:
    if task.done() and not task.cancelled() and task.exception() is not None:
        return [repr(task.exception()), str(task.exception())]
    return []


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["8.19.2", "9.1.3"])
async def test_an_outage_of_several_backoff_cycles_loses_and_duplicates_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, version: str
) -> None:
    """The cluster (8.x or 9.x) goes away (connections cut, then refused) while containers keep
    logging; shipper retries for several backoff cycles, acknowledges nothing meanwhile, and
    once the cluster is back every line is in it once."""
    caplog.set_level(logging.DEBUG, logger="shipper")
    with FakeElasticsearch(version=version) as es:
        await outage(tmp_path, es, caplog)
        assert es.internal_errors == []


async def outage(tmp_path: Path, es: FakeElasticsearch, caplog: pytest.LogCaptureFixture) -> None:
    es.add_user("shipper", PASSWORD, indices=WRITER_PRIVILEGES)
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    for n in range(2):
        write_lines(writer, f"web-{n}", 300, expected, seed=n)
    auth = f'    username: shipper\n    password: "{PASSWORD}"'
    app = App(es_config(tmp_path, es, output=auth))
    stop, task = await start(app)
    await wait_until(lambda: settled(app) >= 600, what="the lines before the outage")

    with es.down():
        for n in range(2):
            write_lines(writer, f"web-{n}", 400, expected, seed=10 + n)
        write_lines(writer, "born-in-outage", 200, expected, seed=20)
        retries = app.telemetry.value("shipper_retries_total", output=OUTPUT)
        await wait_until(
            lambda: app.telemetry.value("shipper_retries_total", output=OUTPUT) >= retries + 5,
            what="five more backoff cycles against the cluster that is down",
        )
        assert settled(app) == 600, "records acknowledged while the cluster was down"
        assert not task.done()

    await wait_until(lambda: settled(app) >= total(expected), what="every line after the outage")
    await finish(stop, task)

    check_every_line_once(es, expected)
    assert records(app, "dead_lettered") == 0
    assert records(app, "delivered") + records(app, "duplicate") == total(expected)
    assert "Output failed; retrying." in caplog.text
    assert at_end(app, list(writer.containers.values()))
    assert leaks(caplog, secret_forms(PASSWORD, username="shipper"), *errors_of(task)) == []


async def test_answers_lost_after_indexing_are_replayed_as_duplicates(
    tmp_path: Path, es: FakeElasticsearch
) -> None:
    """The cluster indexes two requests but the connection dies before the answers (a retry can
    lose its answer too): the resent documents are answered 409 (their `_id` is known) and
    counted duplicate, never indexed twice."""
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    app = App(es_config(tmp_path, es, output="    max_in_flight: 1"))
    stop, task = await start(app)
    write_lines(writer, "api", 200, expected, seed=1)
    await wait_until(lambda: settled(app) >= 200, what="the first lines")
    es.drop_next(2, after_processing=True)
    write_lines(writer, "api", 300, expected, seed=2)
    await wait_until(lambda: settled(app) >= 500, what="every line")
    await finish(stop, task)

    check_every_line_once(es, expected)
    dropped = [request for request in es.bulk_requests() if request.dropped]
    assert len(dropped) == 2
    # Indexed the first time; every later send of the same documents is answered 409.
    lost = {item.id for request in dropped for item in request.items}
    for doc_id, statuses in statuses_by_id(es.items()).items():
        assert statuses[0] == 201, doc_id
        assert set(statuses[1:]) <= {409}, doc_id
        assert (len(statuses) > 1) == (doc_id in lost), doc_id
    replayed = len(lost)
    assert 0 < replayed <= 300
    assert records(app, "duplicate") == replayed
    assert records(app, "delivered") == 500 - replayed


async def test_a_429_storm_resends_only_the_items_that_failed(
    tmp_path: Path, es: FakeElasticsearch
) -> None:
    """A quarter of the documents are refused three times each (429 rejected execution, 429
    flood-stage block, 503 shard unavailable): each request after a refusal carries only what
    was refused, nothing indexed is sent again, and in the end every line is indexed once."""
    rounds = 3
    refused: Counter[str] = Counter()
    kinds = [
        (429, "es_rejected_execution_exception"),
        (429, "cluster_block_exception"),
        (503, "unavailable_shards_exception"),
    ]

    def kind_of(doc_id: str) -> int | None:
        """Which refusal a document gets, if any: by its _id, so the same over resends."""
        crc = zlib.crc32(doc_id.encode())
        return (crc // 4) % len(kinds) if crc % 4 == 0 else None

    def refuse(kind: int) -> Callable[[BulkItem], bool]:
        def predicate(item: BulkItem) -> bool:  # runs under the fake's lock
            if item.id is None or kind_of(item.id) != kind or refused[item.id] >= rounds:
                return False
            refused[item.id] += 1
            return True

        return predicate

    for kind, (status, error_type) in enumerate(kinds):
        es.fail_items(refuse(kind), times=None, status=status, error_type=error_type)

    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    for n in range(3):
        write_lines(writer, f"svc-{n}", 400, expected, seed=n)
    app = App(es_config(tmp_path, es))
    stop, task = await start(app)
    await wait_until(lambda: settled(app) >= total(expected), what="every line through the storm")
    await finish(stop, task)

    check_every_line_once(es, expected)
    assert records(app, "delivered") == total(expected)
    assert set(refused.values()) == {rounds}, "every chosen document refused `rounds` times"
    assert 0.1 * total(expected) < len(refused) < 0.5 * total(expected)
    assert {error for error in es.item_results if "exception" in error} == {
        error_type for _, error_type in kinds
    }

    # Only the refused items were sent again: each _id's answers are its refusals, then one 201.
    answered = statuses_by_id(es.items())
    for doc_id, statuses in answered.items():
        refusal = kind_of(doc_id)
        failures = [] if refusal is None else [kinds[refusal][0]] * rounds
        assert statuses == [*failures, 201], doc_id
    assert sum(map(len, answered.values())) == total(expected) + rounds * len(refused)

    # Per request: what a request sends again was refused just before, never indexed; the
    # resends are far smaller than the batches (only the refused items).
    last_answer: dict[str, int | None] = {}
    resend_sizes = []
    for request in es.bulk_requests():
        resent = [item.id for item in request.items if item.id in last_answer]
        assert all(last_answer[doc_id] in (429, 503) for doc_id in resent if doc_id)
        if resent:
            resend_sizes.append(len(resent))
        last_answer.update((item.id or "", item.status) for item in request.items)
    assert len(resend_sizes) >= rounds
    assert max(resend_sizes) < len(es.bulk_requests()[0].items)
    assert app.telemetry.value("shipper_retries_total", output=OUTPUT) >= rounds
    # The App's telemetry counts the refusals by status class and error type.
    assert app.telemetry.value(
        "shipper_es_items_total",
        output=OUTPUT,
        status_class="429",
        error_type="cluster_block_exception",
    ) == rounds * sum(1 for doc_id in refused if kind_of(doc_id) == 1)


MAPPING_TEMPLATE = {
    # What an operator (or `shipper setup`) installs: @timestamp in nanoseconds, typed fields.
    "index_patterns": ["logs-docker-*"],
    "priority": 200,
    "data_stream": {},
    "template": {
        "mappings": {
            "properties": {
                "@timestamp": {"type": "date_nanos"},
                "status": {"type": "long"},
            }
        }
    },
}
JSON_PROCESSORS = """    processors:
      - decode_json: {}
      - timestamp:
          field: ts
"""


def json_line(seq: int, *, status: object = 200, ts: str = "2024-05-01T12:00:00.123456789Z") -> str:
    return orjson.dumps({"ts": ts, "status": status, "msg": f"request done seq={seq:06d}"}).decode()


def check_dead_letters(
    letters: list[dict[str, Any]], bad: dict[int, str], log: ContainerLog
) -> None:
    """One line per refused document: the document, the cluster's status, type and reason."""
    assert sorted(seq_of(letter["document"]["message"]) for letter in letters) == sorted(bad)
    for letter in letters:
        seq = seq_of(letter["document"]["message"])
        field = bad[seq]
        assert letter["output"] == OUTPUT
        assert isinstance(letter["time"], float)
        assert "400" in letter["reason"], letter
        assert "document_parsing_exception" in letter["reason"], letter
        assert (letter["status"], letter["error_type"]) == (400, "document_parsing_exception")
        assert f"failed to parse field [{field}]" in letter["reason"], letter
        assert letter["log_file"] == str(log.log_path)
        assert letter["document"]["status"] == (200 if field == "@timestamp" else "not-a-number")


async def test_documents_the_mapping_refuses_are_dead_lettered_and_checkpoints_pass_them(
    tmp_path: Path, es: FakeElasticsearch
) -> None:
    """`status: long` and `@timestamp: date_nanos` refuse some documents (a status that is not
    a number, a time before 1970): those go to the dead-letter file with the cluster's reason,
    are counted, and do not hold the checkpoint; a restart sends none of them again."""
    es.put_index_template("logs-docker", MAPPING_TEMPLATE)
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("orders")
    good: list[int] = []
    bad: dict[int, str] = {}  # seq -> the field that is wrong
    for seq in range(300):
        if seq % 50 == 7:
            log.write(json_line(seq, status="not-a-number"))
            bad[seq] = "status"
        elif seq % 50 == 31:
            log.write(json_line(seq, ts="1969-07-20T20:17:40Z"))
            bad[seq] = "@timestamp"
        else:
            log.write(json_line(seq))
            good.append(seq)
    app = App(es_config(tmp_path, es, source=JSON_PROCESSORS))
    stop, task = await start(app)
    await wait_until(lambda: settled(app) >= 300, what="every line final")
    await wait_until(lambda: at_end(app, [log]), what="the checkpoint at the end of the file")
    await finish(stop, task)

    documents = es.documents(TARGET)
    assert sorted(seq_of(document.source["message"]) for document in documents) == good
    assert len({document.id for document in documents}) == len(documents)
    assert records(app, "delivered") == len(good)
    assert records(app, "dead_lettered") == len(bad)

    check_dead_letters(dead_letters(app), bad, log)
    # Each refused document was sent once: a mapping error is not worth a retry.
    refused_ids = {item.id for item in es.items() if item.status == 400}
    assert len(refused_ids) == len(bad)
    assert all(
        statuses == [400]
        for doc_id, statuses in statuses_by_id(es.items()).items()
        if doc_id in refused_ids
    )

    # A restart reads from the checkpoint: only the line written since is sent.
    sent_before = len(es.items())
    log.write(json_line(300))
    again = App(es_config(tmp_path, es, source=JSON_PROCESSORS))
    stop, task = await start(again)
    await wait_until(lambda: settled(again) >= 1, what="the new line")
    await wait_until(lambda: at_end(again, [log]), what="the checkpoint at the new end")
    await finish(stop, task)
    new_items = es.items()[sent_before:]
    assert [seq_of(item.source["message"]) for item in new_items] == [300]
    assert records(again, "delivered") == 1
    assert records(again, "dead_lettered") == 0
    assert len(dead_letters(again)) == len(bad)


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
async def test_a_413_splits_the_request_and_dead_letters_only_a_record_too_large_alone(
    tmp_path: Path, gzip: bool
) -> None:
    """The cluster takes at most 64 KiB a request (http.max_content_length; for gzip bodies
    the limit counts decompressed bytes). Batches of ~400 KiB are split until they pass; one
    100 KB line, too large even alone, is dead-lettered; everything else is indexed once."""
    limit = 64 * 1024
    with FakeElasticsearch(max_content_length=limit) as es:
        writer = DockerRootWriter(tmp_path / "containers")
        expected: Seqs = defaultdict(list)
        write_lines(writer, "chatty", 600, expected, seed=3)
        log = writer.containers["chatty"]
        huge_seq = total(expected)
        huge = f"blob={random.Random(5).randbytes(50_000).hex()} seq={huge_seq:06d}"
        log.write(huge)  # Docker writes it in 16 KiB parts; shipper rejoins them
        write_lines(writer, "chatty", 400, expected, seed=4)
        output = "    compression:\n      enabled: true" if gzip else ""
        app = App(es_config(tmp_path, es, output=output))
        stop, task = await start(app)
        await wait_until(lambda: settled(app) >= total(expected) + 1, what="every line final")
        await wait_until(lambda: at_end(app, [log]), what="the checkpoint at the end")
        await finish(stop, task)
        assert es.internal_errors == []

    check_every_line_once(es, expected)
    assert records(app, "delivered") == total(expected)
    assert records(app, "dead_lettered") == 1
    [letter] = dead_letters(app)
    assert letter["document"]["message"] == huge
    assert "413" in letter["reason"]
    assert letter["status"] == 413
    requests = es.bulk_requests()
    too_large = [request for request in requests if request.status == 413]
    assert len(too_large) >= 2  # a batch (at least once) and the huge record alone
    assert all(request.body_size <= limit for request in requests if request.status == 200)
    assert all(request.compressed == gzip for request in requests)
    # The App's telemetry (what the metrics endpoint exports) counts the splits.
    assert app.telemetry.value("shipper_es_splits_total", output=OUTPUT) >= 1


@pytest.mark.parametrize("refusal", ["unknown_key", "no_write_privilege"])
async def test_refused_credentials_hold_everything_until_they_are_fixed(
    tmp_path: Path, es: FakeElasticsearch, caplog: pytest.LogCaptureFixture, refusal: str
) -> None:
    """Security on, and shipper's API key unknown (401 on every request) or lacking the write
    privilege (403 `security_exception` on every item): nothing is acknowledged, checkpoints
    stay at 0, shipper keeps running and says so at error level again and again. Once the key
    is right, every line is indexed once, and the key appears in no log line."""
    caplog.set_level(logging.DEBUG, logger="shipper")
    es.add_user("elastic", "admin-password-not-shippers", superuser=True)  # security on
    if refusal == "no_write_privilege":
        es.add_api_key(KEY_ID, KEY_SECRET, indices={"logs-docker-*": {"read"}})
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    for n in range(2):
        write_lines(writer, f"pay-{n}", 300, expected, seed=n)
    logs = list(writer.containers.values())
    app = App(es_config(tmp_path, es, output=f'    api_key: "{API_KEY}"'))
    stop, task = await start(app)

    def held_errors() -> int:
        return sum(
            1
            for record in caplog.records
            if record.levelno >= logging.ERROR and "holding it" in record.getMessage()
        )

    def checkpoints_flushed_at_zero() -> bool:
        offsets = checkpoint_offsets(app)
        return len(offsets) == len(logs) and set(offsets.values()) == {0}

    await wait_until(lambda: held_errors() >= 5, what="the refusal reported again and again")
    await wait_until(checkpoints_flushed_at_zero, what="a checkpoint flush listing both files")
    assert not task.done()
    assert settled(app) == 0
    assert app.telemetry.value("shipper_records_total") == 0
    assert {entry.offset for entry in app.store.entries()} == {0}
    assert es.documents() == []
    assert app.telemetry.value("shipper_output_held_total", output=OUTPUT) >= 5
    if refusal == "unknown_key":
        assert es.statuses[401] >= 5
    else:
        assert es.item_results["security_exception"] >= 5
    # The error says what is wrong.
    held = [r for r in caplog.records if "holding it" in r.getMessage()]
    described = JsonFormatter().format(held[-1])
    assert ("401" if refusal == "unknown_key" else "security_exception") in described

    es.add_api_key(KEY_ID, KEY_SECRET, indices=WRITER_PRIVILEGES)  # the operator fixes it
    await wait_until(lambda: settled(app) >= total(expected), what="every line once fixed")
    await wait_until(lambda: at_end(app, logs), what="the checkpoints at the ends")
    await finish(stop, task)

    check_every_line_once(es, expected)
    assert records(app, "delivered") == total(expected)
    assert records(app, "dead_lettered") == 0
    assert leaks(caplog, secret_forms(KEY_SECRET, API_KEY), *errors_of(task)) == []
