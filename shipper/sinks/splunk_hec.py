"""The `splunk_hec` output: records posted to Splunk's HTTP Event Collector, each answer classified.

Requests. On the `event` endpoint (the default) a request is JSON envelopes back to back, one
per record, all of one index (a batch is grouped by the index each record resolves to, order
kept within each index) and no larger than `max_request_bytes`. On the `raw` endpoint a request
is the records' text, one a line, all of one (index, host, source, sourcetype), those four in
the query string. Every request carries the output's channel (`X-Splunk-Request-Channel`, a
uuid4 per output), which indexer acknowledgement needs and Splunk asks for anyway.

The envelope. `time` is the record's timestamp in epoch seconds with microseconds, a plain
decimal built from the RFC 3339 text with integer arithmetic (HEC keeps microseconds in `_time`;
a float could print `1.7E9`, which HEC refuses); the calendar part is computed once per second
of records. A record before 1970 is sent without `time` (HEC stamps it on arrival). `host`,
`source`, `sourcetype` and `index` are templates of record fields, resolved once per record
group (a container's read) unless they name per-record fields; a value a template cannot
resolve leaves its key out, so the token's default applies. An index from a template must match
`allowed_indexes`, else it is `fallback_index` (or the token's default index). `fields` become
indexed fields, flattened to strings. `event` is the message text, or the whole ECS record as a
JSON object. A record whose message is blank (empty, or only whitespace) is DROPPED in message
mode: HEC refuses blank events (code 13) and there is nothing to index.

Answers (the HEC code table, anchors.md §3.2):
- 200 code 0: DELIVERED, or AWAITING_ACK with indexer acknowledgement (below).
- 503 (codes 9, 18-20, 23), 5xx (code 8), 408, 429: RetryLaterError with the server's
  Retry-After: the Sender backs off while backpressure holds reading.
- 401/403 (codes 1-4), code 16, code 10, code 5, 404: HeldSinkError, saying which option to check
  (never a secret): only an operator can fix these; nothing is dead-lettered, checkpoints wait.
- 400 code 7 (incorrect index): every event of the request has the refused index (requests are
  per index), so none was indexed (whatever `invalid-event-number` says: splunkd reports it one
  too high for code 7). They are sent again at once to `fallback_index` when one is set (and the
  index is remembered as refused for a minute), else DEAD_LETTERED.
- 400 with `invalid-event-number` i (codes 6, 12, 13, 15): HEC indexed the events before i and
  not the rest. Those before i are DELIVERED; event i is DEAD_LETTERED with the code and text;
  the ones after it stay RETRY, so the Sender resends only them. With acknowledgement on, that
  answer carries no ackId: the events before i are counted delivered on the 400's word (HEC took
  them as it takes a 200's events, and asking again would index them twice), counted in
  shipper_hec_unconfirmed_events_total.
- 400 data error naming no event: the request is cut in halves and each half sent, down to
  single events, which are dead-lettered (HEC always names the event for batches; this covers
  a proxy or an older HEC, and the halves may repeat events HEC had taken).
- 413: cut in halves the same way (later requests are cut smaller); a single event HEC still
  finds too large is DEAD_LETTERED.
- Anything else (another status, a 400 that is not HEC's JSON): RETRY (RetryableSinkError),
  within the Sender's attempt limit.
On the raw endpoint HEC's event numbers follow Splunk's line breaking, not our lines, so a data
error there is always cut in halves.

Indexer acknowledgement (`ack.enabled`): a request answered 200 with an `ackId` leaves its
records AWAITING_ACK; the BatchResult's `acknowledged` resolves once every ack of the batch is
settled. One poller task per output asks `/services/collector/ack` every `ack.poll_interval`
for all pending ids of a channel in one request, and settles each `true` at once (HEC reports
it once and then forgets it): those records are DELIVERED. Ids not confirmed within
`ack.timeout` are given up: their records are RETRY, and the Sender sends them again (a
possible duplicate, since HEC has no idempotency: counted in shipper_hec_resent_events_total).
A 200 without `ackId` (the token has indexer acknowledgement off) counts as delivered, said
once at error level. Checkpoints move only when the records are final, so after the ack.
Behind a load balancer the polls must reach the indexer that took the events: the client keeps
the balancer's cookies, which is how Splunk's documentation asks for stickiness.
"""

from __future__ import annotations

import asyncio
import calendar
import gzip
import logging
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from itertools import accumulate
from typing import Any

import certifi
import httpx
import orjson

from shipper import __version__
from shipper.config import HecTemplate, SplunkHecOutputConfig
from shipper.errors import FatalSinkError, HeldSinkError, RetryableSinkError
from shipper.model import Batch, BatchResult, Outcome, RecordGroup, Rejection
from shipper.sinks.ecs import encode_spliced, field_value, record_document
from shipper.sinks.http_common import json_object, retry_after, size_ranges
from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)

EVENT_PATH = "/services/collector/event"
RAW_PATH = "/services/collector/raw"
ACK_PATH = "/services/collector/ack"
HEALTH_PATH = "/services/collector/health"

# What each token refusal means, for the message that says what to check.
_TOKEN_CODES = {
    1: "the token is disabled",
    2: "the request carried no token",
    3: "the Authorization header was not accepted",
    4: "the token is not valid",
}
_BUSY_CODES = frozenset({8, 9, 18, 19, 20, 23})
_INCORRECT_INDEX = 7
# Refusals of an event's content: HEC names the event (`invalid-event-number`) for batches.
_DATA_CODES = frozenset({6, 12, 13, 15})
_INVALID_CHANNEL = 11
_ACK_DISABLED = 14
_MAX_ACK_IDS_PER_POLL = 10_000
_REFUSED_INDEX_SECONDS = 60.0
_MAX_CACHED = 4096
_MAX_REASON = 2000
_MAX_TEXT = 300

