"""The whole pipeline in-process into Splunk HEC: real files, the real sink, a fake collector.

Each test runs the App on container logs written by `shipper.docker_writer` and ships them to
tests/fake_splunk.py, which answers as HEC does and fails as HEC does on request (503 busy
phases, refused tokens and indexes, acks that come late or never). What a test checks is what
the collector indexed at the end, per (container, stream) and seq, and where an event cannot be
indexed, the dead-letter file and checkpoints that moved past it. HEC has no idempotency: a
batch sent again after a lost ack is indexed again, so those tests count the duplicates and
check that each one is a copy of a request whose ack never came. Outages last a few backoff
cycles of a fast retry policy (50-200 ms) and acks time out after 1 s, so the suite stays quick.

Waiting is on settled state only: shipper's own outcome counters (a record is counted once it
is final), its checkpoints, and the fake's request log, all read with a deadline.

The model is test_elasticsearch_delivery.py, whose helpers (writing numbered lines, starting
and stopping the App, reading checkpoints and the dead-letter file, scanning logs for secrets)
are used here as they are.
"""

from __future__ import annotations

import base64
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from shipper.app import App
from shipper.config import Config, parse_config
from shipper.docker_writer import DockerRootWriter
from shipper.telemetry.logging import JsonFormatter
from tests.fake_splunk import Event, FakeSplunk, Request
from tests.helpers import wait_until
from tests.scenarios.test_elasticsearch_delivery import (
    Seqs,
    at_end,
    checkpoint_offsets,
    dead_letters,
    errors_of,
    finish,
    leaks,
    seq_of,
    start,
    total,
    write_lines,
)

OUTPUT = "hec"
TOKEN = "3f2b9c1e-5h1p-4d0n-7l0g-t0k3n5ecr3t01"  # GUID-shaped, as HEC tokens are
INDEX = "main"  # the token's default index: where events without an `index` go


# --- setting up -----------------------------------------------------------------------------------


@pytest.fixture
def hec() -> Iterator[FakeSplunk]:
    with FakeSplunk() as server:
        yield server
    assert server.internal_errors == []


def hec_config(
    tmp: Path, hec: FakeSplunk, *, output: str = "", source: str = "", token: str | None = None
) -> Config:
    """One docker_json source on `tmp/containers` into the fake HEC, fast retries and checkpoint
    flushes; every event carries its container id and stream as indexed fields. `output` and
    `source` are more lines of those sections (4-space indent); `token` replaces the token line
    (e.g. with `token_file`)."""
    auth = token if token is not None else f'    token: "{TOKEN}"'
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
    type: splunk_hec
    url: "{hec.url}"
{auth}
    fields:
      container_id: container.id
      stream: stream
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


ACKS = """    ack:
      enabled: true
      poll_interval: 50ms
      timeout: 1s
"""


def records(app: App, outcome: str) -> int:
    return int(app.telemetry.value("shipper_records_total", output=OUTPUT, outcome=outcome))


def settled(app: App) -> int:
    """Records with a final outcome at the output (with acks: confirmed, or dead-lettered)."""
    return sum(records(app, outcome) for outcome in ("delivered", "dropped", "dead_lettered"))


def hec_counter(app: App, name: str, **labels: str) -> int:
    return int(app.telemetry.value(name, output=OUTPUT, **labels))


# --- reading what HEC holds -----------------------------------------------------------------------


def key_of(event: Event) -> tuple[str, str]:
    fields = event.fields
    container, stream = fields.get("container_id"), fields.get("stream")
    assert isinstance(container, str) and isinstance(stream, str), fields
    return container, stream


def indexed(events: list[Event]) -> Seqs:
    by_stream: Seqs = defaultdict(list)
    for event in events:
        assert isinstance(event.event, str), event.event
        by_stream[key_of(event)].append(seq_of(event.event))
    return {key: sorted(seqs) for key, seqs in by_stream.items()}


def expected_seqs(expected: Seqs) -> Seqs:
    return {key: sorted(seqs) for key, seqs in expected.items()}


def check_every_line_once(hec: FakeSplunk, expected: Seqs) -> list[Event]:
    events = hec.events()
    assert len(events) == total(expected)
    assert indexed(events) == expected_seqs(expected)
    assert {event.index for event in events} == {INDEX}
    return events


