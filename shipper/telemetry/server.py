"""The monitoring endpoint: Prometheus metrics and liveness/readiness probes over HTTP."""

# Placeholder interface; the metrics/health work replaces it.

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from shipper.config import MonitoringConfig
from shipper.telemetry.counters import Telemetry

if TYPE_CHECKING:
    from shipper.app import App


class MonitoringServer:
    """Serves /metrics, /livez and /readyz for one process, across config reloads."""

    def __init__(self, config: MonitoringConfig, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry

    def start(self) -> None:
        """Listen; a port that cannot be bound is logged and shipper runs on without it."""

    def watch(self, app: App) -> None:
        """The App whose state the probes report from now on (a reload starts a new one)."""

    def stop(self) -> None:
        """Stop listening."""


def probe(path: Path | None, *, live: bool) -> int:
    """`shipper health`: 0 when the running shipper answers ready (or alive), 1 when not."""
    raise NotImplementedError
