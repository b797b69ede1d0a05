"""What each worker process tells the supervisor every second, and the supervisor's view of it."""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from shipper.telemetry.counters import DEFINITIONS, HistogramValue, Kind
from shipper.telemetry.health import MAX_REASONS, READY, STARTING, Verdict

# One series' labels as (name, value) pairs sorted by name: hashable, and equal for equal label
# sets whatever order a caller passed them in.
Labels: TypeAlias = tuple[tuple[str, str], ...]
Sample: TypeAlias = tuple[str, Labels, float]  # name, labels, value
# name, labels, count per bucket (not cumulative; one per declared bound, then +Inf), sum
HistogramSample: TypeAlias = tuple[str, Labels, tuple[int, ...], float]
# The shapes Telemetry.samples() and Telemetry.histograms() give, which the /metrics collector
# takes: the combined views below give them too, so either feeds the same export.
LabelledSample: TypeAlias = tuple[str, dict[str, str], float]
LabelledHistogram: TypeAlias = tuple[str, dict[str, str], HistogramValue]

# How one gauge combines across workers. Most gauges are a worker's share of a whole (the bytes it
# buffers, the files it holds open, the lag of the containers it follows: each container is
# followed by one worker), so the host's value is their sum. A gauge in seconds is an age or a
# duration (since the checkpoint file was current, since an output last delivered): a sum of two
# workers' ages means nothing, and the oldest is what an alert on it is there to catch (what a
# crash would replay, the longest outage), so those take the max. Derived from the unit rather
# than listed, so a new age gauge combines right without anyone remembering this set; today it is
# shipper_checkpoint_age_seconds and shipper_output_failing_seconds. Counters and histograms
# always sum.
MAX_GAUGES: frozenset[str] = frozenset(
    name
    for name, definition in DEFINITIONS.items()
    if definition.kind is Kind.GAUGE and name.endswith("_seconds")
)


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One worker's telemetry and readiness, sent to the supervisor every second (pickled).

    Plain tuples, strings and numbers only: a host with 1,000 containers has about as many lag
    series, and this crosses a pipe every second, so it must stay small and cheap to pickle.
    """

    worker: int  # the worker's shard index
    samples: tuple[Sample, ...]  # every counter and gauge series, computed ages included
    histograms: tuple[HistogramSample, ...]
    readiness: Verdict
    started: bool  # the worker's App started (its sources and outputs run)


def labels_of(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def counts_of(histogram: HistogramValue) -> tuple[int, ...]:
    """A histogram's count per bucket (not cumulative), as a WorkerReport carries them."""
    counts = []
    below = 0
    for _, cumulative in histogram.buckets:
        counts.append(cumulative - below)
        below = cumulative
    return tuple(counts)


def combine_samples(
    *sources: Iterable[tuple[str, Mapping[str, str], float]],
) -> list[LabelledSample]:
    """Counter and gauge series of several processes as one (by MAX_GAUGES' rule); series with
    different labels stay apart."""
    combined: dict[tuple[str, Labels], float] = {}
    for source in sources:
        for name, labels, value in source:
            _add(combined, name, labels_of(labels), value)
    return _labelled(combined)


def combine_histograms(
    *sources: Iterable[tuple[str, Mapping[str, str], HistogramValue]],
) -> list[LabelledHistogram]:
    """Histogram series of several processes as one: bucket by bucket, sum and count summed."""
    combined: dict[tuple[str, Labels], tuple[tuple[int, ...], float]] = {}
    for source in sources:
        for name, labels, histogram in source:
            _add_histogram(combined, name, labels_of(labels), counts_of(histogram), histogram.sum)
    return _labelled_histograms(combined)


