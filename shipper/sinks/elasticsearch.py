"""The `elasticsearch` output: `_bulk` requests of `create` actions, each answer classified."""

from __future__ import annotations

import asyncio
import base64
import gc
import gzip
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from itertools import accumulate
from pathlib import Path
from typing import Any, ClassVar

import orjson
from elastic_transport import Serializer
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    ConnectionTimeout,
    SSLError,
    TransportError,
    UnsupportedProductError,
)
from elasticsearch import ConnectionError as ClientConnectionError

from shipper.config import ElasticsearchOutputConfig
from shipper.errors import FatalSinkError, HeldSinkError, RetryableSinkError
from shipper.model import Batch, BatchResult, Outcome, RecordGroup, Rejection
from shipper.sinks.ecs import IdHead, field_value, record_document, spliced_lines
from shipper.sinks.http_common import json_object, retry_after, size_ranges
from shipper.sinks.record_ids import record_ids
from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)

# Every item keeps its status (so answers still line up with the request's documents) and only
# failed ones carry more: a response of thousands of items stays small.
FILTER_PATH = "errors,items.*.status,items.*.error.type,items.*.error.reason"

# Error types counted by name; any other is counted as "other" so a cluster cannot grow the
# number of metric series without bound.
KNOWN_ERROR_TYPES = frozenset(
    {
        "version_conflict_engine_exception",
        "es_rejected_execution_exception",
        "circuit_breaking_exception",
        "cluster_block_exception",
        "unavailable_shards_exception",
        "no_shard_available_action_exception",
        "document_parsing_exception",
        "mapper_parsing_exception",
        "strict_dynamic_mapping_exception",
        "illegal_argument_exception",
        "x_content_parse_exception",
        "security_exception",
        "index_not_found_exception",
        "index_closed_exception",
        "invalid_index_name_exception",
    }
)

# Refusals only an operator can fix: the records wait (held), they are never dead-lettered, or a
# missing privilege would empty a whole stream into the dead-letter file.
_HELD_HINTS = {
    "security_exception": "the credentials need the `create_doc` and `auto_configure` index "
    "privileges on it",
    "index_not_found_exception": "it does not exist and may not be created automatically: create "
    "it (or an index template for it) or allow its automatic creation",
    "index_closed_exception": "it is closed: open it",
    "invalid_index_name_exception": "the name is not valid in this cluster: change the target",
}
_PIPELINE_HINT = "the ingest pipeline does not exist: create it or change `pipeline`"
_OPERATOR_HINT = "this needs fixing at the cluster or in the config"

# A value a record field gives an index name: what names are made of, nothing that could reach
# another index through syntax (a comma lists indices, a * matches many, < starts date math).
_SAFE_VALUE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")

# Fields of a record that differ from record to record; other fields come from the container's
# metadata, shared by its whole group.
_PER_RECORD_FIELDS = frozenset({"@timestamp", "message", "stream", "log", "docker"})

_MAX_CACHED_NAMES = 4096
_MAX_REASON = 2000


class RetryLaterError(RetryableSinkError):
    """A whole request the cluster refused for now (429, 5xx), with how long it asked us to wait."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _TooLargeError(Exception):
    """The cluster answered 413: the request body is above its http.max_content_length."""


class _RawBody(Serializer):
    """Hands bodies through as bytes: requests are built as bytes already, and responses are
    parsed here with orjson whatever their content type says. The client's own serializers fail
    on a proxy's HTML error page, losing the status that says what happened."""

    mimetype: ClassVar[str] = "application/json"

    def loads(self, data: bytes) -> bytes:
        return data

    def dumps(self, data: Any) -> bytes:
        if not isinstance(data, bytes):
            raise TypeError("request bodies are built as bytes")
        return data


_RAW = _RawBody()
_SERIALIZERS: Mapping[str, Serializer] = {
    mimetype: _RAW
    for mimetype in (
        "application/json",
        "application/x-ndjson",
        "application/vnd.elasticsearch+json",
        "application/vnd.elasticsearch+x-ndjson",
        "application/*",
        "text/*",
    )
}