def check_envelopes(events: list[Event]) -> None:
    """What every event carries: a plain decimal `time` (never 1.7E9), the file as `source`,
    the container's sourcetype, and string-only indexed fields (the fake refuses others)."""
    for event in events:
        assert isinstance(event.time, float), event.time  # a JSON number
        text = event.time.raw  # type: ignore[attr-defined]  # the number's text as sent
        assert "e" not in text.lower() and "." in text, text
        container, _ = key_of(event)
        assert event.source.endswith(f"{container}-json.log"), event.source
        assert event.sourcetype.startswith("docker:container:"), event.sourcetype


def copies(hec: FakeSplunk) -> Counter[tuple[str, str, int]]:
    return Counter(
        (*key_of(event), seq_of(event.event))
        for event in hec.events()
        if isinstance(event.event, str)
    )


def confirmed_events(hec: FakeSplunk) -> tuple[list[Event], list[Event]]:
    """The events whose request's ackId HEC reported true, and the others (requests whose ack
    never came, or came after shipper had given up on it)."""
    reported = set(hec.acks_reported)
    confirmed: list[Event] = []
    unconfirmed: list[Event] = []
    for event in hec.events():
        known = event.ack_id is not None and (event.channel, event.ack_id) in reported
        (confirmed if known else unconfirmed).append(event)
    return confirmed, unconfirmed


# --- secrets ------------------------------------------------------------------------------------


def token_forms(token: str = TOKEN) -> list[str]:
    """The token as configured, as the Authorization header carries it, and as Basic auth."""
    return [
        token,
        f"Splunk {token}",
        base64.b64encode(f"x:{token}".encode()).decode(),
        base64.b64encode(token.encode()).decode(),
    ]


def check_no_token_leaked(caplog: pytest.LogCaptureFixture, app: App, *errors: str) -> None:
    letters = app.config.dead_letter_path
    texts = [letters.read_text()] if letters.exists() else []
    assert leaks(caplog, token_forms(), *errors, *texts) == []


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("acks", [False, True], ids=["no-ack", "ack"])
async def test_hec_busy_for_several_backoff_cycles_loses_and_duplicates_nothing(
    tmp_path: Path, hec: FakeSplunk, caplog: pytest.LogCaptureFixture, acks: bool
) -> None:
    """HEC answers 503 code 9 (server is busy) to every request for several backoff cycles
    while containers keep logging; shipper acknowledges nothing meanwhile, keeps running, and
    once HEC takes data again every line is indexed once (a 503 indexes nothing, so nothing
    comes twice), with or without indexer acknowledgement, gzip on."""
    caplog.set_level(logging.DEBUG, logger="shipper")
    hec.add_token(TOKEN, use_ack=acks)
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    for n in range(2):
        write_lines(writer, f"web-{n}", 300, expected, seed=n)
    output = "    compression:\n      enabled: true\n" + (ACKS if acks else "")
    app = App(hec_config(tmp_path, hec, output=output))
    stop, task = await start(app)
    await wait_until(lambda: settled(app) >= 600, what="the lines before the busy phase")

    with hec.busy():
        for n in range(2):
            write_lines(writer, f"web-{n}", 400, expected, seed=10 + n)
        write_lines(writer, "born-while-busy", 200, expected, seed=20)
        retries = app.telemetry.value("shipper_retries_total", output=OUTPUT)
        await wait_until(
            lambda: app.telemetry.value("shipper_retries_total", output=OUTPUT) >= retries + 5,
            what="five more backoff cycles against the busy HEC",
        )
        assert settled(app) == 600, "records acknowledged while HEC was busy"
        assert len(hec.events()) == 600
        assert not task.done()
    assert hec.codes[9] >= 5

    await wait_until(lambda: settled(app) >= total(expected), what="every line after the phase")
    await wait_until(
        lambda: at_end(app, list(writer.containers.values())), what="checkpoints at the ends"
    )
    await finish(stop, task)

    events = check_every_line_once(hec, expected)
    check_envelopes(events)
    assert records(app, "delivered") == total(expected)
    assert records(app, "dead_lettered") == 0
    assert all(request.compressed for request in hec.ingest_requests())
    busy = [request for request in hec.ingest_requests() if request.code == 9]
    assert all(request.status == 503 and request.events_indexed == 0 for request in busy)
    assert "Output failed; retrying." in caplog.text
    if acks:
        confirmed, unconfirmed = confirmed_events(hec)
        assert unconfirmed == [] and len(confirmed) == total(expected)
    check_no_token_leaked(caplog, app, *errors_of(task))


