"""A small Docker Engine API server on a real unix socket that answers `/_ping` and `/events` as
dockerd 20.10 does, and can fail as a daemon does: streams cut mid-event, a daemon that is down.

HTTP/1.1 is written by hand on asyncio streams: `/_ping` with Content-Length and keep-alive,
`/events` as a chunked stream with one JSON event plus "\\n" per chunk, flushed at once, as
dockerd's `json.Encoder` + `Flush` writes it. `since` replays the stored events (dockerd keeps its
last 256), `filters` is the Engine API's JSON object of lists (or of `{value: true}` maps).

    async with EngineApi(tmp_path / "docker.sock") as daemon:
        daemon.event("start", container_id, name="web")
        async with daemon.down():          # connections refused until the block ends
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

API_VERSION = "1.41"
SERVER = "Docker/20.10.24+dfsg1 (linux)"
NANOS_PER_SECOND = 1_000_000_000

# The filter keys dockerd accepts for /events (daemon/events/filter.go); the ones this server
# does not evaluate are refused rather than silently ignored, so a test cannot rely on them.
_KNOWN_FILTERS = frozenset(
    {
        "config", "container", "daemon", "event", "image", "label", "network", "node",
        "plugin", "scope", "secret", "service", "type", "volume",
    }
)  # fmt: skip
_EVALUATED_FILTERS = frozenset({"container", "event", "type"})
_VERSIONED_PATH = re.compile(r"^/v\d+\.\d+(/.*)$")
_SINCE = re.compile(r"^(\d+)(?:\.(\d{1,9}))?$")


@dataclass(frozen=True)
class Request:
    """One request as the server saw it: method, unversioned path, query parameters."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class _Subscriber:
    writer: asyncio.StreamWriter
    filters: dict[str, set[str]]