@dataclass(frozen=True, slots=True, repr=False)  # no repr: it would print the secrets
class _Credentials:
    username: str | None = None
    password: str | None = None
    api_key: str | None = None
    bearer_token: str | None = None

    def secrets(self) -> tuple[str, ...]:
        """Every form in which a secret could show up in a message: as configured, and as the
        Authorization header carries it."""
        forms: list[str] = []
        if self.password is not None:
            forms.append(self.password)
            basic = f"{self.username}:{self.password}".encode()
            forms.append(base64.b64encode(basic).decode())
        if self.api_key is not None:
            pair = self.api_key
            if ":" not in pair:  # the encoded form: its key part is a secret on its own too
                try:
                    pair = base64.b64decode(pair, validate=True).decode()
                except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
                    pair = ""
            forms.append(self.api_key)
            if ":" in pair:
                forms.append(pair.partition(":")[2])
                forms.append(base64.b64encode(pair.encode()).decode())
        if self.bearer_token is not None:
            forms.append(self.bearer_token)
        # Longest first, so a secret that contains another is replaced whole. A secret of under
        # four characters would blank out ordinary words; it is not worth protecting that way.
        return tuple(sorted({f for f in forms if len(f) >= 4}, key=len, reverse=True))


class _Router:
    """Names the index (or data stream) of each record from the configured target.

    A static name costs nothing per record. A dated one costs a slice of the record's
    @timestamp and a dictionary look-up. Fields are looked up once per group (the container's
    metadata), unless the target names per-record fields or the records were processed.
    """

    def __init__(self, config: ElasticsearchOutputConfig) -> None:
        target = config.target
        self._target = target
        self._fallback = config.fallback_index
        self._allowed = tuple(config.allowed_indices)
        self._fields = target.fields
        self._static = None if target.dated or target.fields else target.text
        hourly = target.hourly or (self._fallback is not None and self._fallback.hourly)
        dated = target.dated or (self._fallback is not None and self._fallback.dated)
        # How much of "2024-05-06T07:08:09.123456789Z" decides the name.
        self._cut = 13 if hourly else 10 if dated else 0
        self._per_record = any(path[0] in _PER_RECORD_FIELDS for path in target.fields)
        # Field values -> timestamp prefix -> name; bounded, as labels are chosen by others.
        self._tables: dict[tuple[str | None, ...], dict[str, str]] = {}
        self._cached = 0

    def names(self, group: RecordGroup, indices: Sequence[int]) -> list[str]:
        if self._static is not None:
            return [self._static] * len(indices)
        timestamps = group.timestamps
        cut = self._cut
        if self._fields and (self._per_record or group.documents is not None):
            return [
                self._name(self._values(record_document(group, i)), timestamps[i][:cut])
                for i in indices
            ]
        values = self._values(_group_fields(group)) if self._fields else ()
        get = self._table(values).get
        names = [get(timestamps[i][:cut]) for i in indices]
        if None in names:  # a day (or hour) not seen before
            names = [
                name if name is not None else self._name(values, timestamps[i][:cut])
                for name, i in zip(names, indices, strict=True)
            ]
        return names  # type: ignore[return-value]  # no None left

    def _table(self, values: tuple[str | None, ...]) -> dict[str, str]:
        table = self._tables.get(values)
        if table is None:
            table = self._tables[values] = {}
        return table

    def _name(self, values: tuple[str | None, ...], moment: str) -> str:
        table = self._table(values)
        name = table.get(moment)
        if name is None:
            if self._cached >= _MAX_CACHED_NAMES:
                self._tables.clear()  # hostile labels must not grow memory without bound
                self._cached = 0
                table = self._table(values)
            name = table[moment] = self._resolve(values, moment)
            self._cached += 1
        return name

    def _resolve(self, values: tuple[str | None, ...], moment: str) -> str:
        when = _moment(moment)
        if None in values:
            return self._fallback_name(when)
        text: list[str] = []
        fields = iter(values)
        for part in self._target.parts:
            if isinstance(part, str):
                # Date codes are formatted in the configured text only, never in a field's
                # value (which cannot hold a % anyway: see _safe_value).
                text.append(when.strftime(part) if "%" in part else part)
            else:
                text.append(next(fields) or "")
        name = "".join(text)
        if not self._fields:
            return name
        if _valid_name(name) and any(fnmatchcase(name, glob) for glob in self._allowed):
            return name
        return self._fallback_name(when)

    def _fallback_name(self, when: datetime) -> str:
        # Only reached for targets with fields, which the config requires a fallback for.
        fallback = self._fallback
        assert fallback is not None  # noqa: S101
        return when.strftime(fallback.text) if fallback.dated else fallback.text

    def _values(self, document: Mapping[str, Any]) -> tuple[str | None, ...]:
        return tuple(_safe_value(field_value(document, path)) for path in self._fields)


