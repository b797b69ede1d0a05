"""Worker reports and the supervisor's board: how several workers' series combine into one
/metrics, how their readiness makes the supervisor's /readyz, and both sides of a real endpoint
(the supervisor answering from reports, a worker that listens nowhere building them)."""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipper import __version__
from shipper.app import App
from shipper.config import MonitoringConfig
from shipper.telemetry import server as server_module
from shipper.telemetry.counters import DEFINITIONS, Kind, Telemetry
from shipper.telemetry.health import MAX_REASONS, NOT_STARTED, READY, Verdict
from shipper.telemetry.report import (
    MAX_GAUGES,
    HistogramSample,
    Labels,
    Sample,
    WorkerBoard,
    WorkerReport,
)
from shipper.telemetry.server import LIVENESS_TIMEOUT, MonitoringServer
from tests.helpers import make_config

BATCH = "shipper_batch_duration_seconds"
BUCKETS = len(DEFINITIONS[BATCH].buckets) + 1  # the declared bounds, then +Inf


def labels(**pairs: str) -> Labels:
    return tuple(sorted(pairs.items()))


def counts(**at: int) -> tuple[int, ...]:
    """Non-cumulative bucket counts: `b0=2, inf=1` is 2 in the first bucket, 1 in +Inf."""
    values = [0] * BUCKETS
    for key, count in at.items():
        values[-1 if key == "inf" else int(key.removeprefix("b"))] = count
    return tuple(values)


def report(
    worker: int,
    samples: tuple[Sample, ...] = (),
    histograms: tuple[HistogramSample, ...] = (),
    readiness: Verdict = READY,
    *,
    started: bool = True,
) -> WorkerReport:
    return WorkerReport(worker, samples, histograms, readiness, started)


def as_set(
    samples: list[tuple[str, dict[str, str], float]],
) -> set[tuple[str, Labels, float]]:
    return {(name, labels(**pairs), value) for name, pairs, value in samples}


def two_workers() -> tuple[WorkerReport, WorkerReport]:
    one = report(
        0,
        (
            ("shipper_lines_read_total", labels(source="docker"), 10.0),
            ("shipper_records_total", labels(output="es", outcome="delivered"), 7.0),
            ("shipper_lag_bytes", labels(source="docker", container="a"), 100.0),
            ("shipper_buffered_bytes", (), 10.0),
            ("shipper_open_files", labels(source="docker"), 2.0),
            ("shipper_checkpoint_age_seconds", (), 3.0),
            ("shipper_output_failing_seconds", labels(output="es"), 0.0),
        ),
        ((BATCH, labels(output="es"), counts(b0=1), 0.004),),
    )
    two = report(
        1,
        (
            ("shipper_lines_read_total", labels(source="docker"), 5.0),
            ("shipper_lines_read_total", labels(source="cri"), 1.0),
            ("shipper_lag_bytes", labels(source="docker", container="b"), 7.0),
            ("shipper_buffered_bytes", (), 20.0),
            ("shipper_open_files", labels(source="docker"), 3.0),
            ("shipper_checkpoint_age_seconds", (), 12.0),
            ("shipper_output_failing_seconds", labels(output="es"), 40.0),
        ),
        ((BATCH, labels(output="es"), counts(b0=1, b2=2, inf=1), 400.5),),
    )
    return one, two


# --- combining -----------------------------------------------------------------------------------


def test_counters_sum_disjoint_gauges_stay_apart_and_ages_take_the_max() -> None:
    board = WorkerBoard(2)
    one, two = two_workers()
    board.update(one, 100.0)
    board.update(two, 100.0)
    assert as_set(board.samples()) == {
        ("shipper_lines_read_total", labels(source="docker"), 15.0),
        ("shipper_lines_read_total", labels(source="cri"), 1.0),
        ("shipper_records_total", labels(output="es", outcome="delivered"), 7.0),
        ("shipper_lag_bytes", labels(source="docker", container="a"), 100.0),
        ("shipper_lag_bytes", labels(source="docker", container="b"), 7.0),
        ("shipper_buffered_bytes", (), 30.0),
        ("shipper_open_files", labels(source="docker"), 5.0),
        ("shipper_checkpoint_age_seconds", (), 12.0),  # the oldest, not 15
        ("shipper_output_failing_seconds", labels(output="es"), 40.0),  # the longest
    }