# Fields of a record that differ from record to record; the rest come from the container's
# metadata (or are the file's path), shared by a whole group.
_PER_RECORD_HEADS = frozenset({"@timestamp", "message", "stream"})

# Route: (index, host, source, sourcetype); None leaves the key out (the token's default).
Route = tuple[str | None, str | None, str | None, str | None]
_ROUTE_KEYS = (b'"index":', b'"host":', b'"source":', b'"sourcetype":')
_ROUTE_PARAMS = ("index", "host", "source", "sourcetype")


class RetryLaterError(RetryableSinkError):
    """A whole request HEC refused for now (busy, 5xx), with how long it asked us to wait."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _TooLargeError(Exception):
    """HEC answered 413: the body is above its max_content_length."""


@dataclass(slots=True)
class _Answer:
    status: int
    code: int | None
    text: str
    event_number: int | None
    ack_id: int | None
    retry_after: float | None


class _PendingAck:
    """One request's ackId, waiting for HEC to report it indexed."""

    __slots__ = ("deadline", "events", "future")

    def __init__(self, future: asyncio.Future[bool], deadline: float, events: int) -> None:
        self.future = future
        self.deadline = deadline
        self.events = events


class _Progress:
    """The outcomes of one `send` so far, and the acks its requests wait for."""

    __slots__ = ("acks", "answered", "held", "outcomes", "reasons")

    def __init__(self, count: int) -> None:
        self.outcomes = [Outcome.RETRY] * count
        self.reasons: dict[int, str | Rejection] = {}
        self.held: str | None = None
        self.answered = False
        self.acks: list[tuple[_PendingAck, list[int]]] = []


class _Encoded:
    """A batch as request material, one entry per record in `Batch.records()` order: the
    envelope without its route (event: `"time":…,"event":…}`; raw: the line), its route and the
    route's serialised keys. Dropped records have no entry in any request."""

    __slots__ = ("cores", "metas", "routes", "sendable")

    def __init__(self) -> None:
        self.cores: list[bytes] = []
        self.routes: list[Route] = []
        self.metas: list[bytes] = []
        self.sendable: list[int] = []


# -- envelope values --------------------------------------------------------------------------


class _Clock:
    """`time` values from RFC 3339 UTC timestamps, the calendar part cached per second."""

    def __init__(self) -> None:
        self._seconds: dict[str, bytes] = {}

    def epoch(self, timestamp: str) -> bytes:
        """b"<seconds>.<microseconds>", or b"" when the time cannot be sent (before 1970)."""
        head = timestamp[:19]
        seconds = self._seconds.get(head)
        if seconds is None:
            if len(self._seconds) >= _MAX_CACHED:
                self._seconds.clear()
            seconds = self._seconds[head] = _epoch_seconds(head)
        if not seconds:
            return b""
        if len(timestamp) == 30 and timestamp[19] == "." and timestamp[29] == "Z":
            fraction = timestamp[20:26].encode()  # microseconds: what HEC keeps in _time
        else:
            fraction = _fraction(timestamp[19:])
        if not fraction.isdigit():
            return b""
        return seconds + b"." + fraction


def _epoch_seconds(head: str) -> bytes:
    """Epoch seconds of "YYYY-MM-DDTHH:MM:SS" (UTC) as ASCII digits; b"" before 1970 or if the
    text is no valid time."""
    if len(head) != 19 or head[4] != "-" or head[10] != "T":
        return b""
    try:
        moment = datetime(
            int(head[0:4]),
            int(head[5:7]),
            int(head[8:10]),
            int(head[11:13]),
            int(head[14:16]),
            int(head[17:19]),
            tzinfo=UTC,
        )
    except ValueError:
        return b""
    if moment.year < 1970:
        return b""
    return str(calendar.timegm(moment.utctimetuple())).encode()


def _fraction(tail: str) -> bytes:
    """Microseconds from the text after the seconds: ".123Z" → b"123000", "Z" → b"000000";
    b"" for anything else (an offset: records are UTC)."""
    if tail == "Z":
        return b"000000"
    if len(tail) < 3 or tail[0] != "." or tail[-1] != "Z":
        return b""
    digits = tail[1:-1]
    return (digits[:6] + "0" * (6 - len(digits[:6]))).encode() if digits.isdigit() else b""


def epoch_text(timestamp: str) -> str | None:
    """The `time` sent for an RFC 3339 UTC timestamp, or None when none is sent."""
    value = _Clock().epoch(timestamp)
    return value.decode() if value else None


def _group_fields(group: RecordGroup) -> dict[str, Any]:
    """What every record of a group shares: the container's metadata and the file's path."""
    if group.enrichment is not None:
        document = dict(group.enrichment.document)
    else:
        document = {"container": {"id": group.file.container_id}}
    document["log"] = {"file": {"path": group.file.path}}
    return document


def _per_record(path: Sequence[str]) -> bool:
    head = path[0]
    if head in _PER_RECORD_HEADS:
        return True
    if head == "log":  # only the file's path is shared by a group (its offset is not)
        return tuple(path) != ("log", "file", "path")
    return head == "docker" and (len(path) < 2 or path[1] == "attrs")


def _text(value: Any) -> str | None:
    """A scalar as envelope text; None for what is missing or not a scalar."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return orjson.dumps(value).decode()
    return None


def _flat(value: Any) -> str | list[str] | None:
    """An indexed field's value as HEC takes it: a string, or a list of strings."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        items = [_flat_item(item) for item in value if item is not None]
        return items or None
    return _flat_item(value)