@dataclass
class EngineApi:
    """The server; `start()`/`stop()` or `async with`. Every attribute is safe to read in tests."""

    socket_path: Path
    # dockerd 20.10 compares `since` to the nanosecond; some daemons and proxies only to the
    # second. "second" is the more demanding for a client: more events come again.
    since_precision: Literal["second", "nanosecond"] = "second"
    buffer_size: int = 256  # dockerd's events.eventsLimit
    events_status: int | None = None  # answer /events with this error status instead of a stream
    requests: list[Request] = field(default_factory=list)
    stored: list[dict[str, Any]] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _subscribers: list[_Subscriber] = field(default_factory=list)
    _connections: set[asyncio.StreamWriter] = field(default_factory=set)
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set)
    _last_time_nano: int = 0

    # --- lifetime ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the socket (a stale socket file is replaced, as dockerd does)."""
        if self._server is None:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))

    async def stop(self, *, remove_socket: bool = True) -> None:
        """The daemon goes away: every connection is aborted and new ones are refused.

        dockerd removes its socket file when it stops; a crashed one leaves it behind, and
        connecting then fails with ECONNREFUSED instead of ENOENT (`remove_socket=False`).
        """
        self.drop_streams()
        for writer in list(self._connections):
            writer.transport.abort()
        # The handlers see their connection gone and return; none is left pending at the end.
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if remove_socket:
            self.socket_path.unlink(missing_ok=True)

    @contextlib.asynccontextmanager
    async def down(self, *, remove_socket: bool = True) -> AsyncIterator[None]:
        """The daemon is down inside the block (see `stop`), and up again after it."""
        await self.stop(remove_socket=remove_socket)
        try:
            yield
        finally:
            await self.start()

    async def __aenter__(self) -> EngineApi:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def subscribers(self) -> int:
        """Clients following /events right now."""
        return len(self._subscribers)

    def event_requests(self) -> list[Request]:
        return [request for request in self.requests if request.path == "/events"]

    # --- what the daemon does ---------------------------------------------------------------

    def event(
        self,
        action: str,
        container_id: str,
        *,
        name: str | None = None,
        event_type: str = "container",
        attributes: dict[str, str] | None = None,
        time_nano: int | None = None,
        cut_streams: bool = False,
    ) -> dict[str, Any]:
        """Store an event as dockerd logs it and stream it to the subscribers it matches.

        `time_nano` defaults to now (kept increasing). With `cut_streams`, each subscriber gets
        only the first half of the event's chunk, then its connection is aborted: a daemon
        that dies while writing. The event stays stored, as dockerd had logged it.
        """
        if time_nano is None:
            time_nano = max(time.time_ns(), self._last_time_nano + 1)
        self._last_time_nano = max(self._last_time_nano, time_nano)
        actor_attributes = {"image": "shipper-test-busybox:latest"}
        if name is not None:
            actor_attributes["name"] = name
        actor_attributes.update(attributes or {})
        message: dict[str, Any] = {}
        if event_type == "container":
            # The pre-1.22 fields dockerd still writes for containers.
            message |= {"status": action, "id": container_id, "from": actor_attributes["image"]}
        message |= {
            "Type": event_type,
            "Action": action,
            "Actor": {"ID": container_id, "Attributes": actor_attributes},
            "scope": "local",
            "time": time_nano // NANOS_PER_SECOND,
            "timeNano": time_nano,
        }
        self.stored.append(message)
        del self.stored[: -self.buffer_size]
        data = _event_line(message)
        for subscriber in list(self._subscribers):
            if not _matches(message, subscriber.filters):
                continue
            if cut_streams:
                chunk = _chunk(data)
                subscriber.writer.write(chunk[: len(chunk) // 2])
                self._abort(subscriber)
            else:
                subscriber.writer.write(_chunk(data))
        return message

    def send_raw(self, data: bytes) -> None:
        """Send `data` as one chunk to every subscriber, stored nowhere (a malformed line …)."""
        for subscriber in self._subscribers:
            subscriber.writer.write(_chunk(data))

    def drop_streams(self) -> None:
        """Abort every /events connection now, without the final chunk (clients see a reset)."""
        for subscriber in list(self._subscribers):
            self._abort(subscriber)

    def _abort(self, subscriber: _Subscriber) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(subscriber)
        subscriber.writer.transport.abort()

    # --- HTTP -------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            while await self._answer_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away, or we aborted the connection
        finally:
            self._connections.discard(writer)
            if handler is not None:
                self._handlers.discard(handler)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read and answer one request; False when the connection is done."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        length = int(headers.get("content-length", "0"))
        if length:
            await reader.readexactly(length)
        url = urlsplit(target)
        versioned = _VERSIONED_PATH.match(url.path)
        request = Request(
            method=method,
            path=versioned.group(1) if versioned else url.path,
            query=parse_qs(url.query),
            headers=headers,
        )
        self.requests.append(request)
        if request.path == "/_ping" and method in ("GET", "HEAD"):
            body = b"OK" if method == "GET" else b""
            writer.write(_response_head(200, "text/plain; charset=utf-8", len(b"OK")) + body)
        elif request.path == "/events" and method == "GET":
            await self._stream_events(request, reader, writer)
            return False
        else:
            _write_error(writer, 404, "page not found")
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    async def _stream_events(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.events_status is not None:
            _write_error(writer, self.events_status, "the test wants /events to fail")
            await writer.drain()
            return
        try:
            filters = _parse_filters(request.param("filters"))
            since = self._parse_since(request.param("since"))
        except ValueError as error:
            _write_error(writer, 400, str(error))
            await writer.drain()
            return
        writer.write(_response_head(200, "application/json", None))
        # Replaying and subscribing without an await between: no event can fall in a gap.
        if since is not None:
            for message in self.stored:
                if self._since_covers(since, message["timeNano"]) and _matches(message, filters):
                    writer.write(_chunk(_event_line(message)))
        subscriber = _Subscriber(writer, filters)
        self._subscribers.append(subscriber)
        try:
            await writer.drain()
            # The client sends nothing more: EOF means it closed the stream.
            while await reader.read(65536):
                pass
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(subscriber)

    def _parse_since(self, value: str | None) -> int | None:
        if value is None or value == "":
            return None
        match = _SINCE.match(value)
        if match is None:
            raise ValueError(f"invalid since value {value!r}: want seconds[.nanoseconds]")
        seconds, fraction = match.groups()
        return int(seconds) * NANOS_PER_SECOND + int((fraction or "0").ljust(9, "0"))

    def _since_covers(self, since: int, time_nano: int) -> bool:
        if self.since_precision == "second":
            return time_nano // NANOS_PER_SECOND >= since // NANOS_PER_SECOND
        return time_nano >= since


def _parse_filters(value: str | None) -> dict[str, set[str]]:
    """The Engine API's filters: {"key": ["v", …]} or the older {"key": {"v": true}}."""
    if not value:
        return {}
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid filters: {error}") from error
    if not isinstance(decoded, dict):
        raise ValueError("invalid filters: not a JSON object")
    filters: dict[str, set[str]] = {}
    for key, values in decoded.items():
        if key not in _KNOWN_FILTERS:
            raise ValueError(f"invalid filter '{key}'")
        if key not in _EVALUATED_FILTERS:
            raise ValueError(f"filter '{key}' is not implemented by this test server")
        if isinstance(values, dict):
            filters[key] = {name for name, wanted in values.items() if wanted}
        elif isinstance(values, list) and all(isinstance(v, str) for v in values):
            filters[key] = set(values)
        else:
            raise ValueError(f"invalid filter '{key}': want a list of strings")
    return filters


def _matches(message: dict[str, Any], filters: dict[str, set[str]]) -> bool:
    actor = message["Actor"]
    checks = {
        "type": {message["Type"]},
        "event": {message["Action"]},
        "container": {actor["ID"], actor["Attributes"].get("name", "")},
    }
    return all(not wanted or checks[key] & wanted for key, wanted in filters.items())


def _event_line(message: dict[str, Any]) -> bytes:
    # Go's json.Encoder: compact, HTML characters escaped, one "\n" after each value.
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    return (
        text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n"
    ).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _response_head(status: int, content_type: str, length: int | None) -> bytes:
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}
    lines = [
        f"HTTP/1.1 {status} {reasons.get(status, 'Error')}",
        f"Api-Version: {API_VERSION}",
        f"Content-Type: {content_type}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        "Docker-Experimental: false",
        "Ostype: linux",
        f"Server: {SERVER}",
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _write_error(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    body = (json.dumps({"message": message}) + "\n").encode()
    writer.write(_response_head(status, "application/json", len(body)) + body)
