"""`shipper replay-dead-letters` as an operator runs it, after a real `shipper run` dead-lettered
records: both commands in child processes, against tests/fake_elasticsearch.py and
tests/fake_splunk.py.

The story of each test: a cause makes the destination refuse some records for good (a mapping
that cannot take a field, an index the token may not write); `shipper run` dead-letters them;
the cause is removed as an operator would (a new template and a rollover, a token allowed one
more index); the replay delivers each record once, with the `_id` its first attempt had, and the
dead-letter file ends empty. Replaying again sends nothing new; the same lines replayed are 409s.
A replay that cannot reach the destination, or is stopped, loses no line.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.docker_writer import ContainerLog, DockerRootWriter
from tests.fake_elasticsearch import FakeElasticsearch
from tests.fake_splunk import FakeSplunk
from tests.helpers import start_shipper, wait_started, wait_until_sync
from tests.scenarios.test_elasticsearch_delivery import (
    MAPPING_TEMPLATE,
    TARGET,
    WRITER_PRIVILEGES,
    json_line,
    seq_of,
)

PASSWORD = "pw-r3play-d0nt-pr1nt-me"
TOKEN = "7c1e2b9a-r3pl-4y0u-t0k3-n5ecr3t00042"
SECRETS = (PASSWORD, TOKEN)

# What an operator does about documents whose `status` is not a number: the field becomes a
# keyword in the template, and the data stream rolls over so that its new backing index has it.
FIXED_TEMPLATE: dict[str, Any] = orjson.loads(orjson.dumps(MAPPING_TEMPLATE))
FIXED_TEMPLATE["template"]["mappings"]["properties"]["status"] = {"type": "keyword"}

LINES = 200
BAD = [seq for seq in range(LINES) if seq % 20 == 7]  # `status` is not a number
GOOD = [seq for seq in range(LINES) if seq % 20 != 7]


# --- setting up -----------------------------------------------------------------------------------


@pytest.fixture
def es(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeElasticsearch]:
    with FakeElasticsearch() as server:
        server.add_user("shipper", PASSWORD, indices=WRITER_PRIVILEGES)
        server.put_index_template("logs-docker", MAPPING_TEMPLATE)
        monkeypatch.setenv("ES_URL", server.url)
        monkeypatch.setenv("ES_PASSWORD", PASSWORD)
        yield server
    assert server.internal_errors == []


def es_config(tmp: Path, *, max_attempts: int = 0) -> Path:
    config = tmp / "shipper.yaml"
    config.write_text(f"""
state_dir: {tmp / "state"}
# Any free port: shipper processes of several tests may overlap.
monitoring:
  port: 0
sources:
  docker:
    type: docker_json
    root: {tmp / "containers"}
    poll_interval: 20ms
    processors:
      - decode_json: {{}}
      - timestamp:
          field: ts
outputs:
  es:
    type: elasticsearch
    hosts: ["${{ES_URL}}"]
    username: shipper
    password: ${{ES_PASSWORD}}
    batch:
      linger: 20ms
    retry:
      initial_backoff: 50ms
      max_backoff: 200ms
      max_attempts: {max_attempts}
checkpoints:
  flush_interval: 100ms
