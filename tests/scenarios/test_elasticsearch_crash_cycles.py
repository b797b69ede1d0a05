"""SIGKILL `shipper run` at random moments, again and again, while it ships into Elasticsearch.

The model is test_crash_cycles.py (file output); here the destination is the fake cluster of
tests/fake_elasticsearch.py, which runs in the test process and so outlives every shipper it
serves. Containers log and rotate (one gzips its rotated files, a few lines are over 16 KiB and
come in parts) the whole time. Each kill may lose answers to requests the cluster already
indexed and a checkpoint flush interval of progress: the next run sends those records again,
and their deterministic `_id`s with `create` make the cluster answer 409 instead of indexing
them twice. A few items are refused with 429 all along, so kills also land between an item's
refusal and its resend, several requests are in flight at once, and request bodies are gzipped.

At the end the index must hold every line written exactly once: as many documents as lines,
unique `_id`s, and per container and stream the same seqs as written.
"""

from __future__ import annotations

import base64
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from shipper.docker_writer import SEQ_PATTERN, DockerRootWriter, realistic_lines
from tests.fake_elasticsearch import Document, FakeElasticsearch
from tests.helpers import start_shipper, wait_started, wait_until_sync

CYCLES = 24
SEED = 20241128
KiB = 1024
MAX_SIZE = 64 * KiB
MAX_FILE = 1000  # headroom: Docker deletes nothing, so every line written can be checked
LONG_LINE_SHARE = 0.005  # lines over 16 KiB, which Docker splits into parts
REFUSED_SHARE = 0.02  # items the cluster answers 429 (retried alone)
STUCK = 10.0  # seconds without a new document: what is missing will not come
TARGET = "logs-docker-default"
KEY_ID = "crash-key"
KEY_SECRET = "crash-k3y-s3cr3t-do-not-log-4e1d"

Key = tuple[str, str, int]  # (container id, stream, seq)


class Writer(threading.Thread):
    """Three containers logging and rotating (one with compress=true) until told to stop."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True, name="es-crash-writer")
        self.docker = DockerRootWriter(root)
        self.logs = [
            self.docker.add_container(
                f"app-{n}", max_size=MAX_SIZE, max_file=MAX_FILE, compress=n == 2
            )
            for n in range(3)
        ]
        self.written: list[Key] = []
        self.long_lines = 0
        self.halt = threading.Event()
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
                        blob = rng.randbytes(rng.randint(10 * KiB, 20 * KiB)).hex()
                        message = f"blob={blob} {message}"  # the seq stays in the last part
                        self.long_lines += 1
                    log.write(message, stream=stream)
                    self.written.append((log.id, stream, seq_of(message)))
            self.halt.wait(0.004)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        self.docker.close()  # waits for a compression in flight: every .gz is whole
        if self.error is not None:
            raise self.error


def seq_of(message: str) -> int:
    seqs = SEQ_PATTERN.findall(message)
    assert len(seqs) == 1, message[-200:]
    return int(seqs[0])


# -- shipper --------------------------------------------------------------------------------------


def write_config(tmp: Path, es: FakeElasticsearch) -> Path:
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
  es:
    type: elasticsearch
    hosts: ["{es.url}"]
    api_key: "{KEY_ID}:{KEY_SECRET}"
    max_in_flight: 4
    compression:
      enabled: true
    batch:
      max_records: 200
      linger: 50ms
    retry:
      initial_backoff: 50ms
      max_backoff: 200ms
checkpoints:
  flush_interval: 500ms
logging:
  level: debug
"""
    )
    return config


def kill_cycles(tmp: Path, config: Path) -> None:
    """Start shipper, SIGKILL it after a random moment; CYCLES times."""
    rng = random.Random(SEED)
    for cycle in range(CYCLES):
        process, stderr = start_shipper(tmp, config, f"run-{cycle:02d}")
        try:
            wait_started(process, stderr)
            time.sleep(rng.uniform(0.1, 0.9))  # the point of the test: a moment nobody chose
            assert process.poll() is None, stderr.read_text()
        finally:
            process.kill()  # SIGKILL
            process.wait(timeout=30)


