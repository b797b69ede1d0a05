"""Every count shipper keeps, declared once by name, readable in-process and exported later."""

from __future__ import annotations

import bisect
import enum
import threading
from dataclasses import dataclass


class Kind(enum.StrEnum):
    COUNTER = "counter"  # only goes up
    GAUGE = "gauge"  # set to the current value
    HISTOGRAM = "histogram"  # observations counted into buckets (`buckets`: upper bounds)


@dataclass(frozen=True, slots=True)
class Definition:
    kind: Kind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()  # a histogram's upper bounds, ascending; +Inf is implied


# Prometheus naming: snake_case, unit suffix, `_total` for counters. The metrics endpoint
# (shipper.telemetry.server) exports exactly these, with this help; tests read them through
# `Telemetry.value`.
DEFINITIONS: dict[str, Definition] = {
    "shipper_lines_read_total": Definition(
        Kind.COUNTER, "Complete lines read from log files.", ("source",)
    ),
    "shipper_bytes_read_total": Definition(
        Kind.COUNTER, "Bytes of complete lines read from log files.", ("source",)
    ),
    "shipper_invalid_lines_total": Definition(
        Kind.COUNTER,
        "Lines that were not Docker JSON entries, shipped as raw text flagged invalid_json.",
        ("source",),
    ),
    "shipper_invalid_timestamps_total": Definition(
        Kind.COUNTER,
        "Entries whose time could not be parsed; they carry the read time instead.",
        ("source",),
    ),
    "shipper_truncations_total": Definition(
        Kind.COUNTER, "Files truncated in place; reading restarted at offset 0.", ("source",)
    ),
    "shipper_bytes_lost_total": Definition(
        Kind.COUNTER,
        "Bytes that could not be read because their file was gone first.",
        ("source", "reason"),
    ),
    "shipper_rotation_overruns_total": Definition(
        Kind.COUNTER,
        "Looks at a container between which Docker rotated every file listed before away: "
        "rotated files may have been deleted unread.",
        ("source",),
    ),
    "shipper_files_opened_total": Definition(
        Kind.COUNTER, "Log files opened for reading.", ("source",)
    ),
    "shipper_pending_flushed_total": Definition(
        Kind.COUNTER,
        "Records shipped without waiting longer for their next line or part: after the flush "
        "timeout, or because the container stopped or its files are gone.",
        ("source", "kind", "reason"),
    ),
    "shipper_output_held_total": Definition(
        Kind.COUNTER,
        "Attempts an output refused for a reason only an operator can fix (credentials, "
        "privileges, a missing index); its data is held, never dead-lettered.",
        ("output",),
    ),
    "shipper_files_closed_total": Definition(
        Kind.COUNTER, "Log files closed after they were drained or removed.", ("source",)
    ),
    "shipper_open_files": Definition(Kind.GAUGE, "Log files held open now.", ("source",)),
    "shipper_pinned_bytes": Definition(
        Kind.GAUGE,
        "Disk bytes of deleted log files held open until drained.",
        ("source",),
    ),
    "shipper_metadata_errors_total": Definition(
        Kind.COUNTER,
        "Containers whose config.v2.json was missing, unreadable or corrupt when read; their "
        "records ship with the container id only.",
        ("source",),
    ),
    "shipper_records_total": Definition(
        Kind.COUNTER,
        "Records that reached a final outcome at an output.",
        ("output", "outcome"),
    ),
    "shipper_retries_total": Definition(
        Kind.COUNTER, "Send attempts that will be tried again.", ("output",)
    ),
    "shipper_batches_total": Definition(Kind.COUNTER, "Batches handed to an output.", ("output",)),
    "shipper_buffered_bytes": Definition(
        Kind.GAUGE, "Bytes read but not yet settled at every output.", ()
    ),
    "shipper_checkpoint_flushes_total": Definition(Kind.COUNTER, "Checkpoint file writes.", ()),
    "shipper_discovery_scans_total": Definition(
        Kind.COUNTER, "Rescans of the source roots.", ("source",)
    ),
    "shipper_docker_events_total": Definition(
        Kind.COUNTER, "Container events received from the Docker Engine API.", ("action",)
    ),
    "shipper_docker_events_reconnects_total": Definition(
        Kind.COUNTER, "Resubscriptions to Docker events after the stream broke.", ()
    ),
    "shipper_processing_failures_total": Definition(
        Kind.COUNTER,
        "Records a processing step could not handle (no match, undecodable JSON, unreadable "
        "time, rename conflict); they ship, flagged.",
        ("source", "processor"),
    ),
    "shipper_redactions_total": Definition(
        Kind.COUNTER, "Secrets replaced by the redact processor.", ("source",)
    ),
    "shipper_es_requests_total": Definition(
        Kind.COUNTER,
        "_bulk requests sent to Elasticsearch, by HTTP status, or timeout, connection_error, "
        "tls_error, error when there was no answer.",
        ("output", "status"),
    ),
    "shipper_es_request_bytes_total": Definition(
        Kind.COUNTER, "Bytes of _bulk request bodies before compression.", ("output",)
    ),
    "shipper_es_request_sent_bytes_total": Definition(
        Kind.COUNTER,
        "Bytes of _bulk request bodies as sent (gzipped when compression is on).",
        ("output",),
    ),
    "shipper_es_items_total": Definition(
        Kind.COUNTER,
        "Documents answered in _bulk responses, by status class (2xx, 409, 429, 4xx, 5xx, "
        "other) and error type (a fixed list of known types; any other counts as `other`, so "
        "the series stay bounded).",
        ("output", "status_class", "error_type"),
    ),
    "shipper_es_splits_total": Definition(
        Kind.COUNTER,
        "_bulk requests cut in halves because Elasticsearch answered 413 (body too large).",
        ("output",),
    ),
    "shipper_hec_requests_total": Definition(
        Kind.COUNTER,
        "Event and raw requests sent to Splunk HEC, by HTTP status and HEC code "
        '("" when the answer had none), or status timeout, connection_error, tls_error, error '
        "when there was no answer.",
        ("output", "status", "code"),
    ),
    "shipper_hec_request_bytes_total": Definition(
        Kind.COUNTER, "Bytes of HEC request bodies before compression.", ("output",)
    ),
    "shipper_hec_request_sent_bytes_total": Definition(
        Kind.COUNTER,
        "Bytes of HEC request bodies as sent (gzipped when compression is on).",
        ("output",),
    ),
    "shipper_hec_splits_total": Definition(
        Kind.COUNTER,
        "HEC requests cut in halves: too_large (413) or data_error (a 400 naming no event).",
        ("output", "reason"),
    ),
    "shipper_hec_rerouted_events_total": Definition(
        Kind.COUNTER,
        "Events sent again to fallback_index because HEC refused their index (code 7).",
        ("output",),
    ),
    "shipper_hec_ack_polls_total": Definition(
        Kind.COUNTER,
        "Polls of /services/collector/ack, by HTTP status (or timeout, connection_error, "
        "tls_error, error).",
        ("output", "status"),
    ),
    "shipper_hec_acks_total": Definition(
        Kind.COUNTER,
        "Indexer acknowledgement ids settled: confirmed (indexed), timed_out (not confirmed in "
        "time: the events are sent again), superseded (HEC handed the id out again before it "
        "was confirmed, e.g. after a restart: sent again too), unconfirmed (HEC turned "
        "acknowledgement off for the token, code 14: counted delivered).",
        ("output", "result"),
    ),
    "shipper_hec_unconfirmed_events_total": Definition(
        Kind.COUNTER,
        "Events counted delivered on HEC's word without an indexer acknowledgement although "
        "ack is on: those before a 400's invalid-event-number, or every event when HEC gave no "
        "ackId (the token does not have indexer acknowledgement on).",
        ("output",),
    ),
    "shipper_hec_resent_events_total": Definition(
        Kind.COUNTER,
        "Events sent again because their indexer acknowledgement did not come; HEC has no "
        "idempotency, so each may be indexed twice.",
        ("output",),
    ),
    "shipper_reloads_total": Definition(
        Kind.COUNTER,
        "Config reloads asked for with SIGHUP, by result: ok (the new config runs), invalid "
        "(refused; the running config goes on), unchanged (the file says what already runs), "
        "failed (valid, but it could not start: the previous config runs again).",
        ("result",),
    ),
    "shipper_log_messages_suppressed_total": Definition(
        Kind.COUNTER,
        "shipper's own log lines not written because the same message came more often than "
        "logging.rate_limit allows; a summary line says how many when the interval ends.",
        ("level",),
    ),
    # -- worker processes (pipeline.workers > 1): set by the supervision in worker 0 -------------
    "shipper_workers": Definition(
        Kind.GAUGE, "Worker processes configured (pipeline.workers).", ()
    ),
    # -- the monitoring endpoint (issue 7) -------------------------------------------------------
    "shipper_lag_bytes": Definition(
        Kind.GAUGE,
        "Bytes in a followed container's log files not yet delivered: each open generation's "
        "size on disk minus its checkpoint offset. The container label is the container id "
        "(docker_json), pod uid/container name (cri) or the followed file's path (files); the "
        "series is removed when the follower ends.",
        ("source", "container"),
    ),
    "shipper_batch_duration_seconds": Definition(
        Kind.HISTOGRAM,
        "Seconds from a batch being handed to an output to every record of it having a final "
        "outcome, retries and indexer acknowledgements included.",
        ("output",),
        buckets=(
            0.005,
            0.01,
            0.025,
            0.05,
            0.1,
            0.25,
            0.5,
            1.0,
            2.5,
            5.0,
            10.0,
            30.0,
            60.0,
            120.0,
            300.0,
        ),
    ),
    # Computed when scraped (shipper.telemetry.server), never stored here: declared for their help.
    "shipper_checkpoint_age_seconds": Definition(
        Kind.GAUGE,
        "Seconds since the checkpoint file last held every settled offset: since its last "
        "successful write, or the last flush that found nothing new to write. Grows while "
        "writes fail; a crash replays (duplicates) about this much.",
        (),
    ),
    "shipper_output_failing_seconds": Definition(
        Kind.GAUGE,
        "Seconds since an output's first failed attempt (retryable error or held refusal) with "
        "no success after it; 0 while it delivers.",
        ("output",),
    ),
    "shipper_ready": Definition(
        Kind.GAUGE,
        "1 when /readyz answers ready, 0 when not (starting, an output failing too long, "
        "reading stalled).",
        (),
    ),
    "shipper_build_info": Definition(
        Kind.GAUGE, "Always 1; the running shipper's version is in the label.", ("version",)
    ),
}


