"""A Splunk HTTP Event Collector (HEC) on 127.0.0.1 for shipper's Splunk output tests.

It speaks HTTP/1.1 on a real TCP socket and answers as HEC does: tokens (enabled or not, allowed
indexes, a default index, indexer acknowledgement on or off), `/services/collector/event` with
concatenated JSON events parsed strictly, `/raw`, `/ack` and `/health`, the HEC code table, and
`invalid-event-number` with the events before it kept. It can also fail as an overloaded or
unreachable HEC does, on request:

    with FakeSplunk() as hec:
        hec.add_token("tok", indexes=("main", "logs"), use_ack=True)
        client = httpx.Client(base_url=hec.url, headers={"Authorization": "Splunk tok"})
        hec.busy_for(2)                      # the next 2 event/raw requests: 503, code 9
        with hec.busy():                     # every one inside the block, and /health says 18
            ...
        hec.fail_requests(1, status=500)     # 500 {"text":"Internal server error","code":8}
        hec.drop_next(1, after_processing=True)  # indexed, but the answer never comes
        hec.lose_acks(1)                     # the next ackId issued never becomes true
        hec.delay_acks(0.5)                  # acks become true 0.5 s after the request
        with hec.down():                     # connections refused inside the block
            ...
        hec.events("logs")                   # what was indexed, oldest first

Design: the same as tests/fake_elasticsearch.py, whose HTTP/1.1 reading it reuses: a thread per
connection (a test that blocks its event loop must not stop the server answering), all state
behind one lock, waiting by condition (`wait_until`) or polling with a deadline (`until`), never
by sleeping. Standard library only. The Authorization header is recorded redacted, so that a
token cannot leak into an assertion message: requests carry the token's name instead.

HEC facts reproduced here, and where they come from. [doc] = Splunk's documentation (HEC REST
API endpoints, Format events for HEC, About HEC Indexer Acknowledgment); [table] = the code table
of "Troubleshoot HTTP Event Collector" as reproduced in the SplunkAdmins app
(lookups/splunkadmins_hec_reply_code_lookup.csv) and, for 17-27, in several independent HEC
emulations; [anchors] = ../shared/research/anchors.md §3.2 (measurements on Splunk 10.4.3 from a
third-party interop write-up); [3p] = third-party measurements on Splunk 10.4.2 found in public
code (mockdr's HEC validation and release notes; the HECpoc receiver's Splunk-oracle notes);
[vector] = Vector's HEC source and its indexer-ack RFC (observed on Splunk 7.3.2).
- Code table [table]: 0 200 Success; 1 403 Token disabled; 2 401 Token is required; 3 401
  Invalid authorization; 4 403 Invalid token; 5 400 No data; 6 400 Invalid data format; 7 400
  Incorrect index; 8 500 Internal server error; 9 503 Server is busy; 10 400 Data channel is
  missing; 11 400 Invalid data channel; 12 400 Event field is required; 13 400 Event field
  cannot be blank; 14 400 ACK is disabled; 15 400 Error in handling indexed fields; 16 400 Query
  string authorization is not enabled; 17 200 HEC is healthy; 18 503 HEC is unhealthy, queues
  are full; 19 503 HEC is unhealthy, ack service unavailable; 20 503 HEC is unhealthy, queues are
  full, ack service unavailable; 23 503 Server is shutting down. Bodies are compact JSON
  `{"text":...,"code":...}`.
- Endpoints [doc]: `/services/collector`, `/services/collector/event`, `/event/1.0` (JSON
  envelopes), `/raw` (and `/raw/1.0`), `/ack` (and `/ack/1.0`), `/health` (and `/health/1.0`).
  Another path answers 404 `{"text":"The requested URL was not found on this server.",
  "code":404}` [3p].
- Auth [doc][table][3p]: `Authorization: Splunk <token>`, or Basic with the token as password.
  No header: 401/2. Another scheme, or `Splunk` without a token: 401/3. Unknown token: 403/4.
  Disabled token: 403/1. A `?token=` query parameter is validated first (unknown 403/4) and a
  valid one answers 400/16, as with `allowQueryStringAuth` off (the default) [3p]. The token is
  checked before the channel [3p].
- Batches [doc][anchors]: JSON objects back to back, whitespace between them allowed, no
  metadata carried from one to the next. A top-level JSON array is taken as a batch of its
  elements (measured on 10.4.2 [3p]). Events are validated as they are parsed: the first bad
  one, at 0-based position i, ends the request with 400 and `"invalid-event-number": i`; the
  events before it are indexed, it and the rest are not [anchors]. Such an answer has no `ackId`
  even on an acknowledged token, so the events before i are indexed without an ack id to poll.
- Per event: malformed JSON or a non-object: code 6. `event` missing or null: 12; a blank
  string (whitespace only) or an empty object/array: 13 [3p]. `time`: a JSON number or a
  numeric string in plain decimal; anything else, including scientific notation (`1.79E9`),
  is code 15 [anchors][3p]; integers of 13 digits are read as milliseconds and of 19 digits as
  nanoseconds [anchors]. `fields` must be an object (else 6 [3p]); a nested object value is 15
  [anchors]; this server also refuses numbers, booleans, null and arrays holding anything but
  strings with 15 (`strict_fields`, the issue's "string-only fields"; real HEC may coerce
  scalars, which a shipper must not rely on). `index` outside the token's allowed indexes (or
  not an index of this server): code 7. Code 7 reports `invalid-event-number` as position + 1,
  a splunkd quirk measured on 10.4.2 [3p] and visible in Splunk Connect for Syslog's docs (a
  one-event check answered `"invalid-event-number":1`); `incorrect_index_quirk=False` turns it
  off. host/source/sourcetype that are not strings: code 6 (not verified).
- Empty body (or whitespace only): 400/5 No data [table].
- Channels and acks [doc][vector][anchors]: with `useACK`, every event/raw request and every ack
  query needs a channel (`X-Splunk-Request-Channel` header or `?channel=`), else 400/10; a
  channel that is not a GUID: 400/11 (on any token). ackIds count from 0 per channel. The ack
  query is `POST /services/collector/ack` with `{"acks":[ids]}` and answers
  `{"acks":{"<id>":bool}}`; a `true` is reported once and then forgotten (false afterwards);
  ids never issued are false. Ack on a token without useACK: 400/14. `/raw` without a channel
  on a token without useACK answered 200 on 10.4.3 [anchors] while the documentation asks for
  one; `raw_requires_channel=True` (the default, the stricter) answers 400/10 there.
- Health [anchors][table]: `GET /services/collector/health` answers 200/17 without checking any
  token; 503/18 while `busy()` or when `health_code` is set to 18-20 or 23.
- gzip [anchors][3p]: `Content-Encoding: gzip` is accepted on every endpoint; another encoding
  answers 415 with splunkd's generic HTML page; an undecodable gzip body answers 400 with the
  HTML page "Unparsable gzip header in request data" [3p].
- Size [anchors][3p]: `max_content_length` (limits.conf [http_input], 800 MiB by default since
  6.5.0; configurable here) is checked against the declared and the decompressed length; above
  it the answer is 413 with a generic HTML page ("The request your client sent was too large.")
  rather than HEC JSON [3p]. The connection stays usable (the body is read and discarded).
- Defaults for a token without them [doc]: index `main`, source `http:<token name>`, sourcetype
  `httpevent`, host the server's `host_name`.

Not modelled: `auto_extract_timestamp`, sourcetype-driven line breaking on `/raw` (lines are
split on LF, CR stripped, blank lines skipped), metrics events, idle channel clean-up and the
pending-ack limits, codes 21/22/24-27, query-string auth turned on.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import socket
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, BinaryIO, TypeVar
from urllib.parse import parse_qsl, urlsplit

from tests.fake_http import (
    ThreadedHttpServer,
    discard,
    read_chunked,
    read_exactly,
)

_T = TypeVar("_T")
DEFAULT_MAX_CONTENT_LENGTH = 800 * 1024 * 1024  # limits.conf [http_input] max_content_length
_NS = 1_000_000_000

# code -> (HTTP status, text), from the HEC code table.
CODES: dict[int, tuple[int, str]] = {
    0: (200, "Success"),
    1: (403, "Token disabled"),
    2: (401, "Token is required"),
    3: (401, "Invalid authorization"),
    4: (403, "Invalid token"),
    5: (400, "No data"),
    6: (400, "Invalid data format"),
    7: (400, "Incorrect index"),
    8: (500, "Internal server error"),
    9: (503, "Server is busy"),
    10: (400, "Data channel is missing"),
    11: (400, "Invalid data channel"),
    12: (400, "Event field is required"),
    13: (400, "Event field cannot be blank"),
    14: (400, "ACK is disabled"),
    15: (400, "Error in handling indexed fields"),
    16: (400, "Query string authorization is not enabled"),
    17: (200, "HEC is healthy"),
    18: (503, "HEC is unhealthy, queues are full"),
    19: (503, "HEC is unhealthy, ack service unavailable"),
    20: (503, "HEC is unhealthy, queues are full, ack service unavailable"),
    23: (503, "Server is shutting down"),
}
_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    413: "Request Entity Too Large", 415: "Unsupported Media Type", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}  # fmt: skip
_EVENT_PATHS = frozenset(
    {"/services/collector", "/services/collector/event", "/services/collector/event/1.0"}
)
_RAW_PATHS = frozenset({"/services/collector/raw", "/services/collector/raw/1.0"})
_ACK_PATHS = frozenset({"/services/collector/ack", "/services/collector/ack/1.0"})
_HEALTH_PATHS = frozenset({"/services/collector/health", "/services/collector/health/1.0"})
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DECIMAL = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
_NOT_FOUND = {"text": "The requested URL was not found on this server.", "code": 404}


# --- what tests see -----------------------------------------------------------------------------


@dataclass
class Token:
    """An HEC token as configured in inputs.conf (`[http://<name>]`)."""

    value: str
    name: str
    indexes: tuple[str, ...] = ()  # allowed indexes; empty: any index of the server
    default_index: str = "main"
    use_ack: bool = False
    disabled: bool = False
    host: str | None = None
    source: str | None = None
    sourcetype: str | None = None

    def allows(self, index: str) -> bool:
        return not self.indexes or index in self.indexes or index == self.default_index


@dataclass
class Request:
    """One HTTP request as the server received it, and what it answered."""

    method: str
    target: str  # path and query, as on the request line (a `token=` parameter is redacted)
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; Authorization redacted
    body: bytes  # decompressed
    wire_size: int  # body bytes on the wire (compressed size when compressed)
    content_encoding: str | None
    token_name: str | None = None  # the token it authenticated with, if any
    channel: str | None = None
    status: int | None = None  # None: no answer (dropped, or still being processed)
    code: int | None = None  # the HEC code answered, when the body had one
    answer: Any = None  # the JSON body answered
    ack_id: int | None = None
    invalid_event_number: int | None = None
    events_indexed: int = 0
    dropped: bool = False
    number: int = -1  # position in `FakeSplunk.requests`

    @property
    def compressed(self) -> bool:
        return self.content_encoding is not None

    @property
    def body_size(self) -> int:
        return len(self.body)

    @property
    def is_ingest(self) -> bool:
        return self.path in _EVENT_PATHS or self.path in _RAW_PATHS

    @property
    def is_ack(self) -> bool:
        return self.path in _ACK_PATHS


@dataclass
class Event:
    """One indexed event."""

    index: str
    event: Any  # the `event` value as sent (a string for /raw)
    time: Any  # the `time` value as sent; None when absent (then `time_ns` is the receipt time)
    time_ns: int  # the event's time in epoch nanoseconds, as HEC read it
    host: str
    source: str
    sourcetype: str
    fields: dict[str, str | list[str]]
    channel: str | None
    ack_id: int | None  # the ackId of the request (None: no ack, or a request that failed)
    token_name: str
    endpoint: str  # "event" or "raw"
    request: int  # position of the request in `requests`
    position: int  # position of the event in its request
    sequence: int  # server-wide order of indexing


@dataclass
class PendingAck:
    channel: str
    ack_id: int
    request: Request
    ready_at: float | None  # monotonic time it becomes true; None: never (lost)


@dataclass
class AckLoss:
    """A scripted rule: matching ackIds never become true. `remaining` None: all, until cleared."""

    predicate: Callable[[PendingAck], bool]
    remaining: int | None
    hits: int = 0


@dataclass
class RequestFailure:
    """A scripted whole-request answer on ingest requests (or those `predicate` picks)."""

    predicate: Callable[[Request], bool]
    remaining: int | None
    status: int
    body: Any  # JSON value, or bytes sent as is
    hits: int = 0


@dataclass
class _Channel:
    next_ack_id: int = 0
    pending: dict[int, PendingAck] = field(default_factory=dict)


@dataclass
class _Response:
    status: int
    body: Any = None  # JSON value
    raw: bytes | None = None  # an HTML or plain body
    close: bool = False


class HecError(Exception):
    """An HEC answer from the code table; `event_number` adds `invalid-event-number`."""

    def __init__(self, code: int, event_number: int | None = None) -> None:
        super().__init__(CODES[code][1])
        self.code = code
        self.event_number = event_number

    @property
    def status(self) -> int:
        return CODES[self.code][0]

    def body(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"text": CODES[self.code][1], "code": self.code}
        if self.event_number is not None:
            answer["invalid-event-number"] = self.event_number
        return answer


class _RawFloat(float):
    """A JSON number with a fraction or exponent, keeping its text (HEC refuses `1.79E9`)."""

    raw: str

    def __new__(cls, text: str) -> _RawFloat:
        value = super().__new__(cls, text)
        value.raw = text
        return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_float=_RawFloat, parse_constant=_no_constants)


# --- the server ---------------------------------------------------------------------------------


class FakeSplunk(ThreadedHttpServer):
    """The collector. `start()`/`stop()`, or `with`/`async with`. Attributes may be set any time."""

    def __init__(
        self,
        *,
        port: int = 0,
        host_name: str = "splunk",
        indexes: tuple[str, ...] = ("main",),
        max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
        ack_delay: float = 0.0,
        raw_requires_channel: bool = True,
        strict_fields: bool = True,
        incorrect_index_quirk: bool = True,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], int] | None = None,
    ) -> None:
        self.host_name = host_name
        self.indexes: set[str] = set(indexes)
        self.max_content_length = max_content_length
        self.ack_delay = ack_delay  # seconds from the answer until an ackId is true
        self.raw_requires_channel = raw_requires_channel
        self.strict_fields = strict_fields
        self.incorrect_index_quirk = incorrect_index_quirk
        self.health_code: int | None = None  # force /health to answer this code
        self.delay = 0.0  # seconds before every answer
        self._clock = clock or time.monotonic
        self._wall_clock = wall_clock or time.time_ns
        super().__init__(port, name="hec")
        # state
        self.tokens: dict[str, Token] = {}
        self.channels: dict[str, _Channel] = {}
        self._indexed: list[Event] = []
        # introspection
        self.requests: list[Request] = []
        self.statuses: Counter[int] = Counter()  # HTTP statuses answered
        self.codes: Counter[int] = Counter()  # HEC codes answered
        self.acks_reported: list[tuple[str, int]] = []  # (channel, ackId) answered true
        self.internal_errors: list[str] = []  # bugs in this server: tests should assert empty
        # scripts
        self.request_failures: list[RequestFailure] = []
        self.ack_losses: list[AckLoss] = []
        self.acks_held = False
        self._busy = 0  # nesting depth of `busy()`
        self._drops: list[tuple[int, tuple[bool, bool]]] = []  # (remaining, (after, reset))
        self._slow: list[tuple[int, float]] = []  # (remaining, seconds)

    # --- setup -------------------------------------------------------------------------------

    def add_token(
        self,
        value: str,
        *,
        name: str | None = None,
        indexes: tuple[str, ...] = (),
        default_index: str = "main",
        use_ack: bool = False,
        disabled: bool = False,
        host: str | None = None,
        source: str | None = None,
        sourcetype: str | None = None,
    ) -> Token:
        """A token; its allowed and default indexes are created on the server too."""
        token = Token(
            value=value, name=name or f"token{len(self.tokens) + 1}", indexes=tuple(indexes),
            default_index=default_index, use_ack=use_ack, disabled=disabled, host=host,
            source=source, sourcetype=sourcetype,
        )  # fmt: skip
        with self._lock:
            self.tokens[value] = token
            self.indexes.update(token.indexes)
            self.indexes.add(default_index)
        return token

    def add_index(self, name: str) -> None:
        with self._lock:
            self.indexes.add(name)

    # --- scripting ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Inside the block every event/raw request answers 503 code 9 and /health 503 code 18."""
        with self._changed:
            self._busy += 1
        try:
            yield
        finally:
            with self._changed:
                self._busy -= 1

    def busy_for(self, count: int) -> RequestFailure:
        """The next `count` event/raw requests answer 503 `{"text":"Server is busy","code":9}`."""
        return self.fail_requests(count, status=503)

    def fail_requests(
        self,
        count: int | None = 1,
        *,
        status: int = 503,
        code: int | None = None,
        body: Any = None,
        match: Callable[[Request], bool] | None = None,
    ) -> RequestFailure:
        """Answer the next `count` matching requests (default: event/raw) with `status` and do
        nothing else. The body is the table's for `code` (default: 9 for 503, 8 for 500, else
        none), or `body` (JSON value, or bytes sent as is, as a proxy would)."""
        if body is None:
            chosen = code if code is not None else {503: 9, 500: 8}.get(status)
            body = None if chosen is None else HecError(chosen).body()
        rule = RequestFailure(
            predicate=match or (lambda request: request.is_ingest),
            remaining=count,
            status=status,
            body=body,
        )
        with self._lock:
            self.request_failures.append(rule)
        return rule

    def drop_next(
        self, count: int = 1, *, after_processing: bool = False, reset: bool = False
    ) -> None:
        """Read the next `count` requests and close the connection without an answer.

        `after_processing=True` does the work first (events indexed, an ackId issued) and loses
        only the answer. `reset=True` sends a TCP RST instead of a FIN."""
        with self._lock:
            self._drops.append((count, (after_processing, reset)))

    def slow_next(self, count: int, seconds: float) -> None:
        """The next `count` requests are answered `seconds` late (on top of `delay`)."""
        with self._lock:
            self._slow.append((count, seconds))

    def lose_acks(self, which: int | Callable[[PendingAck], bool] = 1) -> AckLoss:
        """AckIds that never become true: the next `which` issued, or every one `which(ack)`
        accepts (until `clear_failures()`)."""
        if isinstance(which, int):
            rule = AckLoss(predicate=lambda _ack: True, remaining=which)
        else:
            rule = AckLoss(predicate=which, remaining=None)
        with self._lock:
            self.ack_losses.append(rule)
        return rule

    def delay_acks(self, seconds: float) -> None:
        """AckIds issued from now on become true `seconds` after their request was answered."""
        with self._lock:
            self.ack_delay = seconds

    @contextlib.contextmanager
    def hold_acks(self) -> Iterator[None]:
        """Inside the block no ackId becomes true; after it, those due are true again."""
        with self._lock:
            self.acks_held = True
        try:
            yield
        finally:
            with self._lock:
                self.acks_held = False

    def complete_acks(self, channel: str | None = None) -> None:
        """Make every pending ackId (of `channel`, or all) true now, lost ones included."""
        with self._lock:
            now = self._clock()
            for name, state in self.channels.items():
                if channel is None or name == channel:
                    for pending in state.pending.values():
                        pending.ready_at = now

    def clear_failures(self) -> None:
        with self._lock:
            self.request_failures.clear()
            self.ack_losses.clear()
            self._drops.clear()
            self._slow.clear()
            self.acks_held = False

    # --- introspection -----------------------------------------------------------------------

    def events(self, index: str | None = None) -> list[Event]:
        """Indexed events (of one index, or all), in the order they were indexed."""
        with self._lock:
            return [e for e in self._indexed if index is None or e.index == index]

    def payloads(self, index: str | None = None) -> list[Any]:
        return [e.event for e in self.events(index)]

    def ingest_requests(self) -> list[Request]:
        with self._lock:
            return [request for request in self.requests if request.is_ingest]

    def ack_requests(self) -> list[Request]:
        with self._lock:
            return [request for request in self.requests if request.is_ack]

    def pending_acks(self, channel: str | None = None) -> list[PendingAck]:
        """AckIds issued and not yet reported true (lost ones included)."""
        with self._lock:
            return [
                pending
                for name, state in self.channels.items()
                if channel is None or name == channel
                for pending in state.pending.values()
            ]

    # --- HTTP --------------------------------------------------------------------------------

    def _answer(
        self,
        sock: socket.socket,
        rfile: BinaryIO,
        method: str,
        target: str,
        headers: dict[str, str],
    ) -> bool:
        """Read the body, answer the request; False when the connection must close."""
        authorization = headers.get("authorization")
        if authorization is not None:
            headers["authorization"] = _redacted(authorization)
        keep_alive = headers.get("connection", "").lower() != "close"
        encoding = headers.get("content-encoding", "").strip().lower() or None
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = None if chunked else int(headers.get("content-length") or 0)
        url = urlsplit(target)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        query_token = query.get("token")
        if query_token is not None:
            query["token"] = "<redacted>"
        request = Request(
            method=method,
            target=target if query_token is None else _redact_query(target),
            path=url.path.rstrip("/") or "/",
            query=query,
            headers=headers,
            body=b"",
            wire_size=length or 0,
            content_encoding=encoding,
        )
        if headers.get("expect", "").lower() == "100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if length is not None and length > self.max_content_length:
            discard(rfile, length)
            self._record(request)
            self._send(sock, request, _too_large())
            return keep_alive
        wire = read_chunked(rfile) if chunked else read_exactly(rfile, length or 0)
        request.wire_size = len(wire)
        if encoding in (None, "identity"):
            request.body = wire
        elif encoding in ("gzip", "x-gzip"):
            try:
                request.body = _gunzip(wire, self.max_content_length)
            except (zlib.error, EOFError):
                self._record(request)
                self._send(sock, request, _bad_gzip())
                return keep_alive
        else:
            self._record(request)
            self._send(sock, request, _unsupported_media())
            return keep_alive
        if len(request.body) > self.max_content_length:
            self._record(request)
            self._send(sock, request, _too_large())
            return keep_alive
        credentials = (authorization, query_token)
        return self._process(sock, request, credentials) and keep_alive

    def _process(
        self, sock: socket.socket, request: Request, credentials: tuple[str | None, str | None]
    ) -> bool:
        with self._lock:
            self._record(request)
            drop = _take(self._drops)
            slow = _take(self._slow)
        delay = self.delay + (slow[1] if slow else 0.0)
        if drop is not None and not drop[1][0]:
            self._drop(sock, request, reset=drop[1][1])
            return False
        try:
            with self._lock:
                response = self._scripted_answer(request) or self._dispatch(request, *credentials)
        except Exception as error:  # noqa: BLE001  (a bug here must not kill the connection thread)
            with self._lock:
                self.internal_errors.append(f"{request.method} {request.target}: {error!r}")
            response = _Response(500, body={"text": f"fake splunk bug: {error!r}", "code": 8})
        if delay > 0 and self._stopping.wait(delay):
            return False  # HEC went down while "busy"
        if drop is not None:
            self._drop(sock, request, reset=drop[1][1])
            return False
        self._send(sock, request, response)
        return not response.close

    def _record(self, request: Request) -> None:
        with self._changed:
            request.number = len(self.requests)
            self.requests.append(request)
            self._changed.notify_all()

    def _drop(self, sock: socket.socket, request: Request, *, reset: bool) -> None:
        with self._changed:
            request.dropped = True
            self._changed.notify_all()
        if reset:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _send(self, sock: socket.socket, request: Request, response: _Response) -> None:
        headers = [("Server", "Splunkd"), ("X-Content-Type-Options", "nosniff")]
        if response.raw is not None:
            payload = response.raw
            if payload.startswith(b"<!doctype html>"):
                headers.append(("Content-Type", "text/html; charset=UTF-8"))
            elif payload:
                headers.append(("Content-Type", "text/plain"))
        elif response.body is None:
            payload = b""
        else:
            payload = json.dumps(response.body, separators=(",", ":")).encode()
            headers.append(("Content-Type", "application/json; charset=UTF-8"))
        headers.append(("Content-Length", str(len(payload))))
        if response.close:
            headers.append(("Connection", "Close"))
        reason = _REASONS.get(response.status, "Unknown")
        head = f"HTTP/1.1 {response.status} {reason}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers
        )
        with self._changed:
            request.status = response.status
            self.statuses[response.status] += 1
            if isinstance(response.body, dict):
                request.answer = response.body
                code = response.body.get("code")
                if isinstance(code, int):
                    request.code = code
                    self.codes[code] += 1
            self._changed.notify_all()
        body = b"" if request.method == "HEAD" else payload
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)

    def _scripted_answer(self, request: Request) -> _Response | None:
        if self._busy and request.is_ingest:
            return _error(HecError(9))
        for rule in self.request_failures:
            if rule.remaining == 0 or not rule.predicate(request):
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
            rule.hits += 1
            if isinstance(rule.body, bytes):
                return _Response(rule.status, raw=rule.body)
            return _Response(rule.status, body=rule.body)
        return None

    # --- HEC ---------------------------------------------------------------------------------

    def _dispatch(
        self, request: Request, authorization: str | None, query_token: str | None
    ) -> _Response:
        try:
            if request.path in _HEALTH_PATHS:
                return self._health()
            if request.method != "POST" or not (request.is_ingest or request.is_ack):
                return _Response(404, body=dict(_NOT_FOUND))
            token = self._authenticate(authorization, query_token)
            request.token_name = token.name
            if query_token is not None:
                self._token(query_token)  # validated first, then refused
                raise HecError(16)
            channel = self._channel(request, token)
            if request.is_ack:
                return self._ack(request, token, channel)
            return self._ingest(request, token, channel)
        except HecError as error:
            return _error(error)

    def _health(self) -> _Response:
        code = self.health_code or (18 if self._busy else 17)
        return _Response(CODES[code][0], body=HecError(code).body())

    def _authenticate(self, authorization: str | None, query_token: str | None) -> Token:
        if authorization is None or not authorization.strip():
            if query_token is not None:
                self._token(query_token)
                raise HecError(16)
            raise HecError(2)
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise HecError(3) from None
            credential = decoded.partition(":")[2]
        elif scheme.lower() != "splunk":
            raise HecError(3)
        if not credential:
            raise HecError(3)
        return self._token(credential)

    def _token(self, value: str) -> Token:
        token = self.tokens.get(value)
        if token is None:
            raise HecError(4)
        if token.disabled:
            raise HecError(1)
        return token

    def _channel(self, request: Request, token: Token) -> str | None:
        channel = request.headers.get("x-splunk-request-channel") or request.query.get("channel")
        if channel is None or channel == "":
            needed = token.use_ack or (request.path in _RAW_PATHS and self.raw_requires_channel)
            if needed:
                raise HecError(10)
            return None
        if not _GUID.match(channel):
            raise HecError(11)
        request.channel = channel
        return channel

    def _ack(self, request: Request, token: Token, channel: str | None) -> _Response:
        if not token.use_ack:
            raise HecError(14)
        assert channel is not None  # _channel() insists when use_ack
        if not request.body.strip():
            raise HecError(5)
        try:
            query = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            raise HecError(6) from None
        ids = query.get("acks") if isinstance(query, dict) else None
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
        ):
            raise HecError(6)
        state = self.channels.setdefault(channel, _Channel())
        now = self._clock()
        answer: dict[str, bool] = {}
        for ack_id in ids:
            pending = state.pending.get(ack_id)
            done = (
                pending is not None
                and not self.acks_held
                and pending.ready_at is not None
                and now >= pending.ready_at
            )
            if done:
                del state.pending[ack_id]
                self.acks_reported.append((channel, ack_id))
            answer[str(ack_id)] = done
        return _Response(200, body={"acks": answer})

    def _ingest(self, request: Request, token: Token, channel: str | None) -> _Response:
        if not request.body.strip():
            raise HecError(5)
        if request.path in _RAW_PATHS:
            events = self._raw_events(request, token)
        else:
            events = []
            try:
                for position, envelope in enumerate(_envelopes(request.body)):
                    events.append(self._event(envelope, token, position))
            except HecError as error:
                self._index(request, token, channel, events, ack_id=None)
                if error.code == 7 and self.incorrect_index_quirk:
                    error.event_number = len(events) + 1
                else:
                    error.event_number = len(events)
                request.invalid_event_number = error.event_number
                raise
        ack_id = self._issue_ack(request, token, channel)
        self._index(request, token, channel, events, ack_id=ack_id)
        answer: dict[str, Any] = {"text": "Success", "code": 0}
        if ack_id is not None:
            answer["ackId"] = ack_id
        return _Response(200, body=answer)

    def _raw_events(self, request: Request, token: Token) -> list[dict[str, Any]]:
        try:
            text = request.body.decode()
        except UnicodeDecodeError:
            raise HecError(6) from None
        lines = [line.rstrip("\r") for line in text.split("\n")]
        lines = [line for line in lines if line.strip()]
        if not lines:
            raise HecError(5)
        keys = ("host", "source", "sourcetype")
        meta: dict[str, Any] = {k: request.query[k] for k in keys if k in request.query}
        index = request.query.get("index") or token.default_index
        if not token.allows(index) or index not in self.indexes:
            raise HecError(7)
        return [{"event": line, **meta, "index": index, "_time_ns": None} for line in lines]

    def _event(self, envelope: Any, token: Token, position: int) -> dict[str, Any]:
        """Validate one envelope; the checked fields, with `_time_ns` added."""
        del position  # the caller counts
        if not isinstance(envelope, dict):
            raise HecError(6)
        value = envelope.get("event")
        if value is None:
            raise HecError(12)
        if (isinstance(value, str) and not value.strip()) or (
            isinstance(value, dict | list) and not value
        ):
            raise HecError(13)
        checked: dict[str, Any] = {"event": value, "_time_ns": None}
        if "time" in envelope:
            checked["time"] = envelope["time"]
            checked["_time_ns"] = _time_ns(envelope["time"])
        for key in ("host", "source", "sourcetype"):
            if key in envelope and envelope[key] is not None:
                if not isinstance(envelope[key], str):
                    raise HecError(6)
                checked[key] = envelope[key]
        if "fields" in envelope:
            checked["fields"] = self._fields(envelope["fields"])
        index = envelope.get("index")
        if index is not None and not isinstance(index, str):
            raise HecError(6)
        index = index or token.default_index
        if not token.allows(index) or index not in self.indexes:
            raise HecError(7)
        checked["index"] = index
        return checked

    def _fields(self, fields: Any) -> dict[str, str | list[str]]:
        if not isinstance(fields, dict):
            raise HecError(6)
        checked: dict[str, str | list[str]] = {}
        for name, value in fields.items():
            if isinstance(value, dict):
                raise HecError(15)
            if isinstance(value, str):
                checked[name] = value
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                checked[name] = list(value)
            elif self.strict_fields:
                raise HecError(15)
            else:
                checked[name] = value if isinstance(value, list) else json.dumps(value)
        return checked

    def _issue_ack(self, request: Request, token: Token, channel: str | None) -> int | None:
        if not token.use_ack or channel is None:
            return None
        state = self.channels.setdefault(channel, _Channel())
        ack_id = state.next_ack_id
        state.next_ack_id += 1
        pending = PendingAck(
            channel=channel,
            ack_id=ack_id,
            request=request,
            ready_at=self._clock() + self.ack_delay,
        )
        for rule in self.ack_losses:
            if rule.remaining == 0 or not rule.predicate(pending):
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
            rule.hits += 1
            pending.ready_at = None
            break
        state.pending[ack_id] = pending
        request.ack_id = ack_id
        return ack_id

    def _index(
        self,
        request: Request,
        token: Token,
        channel: str | None,
        events: list[dict[str, Any]],
        *,
        ack_id: int | None,
    ) -> None:
        received = self._wall_clock()
        endpoint = "raw" if request.path in _RAW_PATHS else "event"
        for position, checked in enumerate(events):
            time_ns = checked["_time_ns"]
            self._indexed.append(
                Event(
                    index=checked["index"],
                    event=checked["event"],
                    time=checked.get("time"),
                    time_ns=received if time_ns is None else time_ns,
                    host=checked.get("host") or token.host or self.host_name,
                    source=checked.get("source") or token.source or f"http:{token.name}",
                    sourcetype=checked.get("sourcetype") or token.sourcetype or "httpevent",
                    fields=checked.get("fields", {}),
                    channel=channel,
                    ack_id=ack_id,
                    token_name=token.name,
                    endpoint=endpoint,
                    request=request.number,
                    position=position,
                    sequence=len(self._indexed),
                )
            )
        request.events_indexed = len(events)