def test_histograms_sum_bucket_by_bucket() -> None:
    board = WorkerBoard(2)
    one, two = two_workers()
    board.update(one, 100.0)
    board.update(two, 100.0)
    [(name, pairs, histogram)] = board.histograms()
    assert (name, pairs) == (BATCH, {"output": "es"})
    bounds = [bound for bound, _ in histogram.buckets]
    assert bounds == [*DEFINITIONS[BATCH].buckets, float("inf")]
    cumulative = [count for _, count in histogram.buckets]
    assert cumulative[:4] == [2, 2, 4, 4]  # 1 + 1 in the first bucket, 2 in the third
    assert cumulative[-2:] == [4, 5]  # one past the last bound: only +Inf counts it
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(400.504)


def test_the_max_rule_covers_the_age_gauges_and_only_gauges_in_seconds() -> None:
    assert {"shipper_checkpoint_age_seconds", "shipper_output_failing_seconds"} <= MAX_GAUGES
    for name in MAX_GAUGES:
        assert DEFINITIONS[name].kind is Kind.GAUGE, name
        assert name.endswith("_seconds"), name
    assert MAX_GAUGES.isdisjoint(
        {"shipper_lag_bytes", "shipper_buffered_bytes", "shipper_open_files", "shipper_workers"}
    )


def test_the_worker_metrics_are_declared() -> None:
    workers = DEFINITIONS["shipper_workers"]
    assert (workers.kind, workers.labels) == (Kind.GAUGE, ())


def test_a_dead_workers_counters_stay_in_the_sums_and_its_gauges_go() -> None:
    board = WorkerBoard(2)
    one, two = two_workers()
    board.update(one, 100.0)
    board.update(two, 100.0)
    board.forget(0)
    samples = as_set(board.samples())
    assert ("shipper_lines_read_total", labels(source="docker"), 15.0) in samples
    assert ("shipper_records_total", labels(output="es", outcome="delivered"), 7.0) in samples
    assert ("shipper_lag_bytes", labels(source="docker", container="b"), 7.0) in samples
    names_and_labels = {(name, pairs) for name, pairs, _ in samples}
    assert ("shipper_lag_bytes", labels(source="docker", container="a")) not in names_and_labels
    assert ("shipper_buffered_bytes", (), 20.0) in samples  # worker 1's share alone
    assert ("shipper_checkpoint_age_seconds", (), 12.0) in samples
    [(_, _, histogram)] = board.histograms()
    assert histogram.count == 5  # worker 0's observation still counted
    # Its replacement counts from 0 again: the host's counter goes on from where it was.
    board.update(report(0, (("shipper_lines_read_total", labels(source="docker"), 2.0),)), 101.0)
    assert ("shipper_lines_read_total", labels(source="docker"), 17.0) in as_set(board.samples())
    board.forget(0)
    board.forget(0)  # forgetting a worker that has not reported again adds nothing
    assert ("shipper_lines_read_total", labels(source="docker"), 17.0) in as_set(board.samples())


def test_a_report_for_no_such_worker_is_refused() -> None:
    board = WorkerBoard(2)
    with pytest.raises(ValueError, match="no worker 2"):
        board.update(report(2), 100.0)
    with pytest.raises(ValueError, match="at least one"):
        WorkerBoard(0)


def test_a_report_round_trips_through_pickle_and_stays_small() -> None:
    telemetry = Telemetry()
    for n in range(1000):
        telemetry.set("shipper_lag_bytes", n, source="docker", container=f"{n:064x}")
    telemetry.inc("shipper_lines_read_total", 3, source="docker")
    telemetry.observe(BATCH, 0.3, output="es")
    made = MonitoringServer(MonitoringConfig(port=0), telemetry, listen=False).report(4)
    data = pickle.dumps(made)
    assert pickle.loads(data) == made  # noqa: S301 - our own bytes
    # Names and label names are pickled once, not per series: about a container id (64
    # characters) and a value each.
    assert len(data) < 1000 * 100


