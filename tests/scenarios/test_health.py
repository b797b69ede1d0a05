"""Readiness of a real `shipper run` as its output goes down and comes back, seen through
/readyz, the metrics and `shipper health` (the HEALTHCHECK command), against
tests/fake_elasticsearch.py."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.docker_writer import DockerRootWriter, realistic_lines
from tests.fake_elasticsearch import FakeElasticsearch
from tests.helpers import start_shipper, wait_started, wait_until_sync
from tests.scenarios.test_metrics import get, monitoring_url, scrape, stop

OUTPUT = "es"
TARGET = "logs-docker-default"


@pytest.fixture
def es() -> Iterator[FakeElasticsearch]:
    with FakeElasticsearch() as server:
        yield server
    assert server.internal_errors == []


def config_text(tmp: Path, es: FakeElasticsearch, port: int) -> str:
    return f"""
state_dir: {tmp / "state"}
sources:
  docker:
    type: docker_json
    root: {tmp / "containers"}
    poll_interval: 20ms
outputs:
  {OUTPUT}:
    type: elasticsearch
    hosts: ["{es.url}"]
    batch:
      linger: 20ms
    retry:
      initial_backoff: 50ms
      max_backoff: 200ms
checkpoints:
  flush_interval: 100ms
monitoring:
  host: 0.0.0.0
  port: {port}
  health:
    output_failing_after: 1s
"""


def health(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shipper", "health", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def readiness(url: str) -> tuple[int, dict[str, object]]:
    return get(f"{url}/readyz")


def test_unready_while_the_output_is_down_past_the_threshold_ready_after(
    tmp_path: Path, es: FakeElasticsearch
) -> None:
    config = tmp_path / "shipper.yaml"
    config.write_text(config_text(tmp_path, es, 0))
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("web-1")
    lines = list(realistic_lines(random.Random(7), 300, container="web-1"))
    for stream, message in lines[:100]:
        log.write(message, stream=stream)
    process, stderr = start_shipper(tmp_path, config, "health")
    try:
        url = monitoring_url(process, stderr)
        assert url.startswith("http://127.0.0.1:")  # bound on 0.0.0.0, reached on loopback
        # `shipper health` reads host and port from its config: the same, with the real port.
        probe = tmp_path / "probe.yaml"
        probe.write_text(config_text(tmp_path, es, int(url.rsplit(":", 1)[1])))
        wait_started(process, stderr)
        wait_until_sync(lambda: readiness(url)[0] == 200, what="ready after start")
        es.wait_until(lambda: len(es.documents(TARGET)) == 100, timeout=20)
        assert health(probe).returncode == 0

        with es.down():
            went_down = time.monotonic()
            for stream, message in lines[100:200]:
                log.write(message, stream=stream)
            wait_until_sync(lambda: readiness(url)[0] == 503, what="unready while ES is down")
            # Not before the threshold: a short outage is not worth taking shipper out.
            assert time.monotonic() - went_down >= 1.0
            _, body = readiness(url)
            assert body["status"] == "unready"
            reasons = body["reasons"]
            assert isinstance(reasons, list)
            [reason] = reasons
            assert f"output {OUTPUT}" in reason
            scraped = scrape(url)
            assert scraped.get("shipper_ready") == 0
            assert (scraped.get("shipper_output_failing_seconds", output=OUTPUT) or 0) >= 1
            assert (scraped.get("shipper_retries_total", output=OUTPUT) or 0) > 0
            unready = health(probe)
            assert unready.returncode == 1
            assert f"output {OUTPUT}" in unready.stderr
            assert health(probe, "--live").returncode == 0  # unready, but alive: no restart
            for stream, message in lines[200:]:
                log.write(message, stream=stream)

        wait_until_sync(lambda: readiness(url)[0] == 200, what="ready again once ES is back")
        assert readiness(url) == (200, {"status": "ready"})
        ready = health(probe)
        assert ready.returncode == 0, ready.stderr
        assert "ready" in ready.stdout
        es.wait_until(lambda: len(es.documents(TARGET)) == 300, timeout=20)
        wait_until_sync(
            lambda: scrape(url).get("shipper_output_failing_seconds", output=OUTPUT) == 0,
            what="output failing seconds back to 0",
        )
        writer.close()
        stop(process, stderr)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_health_exit_codes_without_a_running_shipper(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: {}\noutputs: {}\nmonitoring: {port: -1}\n")
    invalid = health(bad)
    assert invalid.returncode == 2
    assert "monitoring.port" in invalid.stderr
    # Nothing listens on the configured port: not healthy, and it says where it asked.
    config = tmp_path / "shipper.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"sources:\n  docker:\n    type: docker_json\n    root: {tmp_path}\n"
        f"outputs:\n  out:\n    type: file\n    path: {tmp_path / 'out'}\n"
        f"monitoring:\n  port: {unused_port()}\n"
    )
    result = health(config)
    assert result.returncode == 1
    assert "no answer from http://127.0.0.1:" in result.stderr


def unused_port() -> int:
    """A port nothing listens on: bound and released again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