def _group_fields(group: RecordGroup) -> Mapping[str, Any]:
    if group.enrichment is not None:
        return group.enrichment.document
    return {"container": {"id": group.file.container_id}}


def _safe_value(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).lower()
    if not text or not _SAFE_VALUE_CHARS.issuperset(text):
        return None
    return text


def _valid_name(name: str) -> bool:
    return (
        name[:1] not in ("", "-", "_", "+")
        and name not in (".", "..")
        and len(name.encode()) <= 255
    )


def _moment(prefix: str) -> datetime:
    """The UTC day (or hour) a record's @timestamp prefix names."""
    try:
        hour = int(prefix[11:13]) if len(prefix) >= 13 else 0
        return datetime(int(prefix[0:4]), int(prefix[5:7]), int(prefix[8:10]), hour, tzinfo=UTC)
    except ValueError:
        # Records always carry a valid time (decoders replace an unusable one with the read
        # time); this only keeps a bug elsewhere from stopping the output.
        return datetime.now(UTC)


def _status_class(status: int) -> str:
    if status in (409, 429):
        return str(status)
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class _Progress:
    """The outcomes of one `send` so far; `done` records, in order, have their answer."""

    __slots__ = ("done", "held", "outcomes", "reasons")

    def __init__(self, count: int) -> None:
        self.outcomes = [Outcome.RETRY] * count
        self.reasons: dict[int, str | Rejection] = {}
        self.held: str | None = None
        self.done = 0

    def result(self) -> BatchResult:
        return BatchResult(self.outcomes, self.reasons, held=self.held)