# --- readiness and liveness ----------------------------------------------------------------------


def test_not_ready_while_a_worker_has_not_reported_then_ready() -> None:
    board = WorkerBoard(2)
    board.beat(100.0)
    assert board.readiness(100.0) == Verdict(False, ("worker 0: starting", "worker 1: starting"))
    board.update(report(0), 101.0)
    assert board.readiness(101.0) == Verdict(False, ("worker 1: starting",))
    # Its App has not started yet: still starting, whatever else it says.
    board.update(report(1, readiness=NOT_STARTED, started=False), 101.0)
    assert board.readiness(101.0) == Verdict(False, ("worker 1: starting",))
    board.update(report(1), 102.0)
    assert board.readiness(102.0) == READY


def test_a_workers_reasons_are_prefixed_with_it() -> None:
    board = WorkerBoard(2)
    board.beat(100.0)
    board.update(report(0), 100.0)
    failing = Verdict(
        False, ("output es: every attempt failed for 61s", "reading /a.log: unread bytes")
    )
    board.update(report(1, readiness=failing), 100.0)
    assert board.readiness(100.0) == Verdict(
        False,
        (
            "worker 1: output es: every attempt failed for 61s",
            "worker 1: reading /a.log: unread bytes",
        ),
    )


def test_a_silent_worker_is_unready_and_named_even_among_many_reasons() -> None:
    board = WorkerBoard(3)
    board.beat(100.0)
    many = Verdict(False, tuple(f"reading /{n}.log: unread bytes" for n in range(MAX_REASONS + 5)))
    board.update(report(0, readiness=many), 100.0)
    board.update(report(1), 100.0)
    board.update(report(2), 100.0)
    later = 100.0 + LIVENESS_TIMEOUT + 1
    board.beat(later)
    board.update(report(0, readiness=many), later)
    board.update(report(2), later)
    reasons = board.readiness(later).reasons
    assert len(reasons) == MAX_REASONS + 1
    assert reasons[0] == "worker 0: reading /0.log: unread bytes"
    assert reasons[1] == f"worker 1: no report for {LIVENESS_TIMEOUT + 1:.0f}s"
    assert reasons[2] == "worker 0: reading /1.log: unread bytes"
    assert reasons[-1] == "6 more reason(s)"  # 15 + 1 reasons, 10 named


def test_liveness_follows_the_supervisors_beat_not_its_workers() -> None:
    board = WorkerBoard(2)
    assert board.liveness(100.0) == Verdict(False, ("the supervisor's loop has not run yet",))
    board.beat(100.0)
    assert board.liveness(100.0 + LIVENESS_TIMEOUT) == READY
    # No worker ever reported and both are silent by now: still alive, the supervisor restarts
    # them itself.
    assert board.silent(100.0 + LIVENESS_TIMEOUT + 1) == [0, 1]
    assert board.liveness(100.0 + LIVENESS_TIMEOUT) == READY
    stale = board.liveness(100.0 + LIVENESS_TIMEOUT + 5)
    assert stale == Verdict(
        False, (f"the supervisor's loop has not run for {LIVENESS_TIMEOUT + 5:.0f}s",)
    )
    # Nothing is read while the loop is stuck: readiness says so instead of stale reports.
    assert board.readiness(100.0 + LIVENESS_TIMEOUT + 5) == stale


def test_silent_workers_by_their_last_report_or_their_start() -> None:
    board = WorkerBoard(2)
    board.beat(100.0)  # both start their clocks: no report yet
    board.update(report(0), 120.0)
    assert board.silent(100.0 + LIVENESS_TIMEOUT) == []  # not past the timeout yet
    assert board.silent(100.0 + LIVENESS_TIMEOUT + 1) == [1]
    assert board.silent(120.0 + LIVENESS_TIMEOUT + 1) == [0, 1]
    # Worker 1 died and is restarted: starting again, its clock from the next look at it.
    board.forget(1)
    restarted = 120.0 + LIVENESS_TIMEOUT + 2
    board.beat(restarted)
    assert board.silent(restarted) == [0]
    assert board.readiness(restarted).reasons == (
        f"worker 0: no report for {LIVENESS_TIMEOUT + 2:.0f}s",
        "worker 1: starting",
    )
    assert board.silent(restarted + LIVENESS_TIMEOUT + 1) == [0, 1]  # never reported
    board.update(report(1), restarted + LIVENESS_TIMEOUT + 1)
    assert board.silent(restarted + LIVENESS_TIMEOUT + 1) == [0]


