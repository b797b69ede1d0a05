"""Every count shipper keeps, declared once by name, readable in-process and exported later."""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass


class Kind(enum.StrEnum):
    COUNTER = "counter"  # only goes up
    GAUGE = "gauge"  # set to the current value


@dataclass(frozen=True, slots=True)
class Definition:
    kind: Kind
    help: str
    labels: tuple[str, ...]


# Prometheus naming: snake_case, unit suffix, `_total` for counters. The metrics endpoint (a later
# issue) exports exactly these; tests read them through `Telemetry.value`.
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
        "Config reloads asked for with SIGHUP, by result: ok (the new config runs) or invalid "
        "(refused; the running config goes on).",
        ("result",),
    ),
}


class Telemetry:
    """In-process values of every declared counter and gauge, by label values.

    Increments happen once per chunk or batch, never per line, so a plain dict is cheap enough.
    A lock guards the rare cross-thread caller (the watchdog thread); the event loop is the main
    writer.
    """

    def __init__(self) -> None:
        self._values: dict[tuple[str, tuple[str, ...]], float] = {}
        self._lock = threading.Lock()

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, self._label_values(name, labels))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        key = (name, self._label_values(name, labels))
        with self._lock:
            self._values[key] = value

    def value(self, name: str, **labels: str) -> float:
        """The value for exactly these labels, or the sum over all series when none are given."""
        if name not in DEFINITIONS:
            raise KeyError(name)
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