def refuse_in_flight(hec: FakeSplunk, container: str, seq: int) -> dict[str, int]:
    """Make HEC refuse the event of line `seq` the first time it comes, as part of its batch.

    shipper never sends an event HEC finds malformed, so the test plays a proxy in front of
    HEC: the request's body is changed before HEC reads it, giving that one event an indexed
    field holding an object, which HEC refuses (code 15) with `invalid-event-number` = its
    position. HEC then does the rest as it does: the events before it are indexed, it and
    those after it are not. Returns what happened: the request's number and the position.
    """
    markers = (f"seq={seq:06d}".encode(), orjson.dumps({"container_id": container})[1:-1])
    seen: dict[str, int] = {}

    def chosen(line: bytes) -> bool:
        return all(marker in line for marker in markers)

    def corrupt(request: Request) -> bool:  # runs under the fake's lock, before HEC reads it
        if seen or not request.is_ingest:
            return False
        lines = request.body.split(b"\n")  # shipper's framing: one envelope a line
        found = [n for n, line in enumerate(lines) if chosen(line)]
        if not found:
            return False
        [position] = found
        envelope = orjson.loads(lines[position])
        envelope["fields"] = {**envelope.get("fields", {}), "payload": {"nested": "object"}}
        lines[position] = orjson.dumps(envelope)
        request.body = b"\n".join(lines)
        seen.update(request=request.number, position=position, events=len(lines))
        return False  # no scripted answer: HEC answers what it finds

    hec.fail_requests(None, match=corrupt)
    return seen


@pytest.mark.parametrize("acks", [False, True], ids=["no-ack", "ack"])
async def test_an_event_hec_refuses_mid_batch_is_the_only_one_dead_lettered(
    tmp_path: Path, hec: FakeSplunk, caplog: pytest.LogCaptureFixture, acks: bool
) -> None:
    """HEC refuses one event in the middle of a request (400 code 15, `invalid-event-number`
    i): the events before it were indexed and count delivered (with acks on, on the 400's word:
    that answer has no ackId); it goes to the dead-letter file with HEC's status, code and
    reason; the events after it are sent again, once. Every other line is indexed once."""
    caplog.set_level(logging.DEBUG, logger="shipper")
    hec.add_token(TOKEN, use_ack=acks)
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    for n in range(2):
        write_lines(writer, f"api-{n}", 300, expected, seed=n)
    logs = list(writer.containers.values())
    bad_container = logs[0].id
    bad_seq = 150
    bad_stream = next(
        s for (cid, s), seqs in expected.items() if cid == bad_container and bad_seq in seqs
    )
    refused = refuse_in_flight(hec, bad_container, bad_seq)
    app = App(hec_config(tmp_path, hec, output=ACKS if acks else ""))
    stop, task = await start(app)
    await wait_until(lambda: settled(app) >= 600, what="every line final")
    await wait_until(lambda: at_end(app, logs), what="checkpoints at the ends of the files")
    await finish(stop, task)

    # The refusal came in the middle of a request: events before and after it.
    assert refused, "no request carried the chosen line"
    request = hec.requests[refused["request"]]
    assert (request.status, request.code) == (400, 15)
    assert request.invalid_event_number == refused["position"]
    assert 0 < refused["position"] < refused["events"] - 1
    assert request.events_indexed == refused["position"]

    expected[(bad_container, bad_stream)].remove(bad_seq)
    events = check_every_line_once(hec, expected)
    check_envelopes(events)
    assert records(app, "delivered") == 599
    assert records(app, "dead_lettered") == 1
    [letter] = dead_letters(app)
    assert seq_of(letter["document"]["message"]) == bad_seq
    assert letter["document"]["container"]["id"] == bad_container
    assert letter["output"] == OUTPUT
    assert (letter["status"], letter["error_type"]) == (400, "code 15")
    assert "Error in handling indexed fields" in letter["reason"], letter
    assert letter["log_file"] == str(logs[0].log_path)

    # What came after the refused event was sent again, alone: only it, once.
    after = [request for request in hec.ingest_requests() if request.number > refused["request"]]
    resent = sum(request.events_indexed for request in after[:1])
    assert resent == refused["events"] - refused["position"] - 1
    if acks:
        # The events before it were indexed without an ackId to poll.
        unconfirmed = hec_counter(app, "shipper_hec_unconfirmed_events_total")
        assert unconfirmed == refused["position"]
        _, no_ack = confirmed_events(hec)
        assert len(no_ack) == refused["position"]
    check_no_token_leaked(caplog, app, *errors_of(task))