def final_run(tmp: Path, config: Path, es: FakeElasticsearch, lines: int) -> None:
    """Run until the index holds as many documents as lines were written (or stops growing:
    the checks then say what is missing), then stop cleanly."""
    process, stderr = start_shipper(tmp, config, "final")
    try:
        wait_started(process, stderr)
        progress = (-1, time.monotonic())

        def indexed_or_stuck() -> bool:
            nonlocal progress
            assert process.poll() is None, stderr.read_text()[-3000:]
            created = es.item_results["created"]  # documents never go: this is their count
            if created != progress[0]:
                progress = (created, time.monotonic())
            return created >= lines or time.monotonic() - progress[1] > STUCK

        wait_until_sync(indexed_or_stuck, timeout=120, what="every written line in the index")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, stderr.read_text()[-3000:]
    finally:
        process.kill()
        process.wait()


# -- checks ---------------------------------------------------------------------------------------


def keys_of(documents: list[Document]) -> Counter[Key]:
    return Counter(
        (doc.source["container"]["id"], doc.source["stream"], seq_of(doc.source["message"]))
        for doc in documents
    )


def by_stream(keys: list[Key]) -> dict[tuple[str, str], list[int]]:
    streams: dict[tuple[str, str], list[int]] = defaultdict(list)
    for container, stream, seq in keys:
        streams[(container, stream)].append(seq)
    return {key: sorted(seqs) for key, seqs in streams.items()}


def check_every_line_once(documents: list[Document], written: list[Key]) -> None:
    assert len(set(written)) == len(written)
    indexed = keys_of(documents)
    twice = sorted(key for key, count in indexed.items() if count > 1)
    if twice:
        # What tells the copies apart says why: another end (record boundaries), another
        # file identity (fingerprint or path), flags (a part flushed alone).
        copies = [
            {
                "_id": doc.id,
                "log": doc.source.get("log"),
                "message_chars": len(doc.source["message"]),
            }
            for doc in documents
            if (doc.source["container"]["id"], doc.source["stream"], seq_of(doc.source["message"]))
            == twice[0]
        ]
        pytest.fail(f"{len(twice)} line(s) indexed more than once, first: {twice[:10]}; {copies}")
    lost = sorted(set(written) - indexed.keys())
    assert lost == [], f"{len(lost)} line(s) lost, first (container, stream, seq): {lost[:10]}"
    assert indexed.keys() <= set(written), sorted(indexed.keys() - set(written))[:10]
    assert len(documents) == len(written)
    assert len({doc.id for doc in documents}) == len(documents), "an _id twice"
    assert by_stream(list(indexed.elements())) == by_stream(written)
    flagged = [doc.source["log"] for doc in documents if doc.source["log"].get("flags")]
    assert flagged == [], flagged[:5]


def check_no_secret_in_logs(tmp: Path) -> None:
    forms = [
        KEY_SECRET,
        f"{KEY_ID}:{KEY_SECRET}",
        base64.b64encode(f"{KEY_ID}:{KEY_SECRET}".encode()).decode(),
    ]
    leaked = [
        f"{path.name}: {line[:200]!r}"
        for path in sorted((tmp / "logs").iterdir())
        for line in path.read_text(errors="replace").splitlines()
        if any(form in line for form in forms)
    ]
    assert leaked == [], leaked[:5]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_at_random_moments_indexes_every_line_exactly_once(tmp_path: Path) -> None:
    began = time.monotonic()
    with FakeElasticsearch() as es:
        es.add_api_key(
            KEY_ID, KEY_SECRET, indices={"logs-docker-*": {"create_doc", "auto_configure"}}
        )
        refusals = random.Random(SEED + 1)
        es.fail_items(lambda _item: refusals.random() < REFUSED_SHARE, times=None, status=429)
        config = write_config(tmp_path, es)
        writer = Writer(tmp_path / "containers")
        writer.start()
        try:
            kill_cycles(tmp_path, config)
        finally:
            writer.stop()
        cycles_done = time.monotonic()
        final_run(tmp_path, config, es, len(writer.written))
        finished = time.monotonic()
        documents = es.documents(TARGET)
        assert es.internal_errors == []

    check_every_line_once(documents, writer.written)
    replays = es.item_results["version_conflict_engine_exception"]
    assert replays > 0, "no kill made shipper resend an indexed document: the test proved little"
    check_no_secret_in_logs(tmp_path)

    files = sum(len(log.log_files()) for log in writer.logs)
    print(
        f"\n{CYCLES} kills, {len(writer.written)} lines ({writer.long_lines} over 16 KiB), "
        f"{files} log files, {len(documents)} documents, {replays} replays answered 409, "
        f"{es.item_results['es_rejected_execution_exception']} items refused 429; "
        f"cycles {cycles_done - began:.1f}s, final run {finished - cycles_done:.1f}s"
    )