# --- helpers ------------------------------------------------------------------------------------


def _error(error: HecError) -> _Response:
    return _Response(error.status, body=error.body())


def _html(status: int, title: str, message: str) -> _Response:
    page = (
        '<!doctype html><html><head><meta http-equiv="content-type" content="text/html; '
        f'charset=UTF-8"><title>{status} {title}</title></head><body><h1>{title}</h1>'
        f"<p>{message}</p></body></html>\r\n"
    )
    return _Response(status, raw=page.encode())


def _too_large() -> _Response:
    return _html(413, "Content-Length too large", "The request your client sent was too large.")


def _unsupported_media() -> _Response:
    return _html(
        415, "Unsupported Media Type", "The requested URL does not support the media type sent."
    )


def _bad_gzip() -> _Response:
    return _html(400, "Unparsable gzip header in request data", "HTTP Request was malformed.")


def _redacted(authorization: str) -> str:
    scheme, _, _credential = authorization.strip().partition(" ")
    return f"{scheme} <redacted>" if _credential else "<redacted>"


def _redact_query(target: str) -> str:
    return re.sub(r"([?&]token=)[^&]*", r"\1<redacted>", target)


def _gunzip(wire: bytes, limit: int) -> bytes:
    """Decompress, stopping one byte past `limit` (the caller then answers 413)."""
    decompressor = zlib.decompressobj(31)
    data = decompressor.decompress(wire, limit + 1)
    if len(data) <= limit:
        data += decompressor.flush()
        if not decompressor.eof:
            raise EOFError("truncated gzip stream")
    return data