TENANT_PROCESSORS = """    processors:
      - decode_json: {}
"""


def tenant_line(seq: int, tenant: str) -> str:
    return orjson.dumps({"tenant": tenant, "msg": f"order placed seq={seq:06d}"}).decode()


@pytest.mark.parametrize("fallback", [False, True], ids=["dead-letter", "fallback-index"])
async def test_an_index_the_token_may_not_write_dead_letters_only_its_events(
    tmp_path: Path, hec: FakeSplunk, caplog: pytest.LogCaptureFixture, fallback: bool
) -> None:
    """The index comes from each line (`{tenant}`), allow-listed in shipper (`shop`, `audit`),
    but the token may write `shop` only: HEC answers code 7 (incorrect index) for the `audit`
    events, which share shipper's batches with `shop` ones. Only they are dead-lettered, with
    HEC's status, code and reason; or, with `fallback_index`, they are indexed there. A tenant
    outside the allow-list goes to the fallback (or the token's default index) and never to the
    index it names. Every other line is indexed once."""
    caplog.set_level(logging.DEBUG, logger="shipper")
    hec.add_token(TOKEN, indexes=("shop", "quarantine"), default_index=INDEX)
    hec.add_index("audit")  # it exists, but this token may not write to it
    hec.add_index("intruder")
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("orders")
    tenants: dict[int, str] = {}
    for seq in range(400):
        tenant = "audit" if seq % 50 == 7 else "intruder" if seq % 100 == 33 else "shop"
        log.write(tenant_line(seq, tenant))
        tenants[seq] = tenant
    output = '    index: "{tenant}"\n    allowed_indexes: [shop, audit]\n'
    if fallback:
        output += "    fallback_index: quarantine\n"
    app = App(hec_config(tmp_path, hec, output=output, source=TENANT_PROCESSORS))
    stop, task = await start(app)
    await wait_until(lambda: settled(app) >= 400, what="every line final")
    await wait_until(lambda: at_end(app, [log]), what="the checkpoint at the end of the file")
    await finish(stop, task)

    audit = sorted(seq for seq, tenant in tenants.items() if tenant == "audit")
    intruders = sorted(seq for seq, tenant in tenants.items() if tenant == "intruder")
    shop = sorted(seq for seq, tenant in tenants.items() if tenant == "shop")
    by_index: dict[str, list[int]] = defaultdict(list)
    for event in hec.events():
        assert isinstance(event.event, str)
        by_index[event.index].append(seq_of(event.event))
    by_index = {index: sorted(seqs) for index, seqs in by_index.items()}
    refused = [request for request in hec.ingest_requests() if request.code == 7]
    assert refused and all(request.events_indexed == 0 for request in refused)
    assert "audit" not in by_index and "intruder" not in by_index
    if fallback:
        assert by_index == {"shop": shop, "quarantine": sorted(audit + intruders)}
        assert records(app, "delivered") == 400
        assert records(app, "dead_lettered") == 0
        assert dead_letters(app) == []
        assert hec_counter(app, "shipper_hec_rerouted_events_total") >= 1
    else:
        assert by_index == {"shop": shop, INDEX: intruders}
        assert records(app, "delivered") == 400 - len(audit)
        assert records(app, "dead_lettered") == len(audit)
        letters = dead_letters(app)
        assert sorted(seq_of(letter["document"]["message"]) for letter in letters) == audit
        for letter in letters:
            assert (letter["status"], letter["error_type"]) == (400, "code 7"), letter
            assert "Incorrect index" in letter["reason"] and "audit" in letter["reason"], letter
            assert letter["log_file"] == str(log.log_path)
            assert letter["document"]["tenant"] == "audit"
        # Each refused event was sent once: an index the token refuses is not worth a retry.
        assert sum(len(request.body.split(b"\n")) for request in refused) == len(audit)
    check_no_token_leaked(caplog, app, *errors_of(task))