class ElasticsearchSink:
    """Indexes records in Elasticsearch 8.x or 9.x, each exactly once within one backing index.

    Every record is a `create` action with an `_id` derived from where it was read
    (record_ids), so a batch sent again after a crash or a lost answer is answered 409 for what
    was already indexed: counted DUPLICATE, which is delivered. The guarantee holds within one
    backing index: a replay after the data stream (or a rollover alias) rolled over lands in the
    new backing index and is indexed there again, a duplicate.

    The sink never waits or retries: a whole request that failed raises (RetryLaterError with
    the server's Retry-After; HeldSinkError for what only an operator can fix), and each
    document's answer becomes its outcome; the Sender resends what came back RETRY. The one
    exception is a 413: the request is cut in halves and each half sent, down to single
    documents, which are dead-lettered when still too large.

    A proxy is taken from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), which the
    client's httpx connection honours; the client has no proxy setting of its own.
    """

    def __init__(
        self,
        config: ElasticsearchOutputConfig,
        *,
        name: str = "elasticsearch",
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self._telemetry = telemetry or Telemetry()
        self._router = _Router(config)
        self._client: AsyncElasticsearch | None = None
        self._secrets: tuple[str, ...] = ()
        # Lowered when the cluster answers 413: it accepts less than configured.
        self._max_body = config.max_request_bytes
        self._params: dict[str, str] = {"filter_path": FILTER_PATH}
        if config.pipeline is not None:
            self._params["pipeline"] = config.pipeline
        # The client turns these into the `compatible-with=8` forms 8.x and 9.x both accept.
        self._headers = {"content-type": "application/x-ndjson", "accept": "application/json"}
        self._gzip_level: int | None = None
        if config.compression.enabled:
            self._gzip_level = config.compression.level
            self._headers["content-encoding"] = "gzip"
        self._prefixes: dict[str, bytes] = {}
        self.version: str | None = None  # the cluster's, once known

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        credentials = await asyncio.to_thread(self.read_credentials)
        self._secrets = credentials.secrets()
        try:
            self._client = AsyncElasticsearch(**self.client_options(credentials))
        except (ValueError, OSError) as exc:
            # The client's own words (a missing CA file...) name paths, never a secret; scrubbed
            # all the same, and not chained, so no traceback can show more.
            message = self._scrub(str(exc))
            raise FatalSinkError(
                f"output {self.name}: cannot set up the Elasticsearch client: {message}"
            ) from None
        if not self.config.tls.verify:
            log.warning(
                "TLS certificate verification is off: anyone on the path can read and change "
                "what is sent.",
                extra={"output": self.name},
            )
        try:
            await self._check_cluster(self._client)
        except BaseException:
            await self.close()  # refused to start: leave no connection behind
            raise

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def read_credentials(self) -> _Credentials:
        """The configured secrets, read from their files where so configured (also for `shipper
        setup` and `test-output`, which build their client as this output does)."""
        config = self.config

        def pick(option: str, inline: Any, path: Path | None) -> str | None:
            if inline is not None:
                return str(inline.get_secret_value())
            if path is None:
                return None
            try:
                value = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise FatalSinkError(
                    f"output {self.name}: cannot read {option} {path}: {reason}"
                ) from None
            if not value:
                raise FatalSinkError(f"output {self.name}: {option} {path} is empty")
            return value

        return _Credentials(
            username=config.username,
            password=pick("password_file", config.password, config.password_file),
            api_key=pick("api_key_file", config.api_key, config.api_key_file),
            bearer_token=pick("bearer_token_file", config.bearer_token, config.bearer_token_file),
        )

    def client_options(self, credentials: _Credentials) -> dict[str, Any]:
        """Keyword arguments for AsyncElasticsearch: this output's connection, retries off."""
        config = self.config
        tls = config.tls
        options: dict[str, Any] = {
            "node_class": "httpxasync",
            # The Sender is the one place that retries (with backoff, Retry-After, limits):
            # retries inside the client would multiply its attempts and hide failures from it.
            "max_retries": 0,
            "retry_on_timeout": False,
            "retry_on_status": (),
            "request_timeout": config.timeout,
            "serializers": _SERIALIZERS,
            "http_compress": False,  # gzip is done here, at the configured level
            "verify_certs": tls.verify,
            "ssl_show_warn": False,  # said once, in shipper's log format, by open()
        }
        if config.hosts is not None:
            options["hosts"] = list(config.hosts)
        else:
            options["cloud_id"] = config.cloud_id
        if tls.ca_file is not None:
            options["ca_certs"] = str(tls.ca_file)
        if tls.client_cert is not None:
            options["client_cert"] = str(tls.client_cert)
        if tls.client_key is not None:
            options["client_key"] = str(tls.client_key)
        if config.headers:
            options["headers"] = dict(config.headers)
        if credentials.password is not None:
            options["basic_auth"] = (credentials.username, credentials.password)
        elif credentials.api_key is not None:
            key = credentials.api_key
            options["api_key"] = tuple(key.split(":", 1)) if ":" in key else key
        elif credentials.bearer_token is not None:
            options["bearer_auth"] = credentials.bearer_token
        return options

    async def _check_cluster(self, client: AsyncElasticsearch) -> None:
        """Ask the cluster who it is: refuse what cannot work, warn about what may not."""
        where = {"output": self.name, "hosts": self.config.hosts or "cloud_id"}
        try:
            response = await client.perform_request(
                "GET", "/", headers={"accept": "application/json"}
            )
        except UnsupportedProductError:
            raise FatalSinkError(
                f"output {self.name}: the server is not Elasticsearch (it does not say "
                "X-Elastic-Product: Elasticsearch); OpenSearch and other look-alikes are not "
                "supported"
            ) from None
        except ApiError as exc:
            self._refused_at_start(exc.meta.status, where)
            return
        except TransportError as exc:
            log.warning(
                "Elasticsearch is not reachable yet; sending will retry until it is.",
                extra={**where, "error": self._describe(exc)},
            )
            return
        info = json_object(response.body)
        version = info.get("version")
        number = version.get("number") if isinstance(version, dict) else None
        major = str(number).split(".", 1)[0] if number is not None else ""
        if not major.isdigit() or not 8 <= int(major) <= 9:
            raise FatalSinkError(
                f"output {self.name}: the cluster runs Elasticsearch {str(number)[:40]}; "
                "shipper supports Elasticsearch 8.x and 9.x"
            )
        self.version = str(number)
        log.info(
            "Connected to Elasticsearch.",
            extra={
                **where,
                "cluster": info.get("cluster_name"),
                "node": info.get("name"),
                "version": self.version,
            },
        )

    def _refused_at_start(self, status: int, where: dict[str, Any]) -> None:
        if status == 401:
            log.error(
                "Elasticsearch refuses the credentials (401): check username/password, api_key "
                "or bearer_token (or their files). Nothing is acknowledged until this is fixed.",
                extra=where,
            )
        elif status == 403:
            # Least-privilege shipping keys lack `monitor`; they can still write.
            log.warning(
                "The credentials may not read the cluster's version (403: no `monitor` "
                "privilege); that is fine for shipping.",
                extra=where,
            )
        elif status in (400, 406):
            # 8.x and 9.x accept the `compatible-with=8` headers this client sends; 7.x and
            # older refuse them.
            raise FatalSinkError(
                f"output {self.name}: the cluster refused a request for Elasticsearch 8.x and "
                f"9.x ({status}); Elasticsearch 7.x and older are not supported"
            )
        else:
            log.warning(
                "Elasticsearch answered the start-up check with an error; sending will retry.",
                extra={**where, "status": status},
            )

    # -- sending ----------------------------------------------------------------------------

    async def send(self, batch: Batch) -> BatchResult:
        client = self._client
        if client is None:
            raise RuntimeError(f"output {self.name}: send() before open()")
        lines, names = self._encode(batch)
        # The batch's body is built once and only it is kept while requests are out: a request
        # is a slice of it (the whole of it when the batch fits in one, as a rule), cut where
        # the records' lines end. Keeping the lines too would hold every byte twice.
        ends = list(accumulate(map(len, lines)))
        body = b"".join(lines)
        del lines
        progress = _Progress(len(ends))
        try:
            for start, end in size_ranges(ends, self._max_body):
                await self._send_range(
                    client, body, ends, names, start=start, end=end, progress=progress
                )
        except RetryableSinkError as exc:
            if progress.done == 0:
                raise
            # Earlier requests of this batch were answered: keep their outcomes and let the
            # Sender resend only the rest (the Retry-After of this failure is not carried over;
            # the Sender's own backoff applies).
            if isinstance(exc, HeldSinkError) and progress.held is None:
                progress.held = str(exc)
        return progress.result()

    def _encode(self, batch: Batch) -> tuple[list[bytes], list[str]]:
        """One action line plus document line per record, and the index each goes to."""
        lines: list[bytes] = []
        names: list[str] = []
        prefixes = self._prefixes
        for group, indices in zip(batch.groups, batch.selection, strict=True):
            if not indices:
                continue
            route = self._router.names(group, indices)
            for name in set(route) - prefixes.keys():
                prefixes[name] = b'{"create":{"_index":' + orjson.dumps(name) + b',"_id":"'
            documents = group.documents
            if documents is None and len(set(route)) == 1:
                # One index for the group, as a rule: its action line is part of each record's
                # format, with the record's id the only value in it.
                lines.extend(spliced_lines(group, indices, IdHead(prefixes[route[0]], b'"}}\n')))
                names.extend(route)
                continue
            heads = [
                b'%b%b"}}\n' % (prefixes[name], record_id.encode())
                for name, record_id in zip(route, record_ids(group, indices), strict=True)
            ]
            if documents is not None:
                # Processed records: one finished line each, made sure to be exactly one line
                # (a raw newline would shift every later document against its action line).
                lines.extend(
                    [
                        head + documents[i].removesuffix(b"\n").replace(b"\n", b" ") + b"\n"
                        for head, i in zip(heads, indices, strict=True)
                    ]
                )
            else:
                # One line each by construction: spliced_lines escapes every newline.
                lines.extend(spliced_lines(group, indices, heads))
            names.extend(route)
        return lines, names

    async def _send_range(
        self,
        client: AsyncElasticsearch,
        batch_body: bytes,
        ends: list[int],
        names: list[str],
        *,
        start: int,
        end: int,
        progress: _Progress,
    ) -> None:
        # The whole batch's body is the same object, not a copy, when the range is all of it.
        body = batch_body[ends[start - 1] if start else 0 : ends[end - 1]]
        try:
            answer = await self._post(client, body, names[start:end])
        except _TooLargeError:
            if end - start == 1:
                progress.outcomes[start] = Outcome.DEAD_LETTERED
                progress.reasons[start] = Rejection(
                    f"413: the document ({len(body)} bytes with its action line) is larger than "
                    "the cluster accepts (http.max_content_length)",
                    status=413,
                    error_type="request_entity_too_large",
                )
                progress.done = end
                return
            self._lower_limit(len(body))
            self._telemetry.inc("shipper_es_splits_total", output=self.name)
            middle = (start + end) // 2
            await self._send_range(
                client, batch_body, ends, names, start=start, end=middle, progress=progress
            )
            await self._send_range(
                client, batch_body, ends, names, start=middle, end=end, progress=progress
            )
            return
        # orjson makes a dict per item of the answer (two per document), all alive until the
        # answer is read: the collector would trace them (and everything buffered) several
        # times per answer for nothing, 12 % of a run's CPU (issue 8 profile). It is paused
        # instead, then run on the young generations only: httpx leaves each request in a
        # reference cycle (its Response and the Response's stream) that holds the whole body,
        # which only the collector frees; collected now, a request's megabytes go with it.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._classify(answer, names, start, end, progress)
        finally:
            if collecting:
                gc.enable()
                gc.collect(1)
        progress.done = end

    async def _post(self, client: AsyncElasticsearch, body: bytes, names: list[str]) -> bytes:
        """Send one `_bulk` request; its response body, or raise what the whole request met."""
        sent = body
        if self._gzip_level is not None:
            # zlib lets go of the GIL: compressing megabytes off the event loop keeps reading.
            sent = await asyncio.to_thread(gzip.compress, body, self._gzip_level, mtime=0)
        self._telemetry.inc("shipper_es_request_bytes_total", len(body), output=self.name)
        self._telemetry.inc("shipper_es_request_sent_bytes_total", len(sent), output=self.name)
        try:
            response = await client.perform_request(
                "POST", "/_bulk", params=self._params, headers=self._headers, body=sent
            )
        except ApiError as exc:
            self._count_request(str(exc.meta.status))
            raise self._refusal(exc, names) from None
        except ConnectionTimeout:
            self._count_request("timeout")
            raise RetryableSinkError(
                f"no answer from Elasticsearch within {self.config.timeout:g}s"
            ) from None
        except SSLError as exc:
            self._count_request("tls_error")
            raise HeldSinkError(
                f"TLS with Elasticsearch failed ({self._describe(exc)}): check tls.ca_file, "
                "tls.client_cert and the host names in `hosts`"
            ) from None
        except ClientConnectionError as exc:
            self._count_request("connection_error")
            raise RetryableSinkError(f"cannot reach Elasticsearch: {self._describe(exc)}") from None
        except TransportError as exc:
            self._count_request("error")
            raise RetryableSinkError(f"request failed: {self._describe(exc)}") from None
        self._count_request(str(response.meta.status))
        return bytes(response.body)

    def _refusal(self, exc: ApiError, names: list[str]) -> Exception:
        """What a refusal of a whole `_bulk` request means for its records."""
        status = exc.meta.status
        detail = self._error_detail(exc.body)
        if status == 413:
            return _TooLargeError()
        if status in (408, 429) or status >= 500:
            return RetryLaterError(
                f"Elasticsearch answered {status} to _bulk{detail}",
                retry_after(exc.meta.headers.get("retry-after")),
            )
        if status == 401:
            return HeldSinkError(
                f"Elasticsearch refuses the credentials (401{detail}): check username/password, "
                "api_key or bearer_token (or their files)"
            )
        if status == 403:
            return HeldSinkError(
                f"Elasticsearch forbids writing to {_listed(names)} (403{detail}): "
                f"{_HELD_HINTS['security_exception']}"
            )
        if 200 <= status < 300:
            return HeldSinkError(
                "the server is not Elasticsearch (no X-Elastic-Product: Elasticsearch header)"
            )
        # Any other refusal of the whole request names no document: most likely a setting (a
        # proxy path, a header). Holding keeps the data and says so at every attempt, where
        # dead-lettering would discard whole batches.
        return HeldSinkError(f"Elasticsearch refused the _bulk request ({status}{detail})")

    def _classify(
        self, answer: bytes, names: list[str], start: int, end: int, progress: _Progress
    ) -> None:
        """Each document's outcome from its item in the answer."""
        count = end - start
        try:
            parsed = orjson.loads(answer)
            items = parsed["items"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            items = None
        if not isinstance(items, list) or len(items) != count:
            # Never mark a document delivered without its own answer.
            found = len(items) if isinstance(items, list) else "no"
            raise RetryableSinkError(
                f"Elasticsearch's answer to _bulk holds {found} items for {count} documents"
            )
        if parsed.get("errors") is False:
            progress.outcomes[start:end] = [Outcome.DELIVERED] * count
            self._telemetry.inc(
                "shipper_es_items_total", count, output=self.name, status_class="2xx", error_type=""
            )
            return
        tally: dict[tuple[str, str], int] = {}
        held: str | None = None  # the first held document's refusal, naming its index
        held_count = 0
        outcomes = progress.outcomes
        for position, item in enumerate(items, start):
            status, kind, reason = _item(item)
            label = (
                _status_class(status),
                kind if not kind or kind in KNOWN_ERROR_TYPES else "other",
            )
            tally[label] = tally.get(label, 0) + 1
            if 200 <= status < 300:
                outcomes[position] = Outcome.DELIVERED
            elif status == 409:
                # `create` with our own _id: the document is there already (a replay).
                outcomes[position] = Outcome.DUPLICATE
            elif kind == "cluster_block_exception" or status == 429 or status >= 500:
                pass  # stays RETRY: overload, a flood-stage block, a shard moving
            elif hint := self._held_hint(status, kind, reason):
                held_count += 1  # stays RETRY, held: see _HELD_HINTS
                if held is None:
                    held = (
                        f"Elasticsearch refuses to write to {names[position - start]}: {status} "
                        f"{kind}: {self._scrub(reason)[:_MAX_REASON]}; {hint}"
                    )
            elif status == 400:
                # The document itself is refused (mapping, parsing, a field limit): sending it
                # again cannot help, so it goes to the dead-letter file with why.
                outcomes[position] = Outcome.DEAD_LETTERED
                progress.reasons[position] = Rejection(
                    f"{status} {kind}: {self._scrub(reason)}"[:_MAX_REASON], status, kind
                )
            # Anything else (another 4xx, no status at all) stays RETRY: it is no proof that
            # the document is bad, and retrying loses nothing where dead-lettering could.
        for (status_class, error_type), amount in tally.items():
            self._telemetry.inc(
                "shipper_es_items_total",
                amount,
                output=self.name,
                status_class=status_class,
                error_type=error_type,
            )
        if held is not None and progress.held is None:
            progress.held = f"{held} ({held_count} documents of this request wait)"

    @staticmethod
    def _held_hint(status: int, kind: str, reason: str) -> str | None:
        hint = _HELD_HINTS.get(kind)
        if hint is not None:
            return hint
        if status == 400 and "pipeline with id [" in reason and "does not exist" in reason:
            # A missing pipeline refuses every document alike: a setting, not bad documents.
            return _PIPELINE_HINT
        if status in (401, 403, 404):
            return _OPERATOR_HINT
        return None

    def _lower_limit(self, refused: int) -> None:
        limit = max(refused // 2, 1)
        if limit < self._max_body:
            self._max_body = limit
            log.warning(
                "Elasticsearch refused a request as too large (413); later requests are cut "
                "smaller.",
                extra={"output": self.name, "refused_bytes": refused, "max_request_bytes": limit},
            )

    # -- reporting --------------------------------------------------------------------------

    def _count_request(self, status: str) -> None:
        self._telemetry.inc("shipper_es_requests_total", output=self.name, status=status)

    def _error_detail(self, body: Any) -> str:
        """ ", type: reason" from an error response body, scrubbed, or ""."""
        error = json_object(body).get("error")
        if isinstance(error, dict):
            kind, reason = error.get("type"), error.get("reason")
            text = f"{kind}: {reason}" if reason else str(kind or "")
        elif isinstance(error, str):
            text = error
        else:
            return ""
        return f", {self._scrub(text)[:_MAX_REASON]}" if text else ""

    def _describe(self, exc: TransportError) -> str:
        """The underlying cause of a transport error, in words, with no secret."""
        cause = exc.errors[0] if exc.errors else exc
        return self._scrub(f"{type(cause).__name__}: {cause}")

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[secret]")
        return text


def _item(item: Any) -> tuple[int, str, str]:
    """Status, error type and reason of one item of a `_bulk` answer; status 0 if it has none."""
    if isinstance(item, dict) and len(item) == 1:
        detail = next(iter(item.values()))
        if isinstance(detail, dict):
            status = detail.get("status")
            if isinstance(status, int) and not isinstance(status, bool):
                error = detail.get("error")
                if isinstance(error, dict):
                    return status, str(error.get("type", "")), str(error.get("reason", ""))
                return status, "", ""
    return 0, "", ""


def _listed(names: Sequence[str]) -> str:
    distinct = sorted(set(names))
    shown = ", ".join(distinct[:3])
    return shown + (f" and {len(distinct) - 3} more" if len(distinct) > 3 else "")