""")
    return config


def shipper(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "shipper", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    check_said(result.stdout + result.stderr)
    return result


def check_said(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, "a secret was printed"
    assert "Traceback" not in text, text
    # Documents are counted, never shown: no message of a record reaches the terminal.
    assert "seq=" not in text, text


def dead_letter_path(tmp: Path) -> Path:
    return tmp / "state" / "dead-letter.ndjson"


def dead_letters(tmp: Path) -> list[dict[str, Any]]:
    path = dead_letter_path(tmp)
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def set_aside(tmp: Path) -> list[Path]:
    return sorted(
        path
        for path in (tmp / "state").glob("dead-letter.ndjson.replay-*")
        if not path.name.endswith(".progress")
    )


def stored(es: FakeElasticsearch) -> dict[int, list[str]]:
    """seq -> the `_id` of each copy the data stream holds."""
    copies: dict[int, list[str]] = {}
    for document in es.documents(TARGET):
        copies.setdefault(seq_of(document.source["message"]), []).append(document.id)
    return copies


def write_lines(tmp: Path) -> ContainerLog:
    log = DockerRootWriter(tmp / "containers").add_container("orders")
    for seq in range(LINES):
        log.write(json_line(seq, status="not-a-number" if seq in BAD else 200))
    return log


def ship_until_settled(tmp: Path, config: Path, condition: Any, name: str = "run") -> None:
    """`shipper run` in a child process until `condition()`, then SIGTERM."""
    process, stderr = start_shipper(tmp, config, name)
    try:
        wait_started(process, stderr)
        wait_until_sync(condition, timeout=30, what="shipper to settle every line")
    finally:
        process.terminate()
        process.wait(30)
    check_said(stderr.read_text())


def dead_letter_through_shipper(tmp: Path, es: FakeElasticsearch, config: Path) -> dict[int, str]:
    """Ship the lines; the mapping refuses BAD. Returns seq -> the `_id` each refused document
    was first sent with."""
    write_lines(tmp)
    ship_until_settled(
        tmp,
        config,
        lambda: len(dead_letters(tmp)) == len(BAD) and len(es.documents(TARGET)) == len(GOOD),
    )
    assert sorted(stored(es)) == GOOD
    refused = {seq_of(item.source["message"]): item.id for item in es.items() if item.status == 400}
    assert sorted(refused) == BAD
    assert sorted(seq_of(letter["document"]["message"]) for letter in dead_letters(tmp)) == BAD
    assert all(isinstance(doc_id, str) for doc_id in refused.values())
    return {seq: str(doc_id) for seq, doc_id in refused.items()}


def fix_the_mapping(es: FakeElasticsearch) -> None:
    es.put_index_template("logs-docker", FIXED_TEMPLATE)
    es.rollover(TARGET)


def check_each_once_with_its_first_id(es: FakeElasticsearch, first_ids: dict[int, str]) -> None:
    copies = stored(es)
    assert sorted(copies) == list(range(LINES))
    assert all(len(ids) == 1 for ids in copies.values()), "a record indexed twice"
    assert {seq: copies[seq][0] for seq in BAD} == first_ids


# --- Elasticsearch --------------------------------------------------------------------------------


def test_records_the_mapping_refused_are_delivered_once_it_is_fixed(
    tmp_path: Path, es: FakeElasticsearch
) -> None:
    config = es_config(tmp_path)
    first_ids = dead_letter_through_shipper(tmp_path, es, config)
    saved = dead_letter_path(tmp_path).read_bytes()

    # Before the fix, a dry run says what would go, by cause, and changes nothing.
    dry = shipper("replay-dead-letters", "--config", str(config), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"es: {len(BAD)} to send (document_parsing_exception: {len(BAD)})" in dry.stdout
    assert dead_letter_path(tmp_path).read_bytes() == saved

    fix_the_mapping(es)
    sent_before = len(es.items())
    result = shipper("replay-dead-letters", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"es: {len(BAD)} delivered, 0 duplicate (already there), 0 rejected again" in (
        result.stdout
    )
    assert f"total: {len(BAD)} delivered" in result.stdout
    replayed = es.items()[sent_before:]
    assert sorted(seq_of(item.source["message"]) for item in replayed) == BAD
    assert {item.status for item in replayed} == {201}
    check_each_once_with_its_first_id(es, first_ids)
    # The document sent is the dead-lettered one, as processed then (decoded JSON, its `ts`).
    for item in replayed:
        assert item.source["status"] == "not-a-number"
        assert item.source["@timestamp"] == "2024-05-01T12:00:00.123456789Z"
    assert not dead_letter_path(tmp_path).exists()
    assert set_aside(tmp_path) == []

    # Again: nothing to send.
    again = shipper("replay-dead-letters", "--config", str(config))
    assert again.returncode == 0
    assert "nothing to replay" in again.stdout
    assert len(es.items()) == sent_before + len(BAD)

    # The same lines once more (a copy kept somewhere, a replay run twice): every record is
    # there already under its id, so each answer is a 409, counted duplicate, and no copy.
    dead_letter_path(tmp_path).write_bytes(saved)
    twice = shipper("replay-dead-letters", "--config", str(config))
    assert twice.returncode == 0, twice.stdout + twice.stderr
    assert f"es: 0 delivered, {len(BAD)} duplicate (already there), 0 rejected again" in (
        twice.stdout
    )
    assert {item.status for item in es.items()[sent_before + len(BAD) :]} == {409}
    check_each_once_with_its_first_id(es, first_ids)
    assert not dead_letter_path(tmp_path).exists()


def test_a_replay_that_cannot_reach_elasticsearch_gives_every_record_back(
    tmp_path: Path, es: FakeElasticsearch
) -> None:
    """The replay retries as the output's `retry:` says; with max_attempts reached the records
    go back to the dead-letter file, still carrying their ids, and a later replay delivers them."""
    config = es_config(tmp_path, max_attempts=2)
    first_ids = dead_letter_through_shipper(tmp_path, es, config)
    before = {seq_of(line["document"]["message"]): line for line in dead_letters(tmp_path)}
    fix_the_mapping(es)
    with es.down():
        result = shipper("replay-dead-letters", "--config", str(config))
    assert result.returncode == 1
    assert f"es: 0 delivered, 0 duplicate (already there), {len(BAD)} rejected again" in (
        result.stdout
    )
    assert str(dead_letter_path(tmp_path)) in result.stdout
    back = {seq_of(line["document"]["message"]): line for line in dead_letters(tmp_path)}
    assert sorted(back) == BAD
    for seq, line in back.items():
        assert line["reason"].startswith("gave up after 2 attempts"), line["reason"]
        for key in ("log_file", "offset", "end", "fingerprint", "document"):
            assert line[key] == before[seq][key], key
    assert set_aside(tmp_path) == []

    result = shipper("replay-dead-letters", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    check_each_once_with_its_first_id(es, first_ids)
    assert not dead_letter_path(tmp_path).exists()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_replay_stopped_midway_leaves_its_records_set_aside(
    tmp_path: Path, es: FakeElasticsearch, stop: signal.Signals
) -> None:
    """Elasticsearch answers 503 to every `_bulk` and the output retries forever: the replay
    is stopped. Its records wait in the set-aside file; the next replay names it, and
    `--file` delivers them once."""
    config = es_config(tmp_path)
    first_ids = dead_letter_through_shipper(tmp_path, es, config)
    saved = dead_letter_path(tmp_path).read_bytes()
    fix_the_mapping(es)
    es.fail_requests(None, status=503)
    requests_before = len(es.bulk_requests())
    replay = subprocess.Popen(
        [sys.executable, "-m", "shipper", "replay-dead-letters", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_sync(
            lambda: len(es.bulk_requests()) >= requests_before + 2, what="the replay retrying"
        )
        replay.send_signal(stop)
        out, err = replay.communicate(timeout=30)
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.wait()
    check_said(out + err)
    [aside] = set_aside(tmp_path)
    assert aside.read_bytes() == saved
    assert not dead_letter_path(tmp_path).exists()  # nothing came back rejected
    if stop is signal.SIGTERM:
        assert replay.returncode == 1
        assert f"nothing is lost: {aside} holds the records not replayed yet" in err
        assert f"--file {aside}" in err

    es.clear_failures()
    result = shipper("replay-dead-letters", "--config", str(config))
    assert result.returncode == 0
    assert "nothing to replay" in result.stdout
    assert f"an earlier replay did not finish: {aside}" in result.stderr
    assert f"--file {aside}" in result.stderr

    result = shipper("replay-dead-letters", "--config", str(config), "--file", str(aside))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"es: {len(BAD)} delivered" in result.stdout
    check_each_once_with_its_first_id(es, first_ids)
    assert set_aside(tmp_path) == []
    assert list((tmp_path / "state").glob("*.progress")) == []


def test_replays_while_shipper_runs_and_rejects_lose_and_double_nothing(
    tmp_path: Path, es: FakeElasticsearch
) -> None:
    """The running shipper dead-letters records while replays set its file aside (the cause
    stays: every replayed record is refused again). At the end each refused record is in the
    dead-letter file exactly once and every other one is indexed once."""
    es.put_index_template("logs-docker", FIXED_TEMPLATE)  # the mapping takes everything
    es.fail_items(
        lambda item: isinstance(item.source, dict) and "poison" in item.source.get("message", ""),
        times=None,
        status=400,
        error_type="document_parsing_exception",
    )
    config = es_config(tmp_path)
    log = DockerRootWriter(tmp_path / "containers").add_container("orders")
    bad: list[int] = []
    written = 0
    rng = random.Random(7)

    def write(count: int) -> None:
        nonlocal written
        for seq in range(written, written + count):
            if rng.random() < 0.2:
                log.write(f"poison pill seq={seq:06d}")
                bad.append(seq)
            else:
                log.write(f"request done seq={seq:06d}")
        written += count

    process, stderr = start_shipper(tmp_path, config, "run")
    try:
        wait_started(process, stderr)
        for _ in range(3):
            write(150)
            wait_until_sync(lambda: len(dead_letters(tmp_path)) > 0, what="a dead letter")
            replay = subprocess.Popen(
                [sys.executable, "-m", "shipper", "replay-dead-letters", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            writer = threading.Thread(target=write, args=(150,))
            writer.start()  # rejections keep coming while the replay runs
            out, err = replay.communicate(timeout=60)
            writer.join()
            check_said(out + err)
            assert replay.returncode == 1, out + err  # refused again: not delivered
            assert "rejected again" in out
        good = written - len(bad)
        wait_until_sync(
            lambda: len(dead_letters(tmp_path)) == len(bad) and len(es.documents()) == good,
            timeout=30,
            what="every line settled",
        )
    finally:
        process.terminate()
        process.wait(30)
    check_said(stderr.read_text())
    letters = sorted(seq_of(letter["document"]["message"]) for letter in dead_letters(tmp_path))
    assert letters == sorted(bad), "a dead letter lost or doubled"
    indexed = sorted(seq_of(document.source["message"]) for document in es.documents())
    assert indexed == sorted(set(range(written)) - set(bad))
    assert set_aside(tmp_path) == []


# --- Splunk HEC -----------------------------------------------------------------------------------


@pytest.fixture
def hec(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSplunk]:
    with FakeSplunk() as server:
        monkeypatch.setenv("HEC_URL", server.url)
        monkeypatch.setenv("HEC_TOKEN", TOKEN)
        yield server
    assert server.internal_errors == []


def test_events_hec_refused_are_indexed_once_the_token_may_write_there(
    tmp_path: Path, hec: FakeSplunk
) -> None:
    """Each line names its index (`{tenant}`); the token may write `shop` only, so HEC answers
    code 7 for the `audit` events, which are dead-lettered. Once the token may write `audit`,
    the replay indexes each of them there, once."""
    hec.add_token(TOKEN, indexes=("shop",))
    hec.add_index("audit")
    config = tmp_path / "shipper.yaml"
    config.write_text(f"""