@dataclass
class AckRun:
    """An App shipping with indexer acknowledgement, and what its containers wrote."""

    app: App
    hec: FakeSplunk
    writer: DockerRootWriter
    expected: Seqs

    def write(self, lines: int, seed: int) -> None:
        for n in range(2):
            write_lines(self.writer, f"pay-{n}", lines, self.expected, seed=seed + n)

    def written(self) -> set[tuple[str, str, int]]:
        return {(cid, stream, seq) for (cid, stream), seqs in self.expected.items() for seq in seqs}

    def offsets_flushed(self) -> dict[str, int]:
        self.app.flush_checkpoints(force=True)
        return checkpoint_offsets(self.app)

    async def settle(self, what: str) -> None:
        app = self.app
        await wait_until(lambda: settled(app) >= total(self.expected), what=what)
        logs = list(self.writer.containers.values())
        await wait_until(lambda: at_end(app, logs), what="checkpoints at the ends")


async def acks_held(run: AckRun) -> None:
    """Every line indexed and polled for, none acknowledged: nothing counts delivered and the
    checkpoints (flushed and read back) stay at 0."""
    hec, app = run.hec, run.app
    with hec.hold_acks():
        run.write(300, seed=0)
        await wait_until(lambda: set(copies(hec)) >= run.written(), what="every line indexed")
        polls = len(hec.ack_requests())
        await wait_until(lambda: len(hec.ack_requests()) >= polls + 3, what="3 more ack polls")
        assert settled(app) == 0
        assert set(run.offsets_flushed().values()) == {0}
        assert {entry.offset for entry in app.store.entries()} == {0}
        assert hec.acks_reported == []
    await run.settle("every line confirmed after the hold")


async def acks_delayed(run: AckRun) -> None:
    """Acks true 300 ms after each request: several polls answered false, then confirmed,
    nothing resent."""
    hec, app = run.hec, run.app
    hec.delay_acks(0.3)
    polls = len(hec.ack_requests())
    run.write(300, seed=10)
    await run.settle("every line confirmed late")
    assert len(hec.ack_requests()) >= polls + 3, "acks confirmed without waiting for them"
    assert hec_counter(app, "shipper_hec_resent_events_total") == 0
    assert len(hec.events()) == total(run.expected)
    hec.delay_acks(0.0)


async def acks_lost(run: AckRun) -> None:
    """No ackId issued becomes true: each batch is given up after the timeout and sent again,
    and the checkpoints do not move; once acks come again, the last resend is confirmed."""
    hec, app = run.hec, run.app
    before, delivered = run.offsets_flushed(), settled(app)
    rule = hec.lose_acks(lambda _ack: True)
    old = run.written()
    run.write(300, seed=20)
    new = run.written() - old

    def resent() -> bool:
        found = copies(hec)
        return all(found[key] >= 2 for key in new)

    await wait_until(resent, what="every new line indexed, given up on, and sent again")
    assert hec_counter(app, "shipper_hec_acks_total", result="timed_out") >= 1
    assert settled(app) == delivered
    assert run.offsets_flushed() == before
    assert rule.hits >= 2
    hec.clear_failures()
    await run.settle("every line confirmed at last")


