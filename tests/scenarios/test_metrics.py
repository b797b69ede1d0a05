"""The metrics endpoint of a real `shipper run`, scraped while it ships and parsed with
prometheus_client's own parser: the counters say what was shipped, lag drops to zero, and a
removed container's lag series goes away."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipper import __version__
from shipper.docker_writer import DockerRootWriter, realistic_lines
from shipper.telemetry.counters import DEFINITIONS
from tests.helpers import start_shipper, wait_started, wait_until_sync

SOURCE, OUTPUT = "docker", "archive"


@dataclass
class Scrape:
    """One /metrics answer: every sample by (exposed name, labels), and the families' types."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    types: dict[str, str]

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for sample, labels in self.samples if sample == name]

    def total(self, name: str) -> float:
        return sum(value for (sample, _), value in self.samples.items() if sample == name)


def scrape(url: str) -> Scrape:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:  # noqa: S310
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"sample {key} exposed twice"
            samples[key] = sample.value
    return Scrape(samples, types)


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def monitoring_url(process: subprocess.Popen[bytes], stderr: Path) -> str:
    """The URL the child logged with "Monitoring endpoint listening." (it bound port 0)."""
    found: list[str] = []

    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail(f"shipper exited with {process.returncode}:\n{stderr.read_text()}")
        for line in stderr.read_bytes().splitlines():
            if line.startswith(b"{"):
                event = orjson.loads(line)
                if event.get("message") == "Monitoring endpoint listening.":
                    found.append(event["url"])
                    return True
        return False

    wait_until_sync(listening, timeout=30, what="'Monitoring endpoint listening.'")
    return found[0]


def stop(process: subprocess.Popen[bytes], stderr: Path) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, stderr.read_text()
    errors = [
        line
        for line in stderr.read_bytes().splitlines()
        if line.startswith(b"{") and orjson.loads(line)["level"] == "error"
    ]
    assert errors == []


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    config = tmp_path / "shipper.yaml"
    config.write_text(
        f"""
state_dir: {tmp_path / "state"}
sources:
  {SOURCE}:
    type: docker_json
    root: {tmp_path / "containers"}
    poll_interval: 20ms
outputs:
  {OUTPUT}:
    type: file
    path: {tmp_path / "out.ndjson"}
    batch:
      linger: 20ms
checkpoints:
  flush_interval: 100ms
monitoring:
  host: 127.0.0.1
  port: 0
"""
    )
    process, stderr = start_shipper(tmp_path, config, "metrics")
    try:
        yield process, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def write(writer: DockerRootWriter, name: str, count: int, seed: int) -> None:
    log = writer.containers.get(name) or writer.add_container(name)
    for stream, message in realistic_lines(random.Random(seed), count, container=name):
        log.write(message, stream=stream)


def test_counters_match_what_was_shipped_and_lag_series_go_with_their_container(
    tmp_path: Path, running: tuple[subprocess.Popen[bytes], Path]
) -> None:
    writer = DockerRootWriter(tmp_path / "containers")
    write(writer, "web-1", 1500, seed=1)  # history before shipper starts
    write(writer, "db-1", 700, seed=2)
    process, stderr = running
    url = monitoring_url(process, stderr)
    wait_started(process, stderr)

    # While it ships: more lines, and a scrape that must be consistent at any moment.
    write(writer, "web-1", 800, seed=3)
    write(writer, "cache-1", 400, seed=4)
    during = scrape(url)
    delivered = during.get("shipper_records_total", output=OUTPUT, outcome="delivered") or 0
    assert delivered <= (during.get("shipper_lines_read_total", source=SOURCE) or 0)
    assert all(value >= 0 for (name, _), value in during.samples.items() if "lag" in name)
    assert_histogram_consistent(during)

    total = 1500 + 700 + 800 + 400
    containers = {name: log.id for name, log in writer.containers.items()}

    def caught_up() -> bool:
        now = scrape(url)
        lags = [
            now.get("shipper_lag_bytes", source=SOURCE, container=c) for c in containers.values()
        ]
        delivered = now.get("shipper_records_total", output=OUTPUT, outcome="delivered")
        return delivered == total and lags == [0, 0, 0]

    wait_until_sync(caught_up, what=f"{total} records delivered and no lag")
    file_bytes = sum(log.log_path.stat().st_size for log in writer.containers.values())
    assert_shipped(scrape(url), total, file_bytes)
    assert len((tmp_path / "out.ndjson").read_bytes().splitlines()) == total
    wait_until_sync(lambda: scrape(url).get("shipper_ready") == 1, what="shipper_ready 1")
    assert get(f"{url}/readyz") == (200, {"status": "ready"})

    # The container is removed with its directory: its follower ends, and its series goes.
    removed = writer.containers.pop("db-1")
    removed.close()
    shutil.rmtree(removed.directory)
    wait_until_sync(
        lambda: (
            {labels["container"] for labels in scrape(url).labels_of("shipper_lag_bytes")}
            == {containers["web-1"], containers["cache-1"]}
        ),
        what="the removed container's lag series gone, the others kept",
    )
    # The gauge is summed at the source's next look (about once a second), after the series
    # removal, which happens as the follower ends.
    wait_until_sync(
        lambda: scrape(url).get("shipper_open_files", source=SOURCE) == 2,
        what="two files open once the container's follower ended",
    )
    writer.close()
    stop(process, stderr)


def assert_histogram_consistent(scraped: Scrape) -> None:
    """Cumulative buckets never go down, and +Inf is the count."""
    for labels in scraped.labels_of("shipper_batch_duration_seconds_count"):
        output = labels["output"]
        buckets = sorted(
            (float(le["le"]), scraped.get("shipper_batch_duration_seconds_bucket", **le) or 0)
            for le in scraped.labels_of("shipper_batch_duration_seconds_bucket")
            if le["output"] == output
        )
        counts = [count for _, count in buckets]
        assert counts == sorted(counts)
        assert buckets[-1] == (
            float("inf"),
            scraped.get("shipper_batch_duration_seconds_count", output=output),
        )
        assert len(buckets) == len(DEFINITIONS["shipper_batch_duration_seconds"].buckets) + 1


def assert_shipped(after: Scrape, total: int, file_bytes: int) -> None:
    """Once everything is delivered: the counters and gauges say exactly that."""
    assert after.get("shipper_lines_read_total", source=SOURCE) == total
    assert after.get("shipper_bytes_read_total", source=SOURCE) == file_bytes
    assert after.get("shipper_files_opened_total", source=SOURCE) == 3
    assert after.get("shipper_open_files", source=SOURCE) == 3
    assert after.get("shipper_buffered_bytes") == 0
    # Every batch handed to the output was timed once it was final.
    batches = after.get("shipper_batches_total", output=OUTPUT)
    assert batches is not None
    assert batches > 0
    assert after.get("shipper_batch_duration_seconds_count", output=OUTPUT) == batches
    assert (after.get("shipper_batch_duration_seconds_sum", output=OUTPUT) or 0) > 0
    assert_histogram_consistent(after)
    # Computed at the scrape.
    age = after.get("shipper_checkpoint_age_seconds")
    assert age is not None
    assert age >= 0
    assert after.get("shipper_output_failing_seconds", output=OUTPUT) == 0
    assert after.get("shipper_build_info", version=__version__) == 1
    assert (after.get("process_open_fds") or 0) > 0
    assert (after.get("process_max_fds") or 0) > 0
    # The exposed types and names are the declared ones.
    for name, definition in DEFINITIONS.items():
        family = name.removesuffix("_total") if definition.kind == "counter" else name
        assert after.types.get(family) == definition.kind, name