# --- the supervisor's endpoint -------------------------------------------------------------------


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def supervisor() -> Iterator[tuple[MonitoringServer, WorkerBoard, str]]:
    """A listening endpoint in supervisor mode (no event loop, as in the supervisor)."""
    telemetry = Telemetry()  # the supervisor's own
    telemetry.inc("shipper_reloads_total", result="ok")
    telemetry.inc("shipper_log_messages_suppressed_total", 2, level="warning")
    telemetry.set("shipper_workers", 2)
    board = WorkerBoard(2)
    monitoring = MonitoringServer(MonitoringConfig(host="127.0.0.1", port=0), telemetry)
    monitoring.watch_workers(board)
    monitoring.start()
    try:
        yield monitoring, board, f"http://127.0.0.1:{monitoring.port}"
    finally:
        monitoring.stop()


def scrape(url: str) -> tuple[str, dict[tuple[str, Labels], float]]:
    status, body = fetch(f"{url}/metrics")
    assert status == 200
    text = body.decode()
    values = {
        (sample.name, labels(**sample.labels)): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, values


def test_the_supervisor_exports_its_own_series_and_its_workers_combined(
    supervisor: tuple[MonitoringServer, WorkerBoard, str],
) -> None:
    _, board, url = supervisor
    one, two = two_workers()
    suppressed = ("shipper_log_messages_suppressed_total", labels(level="warning"), 3.0)
    board.beat(time.monotonic())
    board.update(report(0, (*one.samples, suppressed), one.histograms), time.monotonic())
    text, values = scrape(url)
    assert values[("shipper_ready", ())] == 0.0  # worker 1 has not reported
    board.update(two, time.monotonic())
    text, values = scrape(url)
    assert values[("shipper_lines_read_total", labels(source="docker"))] == 15.0
    assert values[("shipper_lines_read_total", labels(source="cri"))] == 1.0
    assert values[("shipper_lag_bytes", labels(source="docker", container="a"))] == 100.0
    assert values[("shipper_lag_bytes", labels(source="docker", container="b"))] == 7.0
    assert values[("shipper_buffered_bytes", ())] == 30.0
    assert values[("shipper_checkpoint_age_seconds", ())] == 12.0
    assert values[("shipper_output_failing_seconds", labels(output="es"))] == 40.0
    es = labels(output="es")
    assert values[(f"{BATCH}_bucket", tuple(sorted((*es, ("le", "0.005")))))] == 2
    assert values[(f"{BATCH}_bucket", tuple(sorted((*es, ("le", "+Inf")))))] == 5
    assert values[(f"{BATCH}_count", es)] == 5
    assert values[(f"{BATCH}_sum", es)] == pytest.approx(400.504)
    # The supervisor's own series, and one it shares with a worker, once: 2 + 3.
    assert values[("shipper_reloads_total", labels(result="ok"))] == 1.0
    assert values[("shipper_workers", ())] == 2.0
    assert text.count('shipper_log_messages_suppressed_total{level="warning"}') == 1
    assert values[("shipper_log_messages_suppressed_total", labels(level="warning"))] == 5.0
    assert values[("shipper_build_info", labels(version=__version__))] == 1.0
    assert values[("shipper_ready", ())] == 1.0
    assert ("process_open_fds", ()) in values  # the supervisor process's


def test_the_supervisor_probes_answer_from_the_board(
    supervisor: tuple[MonitoringServer, WorkerBoard, str],
) -> None:
    _, board, url = supervisor
    status, body = fetch(f"{url}/livez")
    assert (status, orjson.loads(body)["status"]) == (503, "unresponsive")  # no beat yet
    board.beat(time.monotonic())
    assert fetch(f"{url}/livez") == (200, b'{"status":"alive"}')
    board.update(report(0), time.monotonic())
    status, body = fetch(f"{url}/readyz")
    assert (status, orjson.loads(body)) == (
        503,
        {"status": "unready", "reasons": ["worker 1: starting"]},
    )
    failing = Verdict(False, ("output es: every attempt failed for 61s",))
    board.update(report(1, readiness=failing), time.monotonic())
    status, body = fetch(f"{url}/readyz")
    assert (status, orjson.loads(body)["reasons"]) == (
        503,
        ["worker 1: output es: every attempt failed for 61s"],
    )
    board.update(report(1), time.monotonic())
    assert fetch(f"{url}/readyz") == (200, b'{"status":"ready"}')
    # The supervisor's loop stopped beating long ago: neither alive nor ready.
    board.beat(time.monotonic() - LIVENESS_TIMEOUT - 5)
    status, body = fetch(f"{url}/livez")
    assert status == 503
    assert orjson.loads(body)["reasons"][0].startswith("the supervisor's loop has not run for")
    assert fetch(f"{url}/readyz")[0] == 503


# --- a worker's side -----------------------------------------------------------------------------


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(server_module.__name__)
    handler = Keep()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_a_worker_listens_nowhere_and_reports_its_series_and_readiness(
    tmp_path: Path, logged: list[logging.LogRecord]
) -> None:
    telemetry = Telemetry()
    telemetry.inc("shipper_lines_read_total", 7, source="docker")
    telemetry.set("shipper_lag_bytes", 12, source="docker", container="c1")
    telemetry.observe(BATCH, 0.3, output="archive")
    telemetry.observe(BATCH, 400.0, output="archive")
    # Disabled in the config too: the supervisor serves, a worker still judges and reports.
    config = MonitoringConfig(enabled=False, host="127.0.0.1", port=0)
    monitoring = MonitoringServer(config, telemetry, listen=False)
    monitoring.start()
    try:
        assert monitoring.port is None
        assert logged == []  # neither "listening" nor "disabled": the supervisor says that
        # The heartbeat runs on this loop: not "no event loop is watched", just not started.
        early = monitoring.report(3)
        assert (early.worker, early.started, early.readiness) == (3, False, NOT_STARTED)

        app = App(make_config(tmp_path), telemetry=telemetry)
        monitoring.watch(app)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        try:
            await asyncio.wait_for(app.started.wait(), 10)
            monitoring.heartbeat()  # the next beat would judge it within a second
            made = monitoring.report(3)
        finally:
            stop.set()
            await task
    finally:
        monitoring.stop()

    assert (made.worker, made.started, made.readiness) == (3, True, READY)
    samples = {(name, pairs): value for name, pairs, value in made.samples}
    assert samples[("shipper_lines_read_total", labels(source="docker"))] == 7.0
    assert samples[("shipper_lag_bytes", labels(source="docker", container="c1"))] == 12.0
    assert samples[("shipper_output_failing_seconds", labels(output="archive"))] == 0.0
    assert ("shipper_checkpoint_age_seconds", ()) in samples
    names = {name for name, _ in samples}
    assert names.isdisjoint({"shipper_ready", "shipper_build_info"})  # the supervisor's
    [(name, pairs, bucket_counts, total)] = made.histograms
    assert (name, pairs) == (BATCH, labels(output="archive"))
    assert bucket_counts == counts(b6=1, inf=1)  # 0.3 in the 0.5 bucket, 400 past 300
    assert total == pytest.approx(400.3)

    # What the supervisor makes of it.
    board = WorkerBoard(4)
    board.beat(200.0)
    board.update(made, 200.0)
    assert board.readiness(200.0).reasons == tuple(f"worker {w}: starting" for w in range(3))
    assert ("shipper_lines_read_total", labels(source="docker"), 7.0) in as_set(board.samples())
    [(_, _, histogram)] = board.histograms()
    assert histogram.count == 2