async def test_acks_held_delayed_and_lost_move_checkpoints_only_on_ack(
    tmp_path: Path, hec: FakeSplunk, caplog: pytest.LogCaptureFixture
) -> None:
    """Indexer acknowledgement on, acks polled every 50 ms, given up after 1 s: acks held
    (`acks_held`), then delayed (`acks_delayed`), then lost (`acks_lost`). At the end every
    line has exactly one confirmed copy in HEC; the duplicates are all copies from requests
    whose ack never came (HEC has no idempotency), as many as shipper counts resent."""
    caplog.set_level(logging.DEBUG, logger="shipper")
    hec.add_token(TOKEN, use_ack=True)
    # Several batches may wait for acks at once: a held or lost ack must not keep the lines
    # of the next batch from being sent.
    app = App(hec_config(tmp_path, hec, output=ACKS + "    max_in_flight: 8"))
    run = AckRun(app, hec, DockerRootWriter(tmp_path / "containers"), defaultdict(list))
    stop, task = await start(app)
    await acks_held(run)
    await acks_delayed(run)
    await acks_lost(run)
    await finish(stop, task)

    expected = run.expected
    confirmed, unconfirmed = confirmed_events(hec)
    assert indexed(confirmed) == expected_seqs(expected), "not exactly one confirmed copy each"
    assert len(confirmed) == total(expected)
    duplicates = len(hec.events()) - total(expected)
    assert duplicates == len(unconfirmed) >= 600
    # Every unconfirmed copy is a line that also has its confirmed copy, and shipper counted
    # each of them as resent.
    confirmed_keys = {(*key_of(event), seq_of(event.event)) for event in confirmed}
    assert {(*key_of(event), seq_of(event.event)) for event in unconfirmed} <= confirmed_keys
    assert hec_counter(app, "shipper_hec_resent_events_total") == duplicates
    assert records(app, "delivered") == total(expected)
    assert records(app, "dead_lettered") == 0
    check_envelopes(hec.events())
    check_no_token_leaked(caplog, app, *errors_of(task))


async def test_answers_lost_after_indexing_are_resent_and_indexed_again(
    tmp_path: Path, hec: FakeSplunk, caplog: pytest.LogCaptureFixture
) -> None:
    """HEC indexes two requests but the connection dies before the answers (the second one
    is the resend of the first): shipper cannot know they were indexed and sends them again.
    HEC has no idempotency, so those lines are indexed once per copy sent: every line is
    there, and a line has exactly one more copy for each lost answer that carried it."""
    caplog.set_level(logging.DEBUG, logger="shipper")
    hec.add_token(TOKEN)
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    app = App(hec_config(tmp_path, hec, output="    max_in_flight: 1"))
    stop, task = await start(app)
    write_lines(writer, "api", 200, expected, seed=1)
    await wait_until(lambda: settled(app) >= 200, what="the first lines")
    hec.drop_next(2, after_processing=True)
    write_lines(writer, "api", 300, expected, seed=2)
    await wait_until(lambda: settled(app) >= 500, what="every line")
    await wait_until(lambda: at_end(app, [writer.containers["api"]]), what="the checkpoint")
    await finish(stop, task)

    dropped = [request for request in hec.ingest_requests() if request.dropped]
    assert len(dropped) == 2
    assert all(request.events_indexed > 0 for request in dropped)
    lost_answers: Counter[tuple[str, str, int]] = Counter()
    for event in hec.events():
        if hec.requests[event.request].dropped:
            lost_answers[(*key_of(event), seq_of(event.event))] += 1
    found = copies(hec)
    every_line = {(cid, stream, seq) for (cid, stream), seqs in expected.items() for seq in seqs}
    assert set(found) == every_line
    assert all(found[key] == 1 + lost_answers[key] for key in every_line)
    assert len(hec.events()) == 500 + sum(lost_answers.values())
    assert records(app, "delivered") == 500
    check_no_token_leaked(caplog, app, *errors_of(task))


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
async def test_a_413_splits_the_request_and_dead_letters_only_an_event_too_large_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, gzip: bool
) -> None:
    """HEC takes at most 64 KiB a request (max_content_length; for gzip bodies the limit
    counts decompressed bytes), shipper sends up to 1 MB: requests are cut in halves until
    they pass, and later ones smaller; one 100 KB line, too large even alone, is dead-lettered
    with the 413; everything else is indexed once."""
    caplog.set_level(logging.DEBUG, logger="shipper")
    limit = 64 * 1024
    with FakeSplunk(max_content_length=limit) as hec:
        hec.add_token(TOKEN)
        writer = DockerRootWriter(tmp_path / "containers")
        expected: Seqs = defaultdict(list)
        write_lines(writer, "chatty", 600, expected, seed=3)
        log = writer.containers["chatty"]
        huge = f"blob={random.Random(5).randbytes(50_000).hex()} seq=999999"
        log.write(huge)  # Docker writes it in 16 KiB parts; shipper rejoins them
        write_lines(writer, "chatty", 400, expected, seed=4)
        output = "    compression:\n      enabled: true" if gzip else ""
        app = App(hec_config(tmp_path, hec, output=output))
        stop, task = await start(app)
        await wait_until(lambda: settled(app) >= total(expected) + 1, what="every line final")
        await wait_until(lambda: at_end(app, [log]), what="the checkpoint at the end")
        await finish(stop, task)
        assert hec.internal_errors == []

    check_every_line_once(hec, expected)
    assert records(app, "delivered") == total(expected)
    assert records(app, "dead_lettered") == 1
    [letter] = dead_letters(app)
    assert letter["document"]["message"] == huge
    assert (letter["status"], letter["error_type"]) == (413, "request_entity_too_large")
    assert "413" in letter["reason"]
    requests = hec.ingest_requests()
    too_large = [request for request in requests if request.status == 413]
    assert len(too_large) >= 2  # a request (at least once) and the huge line alone
    assert all(request.body_size <= limit for request in requests if request.status == 200)
    assert all(request.compressed == gzip for request in requests)
    assert hec_counter(app, "shipper_hec_splits_total", reason="too_large") >= 1
    check_no_token_leaked(caplog, app, *errors_of(task))


