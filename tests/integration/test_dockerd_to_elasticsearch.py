"""End to end into Elasticsearch: a real dockerd's json-file logs → shipper (the in-process App)
→ the fake cluster of tests/fake_elasticsearch.py, with basic auth.

Containers write numbered lines on both streams (one rotates and gzips, one writes lines over
16 KiB that Docker splits into parts) while shipper follows them live. Every line must be in the
index once, as one document carrying the container's metadata (name, image, a label), with a
unique `_id`; the password appears in no log line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shipper.app import App
from shipper.config import Config, parse_config
from shipper.docker_writer import SEQ_PATTERN
from shipper.telemetry.logging import JsonFormatter
from tests.fake_elasticsearch import Document, FakeElasticsearch
from tests.integration import scripts
from tests.integration.dockerd import IMAGE, Dockerd

TARGET = "logs-docker-default"
USERNAME = "shipper"
PASSWORD = "dockerd-to-es-pw-n0t-f0r-l0gs"
LINES = 3000  # per stream
LONG_SIZES = (20_000, 40_000, 70_000)
DELIVERY_TIMEOUT = 30.0

Expected = dict[str, dict[str, list[str]]]  # container name -> stream -> messages


def seq(message: str) -> int:
    match = SEQ_PATTERN.search(message)
    assert match is not None, message[:60]
    return int(match[1])


@pytest.fixture
def es() -> Iterator[FakeElasticsearch]:
    with FakeElasticsearch() as server:
        server.add_user(
            USERNAME, PASSWORD, indices={"logs-docker-*": {"create_doc", "auto_configure"}}
        )
        yield server
    assert server.internal_errors == []


def shipper_config(dockerd: Dockerd, es: FakeElasticsearch, tmp: Path) -> Config:
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
  es:
    type: elasticsearch
    hosts: ["{es.url}"]
    username: {USERNAME}
    password: "{PASSWORD}"
    batch:
      linger: 20ms
    retry:
      initial_backoff: 50ms
      max_backoff: 500ms
checkpoints:
  flush_interval: 100ms
""",
        origin="<test>",
    )


@contextlib.asynccontextmanager
async def running(app: App) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        await asyncio.wait_for(app.started.wait(), 10)
        yield task
    finally:
        stop.set()
        await task


def ours(es: FakeElasticsearch, ids: dict[str, str]) -> dict[str, list[Document]]:
    """Our containers' documents by container name (the session's dockerd runs other tests'
    containers too, and this shipper reads them all)."""
    names = {container_id: name for name, container_id in ids.items()}
    found: dict[str, list[Document]] = defaultdict(list)
    for document in es.documents(TARGET):
        name = names.get(document.source["container"]["id"])
        if name is not None:
            found[name].append(document)
    return found


def settled_to_end(app: App, dockerd: Dockerd, ids: dict[str, str]) -> bool:
    """Each container's current log is checkpointed at its end: everything read is final."""
    offsets = {entry.path: entry.offset for entry in app.store.entries()}
    for container_id in ids.values():
        path = dockerd.json_log(container_id)
        try:
            if offsets.get(str(path)) != path.stat().st_size:
                return False
        except FileNotFoundError:  # between Docker's rename and its create
            return False
    return True


async def wait_for_index(
    es: FakeElasticsearch,
    app: App,
    *,
    dockerd: Dockerd,
    ids: dict[str, str],
    expected: Expected,
    task: asyncio.Task[None],
) -> None:
    wanted = {name: sum(map(len, streams.values())) for name, streams in expected.items()}
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        done = settled_to_end(app, dockerd, ids)  # before counting: what settled is indexed
        counts = {name: len(documents) for name, documents in ours(es, ids).items()}
        if done and all(counts.get(name, 0) >= count for name, count in wanted.items()):
            return
        if task.done():
            await task
            pytest.fail("shipper stopped by itself")
        if time.monotonic() > deadline:
            pytest.fail(f"indexed {counts}, written {wanted}, settled: {done}")
        await asyncio.sleep(0.05)


async def test_numbered_lines_from_dockerd_are_indexed_once_with_container_metadata(
    dockerd: Dockerd, es: FakeElasticsearch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="shipper")
    both = scripts.in_parallel(
        scripts.numbered_lines(LINES, payload="out", stream="stdout"),
        scripts.numbered_lines(LINES, payload="err", stream="stderr"),
    )
    long_script = scripts.chain(
        *(
            scripts.chain(
                scripts.text_line(scripts.numbered_line(2 * n)),
                scripts.text_line(f"{scripts.numbered_line(2 * n + 1)} {'y' * size}"),
            )
            for n, size in enumerate(LONG_SIZES)
        )
    )
    specs = {
        # name: (script, log opts, docker run args, expected messages per stream)
        "es-rotating": (
            both,
            {"max-size": "20k", "max-file": "100", "compress": "true"},
            ("--label", "app=checkout"),
            {
                "stdout": [scripts.numbered_line(seq, "out") for seq in range(LINES)],
                "stderr": [scripts.numbered_line(seq, "err") for seq in range(LINES)],
            },
        ),
        "es-long-lines": (
            long_script,
            {},
            ("--label", "app=reports"),
            {
                "stdout": [
                    line
                    for n, size in enumerate(LONG_SIZES)
                    for line in (
                        scripts.numbered_line(2 * n),
                        f"{scripts.numbered_line(2 * n + 1)} {'y' * size}",
                    )
                ]
            },
        ),
    }
    expected: Expected = {name: spec[3] for name, spec in specs.items()}
    app = App(shipper_config(dockerd, es, tmp_path))
    ids: dict[str, str] = {}
    try:
        async with running(app) as task:
            for name, (script, log_opts, extra, _) in specs.items():
                ids[name] = await asyncio.to_thread(
                    dockerd.run_container, name, script, log_opts=log_opts, extra_args=extra
                )
            for name, container_id in ids.items():
                code = await asyncio.to_thread(dockerd.wait_exited, container_id, 60)
                assert code == 0, f"{name} exited with {code}"
            await wait_for_index(es, app, dockerd=dockerd, ids=ids, expected=expected, task=task)
    finally:
        if ids:
            await asyncio.to_thread(dockerd.docker, "rm", "-f", *ids.values())

    found = ours(es, ids)
    for name, streams in expected.items():
        documents = found[name]
        got: dict[str, list[str]] = defaultdict(list)
        for document in documents:
            got[document.source["stream"]].append(document.source["message"])
        for stream, messages in streams.items():
            assert sorted(got[stream], key=seq) == messages, (name, stream)
        assert sum(map(len, got.values())) == sum(map(len, streams.values())), name
        assert len({document.id for document in documents}) == len(documents), name
        label = specs[name][2][1].split("=", 1)[1]
        for document in documents:
            container = document.source["container"]
            assert container["id"] == ids[name]
            assert container["name"] == name
            assert container["image"]["name"] == IMAGE
            assert container["labels"] == {"app": label}
            assert "flags" not in document.source["log"], document.source["log"]
    # The rotating container did rotate: its lines came from many files.
    files = {document.source["log"]["file"]["fingerprint"] for document in found["es-rotating"]}
    assert len(files) > 5
    assert app.telemetry.value("shipper_records_total", output="es", outcome="dead_lettered") == 0

    forms = [PASSWORD, base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()]
    formatter = JsonFormatter()
    leaked = [
        line
        for line in map(formatter.format, caplog.records)
        if any(form in line for form in forms)
    ]
    assert leaked == []