def _flat_item(value: Any) -> str:
    text = _text(value)
    return text if text is not None else orjson.dumps(value, default=str).decode()


class _Router:
    """Each record's route (index, host, source, sourcetype) and indexed fields."""

    def __init__(self, config: SplunkHecOutputConfig) -> None:
        self._templates = (config.index, config.host, config.source, config.sourcetype)
        index = config.index
        self._index_fields = index is not None and bool(index.fields)
        self._allowed = tuple(config.allowed_indexes)
        self._fallback = config.fallback_index
        self._fields = [(name, tuple(path.split("."))) for name, path in config.fields.items()]
        paths = [p for t in self._templates if t is not None for p in t.fields]
        paths += [path for _, path in self._fields]
        self._any_fields = bool(paths)
        self._per_record = any(_per_record(path) for path in paths)
        self._refused: dict[str, float] = {}  # index -> until (monotonic) it is taken as refused
        self._metas: dict[Route, bytes] = {}

    def resolve(
        self, group: RecordGroup, indices: Sequence[int]
    ) -> tuple[list[Route], list[bytes]]:
        """The route and the `,"fields":{…}` text (or b"") of each chosen record."""
        if self._any_fields and (self._per_record or group.documents is not None):
            routes: list[Route] = []
            fields: list[bytes] = []
            for i in indices:
                document = record_document(group, i)
                routes.append(self._route(document))
                fields.append(self._indexed_fields(document))
            return routes, fields
        document = _group_fields(group) if self._any_fields else {}
        count = len(indices)
        return [self._route(document)] * count, [self._indexed_fields(document)] * count

    def meta(self, route: Route) -> bytes:
        """The route's envelope keys, serialised once: `"index":"x","host":"h",…,`."""
        meta = self._metas.get(route)
        if meta is None:
            if len(self._metas) >= _MAX_CACHED:
                self._metas.clear()  # hostile labels must not grow memory without bound
            meta = self._metas[route] = b"".join(
                key + orjson.dumps(value) + b","
                for key, value in zip(_ROUTE_KEYS, route, strict=True)
                if value is not None
            )
        return meta

    def refuse(self, index: str) -> None:
        """HEC refused `index` for this token (code 7): route straight to the fallback."""
        if len(self._refused) >= _MAX_CACHED:
            self._refused.clear()
        self._refused[index] = time.monotonic() + _REFUSED_INDEX_SECONDS

    @property
    def fallback(self) -> str | None:
        return self._fallback

    def _route(self, document: Mapping[str, Any]) -> Route:
        index_template, host, source, sourcetype = self._templates
        index = self._index(document, index_template)
        return (
            index,
            _render(host, document),
            _render(source, document),
            _render(sourcetype, document),
        )

    def _index(self, document: Mapping[str, Any], template: HecTemplate | None) -> str | None:
        if template is None:
            return None
        if not self._index_fields:
            name: str | None = template.text
        else:
            name = _render(template, document, index=True)
            # A label's value is chosen by whoever starts the container: it may only name an
            # index the configuration allows.
            if name is None or not any(fnmatchcase(name, glob) for glob in self._allowed):
                name = self._fallback
        if name is not None and self._refused and name != self._fallback:
            until = self._refused.get(name)
            if until is not None:
                if time.monotonic() < until:
                    return self._fallback
                del self._refused[name]
        return name

    def _indexed_fields(self, document: Mapping[str, Any]) -> bytes:
        if not self._fields:
            return b""
        values = {}
        for name, path in self._fields:
            value = _flat(field_value(document, path))
            if value is not None:
                values[name] = value
        return b',"fields":' + orjson.dumps(values) if values else b""


_INDEX_VALUE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def _render(
    template: HecTemplate | None, document: Mapping[str, Any], *, index: bool = False
) -> str | None:
    if template is None:
        return None
    text: list[str] = []
    for part in template.parts:
        if isinstance(part, str):
            text.append(part)
            continue
        value = _text(field_value(document, part))
        if value is None or not value:
            return None
        if index:
            value = value.lower()
            if not _INDEX_VALUE_CHARS.issuperset(value):
                return None
        text.append(value)
    name = "".join(text)
    if index and name[:1] in ("", "_", "-"):
        return None
    return name


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _code_label(code: int | None) -> str:
    if code is None:
        return ""
    return str(code) if 0 <= code <= 99 else "other"


def _tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "[SSL" in str(exc) or "CERTIFICATE_VERIFY_FAILED" in str(exc)