@pytest.mark.parametrize("refusal", ["unknown_token", "disabled_token"])
async def test_a_refused_token_holds_everything_until_it_is_fixed(
    tmp_path: Path, hec: FakeSplunk, caplog: pytest.LogCaptureFixture, refusal: str
) -> None:
    """The token (read from `token_file`) is unknown to HEC (403 code 4) or disabled (403 code
    1): nothing is acknowledged, checkpoints stay at 0, shipper keeps running and says at error
    level, again and again, what is wrong. The health check passes (it does not check tokens),
    and shipper says so. Once the operator fixes the token in Splunk, every line is indexed
    once, and the token appears in no log line, error or dead letter."""
    caplog.set_level(logging.DEBUG, logger="shipper")
    hec.add_token("another-token-not-shippers", name="other")
    if refusal == "disabled_token":
        hec.add_token(TOKEN, name="shipper", disabled=True)
    token_file = tmp_path / "hec.token"
    token_file.write_text(f"{TOKEN}\n")
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    for n in range(2):
        write_lines(writer, f"pay-{n}", 300, expected, seed=n)
    logs = list(writer.containers.values())
    app = App(hec_config(tmp_path, hec, token=f"    token_file: {token_file}"))
    stop, task = await start(app)

    def held() -> list[logging.LogRecord]:
        return [
            record
            for record in caplog.records
            if record.levelno >= logging.ERROR and "holding it" in record.getMessage()
        ]

    def checkpoints_flushed_at_zero() -> bool:
        offsets = checkpoint_offsets(app)
        return len(offsets) == len(logs) and set(offsets.values()) == {0}

    await wait_until(lambda: len(held()) >= 5, what="the refusal reported again and again")
    await wait_until(checkpoints_flushed_at_zero, what="a checkpoint flush listing both files")
    assert not task.done()
    assert settled(app) == 0
    assert app.telemetry.value("shipper_records_total") == 0
    assert {entry.offset for entry in app.store.entries()} == {0}
    assert hec.events() == []
    assert app.telemetry.value("shipper_output_held_total", output=OUTPUT) >= 5
    code = 4 if refusal == "unknown_token" else 1
    assert hec.codes[code] >= 5
    assert "does not check the token" in caplog.text  # the health check said what it is worth
    # The error says what is wrong and what to check.
    described = JsonFormatter().format(held()[-1])
    assert f"403, code {code}" in described, described
    assert "token_file" in described and str(token_file) in described, described

    hec.add_token(TOKEN, name="shipper")  # the operator fixes it in Splunk
    await wait_until(lambda: settled(app) >= total(expected), what="every line once fixed")
    await wait_until(lambda: at_end(app, logs), what="the checkpoints at the ends")
    await finish(stop, task)

    check_every_line_once(hec, expected)
    assert records(app, "delivered") == total(expected)
    assert records(app, "dead_lettered") == 0
    assert {event.token_name for event in hec.events()} == {"shipper"}
    check_no_token_leaked(caplog, app, *errors_of(task))
