"""Readiness: whether the running App ships (started, outputs delivering, reading advancing).

Fluent Bit v2's health check is the anchor: it turns unhealthy when, within one `HC_Period`,
more than `HC_Errors_Count` output errors or `HC_Retry_Failure_Count` retry failures were
counted. Ours differs in three ways, on purpose:
- an output is judged by how long it has failed without a single success in between
  (`output_failing_after`), not by a count per period: a count needs tuning to the traffic (a
  busy host reaches any count in a second of a short outage, a quiet one never does), while a
  duration means the same on every host, and one success proves the destination works again;
- a stuck reader counts too (`reading_stalled_after`): unread bytes that no read advances while
  the memory budget has room, which Fluent Bit's output-only counters cannot see;
- liveness is separate (/livez: the event loop runs), so an orchestrator restarts a hung process
  but only takes a merely unready one out of service.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from shipper.config import HealthConfig
from shipper.sources.following import FollowingSource

if TYPE_CHECKING:
    from shipper.app import App

STARTING = "starting"
MAX_REASONS = 10  # a hung file system stalls every file: name a few, count the rest


@dataclass(frozen=True, slots=True)
class Verdict:
    """Ready or not, and why not (names of outputs and paths; never a secret)."""

    ready: bool
    reasons: tuple[str, ...] = ()


READY = Verdict(True)
NOT_STARTED = Verdict(False, (STARTING,))


class FailingOutput(Protocol):
    """What readiness needs of an output (shipper.pipeline.output.OutputRunner)."""

    @property
    def name(self) -> str: ...

    @property
    def failing_since(self) -> float | None: ...


def assess(app: App | None, now: float, config: HealthConfig) -> Verdict:
    """The readiness of `app` at `now` (time.monotonic()); run on the event loop, where the
    App's state changes, so nothing is read half-updated."""
    if app is None or not app.started.is_set():
        return NOT_STARTED
    reasons = failing_outputs(app.outputs, now, config.output_failing_after)
    stalled: list[tuple[str, float]] = []
    for source in app.sources:
        if isinstance(source, FollowingSource):
            stalled.extend(source.stalled_reads())
    reasons += stalled_reading(stalled, now, config.reading_stalled_after)
    return Verdict(False, tuple(reasons)) if reasons else READY


def failing_outputs(outputs: Iterable[FailingOutput], now: float, after: float) -> list[str]:
    """A reason per output that has failed every attempt for `after` seconds or more."""
    reasons = []
    for output in outputs:
        since = output.failing_since
        if since is not None and now - since >= after:
            reasons.append(f"output {output.name}: every attempt failed for {now - since:.0f}s")
    return reasons


def stalled_reading(stalled: Sequence[tuple[str, float]], now: float, after: float) -> list[str]:
    """Reasons for the files (path, stalled since) whose reading stalled `after` seconds or
    more; past MAX_REASONS, one line counts the others."""
    late = sorted((since, path) for path, since in stalled if now - since >= after)
    reasons = [
        f"reading {path}: unread bytes, no progress for {now - since:.0f}s"
        for since, path in late[:MAX_REASONS]
    ]
    if len(late) > MAX_REASONS:
        reasons.append(f"reading stalled in {len(late) - MAX_REASONS} more file(s)")
    return reasons