@dataclass(frozen=True, slots=True)
class HistogramValue:
    """One histogram series: cumulative counts per upper bound (+Inf last), sum and count."""

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


class Telemetry:
    """In-process values of every declared counter and gauge, by label values.

    Increments happen once per chunk or batch, never per line, so a plain dict is cheap enough.
    A lock guards the cross-thread callers (the watchdog thread; the metrics endpoint's thread,
    which reads at every scrape); the event loop is the main writer.
    """

    def __init__(self) -> None:
        self._values: dict[tuple[str, tuple[str, ...]], float] = {}
        # Histograms: per series, the count in each bucket (not cumulative; +Inf last), then sum.
        self._histograms: dict[tuple[str, tuple[str, ...]], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, self._label_values(name, labels))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        key = (name, self._label_values(name, labels))
        with self._lock:
            self._values[key] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Count `value` into a histogram (once per batch, never per line)."""
        key = (name, self._label_values(name, labels))
        bounds = DEFINITIONS[name].buckets
        index = bisect.bisect_left(bounds, value)  # the first bound >= value: Prometheus' `le`
        with self._lock:
            series = self._histograms.get(key)
            if series is None:
                series = self._histograms[key] = ([0] * (len(bounds) + 1), [0.0])
            series[0][index] += 1
            series[1][0] += value

    def remove(self, name: str, **labels: str) -> None:
        """Drop every series of `name` whose labels include these (all of them when none are
        given): a gauge of something that is gone is not a zero, it is no series at all."""
        definition = DEFINITIONS[name]
        unknown = labels.keys() - set(definition.labels)
        if unknown:
            raise ValueError(f"{name} takes labels {definition.labels}, got {tuple(labels)}")
        positions = [(definition.labels.index(k), v) for k, v in labels.items()]
        with self._lock:
            for store in (self._values, self._histograms):
                for key in [
                    key
                    for key in store
                    if key[0] == name and all(key[1][i] == v for i, v in positions)
                ]:
                    del store[key]

    def histogram(self, name: str, **labels: str) -> HistogramValue:
        """One histogram series (empty if nothing was observed with these labels)."""
        key = (name, self._label_values(name, labels))
        with self._lock:
            series = self._histograms.get(key)
            counts, total = (list(series[0]), series[1][0]) if series else (None, 0.0)
        return _histogram_value(DEFINITIONS[name].buckets, counts, total)

    def histograms(self) -> list[tuple[str, dict[str, str], HistogramValue]]:
        with self._lock:
            items = [
                (key, list(counts), total[0]) for key, (counts, total) in self._histograms.items()
            ]
        return [
            (
                name,
                dict(zip(DEFINITIONS[name].labels, values, strict=True)),
                _histogram_value(DEFINITIONS[name].buckets, counts, total),
            )
            for (name, values), counts, total in items
        ]

    def value(self, name: str, **labels: str) -> float:
        """The value for exactly these labels, or the sum over all series when none are given
        (for a histogram: its number of observations)."""
        if name not in DEFINITIONS:
            raise KeyError(name)
        if DEFINITIONS[name].kind is Kind.HISTOGRAM:
            if labels:
                return self.histogram(name, **labels).count
            return sum(value.count for n, _, value in self.histograms() if n == name)
        with self._lock:
            if labels:
                return self._values.get((name, self._label_values(name, labels)), 0)
            return sum(v for (n, _), v in self._values.items() if n == name)

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        with self._lock:
            items = list(self._values.items())
        return [
            (name, dict(zip(DEFINITIONS[name].labels, values, strict=True)), value)
            for (name, values), value in items
        ]

    @staticmethod
    def _label_values(name: str, labels: dict[str, str]) -> tuple[str, ...]:
        definition = DEFINITIONS[name]
        if labels.keys() != set(definition.labels):
            raise ValueError(f"{name} takes labels {definition.labels}, got {tuple(labels)}")
        return tuple(labels[label] for label in definition.labels)


def _histogram_value(
    bounds: tuple[float, ...], counts: list[int] | None, total: float
) -> HistogramValue:
    counts = counts or [0] * (len(bounds) + 1)
    cumulative: list[tuple[float, int]] = []
    running = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        cumulative.append((bound, running))
    return HistogramValue(tuple(cumulative), total, running)