class WorkerBoard:
    """The supervisor's view of its workers: their latest reports, combined for /metrics, and
    the probes' verdicts.

    Thread-safe: the supervisor's main thread writes (update, forget, beat), the HTTP threads
    read (readiness, liveness, samples, histograms). Reports are immutable, so a reader takes
    the current ones under the lock and combines them outside it. Times are time.monotonic().
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"a board needs at least one worker, got {workers}")
        self.workers = workers
        self._lock = threading.Lock()
        self._reports: list[WorkerReport | None] = [None] * workers
        self._reported_at: list[float | None] = [None] * workers
        # Since when a worker without a report has been starting. The first call given a `now`
        # (the supervisor's beat, at the latest) stamps it, so __init__ and forget() need no
        # clock of their own.
        self._starting_since: list[float | None] = [None] * workers
        # Counters and histograms of workers that died: a restarted worker counts from 0 again,
        # and a summed counter that went down would read as a reset to Prometheus (rate() would
        # count the whole remainder again). Keeping the dead ones' last values keeps every sum
        # monotonic; what a worker counted after its last report is lost, never counted twice.
        self._retired: dict[tuple[str, Labels], float] = {}
        self._retired_histograms: dict[tuple[str, Labels], tuple[tuple[int, ...], float]] = {}
        self._beat: float | None = None

    def update(self, report: WorkerReport, now: float) -> None:
        """Worker `report.worker`'s latest report, received at `now`."""
        if not 0 <= report.worker < self.workers:
            raise ValueError(f"no worker {report.worker}: workers are 0 to {self.workers - 1}")
        with self._lock:
            self._reports[report.worker] = report
            self._reported_at[report.worker] = now
            self._starting_since[report.worker] = None

    def forget(self, worker: int) -> None:
        """Worker `worker` died: its gauges go, its counters stay in the sums, and it is
        "starting" until its replacement reports."""
        with self._lock:
            report = self._reports[worker]
            self._reports[worker] = None
            self._reported_at[worker] = None
            self._starting_since[worker] = None
            if report is None:
                return
            for name, labels, value in report.samples:
                if DEFINITIONS[name].kind is Kind.COUNTER:
                    _add(self._retired, name, labels, value)
            for name, labels, counts, total in report.histograms:
                _add_histogram(self._retired_histograms, name, labels, counts, total)

    def beat(self, now: float) -> None:
        """The supervisor's loop ran at `now` (what /livez judges)."""
        with self._lock:
            self._beat = now
            for worker in range(self.workers):
                self._silence(worker, now)  # start the clock of workers not reporting yet

    def liveness(self, now: float) -> Verdict:
        """Alive while the supervisor's loop beats. A silent worker is no liveness failure: the
        supervisor restarts it itself, where restarting the whole pod would only lose more."""
        beat = self._beat
        if beat is None:
            return Verdict(False, ("the supervisor's loop has not run yet",))
        quiet = now - beat
        if quiet > _liveness_timeout():
            return Verdict(False, (f"the supervisor's loop has not run for {quiet:.0f}s",))
        return READY

    def readiness(self, now: float) -> Verdict:
        """Ready when the supervisor is alive and every worker's latest report says started and
        ready; else a reason per worker, each prefixed `worker K: `."""
        alive = self.liveness(now)
        if not alive.ready:
            return alive  # no report is read while the loop is stuck: theirs would be stale
        timeout = _liveness_timeout()
        per_worker: list[list[str]] = []
        with self._lock:
            for worker, report in enumerate(self._reports):
                prefix = f"worker {worker}: "
                silence = self._silence(worker, now)
                if silence > timeout:
                    per_worker.append([f"{prefix}no report for {silence:.0f}s"])
                elif report is None:
                    per_worker.append([prefix + STARTING])
                elif not report.readiness.ready:
                    own = report.readiness.reasons or ("not ready",)
                    per_worker.append([prefix + reason for reason in own])
                elif not report.started:
                    per_worker.append([prefix + STARTING])
        if not per_worker:
            return READY
        # Each troubled worker's first reason before anyone's second, so a worker with many
        # stalled files cannot hide that another one went silent; past MAX_REASONS, a count.
        reasons = [first for first, *_ in per_worker]
        reasons += [reason for _, *rest in per_worker for reason in rest]
        if len(reasons) > MAX_REASONS:
            reasons = [*reasons[:MAX_REASONS], f"{len(reasons) - MAX_REASONS} more reason(s)"]
        return Verdict(False, tuple(reasons))

    def silent(self, now: float) -> list[int]:
        """Workers whose last report (or, not reporting yet, whose start) is older than the
        liveness timeout: the supervisor kills and restarts those."""
        timeout = _liveness_timeout()
        with self._lock:
            return [w for w in range(self.workers) if self._silence(w, now) > timeout]

    def samples(self) -> list[LabelledSample]:
        """Every counter and gauge series combined across the latest reports (dead workers'
        counters included)."""
        with self._lock:
            reports = [report for report in self._reports if report is not None]
            combined = dict(self._retired)
        for report in reports:
            for name, labels, value in report.samples:
                _add(combined, name, labels, value)
        return _labelled(combined)

    def histograms(self) -> list[LabelledHistogram]:
        """Every histogram series summed across the latest reports (dead workers' included)."""
        with self._lock:
            reports = [report for report in self._reports if report is not None]
            combined = dict(self._retired_histograms)
        for report in reports:
            for name, labels, counts, total in report.histograms:
                _add_histogram(combined, name, labels, counts, total)
        return _labelled_histograms(combined)

    def _silence(self, worker: int, now: float) -> float:
        """Seconds since worker's last report, or since it has been starting (under the lock)."""
        since = self._reported_at[worker]
        if since is None:
            since = self._starting_since[worker]
            if since is None:
                since = self._starting_since[worker] = now
        return max(0.0, now - since)


def _liveness_timeout() -> float:
    # The endpoint's own constant, read at each call: one threshold for "stopped running" in
    # both modes, and a test that shortens it shortens both. Imported here, not at the top,
    # because the server imports this module.
    from shipper.telemetry import server  # noqa: PLC0415

    return server.LIVENESS_TIMEOUT


def _add(
    combined: dict[tuple[str, Labels], float], name: str, labels: Labels, value: float
) -> None:
    key = (name, labels)
    previous = combined.get(key)
    if previous is None:
        combined[key] = value
    elif name in MAX_GAUGES:
        combined[key] = max(previous, value)
    else:
        combined[key] = previous + value


def _add_histogram(
    combined: dict[tuple[str, Labels], tuple[tuple[int, ...], float]],
    name: str,
    labels: Labels,
    counts: tuple[int, ...],
    total: float,
) -> None:
    key = (name, labels)
    previous = combined.get(key)
    if previous is None:
        combined[key] = (counts, total)
    else:
        # strict: every process runs the same code, so the same buckets; anything else is a bug.
        summed = tuple(a + b for a, b in zip(previous[0], counts, strict=True))
        combined[key] = (summed, previous[1] + total)


def _labelled(combined: dict[tuple[str, Labels], float]) -> list[LabelledSample]:
    return [(name, dict(labels), value) for (name, labels), value in combined.items()]


def _labelled_histograms(
    combined: dict[tuple[str, Labels], tuple[tuple[int, ...], float]],
) -> list[LabelledHistogram]:
    result = []
    for (name, labels), (counts, total) in combined.items():
        bounds = (*DEFINITIONS[name].buckets, math.inf)
        cumulative = tuple(zip(bounds, itertools.accumulate(counts), strict=True))
        result.append((name, dict(labels), HistogramValue(cumulative, total, cumulative[-1][1])))
    return result