class SplunkHecSink:
    """Sends records to Splunk HEC; with indexer acknowledgement, each is final only once
    Splunk confirms it indexed (see the module docstring for the whole contract)."""

    def __init__(
        self,
        config: SplunkHecOutputConfig,
        *,
        name: str = "splunk_hec",
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self._telemetry = telemetry or Telemetry()
        self._router = _Router(config)
        self._clock = _Clock()
        self._client: httpx.AsyncClient | None = None
        self._secrets: tuple[str, ...] = ()
        self._channel = str(uuid.uuid4())
        self._raw = config.endpoint == "raw"
        self._path = RAW_PATH if self._raw else EVENT_PATH
        self._record_mode = config.event == "record"
        # Lowered when HEC answers 413: it accepts less than configured.
        self._max_body = config.max_request_bytes
        self._gzip_level = config.compression.level if config.compression.enabled else None
        self._content_type = "text/plain; charset=utf-8" if self._raw else "application/json"
        self._acks = config.ack.enabled
        self._pending: dict[str, dict[int, _PendingAck]] = {}  # channel -> ackId -> waiter
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._confirmations: set[asyncio.Task[BatchResult]] = set()
        self._said_no_ack_id = False
        self._poll_problem: str | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        token = await asyncio.to_thread(self.read_token)
        self._secrets = tuple(
            sorted({s for s in (f"Splunk {token}", token) if len(s) >= 4}, key=len, reverse=True)
        )
        try:
            context = await asyncio.to_thread(self._ssl_context)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise FatalSinkError(
                f"output {self.name}: cannot set up TLS (tls.ca_file, tls.client_cert, "
                f"tls.client_key): {self._scrub(str(exc))}"
            ) from None
        headers = {
            **self.config.headers,
            "Authorization": f"Splunk {token}",
            "User-Agent": f"shipper/{__version__}",
        }
        self._client = httpx.AsyncClient(
            base_url=self.config.url,
            headers=headers,
            verify=context,
            http2=False,
            timeout=httpx.Timeout(self.config.timeout),
            follow_redirects=False,
        )
        if not self.config.tls.verify:
            log.warning(
                "TLS certificate verification is off: anyone on the path can read and change "
                "what is sent.",
                extra={"output": self.name},
            )
        await self._check_health(self._client)
        if self._acks:
            self._poller = asyncio.create_task(self._poll_acks(), name=f"hec-acks:{self.name}")

    async def close(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        # Whoever still waits for an ack gets a cancellation: its records are not final, so
        # no checkpoint moves past them and the next start reads them again.
        for pending in self._pending.values():
            for waiter in pending.values():
                waiter.future.cancel()
        self._pending.clear()
        confirmations = list(self._confirmations)
        for task in confirmations:
            task.cancel()
        await asyncio.gather(*confirmations, return_exceptions=True)
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def read_token(self) -> str:
        """The HEC token, read from `token_file` where so configured."""
        config = self.config
        if config.token is not None:
            return config.token.get_secret_value().strip()
        path = config.token_file
        if path is None:  # the config requires one of them
            raise FatalSinkError(f"output {self.name}: give `token` or `token_file`")
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise FatalSinkError(
                f"output {self.name}: cannot read token_file {path}: {reason}"
            ) from None
        if not value:
            raise FatalSinkError(f"output {self.name}: token_file {path} is empty")
        return value

    def _ssl_context(self) -> ssl.SSLContext:
        tls = self.config.tls
        context = ssl.create_default_context(
            cafile=str(tls.ca_file) if tls.ca_file is not None else certifi.where()
        )
        if not tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tls.client_cert is not None:
            key = str(tls.client_key) if tls.client_key is not None else None
            context.load_cert_chain(str(tls.client_cert), key)
        return context

    async def _check_health(self, client: httpx.AsyncClient) -> None:
        """Say at start whether HEC answers; never refuse to start over it (sending retries)."""
        where = {"output": self.name, "url": self.config.url}
        try:
            response = await client.get(HEALTH_PATH)
        except httpx.HTTPError as exc:
            log.warning(
                "Splunk HEC is not reachable%s; sending will retry until it is.",
                " (check tls.ca_file and the host name in `url`)" if _tls_failure(exc) else "",
                extra={**where, "error": self._describe(exc)},
            )
            return
        body = json_object(response.content)
        code = _int(body.get("code"))
        text = self._scrub(str(body.get("text", "")))[:_MAX_TEXT]
        if response.status_code == 200:
            log.info(
                "Splunk HEC is healthy. The health check does not check the token: a refused "
                "token shows at the first send, as an error that holds the data.",
                extra=where,
            )
        elif response.status_code == 404:
            log.warning(
                "No Splunk HEC at this URL (404 on /services/collector/health): check `url` "
                "(the base URL, e.g. https://splunk.example.com:8088) and that HEC is enabled; "
                "sending will retry.",
                extra=where,
            )
        else:
            log.warning(
                "Splunk HEC says it is unhealthy; sending will retry until it takes data.",
                extra={**where, "status": response.status_code, "code": code, "text": text},
            )

    # -- sending ----------------------------------------------------------------------------

    async def send(self, batch: Batch) -> BatchResult:
        client = self._client
        if client is None:
            raise RuntimeError(f"output {self.name}: send() before open()")
        encoded = self._encode(batch)
        progress = _Progress(len(encoded.cores))
        for position in range(len(encoded.cores)):
            if not encoded.cores[position]:
                progress.outcomes[position] = Outcome.DROPPED
        try:
            for positions in self._partitions(encoded):
                for chunk in self._requests(encoded, positions):
                    await self._send_positions(client, encoded, chunk, progress)
        except RetryableSinkError as exc:
            if not progress.answered:
                raise
            # Earlier requests of this batch were answered: keep their outcomes and let the
            # Sender resend only the rest.
            if isinstance(exc, HeldSinkError) and progress.held is None:
                progress.held = str(exc)
        result = BatchResult(list(progress.outcomes), progress.reasons, held=progress.held)
        if progress.acks:
            task = asyncio.create_task(self._confirm(progress))
            self._confirmations.add(task)
            task.add_done_callback(self._confirmations.discard)
            result.acknowledged = task
        return result

    def _encode(self, batch: Batch) -> _Encoded:
        encoded = _Encoded()
        router = self._router
        epoch = self._clock.epoch
        cores = encoded.cores
        for group, indices in zip(batch.groups, batch.selection, strict=True):
            if not indices:
                continue
            routes, fields = router.resolve(group, indices)
            events = self._events(group, indices)
            timestamps = group.timestamps
            if self._raw:
                cores.extend(events)
            else:
                for i, event, extra in zip(indices, events, fields, strict=True):
                    if not event:
                        cores.append(b"")
                        continue
                    moment = epoch(timestamps[i])
                    if moment:
                        cores.append(b'"time":%b,"event":%b%b}' % (moment, event, extra))
                    else:
                        cores.append(b'"event":%b%b}' % (event, extra))
            encoded.routes.extend(routes)
            metas = {route: router.meta(route) for route in set(routes)}
            encoded.metas.extend([metas[route] for route in routes])
        encoded.sendable = [n for n, core in enumerate(cores) if core]
        return encoded

    def _events(self, group: RecordGroup, indices: Sequence[int]) -> list[bytes]:
        """The `event` of each chosen record (JSON on /event, the line on /raw); b"" for a
        blank message, which is not sent."""
        if self._record_mode:
            documents = group.documents
            if documents is not None:
                # Processed records: one finished line each, made sure to be one line.
                return [documents[i].removesuffix(b"\n").replace(b"\n", b" ") for i in indices]
            # Spliced from orjson output, which escapes every newline: one split finds them.
            docs = encode_spliced(group, indices).split(b"\n")
            if len(docs) == len(indices) + 1:
                del docs[-1]
                return docs
            return [  # a raw newline after all (a bug upstream): keep every record framed
                encode_spliced(group, (i,)).removesuffix(b"\n").replace(b"\n", b" ")
                for i in indices
            ]
        messages: Sequence[str] | dict[int, str] = group.messages
        if group.documents is not None:
            messages = _processed_messages(group, indices)
        events: list[bytes] = []
        append = events.append
        if self._raw:
            for i in indices:
                message = messages[i]
                if message and not message[0].isspace() and not message[-1].isspace():
                    append(message.encode("utf-8", "replace"))
                else:
                    append(message.encode("utf-8", "replace") if message.strip() else b"")
            return events
        dumps = orjson.dumps
        for i in indices:
            message = messages[i]
            if message and not message[0].isspace() and not message[-1].isspace():
                append(dumps(message))
            else:
                append(dumps(message) if message.strip() else b"")
        return events

    def _partitions(self, encoded: _Encoded) -> Iterator[list[int]]:
        """Positions of the records each request may hold together, in order: one index per
        event request; one whole route per raw request."""
        routes = encoded.routes
        parts: dict[Any, list[int]] = {}
        for position in encoded.sendable:
            route = routes[position]
            key = route if self._raw else route[0]
            part = parts.get(key)
            if part is None:
                part = parts[key] = []
            part.append(position)
        yield from parts.values()

    def _size(self, encoded: _Encoded, position: int) -> int:
        if self._raw:
            return len(encoded.cores[position]) + 1
        return len(encoded.metas[position]) + len(encoded.cores[position]) + 2

    def _requests(self, encoded: _Encoded, positions: list[int]) -> Iterator[list[int]]:
        """Consecutive runs of `positions` whose request bodies stay within the size limit."""
        ends = list(accumulate(self._size(encoded, p) for p in positions))
        for start, end in size_ranges(ends, self._max_body):
            yield positions[start:end]

    def _body(self, encoded: _Encoded, positions: list[int]) -> bytes:
        cores = encoded.cores
        if self._raw:
            return b"\n".join([cores[p] for p in positions]) + b"\n"
        metas = encoded.metas
        return b"\n".join([b"{" + metas[p] + cores[p] for p in positions])

    async def _send_positions(
        self,
        client: httpx.AsyncClient,
        encoded: _Encoded,
        positions: list[int],
        progress: _Progress,
    ) -> None:
        body = self._body(encoded, positions)
        route = encoded.routes[positions[0]]
        try:
            answer = await self._post(client, body, route)
        except _TooLargeError:
            if len(positions) == 1:
                self._reject(
                    progress,
                    positions[0],
                    Rejection(
                        f"413: the event ({len(body)} bytes) is larger than HEC accepts "
                        "(max_content_length in limits.conf [http_input])",
                        status=413,
                        error_type="request_entity_too_large",
                    ),
                )
                progress.answered = True
                return
            self._lower_limit(len(body))
            await self._split(client, encoded, positions, progress, "too_large")
            return
        await self._classify(client, encoded, positions, answer, progress)
        progress.answered = True

    async def _split(
        self,
        client: httpx.AsyncClient,
        encoded: _Encoded,
        positions: list[int],
        progress: _Progress,
        reason: str,
    ) -> None:
        self._telemetry.inc("shipper_hec_splits_total", output=self.name, reason=reason)
        middle = len(positions) // 2
        await self._send_positions(client, encoded, positions[:middle], progress)
        await self._send_positions(client, encoded, positions[middle:], progress)

    async def _classify(
        self,
        client: httpx.AsyncClient,
        encoded: _Encoded,
        positions: list[int],
        answer: _Answer,
        progress: _Progress,
    ) -> None:
        status, code = answer.status, answer.code
        if status == 200 and code == 0:
            self._accepted(positions, answer.ack_id, progress)
            return
        if code in _TOKEN_CODES or status in (401, 403):
            raise self._token_refused(answer)
        if status in (408, 429) or status >= 500 or code in _BUSY_CODES:
            raise RetryLaterError(
                f"Splunk HEC is busy or failing ({self._detail(answer)})", answer.retry_after
            )
        if status == 404:
            raise HeldSinkError(
                f"no Splunk HEC endpoint at {self.config.url}{self._path} (404): check `url` "
                "(the base URL, e.g. https://splunk.example.com:8088) and that HEC is enabled"
            )
        if status != 400:
            raise RetryableSinkError(f"Splunk HEC answered {self._detail(answer)}")
        if code == _INCORRECT_INDEX:
            await self._incorrect_index(client, encoded, positions, answer, progress)
        elif code == _INVALID_CHANNEL:
            self._channel = str(uuid.uuid4())
            raise RetryableSinkError(
                f"Splunk HEC refused the data channel ({self._detail(answer)}); a new one is used"
            )
        elif code == 10:
            raise HeldSinkError(
                f"Splunk HEC says the data channel is missing ({self._detail(answer)}) although "
                "every request carries X-Splunk-Request-Channel: a proxy in between may drop it"
            )
        elif code == 16:
            raise HeldSinkError(
                f"Splunk HEC refused the request ({self._detail(answer)}): shipper sends the "
                "token in the Authorization header; a proxy in between may rewrite it"
            )
        elif code == 5:
            raise HeldSinkError(
                f"Splunk HEC says the request held no data ({self._detail(answer)}) although it "
                f"held {len(positions)} events: a proxy in between may drop request bodies"
            )
        elif code in _DATA_CODES or (code is not None and answer.event_number is not None):
            await self._data_error(client, encoded, positions, answer, progress)
        else:
            # Not HEC's word on the events (a proxy's page, an undecodable body): no reason to
            # think any event is bad, so nothing is dead-lettered.
            raise RetryableSinkError(f"Splunk HEC refused the request ({self._detail(answer)})")

    def _accepted(self, positions: list[int], ack_id: int | None, progress: _Progress) -> None:
        outcomes = progress.outcomes
        if not self._acks:
            for position in positions:
                outcomes[position] = Outcome.DELIVERED
            return
        if ack_id is None:
            self._unconfirmed(positions, progress)
            if not self._said_no_ack_id:
                self._said_no_ack_id = True
                log.error(
                    "ack.enabled is set but Splunk HEC returned no ackId: the token does not "
                    "have indexer acknowledgement on (useACK). Records count as delivered once "
                    "HEC accepts them.",
                    extra={"output": self.name},
                )
            return
        waiter = self._await_ack(ack_id, len(positions))
        progress.acks.append((waiter, positions))
        for position in positions:
            outcomes[position] = Outcome.AWAITING_ACK

    def _unconfirmed(self, positions: Sequence[int], progress: _Progress) -> None:
        for position in positions:
            progress.outcomes[position] = Outcome.DELIVERED
        if self._acks and positions:
            self._telemetry.inc(
                "shipper_hec_unconfirmed_events_total", len(positions), output=self.name
            )

    async def _incorrect_index(
        self,
        client: httpx.AsyncClient,
        encoded: _Encoded,
        positions: list[int],
        answer: _Answer,
        progress: _Progress,
    ) -> None:
        # Every event of this request names the same index, so the first one already failed
        # and none was indexed: `invalid-event-number` is not used (splunkd reports it one too
        # high for this code).
        index = encoded.routes[positions[0]][0]
        fallback = self._router.fallback
        if fallback is not None and index != fallback:
            if index is not None:
                self._router.refuse(index)
            log.warning(
                "Splunk HEC refuses an index for this token (code 7); its events go to "
                "fallback_index.",
                extra={"output": self.name, "index": index, "fallback_index": fallback},
            )
            self._telemetry.inc(
                "shipper_hec_rerouted_events_total", len(positions), output=self.name
            )
            for position in positions:
                _, host, source, sourcetype = encoded.routes[position]
                route: Route = (fallback, host, source, sourcetype)
                encoded.routes[position] = route
                encoded.metas[position] = self._router.meta(route)
            await self._send_positions(client, encoded, positions, progress)
            return
        reason = Rejection(
            f"400 code 7 {answer.text}: the token may not write to index {index} (add it to the "
            "token's allowed indexes, or set fallback_index)"[:_MAX_REASON],
            status=400,
            error_type="code 7",
        )
        for position in positions:
            self._reject(progress, position, reason)

    async def _data_error(
        self,
        client: httpx.AsyncClient,
        encoded: _Encoded,
        positions: list[int],
        answer: _Answer,
        progress: _Progress,
    ) -> None:
        """A 400 refusing an event's content (codes 6, 12, 13, 15, or another)."""
        number = None if self._raw else answer.event_number
        if number is not None and 0 <= number < len(positions):
            # HEC indexed the events before it, and not it or any after it.
            self._unconfirmed(positions[:number], progress)
            self._reject(progress, positions[number], self._data_rejection(answer))
            return  # the rest stay RETRY: the Sender resends only them
        if len(positions) == 1:
            self._reject(progress, positions[0], self._data_rejection(answer))
            return
        await self._split(client, encoded, positions, progress, "data_error")

    def _data_rejection(self, answer: _Answer) -> Rejection:
        code = f"code {answer.code}" if answer.code is not None else "no code"
        return Rejection(
            f"{answer.status} {code}: {answer.text or 'refused by Splunk HEC'}"[:_MAX_REASON],
            status=answer.status,
            error_type=code,
        )

    @staticmethod
    def _reject(progress: _Progress, position: int, reason: Rejection) -> None:
        progress.outcomes[position] = Outcome.DEAD_LETTERED
        progress.reasons[position] = reason

    async def check_token(self) -> str | None:
        """For `shipper test-output`, after `open()`: None if HEC accepts this output's token,
        else why not. Sends an empty body, which HEC answers "No data" (code 5) once the token
        passed (it checks the token first), so nothing is indexed."""
        client = self._client
        if client is None:
            raise RuntimeError(f"output {self.name}: check_token() before open()")
        try:
            response = await client.post(
                "/services/collector/event",
                content=b"",
                headers={"X-Splunk-Request-Channel": self._channel},
            )
        except httpx.HTTPError as exc:
            return f"cannot reach Splunk HEC: {self._scrub(type(exc).__name__ + ': ' + str(exc))}"
        answer = self._answer(response)
        if answer.code in _TOKEN_CODES or answer.status in (401, 403):
            return str(self._token_refused(answer))
        if answer.code == 5 or (answer.status == 200 and answer.code == 0):
            return None
        return f"unexpected answer from HEC ({self._detail(answer)})"

    def _token_refused(self, answer: _Answer) -> HeldSinkError:
        option = (
            f"`token_file` ({self.config.token_file})"
            if self.config.token_file is not None
            else "`token`"
        )
        what = _TOKEN_CODES.get(answer.code or -1, "the token was refused")
        return HeldSinkError(
            f"Splunk HEC refuses this output's token ({self._detail(answer)}): {what}. Check "
            f"{option} (the token's value alone, without `Splunk `) and that the token is "
            "enabled in Splunk (Settings > Data inputs > HTTP Event Collector)"
        )

    def _detail(self, answer: _Answer) -> str:
        code = f", code {answer.code}" if answer.code is not None else ""
        text = f": {answer.text}" if answer.text else ""
        return f"{answer.status}{code}{text}"

    async def _post(self, client: httpx.AsyncClient, body: bytes, route: Route) -> _Answer:
        """Send one request; HEC's answer, or raise what the whole request met."""
        sent = body
        headers = {"Content-Type": self._content_type, "X-Splunk-Request-Channel": self._channel}
        if self._gzip_level is not None:
            # zlib lets go of the GIL: compressing off the event loop keeps reading.
            sent = await asyncio.to_thread(gzip.compress, body, self._gzip_level, mtime=0)
            headers["Content-Encoding"] = "gzip"
        params: dict[str, str] | None = None
        if self._raw:
            params = {"channel": self._channel}
            for key, value in zip(_ROUTE_PARAMS, route, strict=True):
                if value is not None:
                    params[key] = value
        self._telemetry.inc("shipper_hec_request_bytes_total", len(body), output=self.name)
        self._telemetry.inc("shipper_hec_request_sent_bytes_total", len(sent), output=self.name)
        response = await self._request(client, self._path, sent, headers, params)
        if response.status_code == 413:
            self._count_request("413", None)
            raise _TooLargeError
        answer = self._answer(response)
        self._count_request(str(answer.status), answer.code)
        if answer.status == 200 and answer.code != 0:
            # Never count a record delivered without HEC's own word for it (a proxy's page).
            raise RetryableSinkError(
                "Splunk HEC answered 200 without its success code: is `url` Splunk HEC?"
            )
        return answer

    async def _request(
        self,
        client: httpx.AsyncClient,
        path: str,
        content: bytes,
        headers: dict[str, str],
        params: dict[str, str] | None,
        *,
        counter: str = "shipper_hec_requests_total",
    ) -> httpx.Response:
        """POST; a failure to get an answer is counted in `counter` and raised as the
        Sender's kind of error."""

        def failed(status: str) -> None:
            if counter == "shipper_hec_requests_total":
                self._count_request(status, None)
            else:
                self._telemetry.inc(counter, output=self.name, status=status)

        try:
            return await client.post(path, content=content, headers=headers, params=params)
        except httpx.TimeoutException:
            failed("timeout")
            raise RetryableSinkError(
                f"no answer from Splunk HEC within {self.config.timeout:g}s"
            ) from None
        except httpx.HTTPError as exc:
            if _tls_failure(exc):
                failed("tls_error")
                raise HeldSinkError(
                    f"TLS with Splunk HEC failed ({self._describe(exc)}): check tls.ca_file, "
                    "tls.client_cert and the host name in `url`"
                ) from None
            failed("connection_error" if isinstance(exc, httpx.TransportError) else "error")
            raise RetryableSinkError(f"cannot reach Splunk HEC: {self._describe(exc)}") from None

    def _answer(self, response: httpx.Response) -> _Answer:
        body = json_object(response.content)
        text = body.get("text")
        return _Answer(
            status=response.status_code,
            code=_int(body.get("code")),
            text=self._scrub(str(text))[:_MAX_TEXT] if text is not None else "",
            event_number=_int(body.get("invalid-event-number")),
            ack_id=_int(body.get("ackId")),
            retry_after=retry_after(response.headers.get("retry-after")),
        )

    def _lower_limit(self, refused: int) -> None:
        limit = max(refused // 2, 1)
        if limit < self._max_body:
            self._max_body = limit
            log.warning(
                "Splunk HEC refused a request as too large (413); later requests are cut smaller.",
                extra={"output": self.name, "refused_bytes": refused, "max_request_bytes": limit},
            )

    # -- indexer acknowledgement ------------------------------------------------------------

    def _await_ack(self, ack_id: int, events: int) -> _PendingAck:
        pending = self._pending.setdefault(self._channel, {})
        older = pending.pop(ack_id, None)
        if older is not None:
            # HEC handed this id out again (it restarted and counts from 0): a `true` could no
            # longer tell which request it confirms, so the older one is sent again.
            self._settle(older, confirmed=False, result="superseded")
        loop = asyncio.get_running_loop()
        waiter = _PendingAck(
            loop.create_future(), time.monotonic() + self.config.ack.timeout, events
        )
        pending[ack_id] = waiter
        self._wake.set()
        return waiter

    def _settle(self, waiter: _PendingAck, *, confirmed: bool, result: str) -> None:
        if not waiter.future.done():
            waiter.future.set_result(confirmed)
        self._telemetry.inc("shipper_hec_acks_total", output=self.name, result=result)

    async def _confirm(self, progress: _Progress) -> BatchResult:
        """The batch's result once every ack it waits for is settled."""
        outcomes = progress.outcomes
        for waiter, positions in progress.acks:
            confirmed = await waiter.future
            if confirmed:
                for position in positions:
                    outcomes[position] = Outcome.DELIVERED
            else:
                for position in positions:
                    outcomes[position] = Outcome.RETRY
                self._telemetry.inc(
                    "shipper_hec_resent_events_total", len(positions), output=self.name
                )
        return BatchResult(outcomes, progress.reasons, held=progress.held)

    async def _poll_acks(self) -> None:
        """Ask HEC about every pending ack every `ack.poll_interval`, until cancelled."""
        interval = self.config.ack.poll_interval
        while True:
            if not any(self._pending.values()):
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(interval)
            client = self._client
            if client is None:
                return
            for channel in list(self._pending):
                try:
                    await self._poll_channel(client, channel)
                except RetryableSinkError as exc:
                    self._poll_failed(str(exc))
            self._expire()

    async def _poll_channel(self, client: httpx.AsyncClient, channel: str) -> None:
        pending = self._pending.get(channel)
        if not pending:
            self._pending.pop(channel, None)
            return
        ids = sorted(pending)
        for start in range(0, len(ids), _MAX_ACK_IDS_PER_POLL):
            chunk = ids[start : start + _MAX_ACK_IDS_PER_POLL]
            response = await self._request(
                client,
                ACK_PATH,
                orjson.dumps({"acks": chunk}),
                {"Content-Type": "application/json", "X-Splunk-Request-Channel": channel},
                {"channel": channel},
                counter="shipper_hec_ack_polls_total",
            )
            status = response.status_code
            self._telemetry.inc("shipper_hec_ack_polls_total", output=self.name, status=str(status))
            if not self._ack_answer(channel, pending, chunk, status, json_object(response.content)):
                return
        if not pending:
            self._pending.pop(channel, None)

    def _ack_answer(
        self,
        channel: str,
        pending: dict[int, _PendingAck],
        chunk: list[int],
        status: int,
        body: dict[str, Any],
    ) -> bool:
        """Settle what an ack poll's answer settles; False: stop polling this channel now."""
        code = _int(body.get("code"))
        if status == 200:
            answers = body.get("acks")
            if not isinstance(answers, dict):
                self._poll_failed("Splunk HEC's answer to an ack poll holds no `acks`")
                return False
            self._poll_problem = None
            for ack_id in chunk:
                # Settled at once: HEC reports a `true` once and then forgets it.
                if answers.get(str(ack_id)) is True:
                    waiter = pending.pop(ack_id, None)
                    if waiter is not None:
                        self._settle(waiter, confirmed=True, result="confirmed")
            return True
        if code == _ACK_DISABLED:
            log.error(
                "Splunk HEC says indexer acknowledgement is off for this token (code 14); the "
                "records waiting for one count as delivered on HEC's acceptance.",
                extra={"output": self.name},
            )
            for waiter in self._pending.pop(channel, {}).values():
                self._telemetry.inc(
                    "shipper_hec_unconfirmed_events_total", waiter.events, output=self.name
                )
                self._settle(waiter, confirmed=True, result="unconfirmed")
        elif code == _INVALID_CHANNEL:
            # HEC forgot the channel (a restart): its acks can never come.
            for waiter in self._pending.pop(channel, {}).values():
                self._settle(waiter, confirmed=False, result="timed_out")
            if channel == self._channel:
                self._channel = str(uuid.uuid4())
        else:
            detail = f"{status}" + (f", code {code}" if code is not None else "")
            self._poll_failed(f"Splunk HEC answered an ack poll with {detail}")
        return False

    def _poll_failed(self, problem: str) -> None:
        # Said once per cause, not at every poll; acks still time out meanwhile.
        if problem != self._poll_problem:
            self._poll_problem = problem
            log.warning(
                "Cannot poll Splunk HEC for indexer acknowledgements; trying again.",
                extra={"output": self.name, "error": self._scrub(problem)},
            )

    def _expire(self) -> None:
        now = time.monotonic()
        for channel, pending in list(self._pending.items()):
            for ack_id, waiter in list(pending.items()):
                if waiter.deadline <= now:
                    del pending[ack_id]
                    self._settle(waiter, confirmed=False, result="timed_out")
            if not pending:
                del self._pending[channel]

    # -- reporting --------------------------------------------------------------------------

    def _count_request(self, status: str, code: int | None) -> None:
        self._telemetry.inc(
            "shipper_hec_requests_total", output=self.name, status=status, code=_code_label(code)
        )

    def _describe(self, exc: BaseException) -> str:
        return self._scrub(f"{type(exc).__name__}: {exc}")

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[secret]")
        return text


def _processed_messages(group: RecordGroup, indices: Sequence[int]) -> dict[int, str]:
    """The `message` of each chosen record as processing left it (redacted, rewritten): the
    columns keep the text as read, and sending that would undo a `redact` processor."""
    messages: dict[int, str] = {}
    for i in indices:
        value = record_document(group, i).get("message")
        if value is None:
            messages[i] = ""
        elif isinstance(value, str):
            messages[i] = value
        else:  # e.g. decode_json put an object there: send it as JSON text
            messages[i] = orjson.dumps(value).decode()
    return messages
