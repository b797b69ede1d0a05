"""Follows the container events of one Docker daemon (`GET /events`), reconnecting forever."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx
import orjson

from shipper.errors import ConfigError
from shipper.telemetry.counters import Telemetry

__all__ = ["ACTIONS", "ContainerEvent", "DockerEvents", "socket_path_from_docker_host"]

log = logging.getLogger(__name__)

ACTIONS: Final = ("create", "start", "die", "destroy", "rename")
"""The container actions delivered; the daemon is asked for these only, and others are ignored."""

# The Engine API's filter syntax: a JSON object of lists, sent as one query parameter.
_FILTERS: Final = orjson.dumps({"type": ["container"], "event": list(ACTIONS)}).decode()

# Events arrive rarely and may be hours apart, so the stream has no read timeout; connecting to a
# local socket that takes longer than this means the daemon is stuck.
_TIMEOUT: Final = httpx.Timeout(5.0, read=None)

# An event is a few hundred bytes (a few KiB with many labels); a "line" far longer than this
# means the stream is not what we think, and buffering it would only grow memory.
MAX_EVENT_BYTES: Final = 1 << 20

_NANOS_PER_SECOND: Final = 1_000_000_000
_UNIX_SCHEME: Final = "unix://"


def socket_path_from_docker_host(docker_host: str) -> str:
    """The unix socket path of `docker_host` ("unix:///path" or "/path"); ConfigError otherwise.

    The message never quotes the value: a tcp URL may carry credentials.
    """
    path = docker_host.removeprefix(_UNIX_SCHEME)
    if path.startswith("/") and path.strip("/"):
        return path
    if "://" in docker_host and not docker_host.startswith(_UNIX_SCHEME):
        scheme = docker_host.split("://", 1)[0]
        got = f"a {scheme}:// address" if scheme.isalnum() else "another kind of address"
    else:
        got = "a relative or empty path"
    raise ConfigError(
        "docker_host: only a local unix socket is supported, as unix:///path/to/docker.sock "
        f"or an absolute path; got {got}"
    )


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    """One container event, reduced to what shipper acts on (no labels, no image)."""

    action: str  # "create" | "start" | "die" | "destroy" | "rename"
    container_id: str
    name: str | None  # the container's name without the leading "/"; for rename, the new one
    time_nano: int  # the daemon's timeNano


class _Unavailable(Exception):
    """The daemon answered, but not with an event stream."""


class DockerEvents:
    """Follows container events of one Docker daemon; run() until cancelled.

    The first subscription asks for no past events (the log files already cover the past).
    After the stream breaks, it resubscribes with `since` = the last event's timeNano, and
    drops the events the daemon sends again: `since` is inclusive (at the nanosecond on
    Docker 20.10, at the second on some daemons), so an event is known by (timeNano, id,
    Action). A daemon that is absent or goes away is retried forever with capped exponential
    backoff and jitter: one warning per outage, one info line when it is back. Docker keeps
    only its last 256 events for `since`: a longer outage can miss some, which the periodic
    rescan of the files makes good.
    """

    def __init__(
        self,
        docker_host: str,
        on_event: Callable[[ContainerEvent], None],
        *,
        telemetry: Telemetry | None = None,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.socket_path = socket_path_from_docker_host(docker_host)
        self._on_event = on_event
        self._telemetry = telemetry
        self._min_backoff = min_backoff
        self._max_backoff = max(max_backoff, min_backoff)
        self.connected = asyncio.Event()
        """Set while subscribed to the event stream; cleared when it breaks."""
        self.subscriptions = 0
        """Successful subscriptions so far (the first one, then one per reconnect)."""
        # A resubscription resumes from the last delivered event, or before any, from the first
        # subscription; neither is known at first, so the first one asks for no past events.
        self._last_event_nano: int | None = None
        self._first_subscribed_nano: int | None = None
        # Keys of the delivered events from the second of `_last_event_nano` on: the only ones
        # a resubscription can send again.
        self._recent: set[tuple[int, str, str]] = set()
        self._in_outage = False

    async def run(self) -> None:
        """Follow the events until cancelled; never raises for a daemon that is down or odd."""
        failures = 0
        transport = httpx.AsyncHTTPTransport(uds=self.socket_path)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://docker", timeout=_TIMEOUT
        ) as client:
            while True:
                subscriptions_before = self.subscriptions
                try:
                    await self._follow(client)
                    reason = "the event stream ended"
                except (httpx.HTTPError, OSError, _Unavailable) as error:
                    reason = f"{type(error).__name__}: {error}"
                finally:
                    self.connected.clear()
                if self.subscriptions != subscriptions_before:
                    failures = 0  # it worked for a while: start again from the short wait
                failures += 1
                delay = self._backoff(failures)
                self._unavailable(reason, delay)
                await asyncio.sleep(delay)

    async def _follow(self, client: httpx.AsyncClient) -> None:
        params = {"filters": _FILTERS}
        resume = self._last_event_nano
        if resume is None:
            resume = self._first_subscribed_nano
        if resume is not None:
            params["since"] = _since_parameter(resume)
        async with client.stream("GET", "/events", params=params) as response:
            if response.status_code != httpx.codes.OK:
                raise _Unavailable(f"GET /events answered HTTP {response.status_code}")
            self._subscribed(response)
            pending = b""
            discarding = False  # inside an over-long line, skipping to its end
            async for data in response.aiter_bytes():
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    if discarding:
                        discarding = False
                    else:
                        self._handle_line(line)
                if len(pending) > MAX_EVENT_BYTES:
                    if not discarding:
                        _skipped("longer than the limit", len(pending))
                    discarding = True
                    pending = b""

    def _subscribed(self, response: httpx.Response) -> None:
        self.subscriptions += 1
        if self._first_subscribed_nano is None:
            # Until an event arrives, a resubscription resumes from now, by the daemon's clock
            # when it says (Date has whole seconds: events of this second from before may come,
            # harmless; none after is missed).
            self._first_subscribed_nano = _daemon_now_nano(response)
        if self.subscriptions > 1 and self._telemetry is not None:
            self._telemetry.inc("shipper_docker_events_reconnects_total")
        if self._in_outage:
            self._in_outage = False
            log.info("Docker events followed again.", extra={"socket": self.socket_path})
        elif self.subscriptions == 1:
            log.info("Following Docker container events.", extra={"socket": self.socket_path})
        self.connected.set()

    def _unavailable(self, reason: str, retry_in: float) -> None:
        fields = {"socket": self.socket_path, "reason": reason, "retry_in": round(retry_in, 3)}
        if self._in_outage:
            log.debug("Docker events still unavailable.", extra=fields)
            return
        self._in_outage = True
        log.warning(
            "Docker events unavailable; retrying. Logs still ship from the files.",
            extra=fields,
        )

    def _backoff(self, failures: int) -> float:
        bound = min(self._max_backoff, self._min_backoff * 2 ** min(failures - 1, 32))
        # Jitter, so several shippers on one host do not knock on the daemon together.
        return random.uniform(bound / 2, bound)  # noqa: S311 - timing jitter, not a secret

    def _handle_line(self, line: bytes) -> None:
        if not line.strip():
            return
        event = _parse_event(line)
        if event is None:
            return
        key = (event.time_nano, event.container_id, event.action)
        if key in self._recent:
            return  # sent again after a resubscription: `since` is inclusive
        self._remember(key)
        if self._telemetry is not None:
            self._telemetry.inc("shipper_docker_events_total", action=event.action)
        try:
            self._on_event(event)
        except Exception:
            # A consumer bug must not stop the events of every other container.
            log.exception(
                "Handling a Docker event failed.",
                extra={"container_id": event.container_id, "action": event.action},
            )

    def _remember(self, key: tuple[int, str, str]) -> None:
        time_nano = key[0]
        last = self._last_event_nano
        if last is None or time_nano > last:
            self._last_event_nano = last = time_nano
            floor = _second_of(last)
            # Keys older than the resume second can never come again: keep the set small.
            self._recent = {kept for kept in self._recent if kept[0] >= floor}
        if time_nano >= _second_of(last):
            self._recent.add(key)


def _parse_event(line: bytes) -> ContainerEvent | None:
    """The event of one line, or None (with a warning when it is not an event at all)."""
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        _skipped("not JSON", len(line))
        return None
    if not isinstance(message, dict):
        _skipped("not a JSON object", len(line))
        return None
    if message.get("Type", "container") != "container":
        return None
    action = message.get("Action") or message.get("status")
    if action not in ACTIONS:
        return None  # e.g. "exec_start: sh" or "health_status: healthy": not ours
    actor = message.get("Actor")
    actor = actor if isinstance(actor, dict) else {}
    attributes = actor.get("Attributes")
    attributes = attributes if isinstance(attributes, dict) else {}
    container_id = actor.get("ID") or message.get("id")
    time_nano = _time_nano(message)
    if not isinstance(container_id, str) or not container_id or time_nano is None:
        _skipped("no container id or time", len(line))
        return None
    return ContainerEvent(action, container_id, _bare_name(attributes.get("name")), time_nano)


def _bare_name(name: object) -> str | None:
    # Events carry names without the "/" that config.v2.json and oldName have; strip it anyway.
    if not isinstance(name, str):
        return None
    return name.lstrip("/") or None


def _time_nano(message: dict[str, Any]) -> int | None:
    time_nano = message.get("timeNano")
    if isinstance(time_nano, int) and not isinstance(time_nano, bool):
        return time_nano
    seconds = message.get("time")  # daemons before API 1.22 had whole seconds only
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        return seconds * _NANOS_PER_SECOND
    return None


def _skipped(reason: str, size: int) -> None:
    # Only the size: an event carries labels and image names, which may hold secrets.
    log.warning("Docker event not understood; skipped.", extra={"reason": reason, "bytes": size})


def _since_parameter(time_nano: int) -> str:
    """`since` as the Engine API takes a Unix time: seconds, a dot, nine digits of nanoseconds."""
    seconds, nanos = divmod(time_nano, _NANOS_PER_SECOND)
    return f"{seconds}.{nanos:09d}"


def _second_of(time_nano: int) -> int:
    return time_nano - time_nano % _NANOS_PER_SECOND


def _daemon_now_nano(response: httpx.Response) -> int:
    date = response.headers.get("date")
    if date:
        try:
            return int(email.utils.parsedate_to_datetime(date).timestamp()) * _NANOS_PER_SECOND
        except (TypeError, ValueError):
            pass  # an odd Date: the local clock is as good (same host)
    return _second_of(time.time_ns())
