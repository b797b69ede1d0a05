"""End to end into Splunk HEC: a real dockerd's json-file logs → shipper (the in-process App) →
the fake collector of tests/fake_splunk.py, with indexer acknowledgement on.

Containers write numbered lines on both streams (one rotates and gzips, one writes lines over
16 KiB that Docker splits into parts) while shipper follows them live. Every line must be in
HEC once, as one event carrying the container's metadata: in `event: message` mode (the
default) as indexed fields, flattened to strings, and the default sourcetype
`docker:container:<name>`; in `event: record` mode inside the event, the whole record. Every
event's ack is confirmed, and the token appears in no log line.

The model is test_dockerd_to_elasticsearch.py, whose App runner and settling check are used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper.app import App
from shipper.config import Config, parse_config
from shipper.telemetry.logging import JsonFormatter
from tests.fake_splunk import Event, FakeSplunk
from tests.integration import scripts
from tests.integration.dockerd import IMAGE, Dockerd
from tests.integration.test_dockerd_to_elasticsearch import running, seq, settled_to_end

TOKEN = "c41b2d6e-7f80-4a9b-8c1d-d0ck3rd-t0-hec"
INDEX = "docker"
LINES = 3000  # per stream
LONG_SIZES = (20_000, 40_000, 70_000)
DELIVERY_TIMEOUT = 30.0
FIELDS = """    fields:
      container_id: container.id
      container_name: container.name
      image: container.image.name
      app: container.labels.app
      stream: stream
      file: log.file.fingerprint
      offset: log.offset
"""

Expected = dict[str, dict[str, list[str]]]  # container name -> stream -> messages


@pytest.fixture
def hec() -> Iterator[FakeSplunk]:
    with FakeSplunk() as server:
        server.add_token(TOKEN, indexes=(INDEX,), use_ack=True)
        yield server
    assert server.internal_errors == []


def shipper_config(dockerd: Dockerd, hec: FakeSplunk, tmp: Path, mode: str) -> Config:
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
  hec:
    type: splunk_hec
    url: "{hec.url}"
    token: "{TOKEN}"
    index: {INDEX}
    event: {mode}
{FIELDS if mode == "message" else ""}
    ack:
      enabled: true
      poll_interval: 50ms
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


def container_of(event: Event) -> str:
    if isinstance(event.event, dict):
        return str(event.event["container"]["id"])
    return str(event.fields["container_id"])


def ours(hec: FakeSplunk, ids: dict[str, str]) -> dict[str, list[Event]]:
    """Our containers' events by container name (the session's dockerd runs other tests'
    containers too, and this shipper reads them all)."""
    names = {container_id: name for name, container_id in ids.items()}
    found: dict[str, list[Event]] = defaultdict(list)
    for event in hec.events():
        name = names.get(container_of(event))
        if name is not None:
            found[name].append(event)
    return found


async def wait_for_events(
    hec: FakeSplunk,
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
        counts = {name: len(events) for name, events in ours(hec, ids).items()}
        if done and all(counts.get(name, 0) >= count for name, count in wanted.items()):
            return
        if task.done():
            await task
            pytest.fail("shipper stopped by itself")
        if time.monotonic() > deadline:
            pytest.fail(f"indexed {counts}, written {wanted}, settled: {done}")
        await asyncio.sleep(0.05)


def message_and_stream(event: Event) -> tuple[str, str]:
    if isinstance(event.event, dict):
        return event.event["message"], event.event["stream"]
    assert isinstance(event.event, str)
    return event.event, str(event.fields["stream"])


def check_metadata(event: Event, *, name: str, container_id: str, label: str) -> str:
    """The container's metadata on one event; returns the file it came from."""
    assert event.index == INDEX
    assert event.sourcetype == f"docker:container:{name}"
    assert f"/{container_id}/{container_id}-json.log" in event.source, event.source
    if isinstance(event.event, dict):
        record: dict[str, Any] = event.event
        container = record["container"]
        assert container["id"] == container_id
        assert container["name"] == name
        assert container["image"]["name"] == IMAGE
        assert container["labels"] == {"app": label}
        assert "flags" not in record["log"], record["log"]
        return str(record["log"]["file"]["fingerprint"])
    fields = event.fields
    assert fields["container_id"] == container_id
    assert fields["container_name"] == name
    assert fields["image"] == IMAGE
    assert fields["app"] == label
    assert isinstance(fields["offset"], str) and fields["offset"].isdigit(), fields
    return str(fields["file"])


@pytest.mark.parametrize("mode", ["message", "record"])
async def test_numbered_lines_from_dockerd_reach_hec_once_with_container_metadata(
    dockerd: Dockerd,
    hec: FakeSplunk,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mode: str,
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
        f"hec-rotating-{mode}": (
            both,
            {"max-size": "20k", "max-file": "100", "compress": "true"},
            ("--label", "app=checkout"),
            {
                "stdout": [scripts.numbered_line(seq, "out") for seq in range(LINES)],
                "stderr": [scripts.numbered_line(seq, "err") for seq in range(LINES)],
            },
        ),
        f"hec-long-lines-{mode}": (
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
    app = App(shipper_config(dockerd, hec, tmp_path, mode))
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
            await wait_for_events(hec, app, dockerd=dockerd, ids=ids, expected=expected, task=task)
    finally:
        if ids:
            await asyncio.to_thread(dockerd.docker, "rm", "-f", *ids.values())

    found = ours(hec, ids)
    reported = set(hec.acks_reported)
    files: dict[str, set[str]] = defaultdict(set)
    for name, streams in expected.items():
        events = found[name]
        got: dict[str, list[str]] = defaultdict(list)
        for event in events:
            message, stream = message_and_stream(event)
            got[stream].append(message)
        for stream, messages in streams.items():
            assert sorted(got[stream], key=seq) == messages, (name, stream)
        assert len(events) == sum(map(len, streams.values())), name
        label = specs[name][2][1].split("=", 1)[1]
        for event in events:
            files[name].add(check_metadata(event, name=name, container_id=ids[name], label=label))
            assert (event.channel, event.ack_id) in reported, "an event whose ack never came"
    # The rotating container did rotate: its lines came from many files.
    assert len(files[f"hec-rotating-{mode}"]) > 5
    assert app.telemetry.value("shipper_records_total", output="hec", outcome="dead_lettered") == 0
    assert app.telemetry.value("shipper_hec_resent_events_total", output="hec") == 0

    forms = [TOKEN, f"Splunk {TOKEN}"]
    formatter = JsonFormatter()
    leaked = [
        line
        for line in map(formatter.format, caplog.records)
        if any(form in line for form in forms)
    ]
    assert leaked == []