state_dir: {tmp_path / "state"}
# Any free port: shipper processes of several tests may overlap.
monitoring:
  port: 0
sources:
  docker:
    type: docker_json
    root: {tmp_path / "containers"}
    poll_interval: 20ms
    processors:
      - decode_json: {{}}
outputs:
  hec:
    type: splunk_hec
    url: "${{HEC_URL}}"
    token: "${{HEC_TOKEN}}"
    index: "{{tenant}}"
    allowed_indexes: [shop, audit]
    batch:
      linger: 20ms
    retry:
      initial_backoff: 50ms
      max_backoff: 200ms
checkpoints:
  flush_interval: 100ms
""")
    log = DockerRootWriter(tmp_path / "containers").add_container("orders")
    audit = [seq for seq in range(LINES) if seq % 10 == 3]
    for seq in range(LINES):
        tenant = "audit" if seq in audit else "shop"
        log.write(orjson.dumps({"tenant": tenant, "msg": f"order placed seq={seq:06d}"}).decode())

    def indexed(index: str) -> list[int]:
        return sorted(seq_of(str(event.event)) for event in hec.events(index))

    ship_until_settled(
        tmp_path,
        config,
        lambda: (
            len(dead_letters(tmp_path)) == len(audit)
            and len(hec.events("shop")) == LINES - len(audit)
        ),
    )
    assert indexed("audit") == []
    assert all(letter["error_type"] == "code 7" for letter in dead_letters(tmp_path))

    hec.add_token(TOKEN, indexes=("shop", "audit"))  # the fix
    result = shipper("replay-dead-letters", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"hec: {len(audit)} delivered" in result.stdout
    assert indexed("audit") == audit
    assert indexed("shop") == sorted(set(range(LINES)) - set(audit))
    assert not dead_letter_path(tmp_path).exists()
    assert set_aside(tmp_path) == []
    again = shipper("replay-dead-letters", "--config", str(config))
    assert again.returncode == 0 and "nothing to replay" in again.stdout
    assert indexed("audit") == audit