def _envelopes(body: bytes) -> Iterator[Any]:
    """The JSON values of a body, one at a time; HecError(6) at the first that does not parse
    (the caller turns its position into `invalid-event-number`). A top-level array yields its
    elements."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise HecError(6) from None
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return
        try:
            value, position = _DECODER.raw_decode(text, position)
        except (ValueError, RecursionError):
            raise HecError(6) from None
        if isinstance(value, list):
            yield from value
        else:
            yield value


def _time_ns(value: Any) -> int:
    """HEC's reading of `time` in epoch nanoseconds; HecError(15) when it is not a number."""
    if isinstance(value, bool) or value is None:
        raise HecError(15)
    if isinstance(value, int):
        digits = len(str(abs(value)))
        if digits == 19:
            return value  # nanoseconds
        if digits == 13:
            return value * 1_000_000  # milliseconds
        return value * _NS
    if isinstance(value, _RawFloat):
        text = value.raw
    elif isinstance(value, str):
        text = value
    else:
        raise HecError(15)
    if not _DECIMAL.match(text):
        raise HecError(15)  # scientific notation, blanks, words
    try:
        return int(Decimal(text) * _NS)
    except InvalidOperation:
        raise HecError(15) from None


def _take(queue: list[tuple[int, _T]]) -> tuple[int, _T] | None:
    """Consume one use of the first scripted entry (remaining, payload); None when empty."""
    if not queue:
        return None
    remaining, payload = queue[0]
    if remaining <= 1:
        queue.pop(0)
    else:
        queue[0] = (remaining - 1, payload)
    return remaining, payload
