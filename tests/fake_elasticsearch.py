"""An Elasticsearch node on 127.0.0.1 for shipper's Elasticsearch output tests.

It speaks HTTP/1.1 on a real TCP socket and answers the REST APIs shipper uses as Elasticsearch
8.x (default) or 9.x does: `_bulk` with per-item outcomes, data streams, index templates, ILM and
data stream lifecycle, ingest pipelines (recorded, not run), security (basic, ApiKey, Bearer, 401
and 403), `filter_path`, gzip request bodies, REST API compatibility headers. It can also fail as
a cluster, a proxy or a network does, on request. The official client accepts it as is:

    with FakeElasticsearch() as es:                      # or FakeElasticsearch(version="9.1.3")
        client = AsyncElasticsearch(hosts=[es.url], node_class="httpxasync", max_retries=0)
        es.fail_items(2, status=429)                     # the next 2 bulk items are rejected
        es.fail_requests(1, status=503, retry_after=1)   # the next _bulk answers 503 + Retry-After
        es.drop_next(1)                                  # the next request gets no answer at all
        with es.down():                                  # connections refused inside the block
            ...
        es.documents("logs-app-default")                 # what was stored, oldest first

Design: a thread per connection, not an asyncio server in the test's loop. Shipper runs in the
test's event loop, and a test may block that loop (a synchronous call, a deliberate stall): a
server in the same loop would then stop answering and turn the test's bug into a hang. Threads
keep answering whatever the loop does, and `delay` sleeps there without slowing the test's loop.
All state sits behind one lock, so tests read and script it from any thread. Waiting is by
condition (`wait_until`) or by polling with a deadline (`await until(...)`), never by sleeping.

Everything is standard library. HTTP/1.1 is parsed by hand (keep-alive, Content-Length or chunked
bodies, `Expect: 100-continue`) because the server must answer before reading a body (413), read
a request and never answer (dropped connections), and close or reset connections at will.

Facts reproduced here, and where they were checked (elastic/elasticsearch sources unless noted):
- `X-elastic-product: Elasticsearch` on every REST response; elasticsearch-py 8.19 raises
  UnsupportedProductError on a 2xx without it (elasticsearch/_async/client/_base.py, installed).
  A 413 comes from the Netty layer before the REST layer, so it has neither that header nor a body.
- REST compatibility (RestCompatibleVersionHelper.java): the Accept version must be the current
  major or the one before, and so must Content-Type on requests with a body, and both must agree.
  8.x refuses `compatible-with=9` with 400 `media_type_header_exception`, reason "Invalid
  media-type value on headers [Accept, Content-Type]", caused by `status_exception` "Accept
  version must be either version 8 or 7, but found 9. Accept=<header>" (the text users report
  for elasticsearch-py 9 against 8.x servers). 9.x accepts 8 and 9. Responses to a versioned
  Accept are `application/vnd.elasticsearch+json;compatible-with=N`, others `application/json`.
- `http.max_content_length` (default 100mb) is checked by Netty4HttpContentSizeHandler: a declared
  Content-Length above it gets 413, empty body, `content-length: 0`, and the connection stays
  open (the content is skipped); a body that grows past it (chunked, or gzip: Netty's
  HttpContentDecompressor sits before the size check in the pipeline, so the limit counts
  decompressed bytes) gets 413 and the connection is closed.
- `_bulk` (BulkRequestParser, docs-bulk): the body must end with "\\n" else 400
  `illegal_argument_exception` "The bulk request must be terminated by a newline [\\n]"; a bad
  action line is 400 "Malformed action/metadata line [N], ...". The response is
  `{"errors","took","items"}` in request order, each item `{"<action>": {"_index", "_id", ...,
  "status"}}`.
  `create` on an existing `_id` is 409 `version_conflict_engine_exception` "[id]: version conflict,
  document already exists (current version [1])" with index_uuid/shard/index; the check is per
  concrete index, so after a data stream rollover the same `_id` is created again.
- Data streams accept only `create`: 400 `illegal_argument_exception` "only write ops with an
  op_type of create are allowed in data streams". Backing indices are `.ds-<name>-<yyyy.MM.dd>-
  00000N` and items report them as `_index`. A document without `@timestamp` fails with
  `document_parsing_exception` "[1:N] failed to parse: data stream timestamp field [@timestamp]
  is missing". Built-in `logs-*-*` / `metrics-*-*` templates (priority 100) make data streams, as
  in a default install (`builtin_templates=False` removes them).
- Document errors are `document_parsing_exception` since 8.7 (PR #92646; `mapper_parsing_exception`
  before), reason "[1:N] failed to parse field [f] of type [t] in document with id 'x'. Preview of
  field's value: 'v'", caused by `illegal_argument_exception`. N is approximate here.
- Auto-create off: per-item 404 `index_not_found_exception` "no such index [x] and
  [action.auto_create_index] is [false]"; a matching template's `allow_auto_create` overrides.
- Security: 401 `security_exception` "missing authentication credentials for REST request [uri]"
  or "unable to authenticate user [u] for REST request [uri]" or, for API keys, "unable to
  authenticate with provided credentials and anonymous access is not allowed for this request"
  with `additional_unsuccessful_credentials` "API key: unable to find apikey with id X"; every
  401 has WWW-Authenticate `Basic realm="security", charset="UTF-8"`, `Bearer realm="security"`,
  `ApiKey`. 403 `security_exception` "action [A] is unauthorized for user [u] with effective
  roles [r] (or: for API key id [k] of user [u]) [on indices [i]], this action is granted by the
  cluster|index privileges [...]"; in `_bulk` that is per item. With security off, `_security`
  APIs answer 500 "Security must be explicitly enabled when using a [basic] license. ...".
- Overload per item: 429 `es_rejected_execution_exception`, 429 `cluster_block_exception` "index
  [x] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has
  read-only-allow-delete block];" (403 before 7.x; anchors.md §3.1), 429
  `circuit_breaking_exception`.
- `filter_path` (common options docs): comma-separated paths, `*` inside a name, `**` any depth,
  arrays are transparent, objects and array elements left empty are dropped (so
  `items.*.error` returns only failed items: positions stop mapping), `-path` excludes and
  exclusions apply before inclusions.
- Elasticsearch itself never sends Retry-After; proxies and Elastic Cloud do. `fail_requests`
  adds it when asked, with an Elasticsearch body (or a proxy's plain text with `proxy=True`).
- Unknown query parameters are refused (400 "request [path] contains unrecognized parameter:
  [p]", without ES's "did you mean" hint); parameters this server does not implement are refused
  too, with a reason saying so, so that a test cannot pass by relying on them.

Not modelled: scripts in `update`, ingest pipelines' processors (the pipeline name is recorded
per document), routing, aliases, ES's "did you mean" suggestions, query DSL beyond
`match_all`/`term`/`ids` in `_count`/`_search`, and mappings beyond leaf types and dynamic mapping.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import ipaddress
import json
import os
import re
import socket
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, Literal, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.fake_http import (
    ThreadedHttpServer,
    discard,
    read_chunked,
    read_exactly,
)

_T = TypeVar("_T")
DEFAULT_MAX_CONTENT_LENGTH = 100 * 1024 * 1024  # http.max_content_length: 100mb
_PRODUCT = ("X-elastic-product", "Elasticsearch")
_WWW_AUTHENTICATE = ('Basic realm="security", charset="UTF-8"', 'Bearer realm="security"', "ApiKey")
_COMMON_PARAMS = frozenset({"pretty", "human", "error_trace", "filter_path"})
_REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    409: "Conflict", 413: "Request Entity Too Large", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}  # fmt: skip
_VERSIONS = {
    8: {"lucene_version": "9.12.2", "minimum_wire_compatibility_version": "7.17.0",
        "minimum_index_compatibility_version": "7.0.0"},
    9: {"lucene_version": "10.2.2", "minimum_wire_compatibility_version": "8.19.0",
        "minimum_index_compatibility_version": "8.0.0"},
}  # fmt: skip
_BULK_ACTIONS = ("create", "delete", "index", "update")
_BULK_ITEM_PARAMS = frozenset(
    {"_index", "_id", "pipeline", "routing", "op_type", "require_alias", "require_data_stream",
     "dynamic_templates", "version", "version_type", "if_seq_no", "if_primary_term",
     "retry_on_conflict", "_source", "list_executed_pipelines"}
)  # fmt: skip
_ITEM_PARAMS_NOT_MODELLED = frozenset(
    {"routing", "require_alias", "require_data_stream", "dynamic_templates", "version",
     "version_type", "if_seq_no", "if_primary_term"}
)  # fmt: skip
_WRITE_PRIVILEGES = ("create_doc", "create", "delete", "index", "write", "all")
_AUTO_CREATE_PRIVILEGES = ("auto_configure", "create_index", "manage", "all")
# What each privilege implies (transitively); `all` implies everything.
_CLUSTER_IMPLIES = {
    "manage": {"monitor", "manage_index_templates", "manage_ilm", "manage_pipeline",
               "manage_ingest_pipelines", "read_ilm", "read_pipeline"},
    "manage_ilm": {"read_ilm"},
    "manage_pipeline": {"read_pipeline"},
    "manage_ingest_pipelines": {"read_pipeline"},
}  # fmt: skip
_INDEX_IMPLIES = {
    "manage": {"auto_configure", "create_index", "view_index_metadata", "monitor",
               "manage_data_stream_lifecycle", "manage_ilm", "maintenance"},
    "write": {"index", "create", "create_doc", "delete"},
    "index": {"create", "create_doc"},
    "create": {"create_doc"},
}  # fmt: skip
_INVALID_NAME_CHARS = ("\\", "/", "*", "?", '"', "<", ">", "|", " ", ",", "#", ":")
_DATE = re.compile(
    r"^([+-]?\d{4,9})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"(Z|[+-]\d{2}(?::?\d{2})?)?)?)?)?$"
)
_EPOCH_MILLIS = re.compile(r"^-?\d+(?:\.\d+)?$")
_NANOS_MAX = 2**63 - 1
_INTEGER_RANGES = {
    "long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1),
    "short": (-(2**15), 2**15 - 1), "byte": (-128, 127),
    "unsigned_long": (0, 2**64 - 1),
}  # fmt: skip
_FLOAT_TYPES = frozenset({"float", "double", "half_float", "scaled_float"})
_TEXT_TYPES = frozenset(
    {"keyword", "text", "wildcard", "match_only_text", "constant_keyword", "version"}
)


# --- what tests see -----------------------------------------------------------------------------


@dataclass
class BulkItem:
    """One action of a `_bulk` request, as parsed, and (once answered) its outcome."""

    position: int  # 0-based index in the request's items
    action: Literal["create", "delete", "index", "update"]
    target: str | None  # `_index` of the action line, else the path's target
    id: str | None  # `_id` as sent (None: auto-generated, see `answer`)
    pipeline: str | None  # the item's or the request's `pipeline` ("_none" cancels it)
    source: Any  # the decoded source line (None for delete or undecodable JSON)
    raw_source: bytes
    status: int | None = None
    answer: dict[str, Any] | None = None  # the item as it was answered

    @property
    def error_type(self) -> str | None:
        error = (self.answer or {}).get("error")
        return error.get("type") if isinstance(error, dict) else None


@dataclass
class Request:
    """One HTTP request as the server received it, and what it answered."""

    method: str
    target: str  # path and query, as on the request line
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes  # decompressed
    wire_size: int  # body bytes on the wire (compressed size when compressed)
    content_encoding: str | None
    items: list[BulkItem] = field(default_factory=list)
    status: int | None = None  # None: no answer (dropped, or still being processed)
    dropped: bool = False
    response_compressed: bool = False

    @property
    def compressed(self) -> bool:
        return self.content_encoding is not None

    @property
    def body_size(self) -> int:
        return len(self.body)

    @property
    def is_bulk(self) -> bool:
        return self.path == "/_bulk" or self.path.endswith("/_bulk")

    def param(self, name: str) -> str | None:
        return self.query.get(name)


@dataclass
class Document:
    index: str  # the concrete index (a data stream's backing index)
    id: str
    source: Any
    version: int
    seq_no: int
    pipeline: str | None
    op_type: str
    written: int  # a server-wide write counter: the order documents were written in


@dataclass
class Index:
    name: str
    uuid: str
    mappings: dict[str, str]  # dotted field path -> type ("object" for objects)
    dynamic: bool | Literal["strict"]
    data_stream: str | None = None
    documents: dict[str, Document] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    next_seq_no: int = 0


@dataclass
class DataStream:
    name: str
    template: str
    indices: list[str]  # backing indices, oldest first; the last is the write index
    lifecycle: dict[str, Any] | None = None

    @property
    def write_index(self) -> str:
        return self.indices[-1]

    @property
    def generation(self) -> int:
        return len(self.indices)


@dataclass
class Principal:
    """Who a request authenticates as, and what that principal may do."""

    kind: Literal["user", "api_key", "token"]
    username: str
    secret: str
    roles: tuple[str, ...]
    cluster: frozenset[str]
    indices: dict[str, frozenset[str]]  # index pattern -> privileges
    key_id: str | None = None

    @property
    def description(self) -> str:
        if self.kind == "api_key":
            return f"API key id [{self.key_id}] of user [{self.username}]"
        return f"user [{self.username}] with effective roles [{','.join(self.roles)}]"


@dataclass
class ItemFailure:
    """A scripted per-item failure; `remaining` None means every matching item, until cleared."""

    predicate: Callable[[BulkItem], bool]
    remaining: int | None
    status: int
    error_type: str
    reason: str | None
    hits: int = 0


@dataclass
class RequestFailure:
    """A scripted whole-request answer (an overloaded cluster, a proxy in front of it)."""

    predicate: Callable[[Request], bool]
    remaining: int | None
    status: int
    retry_after: float | str | None
    body: Any
    proxy: bool
    hits: int = 0


class EsError(Exception):
    """An Elasticsearch error answer; `plain` is the old `{"error": "..."}` string form."""

    def __init__(
        self,
        status: int,
        error_type: str,
        reason: str,
        *,
        extra: dict[str, Any] | None = None,
        caused_by: dict[str, Any] | None = None,
        headers: list[tuple[str, str]] | None = None,
        plain: bool = False,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.error_type = error_type
        self.reason = reason
        self.extra = extra or {}
        self.caused_by = caused_by
        self.headers = headers or []
        self.plain = plain

    def error_object(self) -> dict[str, Any]:
        """The `error` object as in a bulk item (no root_cause)."""
        error: dict[str, Any] = {"type": self.error_type, "reason": self.reason, **self.extra}
        if self.caused_by is not None:
            error["caused_by"] = self.caused_by
        return error

    def body(self) -> dict[str, Any]:
        if self.plain:
            return {"error": self.reason, "status": self.status}
        root = {"type": self.error_type, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [root], **self.error_object()}, "status": self.status}


@dataclass
class _Response:
    status: int
    body: Any = None  # JSON value; None: empty body
    headers: list[tuple[str, str]] = field(default_factory=list)
    raw: bytes | None = None  # a non-JSON body
    content_type: str | None = None
    product: bool = True
    close: bool = False


# --- the server ---------------------------------------------------------------------------------


class FakeElasticsearch(ThreadedHttpServer):
    """The node. `start()`/`stop()`, or `with`/`async with`. Attributes may be set at any time."""

    def __init__(
        self,
        *,
        version: str = "8.19.2",
        port: int = 0,
        cluster_name: str = "docker-cluster",
        node_name: str = "es01",
        max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
        auto_create_index: bool | str = True,
        mapping: dict[str, str] | None = None,
        dynamic: bool | Literal["strict"] = True,
        builtin_templates: bool = True,
        compress_responses: bool = True,
        security: bool | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.version = version
        self.major = int(version.split(".", 1)[0])
        if self.major not in _VERSIONS:
            raise ValueError(f"this server plays Elasticsearch 8.x or 9.x, not {version}")
        self.cluster_name = cluster_name
        self.node_name = node_name
        self.cluster_uuid = _uuid()
        self.max_content_length = max_content_length
        # `action.auto_create_index`: True, False, or ES's pattern list ("+logs-*,-*").
        self.auto_create_index: bool | str = auto_create_index
        self.mapping: dict[str, str] = dict(mapping or {})  # for every new index
        self.dynamic: bool | Literal["strict"] = dynamic
        self.compress_responses = compress_responses
        self.health_status: Literal["green", "yellow", "red"] = "green"
        self.delay = 0.0  # seconds before every answer
        self._security = security
        self._clock = clock or (lambda: datetime.now(UTC))
        super().__init__(port, name="es")
        # state
        self.indices: dict[str, Index] = {}
        self.data_streams: dict[str, DataStream] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        self.ilm_policies: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.principals: dict[tuple[str, str], Principal] = {}  # (kind, name or key id)
        self._writes = 0
        # introspection
        self.requests: list[Request] = []
        self.item_results: Counter[str] = Counter()  # "created", "updated", ... or error type
        self.statuses: Counter[int] = Counter()  # HTTP statuses answered
        self.internal_errors: list[str] = []  # bugs in this server: tests should assert empty
        # scripts
        self.item_failures: list[ItemFailure] = []
        self.request_failures: list[RequestFailure] = []
        self._drops: list[tuple[int, tuple[bool, bool]]] = []  # (remaining, (after, reset))
        self._slow: list[tuple[int, float]] = []  # (remaining, seconds)
        if builtin_templates:
            for kind in ("logs", "metrics"):
                self.templates[kind] = _builtin_template(kind)

    # --- scripting ---------------------------------------------------------------------------

    def fail_items(
        self,
        which: int | Callable[[BulkItem], bool],
        *,
        times: int | None = 1,
        status: int = 429,
        error_type: str | None = None,
        reason: str | None = None,
    ) -> ItemFailure:
        """Fail bulk items instead of writing them: the next `which` items, or the next `times`
        items `which(item)` accepts (`times=None`: all of them, until `clear_failures()`).

        The default error type follows the status: 429 `es_rejected_execution_exception`, 400
        `document_parsing_exception`, 403 `security_exception`, 404 `index_not_found_exception`,
        409 `version_conflict_engine_exception`, 500 `illegal_state_exception`, 503
        `unavailable_shards_exception`. `cluster_block_exception` and
        `circuit_breaking_exception` get their real reasons too.
        """
        if isinstance(which, int):
            predicate: Callable[[BulkItem], bool] = _any_item
            remaining: int | None = which
        else:
            predicate, remaining = which, times
        rule = ItemFailure(
            predicate=predicate,
            remaining=remaining,
            status=status,
            error_type=error_type or _default_error_type(status),
            reason=reason,
        )
        with self._lock:
            self.item_failures.append(rule)
        return rule

    def fail_requests(
        self,
        count: int | None = 1,
        *,
        status: int = 503,
        retry_after: float | str | None = None,
        body: Any = None,
        proxy: bool = False,
        match: Callable[[Request], bool] | None = None,
    ) -> RequestFailure:
        """Answer the next `count` matching requests (default: `_bulk` requests) with `status`
        and nothing else done. The body is Elasticsearch's for that status unless `body` is given;
        `proxy=True` answers as a load balancer (plain text, no X-elastic-product)."""
        rule = RequestFailure(
            predicate=match or (lambda request: request.is_bulk),
            remaining=count,
            status=status,
            retry_after=retry_after,
            body=body,
            proxy=proxy,
        )
        with self._lock:
            self.request_failures.append(rule)
        return rule

    def drop_next(
        self, count: int = 1, *, after_processing: bool = False, reset: bool = False
    ) -> None:
        """Read the next `count` requests and close the connection without an answer.

        `after_processing=True` does the work first (documents are stored) and loses only the
        answer, as when a connection dies while Elasticsearch answers. `reset=True` sends a TCP
        RST instead of a FIN."""
        with self._lock:
            self._drops.append((count, (after_processing, reset)))

    def slow_next(self, count: int, seconds: float) -> None:
        """Answer the next `count` requests `seconds` late (on top of `delay`)."""
        with self._lock:
            self._slow.append((count, seconds))

    def clear_failures(self) -> None:
        with self._lock:
            self.item_failures.clear()
            self.request_failures.clear()
            self._drops.clear()
            self._slow.clear()

    # --- setup without HTTP ------------------------------------------------------------------

    def add_user(
        self,
        username: str,
        password: str,
        *,
        roles: tuple[str, ...] = ("shipper_writer",),
        cluster: set[str] | frozenset[str] = frozenset(),
        indices: dict[str, set[str]] | None = None,
        superuser: bool = False,
    ) -> Principal:
        """A native user for basic auth; adding any principal turns security on."""
        principal = _principal(
            "user", name=username, secret=password, roles=roles, cluster=cluster,
            indices=indices, superuser=superuser,
        )  # fmt: skip
        with self._lock:
            self.principals[("user", username)] = principal
        return principal

    def add_api_key(
        self,
        key_id: str,
        key: str,
        *,
        owner: str = "elastic",
        cluster: set[str] | frozenset[str] = frozenset(),
        indices: dict[str, set[str]] | None = None,
        superuser: bool = False,
    ) -> str:
        """An API key; returns the encoded credential (`base64(id:key)`) clients send."""
        principal = _principal(
            "api_key", name=owner, secret=key, roles=(), cluster=cluster, indices=indices,
            superuser=superuser,
        )  # fmt: skip
        principal.key_id = key_id
        with self._lock:
            self.principals[("api_key", key_id)] = principal
        return base64.b64encode(f"{key_id}:{key}".encode()).decode()

    def add_token(
        self,
        token: str,
        *,
        owner: str = "elastic",
        roles: tuple[str, ...] = ("shipper_writer",),
        cluster: set[str] | frozenset[str] = frozenset(),
        indices: dict[str, set[str]] | None = None,
        superuser: bool = False,
    ) -> None:
        """A bearer token (as `POST _security/oauth2/token` or a service account gives)."""
        principal = _principal(
            "token", name=owner, secret=token, roles=roles, cluster=cluster, indices=indices,
            superuser=superuser,
        )  # fmt: skip
        with self._lock:
            self.principals[("token", token)] = principal

    def put_index_template(self, name: str, body: dict[str, Any]) -> None:
        with self._lock:
            self._validate_template(name, body)
            self.templates[name] = body

    def create_data_stream(self, name: str) -> DataStream:
        with self._lock:
            template = self._matching_template(name)
            if template is None or "data_stream" not in template[1]:
                raise ValueError(f"no matching index template found for data stream [{name}]")
            return self._new_data_stream(name, template[0], template[1])

    def rollover(self, name: str) -> str:
        """Roll a data stream over to a new backing index; returns its name. Documents keep
        their `_id` only per backing index, so a replayed `create` is no longer a 409."""
        with self._lock:
            stream = self.data_streams[name]
            backing = self._backing_name(name, stream.generation + 1)
            template = self.templates.get(stream.template, {})
            self._new_index(backing, template, data_stream=name)
            stream.indices.append(backing)
            return backing

    # --- introspection -----------------------------------------------------------------------

    def documents(self, target: str | None = None) -> list[Document]:
        """Documents in an index, a data stream (all backing indices), a pattern, or all of
        them; in the order they were written."""
        with self._lock:
            names = self._resolve_read_target(target or "*", hidden=target is None)
            documents = [doc for name in names for doc in self.indices[name].documents.values()]
        return sorted(documents, key=lambda doc: doc.written)

    def sources(self, target: str | None = None) -> list[Any]:
        return [doc.source for doc in self.documents(target)]

    def document(self, target: str, doc_id: str) -> Document | None:
        """The newest document with this `_id` in `target` (a data stream may hold several)."""
        found = [doc for doc in self.documents(target) if doc.id == doc_id]
        return found[-1] if found else None

    def bulk_requests(self) -> list[Request]:
        with self._lock:
            return [request for request in self.requests if request.is_bulk]

    def items(self) -> list[BulkItem]:
        """Every bulk item received, in order, including retries of the same document."""
        return [item for request in self.bulk_requests() for item in request.items]

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
        keep_alive = headers.get("connection", "").lower() != "close"
        encoding = headers.get("content-encoding", "").lower() or None
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = None if chunked else int(headers.get("content-length") or 0)
        expect = headers.get("expect", "").lower() == "100-continue"
        url = urlsplit(target)
        request = Request(
            method=method,
            target=target,
            path=url.path,
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            headers=headers,
            body=b"",
            wire_size=length or 0,
            content_encoding=encoding,
        )
        decodes = encoding in ("gzip", "x-gzip", "deflate", "x-deflate")
        if length is not None and not decodes and length > self.max_content_length:
            # Netty refuses on the declared length and skips the content; the connection stays.
            self._record(request)
            self._send(sock, request, _Response(413, raw=b"", product=False))
            if expect:
                return False
            discard(rfile, length)
            return keep_alive
        if expect:
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        wire = read_chunked(rfile) if chunked else read_exactly(rfile, length or 0)
        request.wire_size = len(wire)
        try:
            request.body = _decode(wire, encoding, self.max_content_length) if decodes else wire
        except zlib.error as error:
            self._record(request)
            reason = f"failed to decompress the request body ({encoding}): {error}"
            self._send(
                sock, request, _Response(400, body={"error": reason, "status": 400}, close=True)
            )
            return False
        if len(request.body) > self.max_content_length:
            self._record(request)
            self._send(sock, request, _Response(413, raw=b"", product=False, close=True))
            return False
        return self._process(sock, request) and keep_alive

    def _process(self, sock: socket.socket, request: Request) -> bool:
        with self._lock:
            self._record(request)
            drop = _take(self._drops)
            slow = _take(self._slow)
        delay = self.delay + (slow[1] if slow else 0.0)
        if drop is not None and not drop[1][0]:
            self._drop(sock, request, reset=drop[1][1])
            return False
        with self._lock:
            scripted = self._scripted_request_answer(request)
        if scripted is None:
            try:
                with self._lock:
                    response = self._dispatch(request)
            except Exception as error:  # noqa: BLE001  (a bug here must not kill the connection thread)
                with self._lock:
                    self.internal_errors.append(f"{request.method} {request.target}: {error!r}")
                response = _Response(500, body={"error": f"fake elasticsearch bug: {error!r}"})
        else:
            response = scripted
        if delay > 0 and self._stopping.wait(delay):
            return False  # the node went down while "busy"
        if drop is not None:
            self._drop(sock, request, reset=drop[1][1])
            return False
        self._send(sock, request, response)
        return not response.close

    def _record(self, request: Request) -> None:
        with self._changed:
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
        headers = list(response.headers)
        if response.product:
            headers.append(_PRODUCT)
        if response.raw is not None:
            payload = response.raw
            if payload or response.content_type:
                headers.append(("content-type", response.content_type or "text/plain"))
        elif response.body is None:
            payload = b""
        else:
            pretty = request.query.get("pretty") not in (None, "false")
            payload = _dump(response.body, pretty=pretty)
            headers.append(("content-type", response.content_type or _response_media_type(request)))
        accepts_gzip = "gzip" in request.headers.get("accept-encoding", "").lower()
        if payload and self.compress_responses and accepts_gzip and response.product:
            compressor = zlib.compressobj(3, zlib.DEFLATED, 31)
            payload = compressor.compress(payload) + compressor.flush()
            headers.append(("content-encoding", "gzip"))
            request.response_compressed = True
        headers.append(("content-length", str(len(payload))))
        if response.close:
            headers.append(("connection", "close"))
        reason = _REASONS.get(response.status, "Unknown")
        head = f"HTTP/1.1 {response.status} {reason}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers
        )
        with self._changed:
            request.status = response.status
            self.statuses[response.status] += 1
            self._changed.notify_all()
        body = b"" if request.method == "HEAD" else payload
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)

    def _scripted_request_answer(self, request: Request) -> _Response | None:
        for rule in self.request_failures:
            if rule.remaining == 0 or not rule.predicate(request):
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
            rule.hits += 1
            headers = (
                []
                if rule.retry_after is None
                else [("Retry-After", _retry_after(rule.retry_after))]
            )
            if rule.proxy:
                text = (
                    rule.body
                    if isinstance(rule.body, bytes)
                    else f"{rule.status} {_REASONS.get(rule.status, '')}\n".encode()
                )
                return _Response(rule.status, raw=text, headers=headers, product=False)
            if rule.body is not None:
                if isinstance(rule.body, bytes):
                    return _Response(
                        rule.status, raw=rule.body, headers=headers, content_type="application/json"
                    )
                return _Response(rule.status, body=rule.body, headers=headers)
            return _Response(
                rule.status, body=_whole_request_error(rule.status).body(), headers=headers
            )
        return None

    # --- routing -----------------------------------------------------------------------------

    def _dispatch(self, request: Request) -> _Response:
        try:
            self._check_media_types(request)
            handler, args, params, unsupported = self._route(request)
            self._check_content_type(request)  # RestController, before the security filter
            principal = self._authenticate(request)
            self._check_params(request, params, unsupported)  # BaseRestHandler, after it
            body = handler(request, principal, *args)
        except EsError as error:
            return _Response(
                error.status, body=self._filtered(request, error.body()), headers=error.headers
            )
        if isinstance(body, _Response):
            return body
        status, payload = body
        return _Response(status, body=None if payload is None else self._filtered(request, payload))

    def _route(
        self, request: Request
    ) -> tuple[Callable[..., Any], tuple[str, ...], frozenset[str], frozenset[str]]:
        segments = tuple(unquote(part) for part in request.path.strip("/").split("/") if part)
        for pattern, methods in _ROUTES:
            args = _match(pattern, segments)
            if args is None:
                continue
            entry = methods.get(request.method)
            if entry is None:
                allowed = ", ".join(sorted(methods))
                raise EsError(
                    405,
                    "",
                    f"Incorrect HTTP method for uri [{request.target}] and method "
                    f"[{request.method}], allowed: [{allowed}]",
                    headers=[("Allow", ",".join(sorted(methods)))],
                    plain=True,
                )
            name, params, unsupported = entry
            return getattr(self, name), args, params, unsupported
        raise EsError(
            400,
            "",
            f"no handler found for uri [{request.target}] and method [{request.method}]",
            plain=True,
        )

    def _check_params(
        self, request: Request, allowed: frozenset[str], unsupported: frozenset[str]
    ) -> None:
        unknown = sorted(set(request.query) - allowed - unsupported - _COMMON_PARAMS)
        if unknown:
            noun = "parameter" if len(unknown) == 1 else "parameters"
            listed = ", ".join(f"[{name}]" for name in unknown)
            raise EsError(
                400,
                "illegal_argument_exception",
                f"request [{request.path}] contains unrecognized {noun}: {listed}",
            )
        for name in sorted(unsupported & set(request.query)):
            raise EsError(
                400,
                "illegal_argument_exception",
                f"parameter [{name}] is not implemented by this test server "
                "(tests/fake_elasticsearch.py)",
            )

    def _check_media_types(self, request: Request) -> None:
        """RestCompatibleVersionHelper: Accept, and Content-Type when there is a body."""
        current, oldest = self.major, self.major - 1
        accept_header = request.headers.get("accept")
        content_header = request.headers.get("content-type")
        accept = _compatible_with(accept_header)
        content = _compatible_with(content_header)
        failures: list[str] = []
        accept_version = current if accept is None else accept
        content_version = current if content is None else content
        if not oldest <= accept_version <= current:
            failures.append(
                f"Accept version must be either version {current} or {oldest}, but found "
                f"{accept_version}. Accept={accept_header}"
            )
        elif request.body:
            if not oldest <= content_version <= current:
                failures.append(
                    f"Content-Type version must be either version {current} or {oldest}, but "
                    f"found {content_version}. Content-Type={content_header}"
                )
            elif content_version != accept_version:
                failures.append(
                    "A compatible version is required on both Content-Type and Accept headers if "
                    "either one has requested a compatible version and the compatible versions "
                    f"must match. Accept={accept_header}, Content-Type={content_header}"
                )
            elif (accept is None) != (content is None):
                failures.append(
                    "A compatible version is required on both Content-Type and Accept headers if "
                    "either one has requested a compatible version. "
                    f"Accept={accept_header}, Content-Type={content_header}"
                )
        if failures:
            raise EsError(
                400,
                "media_type_header_exception",
                "Invalid media-type value on headers [Accept, Content-Type]",
                caused_by={"type": "status_exception", "reason": failures[0]},
            )

    def _check_content_type(self, request: Request) -> None:
        if not request.body:
            return
        content_type = request.headers.get("content-type")
        if content_type is None:
            raise EsError(406, "", "Content-Type header is missing", plain=True)
        media = content_type.split(";", 1)[0].strip().lower()
        known = {"application/json", "application/x-ndjson", "application/vnd.elasticsearch+json",
                 "application/vnd.elasticsearch+x-ndjson"}  # fmt: skip
        if media not in known:
            raise EsError(
                406, "", f"Content-Type header [{content_type}] is not supported", plain=True
            )

    def _filtered(self, request: Request, payload: Any) -> Any:
        expression = request.query.get("filter_path")
        return payload if not expression else filter_path(payload, expression)

    # --- security ----------------------------------------------------------------------------

    @property
    def security_enabled(self) -> bool:
        return self._security if self._security is not None else bool(self.principals)

    def _authenticate(self, request: Request) -> Principal | None:
        if not self.security_enabled:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        scheme = scheme.lower()
        credential = credential.strip()
        if scheme == "basic" and credential:
            username, _, password = _b64(credential).partition(":")
            principal = self.principals.get(("user", username))
            if principal is None or principal.secret != password:
                raise _unauthenticated(
                    f"unable to authenticate user [{username}] for REST request [{request.target}]"
                )
            return principal
        if scheme == "apikey" and credential:
            key_id, _, key = _b64(credential).partition(":")
            principal = self.principals.get(("api_key", key_id))
            if principal is None or principal.secret != key:
                why = (
                    f"API key: unable to find apikey with id {key_id}"
                    if principal is None
                    else f"API key: invalid credentials for API key [{key_id}]"
                )
                raise _unauthenticated(
                    "unable to authenticate with provided credentials and anonymous access is not "
                    "allowed for this request",
                    additional=why,
                )
            return principal
        if scheme == "bearer" and credential:
            principal = self.principals.get(("token", credential))
            if principal is None:
                raise _unauthenticated(
                    "unable to authenticate with provided credentials and anonymous access is not "
                    "allowed for this request",
                    additional="unsuccessful bearer token",
                )
            return principal
        raise _unauthenticated(
            f"missing authentication credentials for REST request [{request.target}]"
        )

    def _require_cluster(
        self, principal: Principal | None, action: str, privileges: tuple[str, ...]
    ) -> None:
        if principal is None or any(_cluster_grants(principal, wanted) for wanted in privileges):
            return
        raise EsError(
            403,
            "security_exception",
            f"action [{action}] is unauthorized for {principal.description}, this action is "
            f"granted by the cluster privileges [{','.join(privileges)}]",
        )

    def _index_denial(
        self, principal: Principal | None, action: str, index: str, privileges: tuple[str, ...]
    ) -> EsError | None:
        if principal is None or any(
            _index_grants(principal, index, wanted) for wanted in privileges
        ):
            return None
        return EsError(
            403,
            "security_exception",
            f"action [{action}] is unauthorized for {principal.description} on indices [{index}], "
            f"this action is granted by the index privileges [{','.join(privileges)}]",
        )

    def _require_index(
        self, principal: Principal | None, action: str, index: str, privileges: tuple[str, ...]
    ) -> None:
        denial = self._index_denial(principal, action, index, privileges)
        if denial is not None:
            raise denial

    def _require_security(self) -> None:
        if not self.security_enabled:
            raise EsError(
                500,
                "exception",
                "Security must be explicitly enabled when using a [basic] license. Enable security "
                "by setting [xpack.security.enabled] to [true] in the elasticsearch.yml file and "
                "restart the node.",
            )

    # --- handlers: cluster -------------------------------------------------------------------

    def _info(self, request: Request, principal: Principal | None) -> tuple[int, Any]:
        self._require_cluster(principal, "cluster:monitor/main", ("monitor", "manage", "all"))
        version = {
            "number": self.version,
            "build_flavor": "default",
            "build_type": "docker",
            "build_hash": "0" * 40,
            "build_date": "2025-07-17T22:18:52.361826017Z",
            "build_snapshot": False,
            **_VERSIONS[self.major],
        }
        body = {
            "name": self.node_name,
            "cluster_name": self.cluster_name,
            "cluster_uuid": self.cluster_uuid,
            "version": version,
            "tagline": "You Know, for Search",
        }
        return 200, None if request.method == "HEAD" else body

    def _health(self, _request: Request, principal: Principal | None) -> tuple[int, Any]:
        self._require_cluster(principal, "cluster:monitor/health", ("monitor", "manage", "all"))
        shards = len(self.indices)
        unassigned = shards if self.health_status != "green" else 0
        return 200, {
            "cluster_name": self.cluster_name,
            "status": self.health_status,
            "timed_out": False,
            "number_of_nodes": 1,
            "number_of_data_nodes": 1,
            "active_primary_shards": shards,
            "active_shards": shards,
            "relocating_shards": 0,
            "initializing_shards": 0,
            "unassigned_shards": unassigned,
            "unassigned_primary_shards": 0,
            "delayed_unassigned_shards": 0,
            "number_of_pending_tasks": 0,
            "number_of_in_flight_fetch": 0,
            "task_max_waiting_in_queue_millis": 0,
            "active_shards_percent_as_number": 100.0
            if not shards
            else 100.0 * shards / (shards + unassigned),
        }

    def _authenticate_api(self, _request: Request, principal: Principal | None) -> tuple[int, Any]:
        self._require_security()
        assert principal is not None
        kind = {"user": "realm", "api_key": "api_key", "token": "token"}[principal.kind]
        realm = (
            {"name": "_es_api_key", "type": "_es_api_key"}
            if principal.kind == "api_key"
            else {"name": "default_native", "type": "native"}
        )
        body: dict[str, Any] = {
            "username": principal.username,
            "roles": list(principal.roles),
            "full_name": None,
            "email": None,
            "metadata": {},
            "enabled": True,
            "authentication_realm": realm,
            "lookup_realm": realm,
            "authentication_type": kind,
        }
        if principal.kind == "api_key":
            body["api_key"] = {"id": principal.key_id, "name": None}
        return 200, body

    def _has_privileges(
        self, request: Request, principal: Principal | None, user: str | None = None
    ) -> tuple[int, Any]:
        self._require_security()
        assert principal is not None
        if user is not None and user != principal.username:
            self._require_cluster(
                principal,
                "cluster:admin/xpack/security/user/has_privileges",
                ("manage_security", "all"),
            )
        wanted = _json_body(request) or {}
        cluster = {name: _cluster_grants(principal, name) for name in wanted.get("cluster", [])}
        indices: dict[str, dict[str, bool]] = {}
        for entry in wanted.get("index", []):
            for name in entry.get("names", []):
                checks = indices.setdefault(name, {})
                for privilege in entry.get("privileges", []):
                    checks[privilege] = _index_grants(principal, name, privilege)
        everything = [
            *cluster.values(),
            *(v for checks in indices.values() for v in checks.values()),
        ]
        return 200, {
            "username": principal.username,
            "has_all_requested": all(everything),
            "cluster": cluster,
            "index": indices,
            "application": {},
        }

    # --- handlers: templates, policies, pipelines --------------------------------------------

    def _put_template(
        self, request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_cluster(
            principal,
            "indices:admin/index_template/put",
            ("manage_index_templates", "manage", "all"),
        )
        body = _json_body(request)
        if not isinstance(body, dict):
            raise EsError(400, "parse_exception", "request body is required")
        if request.query.get("create") == "true" and name in self.templates:
            raise EsError(
                400, "illegal_argument_exception", f"index template [{name}] already exists"
            )
        self._validate_template(name, body)
        self.templates[name] = body
        return 200, {"acknowledged": True}

    def _validate_template(self, name: str, body: dict[str, Any]) -> None:
        patterns = body.get("index_patterns")
        if isinstance(patterns, str):
            patterns = [patterns]
        if not patterns:
            raise EsError(
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: index patterns are missing;",
            )
        priority = body.get("priority", 0)
        for other_name, other in self.templates.items():
            if other_name == name or other.get("priority", 0) != priority:
                continue
            other_patterns = other.get("index_patterns", [])
            if any(_globs_overlap(a, b) for a in patterns for b in other_patterns):
                raise EsError(
                    400,
                    "illegal_argument_exception",
                    f"index template [{name}] has index patterns {_java_list(patterns)} "
                    f"matching patterns from existing templates [{other_name}] with patterns "
                    f"({other_name} => {_java_list(other_patterns)}) that have the same priority "
                    f"[{priority}], multiple index templates may not match during index "
                    "creation, please use a different priority",
                )

    def _get_template(
        self, request: Request, principal: Principal | None, name: str = "*"
    ) -> tuple[int, Any]:
        self._require_cluster(
            principal,
            "indices:admin/index_template/get",
            ("manage_index_templates", "monitor", "manage", "all"),
        )
        found = [
            (n, body) for n, body in sorted(self.templates.items()) if fnmatch.fnmatchcase(n, name)
        ]
        if not found and "*" not in name:
            raise EsError(
                404, "resource_not_found_exception", f"index template matching [{name}] not found"
            )
        if request.method == "HEAD":
            return 200, None
        return 200, {"index_templates": [{"name": n, "index_template": body} for n, body in found]}

    def _delete_template(
        self, _request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_cluster(
            principal,
            "indices:admin/index_template/delete",
            ("manage_index_templates", "manage", "all"),
        )
        if name not in self.templates:
            raise EsError(
                404, "index_template_missing_exception", f"index_template [{name}] missing"
            )
        del self.templates[name]
        return 200, {"acknowledged": True}

    def _put_ilm(self, request: Request, principal: Principal | None, name: str) -> tuple[int, Any]:
        self._require_cluster(principal, "cluster:admin/ilm/put", ("manage_ilm", "manage", "all"))
        body = _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("policy"), dict):
            raise EsError(
                400, "x_content_parse_exception", "[1:1] [put_lifecycle_request] policy is required"
            )
        previous = self.ilm_policies.get(name)
        self.ilm_policies[name] = {
            "version": 1 if previous is None else previous["version"] + 1,
            "modified_date": self._clock()
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "policy": body["policy"],
        }
        return 200, {"acknowledged": True}

    def _get_ilm(
        self, _request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_cluster(
            principal, "cluster:admin/ilm/get", ("read_ilm", "manage_ilm", "manage", "all")
        )
        if name not in self.ilm_policies:
            raise EsError(
                404, "resource_not_found_exception", f"Lifecycle policy not found: {name}"
            )
        return 200, {name: self.ilm_policies[name]}

    def _delete_ilm(
        self, _request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_cluster(
            principal, "cluster:admin/ilm/delete", ("manage_ilm", "manage", "all")
        )
        if self.ilm_policies.pop(name, None) is None:
            raise EsError(
                404, "resource_not_found_exception", f"Lifecycle policy not found: {name}"
            )
        return 200, {"acknowledged": True}

    def _put_pipeline(
        self, request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_cluster(
            principal,
            "cluster:admin/ingest/pipeline/put",
            ("manage_pipeline", "manage_ingest_pipelines", "manage", "all"),
        )
        body = _json_body(request)
        if not isinstance(body, dict):
            raise EsError(400, "parse_exception", "request body is required")
        self.pipelines[name] = body
        return 200, {"acknowledged": True}

    def _get_pipeline(
        self, _request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_cluster(
            principal,
            "cluster:admin/ingest/pipeline/get",
            ("read_pipeline", "manage_pipeline", "manage", "all"),
        )
        if name not in self.pipelines:
            return 404, {}
        return 200, {name: self.pipelines[name]}

    def _delete_pipeline(
        self, _request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_cluster(
            principal, "cluster:admin/ingest/pipeline/delete", ("manage_pipeline", "manage", "all")
        )
        if self.pipelines.pop(name, None) is None:
            raise EsError(404, "resource_not_found_exception", f"pipeline [{name}] is missing")
        return 200, {"acknowledged": True}

    # --- handlers: data streams, indices -----------------------------------------------------

    def _put_data_stream(
        self, _request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_index(
            principal, "indices:admin/data_stream/create", name, ("create_index", "manage", "all")
        )
        if name in self.data_streams:
            raise EsError(
                400, "resource_already_exists_exception", f"data_stream [{name}] already exists"
            )
        _check_index_name(name)
        template = self._matching_template(name)
        if template is None or "data_stream" not in template[1]:
            raise EsError(
                400,
                "illegal_argument_exception",
                f"no matching index template found for data stream [{name}]",
            )
        self._new_data_stream(name, *template)
        return 200, {"acknowledged": True}

    def _get_data_stream(
        self, _request: Request, principal: Principal | None, name: str = "*"
    ) -> tuple[int, Any]:
        names = [n for n in sorted(self.data_streams) if fnmatch.fnmatchcase(n, name)]
        if not names and "*" not in name:
            raise _index_not_found(name)
        for found in names:
            self._require_index(
                principal,
                "indices:admin/data_stream/get",
                found,
                ("view_index_metadata", "manage", "all"),
            )
        return 200, {"data_streams": [self._data_stream_info(self.data_streams[n]) for n in names]}

    def _data_stream_info(self, stream: DataStream) -> dict[str, Any]:
        template = self.templates.get(stream.template, {})
        settings = template.get("template", {}).get("settings", {})
        policy = settings.get("index.lifecycle.name") or settings.get("index", {}).get(
            "lifecycle", {}
        ).get("name")
        info: dict[str, Any] = {
            "name": stream.name,
            "timestamp_field": {"name": "@timestamp"},
            "indices": [
                {"index_name": n, "index_uuid": self.indices[n].uuid} for n in stream.indices
            ],
            "generation": stream.generation,
            "status": self.health_status.upper(),
            "template": stream.template,
            "hidden": False,
            "system": False,
            "allow_custom_routing": False,
            "replicated": False,
            "rollover_on_write": False,
        }
        if policy:
            info["ilm_policy"] = policy
        if stream.lifecycle is not None:
            info["lifecycle"] = {"enabled": True, **stream.lifecycle}
        return info

    def _delete_data_stream(
        self, _request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_index(
            principal, "indices:admin/data_stream/delete", name, ("delete_index", "manage", "all")
        )
        stream = self.data_streams.pop(name, None)
        if stream is None:
            raise _index_not_found(name)
        for backing in stream.indices:
            del self.indices[backing]
        return 200, {"acknowledged": True}

    def _put_lifecycle(
        self, request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_index(
            principal,
            "indices:admin/data_stream/lifecycle/put",
            name,
            ("manage_data_stream_lifecycle", "manage", "all"),
        )
        if name not in self.data_streams:
            raise _index_not_found(name)
        body = _json_body(request)
        self.data_streams[name].lifecycle = body if isinstance(body, dict) else {}
        return 200, {"acknowledged": True}

    def _get_lifecycle(
        self, _request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_index(
            principal,
            "indices:admin/data_stream/lifecycle/get",
            name,
            ("view_index_metadata", "manage", "all"),
        )
        if name not in self.data_streams:
            raise _index_not_found(name)
        stream = self.data_streams[name]
        entry: dict[str, Any] = {"name": name}
        if stream.lifecycle is not None:
            entry["lifecycle"] = {"enabled": True, **stream.lifecycle}
        return 200, {"data_streams": [entry]}

    def _rollover_api(
        self, _request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_index(principal, "indices:admin/rollover", name, ("manage", "all"))
        if name not in self.data_streams:
            raise EsError(
                400,
                "illegal_argument_exception",
                f"rollover target [{name}] does not exist or is not a data stream (aliases are "
                "not modelled here)",
            )
        old = self.data_streams[name].write_index
        new = self.rollover(name)
        return 200, {
            "acknowledged": True,
            "shards_acknowledged": True,
            "old_index": old,
            "new_index": new,
            "rolled_over": True,
            "dry_run": False,
            "lazy": False,
            "conditions": {},
        }

    def _create_index(
        self, request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_index(
            principal, "indices:admin/create", name, ("create_index", "manage", "all")
        )
        _check_index_name(name)
        if name in self.indices or name in self.data_streams:
            uuid_ = self.indices[name].uuid if name in self.indices else "_na_"
            raise EsError(
                400,
                "resource_already_exists_exception",
                f"index [{name}/{uuid_}] already exists",
                extra={"index_uuid": uuid_, "index": name},
            )
        body = _json_body(request) or {}
        template = self._matching_template(name)
        if template is not None and "data_stream" in template[1]:
            raise EsError(
                400,
                "illegal_argument_exception",
                f"cannot create index with name [{name}], because it matches with template "
                f"[{template[0]}] that creates data streams only, use create data stream api "
                "instead",
            )
        merged = dict(template[1]) if template is not None else {}
        inner = dict(merged.get("template", {}))
        if "mappings" in body:
            inner["mappings"] = body["mappings"]
        if "settings" in body:
            inner["settings"] = body["settings"]
        merged["template"] = inner
        self._new_index(name, merged)
        return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def _get_index(
        self, request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        names = self._resolve_read_target(name, hidden=False, must_exist=True)
        for found in names:
            self._require_index(
                principal, "indices:admin/get", found, ("view_index_metadata", "manage", "all")
            )
        if request.method == "HEAD":
            return 200, None
        return 200, {name: self._index_info(self.indices[name]) for name in names}

    def _index_info(self, index: Index) -> dict[str, Any]:
        info: dict[str, Any] = {
            "aliases": {},
            "mappings": _unflatten_mappings(index.mappings),
            "settings": {
                "index": {
                    "uuid": index.uuid,
                    "number_of_shards": "1",
                    "number_of_replicas": "1",
                    "provided_name": index.name,
                }
            },
        }
        if index.data_stream is not None:
            info["data_stream"] = index.data_stream
        return info

    def _delete_index(
        self, _request: Request, principal: Principal | None, name: str
    ) -> tuple[int, Any]:
        self._require_index(
            principal, "indices:admin/delete", name, ("delete_index", "manage", "all")
        )
        if name not in self.indices:
            raise _index_not_found(name)
        if self.indices[name].data_stream is not None:
            raise EsError(
                400,
                "illegal_argument_exception",
                f"index [{name}] is the write index for data stream "
                f"[{self.indices[name].data_stream}] and cannot be deleted",
            )
        del self.indices[name]
        return 200, {"acknowledged": True}

    def _refresh(
        self, _request: Request, principal: Principal | None, target: str = "*"
    ) -> tuple[int, Any]:
        names = self._resolve_read_target(target, hidden=False, must_exist=True)
        for name in names:
            self._require_index(
                principal, "indices:admin/refresh", name, ("maintenance", "manage", "all")
            )
        return 200, {"_shards": {"total": 2 * len(names), "successful": len(names), "failed": 0}}

    def _count(
        self, request: Request, principal: Principal | None, target: str = "*"
    ) -> tuple[int, Any]:
        names = self._resolve_read_target(target, hidden=False, must_exist=True)
        for name in names:
            self._require_index(principal, "indices:data/read/search", name, ("read", "all"))
        query = _query(_json_body(request))
        hits = [doc for n in names for doc in self.indices[n].documents.values() if query(doc)]
        return 200, {
            "count": len(hits),
            "_shards": {"total": len(names), "successful": len(names), "skipped": 0, "failed": 0},
        }

    def _search(
        self, request: Request, principal: Principal | None, target: str = "*"
    ) -> tuple[int, Any]:
        names = self._resolve_read_target(target, hidden=False, must_exist=True)
        for name in names:
            self._require_index(principal, "indices:data/read/search", name, ("read", "all"))
        body = _json_body(request) or {}
        unsupported = sorted(set(body) - {"query", "size", "from", "track_total_hits", "_source"})
        if unsupported:
            raise EsError(
                400,
                "illegal_argument_exception",
                f"search body keys {unsupported} are not implemented by this test server",
            )
        query = _query(body)
        hits = sorted(
            (doc for n in names for doc in self.indices[n].documents.values() if query(doc)),
            key=lambda d: (d.index, d.seq_no),
        )
        start = int(request.query.get("from", body.get("from", 0)))
        size = int(request.query.get("size", body.get("size", 10)))
        return 200, {
            "took": 1,
            "timed_out": False,
            "_shards": {"total": len(names), "successful": len(names), "skipped": 0, "failed": 0},
            "hits": {
                "total": {"value": len(hits), "relation": "eq"},
                "max_score": 1.0 if hits else None,
                "hits": [
                    {"_index": d.index, "_id": d.id, "_score": 1.0, "_source": d.source}
                    for d in hits[start : start + size]
                ],
            },
        }

    def _get_doc(
        self, request: Request, principal: Principal | None, target: str, doc_id: str
    ) -> tuple[int, Any]:
        names = self._resolve_read_target(target, hidden=False, must_exist=True)
        for name in names:
            self._require_index(principal, "indices:data/read/get", name, ("read", "all"))
        found = [
            self.indices[n].documents[doc_id] for n in names if doc_id in self.indices[n].documents
        ]
        if not found:
            return 404, None if request.method == "HEAD" else {
                "_index": target,
                "_id": doc_id,
                "found": False,
            }
        doc = found[-1]
        return 200, None if request.method == "HEAD" else {
            "_index": doc.index, "_id": doc.id, "_version": doc.version, "_seq_no": doc.seq_no,
            "_primary_term": 1, "found": True, "_source": doc.source,
        }  # fmt: skip

    # --- handlers: bulk ----------------------------------------------------------------------

    def _bulk(
        self, request: Request, principal: Principal | None, path_target: str | None = None
    ) -> tuple[int, Any]:
        started = time.monotonic()
        request.items = self._parse_bulk(request, path_target)
        answers = [self._bulk_item(request, principal, item) for item in request.items]
        body: dict[str, Any] = {
            "errors": any("error" in answer for answer in answers),
            "took": int((time.monotonic() - started) * 1000),
        }
        if any(item.pipeline not in (None, "_none") for item in request.items):
            body["ingest_took"] = 0
        body["items"] = [
            {item.action: answer} for item, answer in zip(request.items, answers, strict=True)
        ]
        return 200, body

    def _parse_bulk(self, request: Request, path_target: str | None) -> list[BulkItem]:
        data = request.body
        if not data:
            raise EsError(
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: no requests added;",
            )
        if not data.endswith(b"\n"):
            raise EsError(
                400,
                "illegal_argument_exception",
                "The bulk request must be terminated by a newline [\\n]",
            )
        lines = data.split(b"\n")[:-1]
        items: list[BulkItem] = []
        problems: list[str] = []
        default_pipeline = request.query.get("pipeline")
        number = 0
        while number < len(lines):
            line = lines[number]
            number += 1
            if not line.strip():
                continue
            action, params = _parse_action_line(line, number)
            raw_source = b""
            if action != "delete":
                if number >= len(lines):
                    problems.append("source is missing")
                    continue
                raw_source = lines[number].rstrip(b"\r")
                number += 1
            target = params.get("_index", path_target)
            doc_id = params.get("_id")
            if target is None:
                problems.append("index is missing")
            if doc_id is None and action in ("delete", "update"):
                problems.append("id is missing")
            if doc_id is not None and len(str(doc_id).encode()) > 512:
                problems.append(
                    f"id [{doc_id}] is too long, must be no longer than 512 bytes but was: "
                    f"{len(str(doc_id).encode())}"
                )
            try:
                source = json.loads(raw_source) if raw_source else None
            except ValueError:
                source = None
            items.append(
                BulkItem(
                    position=len(items),
                    action=action,
                    target=None if target is None else str(target),
                    id=None if doc_id is None else str(doc_id),
                    pipeline=params.get("pipeline", default_pipeline),
                    source=source,
                    raw_source=raw_source,
                )
            )
        if not items and not problems:
            problems.append("no requests added")
        if problems:
            listed = "".join(f"{n}: {p};" for n, p in enumerate(problems, start=1))
            raise EsError(
                400, "action_request_validation_exception", f"Validation Failed: {listed}"
            )
        return items

    def _bulk_item(
        self, request: Request, principal: Principal | None, item: BulkItem
    ) -> dict[str, Any]:
        """One item, as a shard would answer it; records the outcome on the item."""
        assert item.target is not None
        concrete: str | None = None
        doc_id = item.id
        try:
            concrete, stream = self._resolve_write_target(principal, item)
            if doc_id is None:
                doc_id = _auto_id()
            denial = self._write_denial(principal, item, concrete)
            if denial is not None:
                raise denial
            scripted = self._scripted_item_failure(item, concrete, doc_id)
            if scripted is not None:
                raise scripted
            answer = self._write(request, item, concrete, stream, doc_id)
        except EsError as error:
            answer = {
                "_index": concrete or item.target,
                "_id": doc_id,
                "status": error.status,
                "error": error.error_object(),
            }
            self.item_results[error.error_type] += 1
        else:
            self.item_results[answer["result"]] += 1
        item.status = answer["status"]
        item.answer = answer
        return answer

    def _resolve_write_target(
        self, principal: Principal | None, item: BulkItem
    ) -> tuple[str, DataStream | None]:
        """The concrete index an item writes to, auto-creating the index or data stream."""
        assert item.target is not None
        name = item.target
        if name in self.data_streams:
            stream = self.data_streams[name]
            if item.action != "create":
                raise EsError(
                    400,
                    "illegal_argument_exception",
                    "only write ops with an op_type of create are allowed in data streams",
                )
            return stream.write_index, stream
        if name in self.indices:
            index = self.indices[name]
            if index.data_stream is not None and item.action in ("create", "index"):
                op = "create" if item.action == "create" or item.id is None else "index"
                condition = "" if op == "create" else " and no if_primary_term and if_seq_no set"
                raise EsError(
                    400,
                    "illegal_argument_exception",
                    f"index request with op_type={op}{condition} targeting backing indices is "
                    f"disallowed, target corresponding data stream [{index.data_stream}] instead",
                )
            return name, None
        _check_index_name(name)
        template = self._matching_template(name)
        self._check_auto_create(name, template)
        denial = self._index_denial(
            principal, "indices:admin/auto_create", name, _AUTO_CREATE_PRIVILEGES
        )
        if denial is not None:
            raise denial
        if template is not None and "data_stream" in template[1]:
            stream = self._new_data_stream(name, *template)
            if item.action != "create":
                raise EsError(
                    400,
                    "illegal_argument_exception",
                    "only write ops with an op_type of create are allowed in data streams",
                )
            return stream.write_index, stream
        self._new_index(name, template[1] if template else {})
        return name, None

    def _check_auto_create(self, name: str, template: tuple[str, dict[str, Any]] | None) -> None:
        allow = template[1].get("allow_auto_create") if template else None
        if allow is True:
            return
        if allow is False:
            raise _index_not_found(
                name,
                f"[{name}] composable template [{template[0] if template else ''}] forbids "
                "index auto creation",
            )
        setting = self.auto_create_index
        if setting is True or setting == "true":
            return
        if setting is False or setting == "false":
            raise _index_not_found(name, "[action.auto_create_index] is [false]")
        for entry in str(setting).split(","):
            pattern = entry.strip()
            allowed = not pattern.startswith("-")
            if fnmatch.fnmatchcase(name, pattern.lstrip("+-")):
                if allowed:
                    return
                raise _index_not_found(
                    name,
                    f"[action.auto_create_index] contains [{pattern}] which forbids automatic "
                    "creation of the index",
                )
        raise _index_not_found(name, f"[action.auto_create_index] ([{setting}]) doesn't match")

    def _write_denial(
        self, principal: Principal | None, item: BulkItem, concrete: str
    ) -> EsError | None:
        assert item.target is not None
        denial = self._index_denial(
            principal, "indices:data/write/bulk[s]", item.target, _WRITE_PRIVILEGES
        )
        if denial is not None:
            return denial
        if item.action == "delete":
            return self._index_denial(
                principal, "indices:data/write/delete", item.target, ("delete", "write", "all")
            )
        if item.action == "update":
            return self._index_denial(
                principal, "indices:data/write/update", item.target, ("index", "write", "all")
            )
        if item.action == "create" or item.id is None:
            return self._index_denial(
                principal,
                "indices:data/write/index:op_type/create",
                item.target,
                ("create_doc", "create", "index", "write", "all"),
            )
        return self._index_denial(
            principal,
            "indices:data/write/index:op_type/index",
            item.target,
            ("index", "write", "all"),
        )

    def _scripted_item_failure(self, item: BulkItem, concrete: str, doc_id: str) -> EsError | None:
        for rule in self.item_failures:
            if rule.remaining == 0 or not rule.predicate(item):
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
            rule.hits += 1
            return _scripted_error(rule, self.indices[concrete], doc_id)
        return None

    def _write(
        self,
        request: Request,
        item: BulkItem,
        concrete: str,
        stream: DataStream | None,
        doc_id: str,
    ) -> dict[str, Any]:
        index = self.indices[concrete]
        if item.pipeline not in (None, "_none") and item.pipeline not in self.pipelines:
            raise EsError(
                400,
                "illegal_argument_exception",
                f"pipeline with id [{item.pipeline}] does not exist",
            )
        if item.action == "delete":
            return self._delete_doc(request, index, doc_id)
        source = self._checked_source(item, index, stream, doc_id)
        existing = index.documents.get(doc_id)
        if item.action == "update":
            source, existing = self._updated_source(item, index, existing, doc_id)
            self._check_mapping(index, source, item.raw_source, doc_id, stream)
        if existing is not None and item.action == "create":
            raise EsError(
                409,
                "version_conflict_engine_exception",
                f"[{doc_id}]: version conflict, document already exists (current version "
                f"[{existing.version}])",
                extra={"index_uuid": index.uuid, "shard": "0", "index": index.name},
            )
        version = 1 if existing is None else existing.version + 1
        seq_no = index.next_seq_no
        index.next_seq_no += 1
        pipeline = None if item.pipeline in (None, "_none") else item.pipeline
        index.documents.pop(doc_id, None)  # re-inserted last: documents() keeps write order
        self._writes += 1
        index.documents[doc_id] = Document(
            index.name, doc_id, source, version, seq_no, pipeline, item.action, self._writes
        )
        created = existing is None
        answer: dict[str, Any] = {
            "_index": index.name,
            "_id": doc_id,
            "_version": version,
            "result": "created" if created else "updated",
        }
        if request.query.get("refresh") in ("", "true"):
            answer["forced_refresh"] = True
        answer |= {
            "_shards": {"total": 2, "successful": 1, "failed": 0},
            "_seq_no": seq_no,
            "_primary_term": 1,
        }
        answer["status"] = 201 if created else 200
        return answer

    def _delete_doc(self, request: Request, index: Index, doc_id: str) -> dict[str, Any]:
        existing = index.documents.pop(doc_id, None)
        seq_no = index.next_seq_no
        index.next_seq_no += 1
        answer: dict[str, Any] = {
            "_index": index.name,
            "_id": doc_id,
            "_version": 1 if existing is None else existing.version + 1,
            "result": "not_found" if existing is None else "deleted",
        }
        if request.query.get("refresh") in ("", "true"):
            answer["forced_refresh"] = True
        answer |= {
            "_shards": {"total": 2, "successful": 1, "failed": 0},
            "_seq_no": seq_no,
            "_primary_term": 1,
        }
        answer["status"] = 404 if existing is None else 200
        return answer

    def _updated_source(
        self, item: BulkItem, index: Index, existing: Document | None, doc_id: str
    ) -> tuple[Any, Document | None]:
        body = item.source
        if not isinstance(body, dict) or "script" in body:
            raise EsError(
                400,
                "illegal_argument_exception",
                "only `doc` updates are implemented by this test server (no scripts)",
            )
        doc = body.get("doc")
        if existing is None:
            if body.get("doc_as_upsert") and isinstance(doc, dict):
                return doc, None
            if isinstance(body.get("upsert"), dict):
                return body["upsert"], None
            raise EsError(
                404,
                "document_missing_exception",
                f"[{doc_id}]: document missing",
                extra={"index_uuid": index.uuid, "shard": "0", "index": index.name},
            )
        if not isinstance(doc, dict):
            raise EsError(
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: script or doc is missing;",
            )
        return _merge(existing.source, doc), existing

    def _checked_source(
        self, item: BulkItem, index: Index, stream: DataStream | None, doc_id: str
    ) -> Any:
        if item.action == "update":
            return item.source
        try:
            source = json.loads(item.raw_source)
        except ValueError as error:
            raise EsError(
                400,
                "document_parsing_exception",
                f"[1:1] failed to parse: {error}",
                caused_by={"type": "x_content_parse_exception", "reason": f"[1:1] {error}"},
            ) from None
        if not isinstance(source, dict):
            raise EsError(
                400,
                "document_parsing_exception",
                "[1:1] Malformed content, must start with an object",
            )
        self._check_mapping(index, source, item.raw_source, doc_id, stream)
        return source

    def _check_mapping(
        self,
        index: Index,
        source: dict[str, Any],
        raw: bytes,
        doc_id: str,
        stream: DataStream | None,
    ) -> None:
        line = raw.decode("utf-8", "replace")
        if stream is not None:
            timestamp = source.get("@timestamp")
            why = None
            if timestamp is None:
                why = "data stream timestamp field [@timestamp] is missing"
            elif isinstance(timestamp, list):
                why = "data stream timestamp field [@timestamp] encountered multiple values"
            if why is not None:
                raise EsError(
                    400,
                    "document_parsing_exception",
                    f"[1:{len(line)}] failed to parse: {why}",
                    caused_by={"type": "illegal_argument_exception", "reason": why},
                )
        check = _DocumentCheck(index, line, doc_id)
        check.object(source)
        index.mappings.update(check.added)

    # --- indices, templates ------------------------------------------------------------------

    def _matching_template(self, name: str) -> tuple[str, dict[str, Any]] | None:
        best: tuple[str, dict[str, Any]] | None = None
        for template_name, body in self.templates.items():
            patterns = body.get("index_patterns", [])
            if isinstance(patterns, str):
                patterns = [patterns]
            if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                continue
            if best is None or body.get("priority", 0) > best[1].get("priority", 0):
                best = (template_name, body)
        return best

    def _new_index(
        self, name: str, template: dict[str, Any], *, data_stream: str | None = None
    ) -> Index:
        inner = template.get("template", {}) or {}
        mappings_body = inner.get("mappings", {}) or {}
        mappings = dict(self.mapping)
        mappings.update(_flatten_mappings(mappings_body.get("properties", {})))
        if data_stream is not None:
            mappings.setdefault("@timestamp", "date")
        dynamic = mappings_body.get("dynamic", self.dynamic)
        if dynamic in ("false", False):
            dynamic = False
        elif dynamic == "strict":
            dynamic = "strict"
        else:
            dynamic = True
        index = Index(
            name,
            _uuid(),
            mappings,
            dynamic,
            data_stream,
            settings=dict(inner.get("settings", {}) or {}),
        )
        self.indices[name] = index
        return index

    def _new_data_stream(
        self, name: str, template_name: str, template: dict[str, Any]
    ) -> DataStream:
        backing = self._backing_name(name, 1)
        self._new_index(backing, template, data_stream=name)
        lifecycle = template.get("template", {}).get("lifecycle")
        stream = DataStream(name, template_name, [backing], lifecycle)
        self.data_streams[name] = stream
        return stream

    def _backing_name(self, name: str, generation: int) -> str:
        return f".ds-{name}-{self._clock().strftime('%Y.%m.%d')}-{generation:06d}"

    def _resolve_read_target(
        self, target: str, *, hidden: bool, must_exist: bool = False
    ) -> list[str]:
        names: list[str] = []
        for part in target.split(","):
            if part in ("_all", "*") or "*" in part:
                pattern = "*" if part == "_all" else part
                for stream in sorted(self.data_streams):
                    if fnmatch.fnmatchcase(stream, pattern):
                        names.extend(self.data_streams[stream].indices)
                names.extend(
                    n for n in sorted(self.indices)
                    if fnmatch.fnmatchcase(n, pattern)
                    and (hidden or not n.startswith("."))
                    and n not in names
                )  # fmt: skip
            elif part in self.data_streams:
                names.extend(self.data_streams[part].indices)
            elif part in self.indices:
                names.append(part)
            elif must_exist:
                raise _index_not_found(part)
        return list(dict.fromkeys(names))


# --- routes -------------------------------------------------------------------------------------

_Entry = tuple[str, frozenset[str], frozenset[str]]  # handler, parameters, parameters refused


def _entry(handler: str, params: str = "", unsupported: str = "") -> _Entry:
    return handler, frozenset(params.split()), frozenset(unsupported.split())


_TEMPLATE_GET = _entry("_get_template", "flat_settings local master_timeout include_defaults")
_DS_GET = _entry("_get_data_stream", "expand_wildcards include_defaults master_timeout verbose")
_BULK = _entry(
    "_bulk",
    "pipeline refresh timeout wait_for_active_shards _source _source_includes _source_excludes "
    "list_executed_pipelines include_source_on_error",
    "routing require_alias require_data_stream",
)
_HAS_PRIVILEGES = _entry("_has_privileges")
_READ = "expand_wildcards ignore_unavailable allow_no_indices"
_HEALTH = _entry(
    "_health",
    "level local master_timeout timeout wait_for_active_shards wait_for_events wait_for_nodes "
    "wait_for_no_initializing_shards wait_for_no_relocating_shards wait_for_status "
    "expand_wildcards",
)
_REFRESH = _entry("_refresh", _READ)
_COUNT = _entry("_count", _READ, "q")
_SEARCH = _entry("_search", f"size from track_total_hits rest_total_hits_as_int {_READ}", "q sort")
_GET_DOC = _entry(
    "_get_doc", "_source realtime refresh preference stored_fields version", "routing"
)
_PUT_TEMPLATE = _entry("_put_template", "create master_timeout cause")
_ROUTES: list[tuple[tuple[str, ...], dict[str, _Entry]]] = [
    ((), {"GET": _entry("_info"), "HEAD": _entry("_info")}),
    (("_bulk",), {"POST": _BULK, "PUT": _BULK}),
    (("_cluster", "health"), {"GET": _HEALTH}),
    (("_security", "_authenticate"), {"GET": _entry("_authenticate_api")}),
    (("_security", "user", "_has_privileges"), {"GET": _HAS_PRIVILEGES, "POST": _HAS_PRIVILEGES}),
    (
        ("_security", "user", "{}", "_has_privileges"),
        {"GET": _HAS_PRIVILEGES, "POST": _HAS_PRIVILEGES},
    ),
    (("_index_template",), {"GET": _TEMPLATE_GET}),
    (
        ("_index_template", "{}"),
        {
            "PUT": _PUT_TEMPLATE,
            "POST": _PUT_TEMPLATE,
            "GET": _TEMPLATE_GET,
            "HEAD": _TEMPLATE_GET,
            "DELETE": _entry("_delete_template", "master_timeout timeout"),
        },
    ),
    (
        ("_ilm", "policy", "{}"),
        {
            "PUT": _entry("_put_ilm", "master_timeout timeout"),
            "GET": _entry("_get_ilm", "master_timeout timeout"),
            "DELETE": _entry("_delete_ilm", "master_timeout timeout"),
        },
    ),
    (
        ("_ingest", "pipeline", "{}"),
        {
            "PUT": _entry("_put_pipeline", "master_timeout timeout if_version"),
            "GET": _entry("_get_pipeline", "master_timeout summary"),
            "DELETE": _entry("_delete_pipeline", "master_timeout timeout"),
        },
    ),
    (("_data_stream",), {"GET": _DS_GET}),
    (
        ("_data_stream", "{}"),
        {
            "PUT": _entry("_put_data_stream", "master_timeout timeout"),
            "GET": _DS_GET,
            "DELETE": _entry("_delete_data_stream", "expand_wildcards master_timeout"),
        },
    ),
    (
        ("_data_stream", "{}", "_lifecycle"),
        {
            "PUT": _entry("_put_lifecycle", "expand_wildcards master_timeout timeout"),
            "GET": _entry("_get_lifecycle", "expand_wildcards include_defaults master_timeout"),
        },
    ),
    (("_refresh",), {"POST": _REFRESH, "GET": _REFRESH}),
    (("_count",), {"GET": _COUNT, "POST": _COUNT}),
    (("_search",), {"GET": _SEARCH, "POST": _SEARCH}),
    (("{}", "_bulk"), {"POST": _BULK, "PUT": _BULK}),
    (
        ("{}", "_rollover"),
        {"POST": _entry("_rollover_api", "dry_run master_timeout timeout wait_for_active_shards")},
    ),
    (("{}", "_refresh"), {"POST": _REFRESH, "GET": _REFRESH}),
    (("{}", "_count"), {"GET": _COUNT, "POST": _COUNT}),
    (("{}", "_search"), {"GET": _SEARCH, "POST": _SEARCH}),
    (("{}", "_doc", "{}"), {"GET": _GET_DOC, "HEAD": _GET_DOC}),
    (
        ("{}",),
        {
            "PUT": _entry("_create_index", "wait_for_active_shards master_timeout timeout"),
            "GET": _entry("_get_index", f"{_READ} flat_settings include_defaults local features"),
            "HEAD": _entry("_get_index", f"{_READ} flat_settings include_defaults local"),
            "DELETE": _entry("_delete_index", f"{_READ} master_timeout timeout"),
        },
    ),
]


def _any_item(_item: BulkItem) -> bool:
    return True


def _match(pattern: tuple[str, ...], segments: tuple[str, ...]) -> tuple[str, ...] | None:
    if len(pattern) != len(segments):
        return None
    args: list[str] = []
    for expected, actual in zip(pattern, segments, strict=True):
        if expected == "{}":
            if actual.startswith("_"):
                return None
            args.append(actual)
        elif expected != actual:
            return None
    return tuple(args)


# --- filter_path --------------------------------------------------------------------------------

_MISSING: Any = object()


def filter_path(value: Any, expression: str) -> Any:
    """Elasticsearch's response filtering: exclusions (`-a.b`) first, then inclusions."""
    includes: list[list[str]] = []
    excludes: list[list[str]] = []
    for entry in expression.split(","):
        path = entry.strip()
        if not path:
            continue
        target = excludes if path.startswith("-") else includes
        target.append(path.lstrip("-").split("."))
    if excludes:
        value = _exclude(value, excludes)
    if includes:
        value = _include(value, includes)
        if value is _MISSING:
            return {}
    return value


def _name_matches(pattern: str, name: str) -> bool:
    if "*" not in pattern:
        return pattern == name
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, name, re.DOTALL) is not None


def _advance(path: list[str], name: str) -> list[list[str]]:
    """Where each path stands after descending into field `name` (empty list: fully matched)."""
    if not path:
        return [[]]
    if path[0] == "**":
        after = _advance(path[1:], name) if len(path) > 1 else [[]]
        return [path, *after]
    return [path[1:]] if _name_matches(path[0], name) else []


def _include(value: Any, paths: list[list[str]]) -> Any:
    if any(not path for path in paths):
        return value
    if isinstance(value, dict):
        kept: dict[str, Any] = {}
        for name, child in value.items():
            following = [nxt for path in paths for nxt in _advance(path, name)]
            if following:
                sub = _include(child, following)
                if sub is not _MISSING:
                    kept[name] = sub
        return kept if kept else _MISSING
    if isinstance(value, list):
        elements = [sub for sub in (_include(el, paths) for el in value) if sub is not _MISSING]
        return elements if elements else _MISSING
    return _MISSING


def _exclude(value: Any, paths: list[list[str]]) -> Any:
    if isinstance(value, dict):
        kept: dict[str, Any] = {}
        for name, child in value.items():
            following = [nxt for path in paths for nxt in _advance(path, name)]
            if any(not nxt for nxt in following):
                continue
            kept[name] = _exclude(child, following) if following else child
        return kept
    if isinstance(value, list):
        return [_exclude(el, paths) for el in value]
    return value


# --- mappings -----------------------------------------------------------------------------------


def _flatten_mappings(properties: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for name, spec in properties.items():
        path = f"{prefix}{name}"
        if "properties" in spec:
            flat[path] = spec.get("type", "object")
            flat.update(_flatten_mappings(spec["properties"], f"{path}."))
        else:
            flat[path] = spec.get("type", "object")
    return flat


def _unflatten_mappings(flat: dict[str, str]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path, type_ in sorted(flat.items()):
        node = root
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {"properties": {}}).setdefault("properties", {})
        entry = node.setdefault(parts[-1], {})
        if type_ != "object":
            entry["type"] = type_
        else:
            entry.setdefault("properties", {})
    return {"properties": root} if root else {}


@dataclass
class _DocumentCheck:
    """Checks one document against an index's mappings, learning dynamic fields in `added`."""

    index: Index
    line: str
    doc_id: str
    added: dict[str, str] = field(default_factory=dict)

    def object(self, obj: dict[str, Any], prefix: str = "") -> None:
        for key, value in obj.items():
            path = f"{prefix}{key}"
            for element in value if isinstance(value, list) else [value]:
                self.value(path, element)

    def value(self, path: str, value: Any) -> None:
        if value is None:
            return
        column = _column(self.line, path)
        mapped = self.index.mappings.get(path) or self.added.get(path)
        if mapped is None:
            if self.index.dynamic == "strict":
                parent = path.rpartition(".")[0] or "_doc"
                raise EsError(
                    400,
                    "strict_dynamic_mapping_exception",
                    f"[1:{column}] mapping set to strict, dynamic introduction of "
                    f"[{path.rpartition('.')[2]}] within [{parent}] is not allowed",
                )
            if self.index.dynamic is False:
                return
            mapped = self.added[path] = _dynamic_type(value)
        if isinstance(value, dict):
            if mapped in ("object", "nested"):
                self.object(value, f"{path}.")
            elif mapped != "flattened":
                preview = "{" + ", ".join(f"{k}={v}" for k, v in value.items()) + "}"
                raise self.field_error(
                    path, mapped, preview, column, ("illegal_state_exception",
                    f"Can't get text on a START_OBJECT at 1:{column}", None),
                )  # fmt: skip
            return
        if mapped in ("object", "nested"):
            raise EsError(
                400,
                "document_parsing_exception",
                f"[1:{column}] object mapping for [{path}] tried to parse field "
                f"[{path.rpartition('.')[2]}] as object, but found a concrete value",
            )
        check = _LEAF_CHECKS.get(mapped)
        problem = None if check is None else check(mapped, value)
        if problem is not None:
            cause = ("illegal_argument_exception", *problem)
            raise self.field_error(path, mapped, _preview(value), column, cause)

    def field_error(
        self,
        path: str,
        mapped: str,
        preview: str,
        column: int,
        cause: tuple[str, str, dict[str, Any] | None],
    ) -> EsError:
        cause_type, reason, nested = cause
        caused_by: dict[str, Any] = {"type": cause_type, "reason": reason}
        if nested is not None:
            caused_by["caused_by"] = nested
        return EsError(
            400,
            "document_parsing_exception",
            f"[1:{column}] failed to parse field [{path}] of type [{mapped}] in document with id "
            f"'{self.doc_id}'. Preview of field's value: '{preview}'",
            caused_by=caused_by,
        )


_Problem = tuple[str, dict[str, Any] | None] | None  # reason, nested cause


def _integer_problem(mapped: str, value: Any) -> _Problem:
    number = _as_number(value)
    if number is None:
        return f'For input string: "{_preview(value)}"', None
    low, high = _INTEGER_RANGES[mapped]
    if low <= int(number) <= high:
        return None
    article = "a long" if mapped == "long" else f"an {mapped}"
    return f"Value [{_preview(value)}] is out of range for {article}", None


def _float_problem(_mapped: str, value: Any) -> _Problem:
    if _as_number(value) is None:
        return f'For input string: "{_preview(value)}"', None
    return None


def _boolean_problem(_mapped: str, value: Any) -> _Problem:
    if value in (True, False, "true", "false", ""):
        return None
    return f"Failed to parse value [{_preview(value)}] as only [true] or [false] are allowed.", None


def _ip_problem(_mapped: str, value: Any) -> _Problem:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return f"'{value}' is not an IP string literal.", None
    return None


def _date_problem(mapped: str, value: Any) -> _Problem:
    nanos = _epoch_nanos(value)
    if nanos is None:
        return (
            f"failed to parse date field [{_preview(value)}] with format "
            "[strict_date_optional_time||epoch_millis]",
            {
                "type": "date_time_parse_exception",
                "reason": "Failed to parse with all enclosed parsers",
            },
        )
    if mapped == "date_nanos" and nanos < 0:
        return (
            f"date[{_preview(value)}] is before the epoch in 1970 and cannot be stored in "
            "nanosecond resolution",
            None,
        )
    if mapped == "date_nanos" and nanos > _NANOS_MAX:
        return (
            f"date[{_preview(value)}] is after 2262-04-11T23:47:16.854775807 and cannot be "
            "stored in nanosecond resolution",
            None,
        )
    return None


_LEAF_CHECKS: dict[str, Callable[[str, Any], _Problem]] = {
    **dict.fromkeys(_INTEGER_RANGES, _integer_problem),
    **dict.fromkeys(_FLOAT_TYPES, _float_problem),
    "boolean": _boolean_problem,
    "ip": _ip_problem,
    "date": _date_problem,
    "date_nanos": _date_problem,
}


def _dynamic_type(value: Any) -> str:
    """Dynamic mapping's choice for a new field (date_detection on, numeric_detection off)."""
    if isinstance(value, str):
        looks_like_date = _DATE.match(value) is not None and "-" in value[1:]
        return "date" if looks_like_date and _epoch_nanos(value) is not None else "text"
    kinds: list[tuple[type, str]] = [(bool, "boolean"), (int, "long"), (float, "float")]
    return next((name for kind, name in kinds if isinstance(value, kind)), "object")


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _epoch_nanos(value: Any) -> int | None:
    """strict_date_optional_time||epoch_millis, as nanoseconds since the epoch."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value * 1_000_000)
    if isinstance(value, str) and _EPOCH_MILLIS.match(value):
        return int(float(value) * 1_000_000)
    match = _DATE.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        moment = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    offset = 0
    if zone and zone != "Z":
        digits = zone[1:].replace(":", "")
        offset = (int(digits[:2]) * 60 + int(digits[2:4] or 0)) * 60 * (1 if zone[0] == "+" else -1)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    seconds = int((moment - epoch).total_seconds()) - offset
    return seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))


def _column(line: str, path: str) -> int:
    """An approximation of Jackson's token column for the field (1-based)."""
    key = json.dumps(path.rpartition(".")[2], ensure_ascii=False)
    position = line.find(key)
    return (position + len(key) + 2) if position >= 0 else 1


def _preview(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _merge(base: Any, patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _query(body: Any) -> Callable[[Document], bool]:
    query = (body or {}).get("query") if isinstance(body, dict) else None
    if not query or "match_all" in query:
        return lambda _doc: True
    if "ids" in query:
        wanted = set(query["ids"].get("values", []))
        return lambda doc: doc.id in wanted
    if "term" in query and len(query["term"]) == 1:
        ((name, spec),) = query["term"].items()
        expected = spec.get("value") if isinstance(spec, dict) else spec
        return lambda doc: _lookup(doc.source, name.removesuffix(".keyword")) == expected
    raise EsError(
        400,
        "illegal_argument_exception",
        f"query {sorted(query)} is not implemented by this test server (match_all, ids, term are)",
    )


def _lookup(source: Any, path: str) -> Any:
    if isinstance(source, dict) and path in source:
        return source[path]
    head, _, rest = path.partition(".")
    if rest and isinstance(source, dict) and isinstance(source.get(head), dict):
        return _lookup(source[head], rest)
    return None


# --- helpers ------------------------------------------------------------------------------------


def _builtin_template(kind: str) -> dict[str, Any]:
    """The stack's built-in `logs` / `metrics` templates, reduced to what matters here."""
    return {
        "index_patterns": [f"{kind}-*-*"],
        "priority": 100,
        "data_stream": {"hidden": False, "allow_custom_routing": False},
        "composed_of": [f"{kind}@mappings", f"{kind}@settings", f"{kind}@custom"],
        "template": {"mappings": {"properties": {
            "@timestamp": {"type": "date"},
            "data_stream": {"properties": {
                "type": {"type": "constant_keyword"}, "dataset": {"type": "constant_keyword"},
                "namespace": {"type": "constant_keyword"},
            }},
        }}},
        "_meta": {"description": f"default {kind} template installed by x-pack", "managed": True},
        "allow_auto_create": True,
    }  # fmt: skip


def _principal(
    kind: Literal["user", "api_key", "token"],
    *,
    name: str,
    secret: str,
    roles: tuple[str, ...],
    cluster: set[str] | frozenset[str],
    indices: dict[str, set[str]] | None,
    superuser: bool,
) -> Principal:
    if superuser:
        return Principal(
            kind,
            name,
            secret,
            roles or ("superuser",),
            frozenset({"all"}),
            {"*": frozenset({"all"})},
        )
    return Principal(
        kind,
        name,
        secret,
        roles,
        frozenset(cluster),
        {p: frozenset(v) for p, v in (indices or {}).items()},
    )


def _closure(granted: str, table: dict[str, set[str]]) -> set[str]:
    seen = {granted}
    pending = [granted]
    while pending:
        for implied in table.get(pending.pop(), set()):
            if implied not in seen:
                seen.add(implied)
                pending.append(implied)
    return seen


def _cluster_grants(principal: Principal, wanted: str) -> bool:
    return any(p == "all" or wanted in _closure(p, _CLUSTER_IMPLIES) for p in principal.cluster)


def _index_grants(principal: Principal, index: str, wanted: str) -> bool:
    """Whether a role pattern covering `index` (itself possibly a pattern) grants `wanted`."""
    for pattern, privileges in principal.indices.items():
        if not fnmatch.fnmatchcase(index, pattern):
            continue
        if any(p == "all" or wanted in _closure(p, _INDEX_IMPLIES) for p in privileges):
            return True
    return False


def _unauthenticated(reason: str, *, additional: str | None = None) -> EsError:
    extra: dict[str, Any] = {}
    if additional is not None:
        extra["additional_unsuccessful_credentials"] = additional
    extra["header"] = {"WWW-Authenticate": list(_WWW_AUTHENTICATE)}
    return EsError(
        401,
        "security_exception",
        reason,
        extra=extra,
        headers=[("WWW-Authenticate", value) for value in _WWW_AUTHENTICATE],
    )


def _index_not_found(name: str, why: str | None = None) -> EsError:
    reason = f"no such index [{name}]" + (f" and {why}" if why else "")
    return EsError(
        404,
        "index_not_found_exception",
        reason,
        extra={
            "resource.type": "index_or_alias",
            "resource.id": name,
            "index_uuid": "_na_",
            "index": name,
        },
    )


def _check_index_name(name: str) -> None:
    problem = None
    if name != name.lower():
        problem = "must be lowercase"
    elif name.startswith(("_", "-", "+")):
        problem = "must not start with '_', '-', or '+'"
    elif any(char in name for char in _INVALID_NAME_CHARS):
        problem = 'must not contain the following characters [ , ", *, \\, <, |, ,, >, /, ?, #, :]'
    elif name in (".", ".."):
        problem = "must not be '.' or '..'"
    elif len(name.encode()) > 255:
        problem = f"index name is too long, ({len(name.encode())} > 255)"
    if problem is not None:
        raise EsError(
            400,
            "invalid_index_name_exception",
            f"Invalid index name [{name}], {problem}",
            extra={"index_uuid": "_na_", "index": name},
        )


def _default_error_type(status: int) -> str:
    return {
        400: "document_parsing_exception",
        403: "security_exception",
        404: "index_not_found_exception",
        409: "version_conflict_engine_exception",
        429: "es_rejected_execution_exception",
        500: "illegal_state_exception",
        503: "unavailable_shards_exception",
    }.get(status, "exception")


def _scripted_error(rule: ItemFailure, index: Index, doc_id: str) -> EsError:
    name = index.name
    shard = {"index_uuid": index.uuid, "shard": "0", "index": name}
    reasons = {
        "es_rejected_execution_exception": (
            "rejected execution of org.elasticsearch.action.support.replication."
            "TransportWriteAction$1/WrappedActionListener{...} on EsThreadPoolExecutor[name = "
            "es01/write, queue capacity = 10000, org.elasticsearch.common.util.concurrent."
            "EsThreadPoolExecutor@1b2c3d4e[Running, pool size = 8, active threads = 8, "
            "queued tasks "
            "= 10000, completed tasks = 1234567]]"
        ),
        "cluster_block_exception": (
            f"index [{name}] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage "
            "watermark, index has read-only-allow-delete block];"
        ),
        "circuit_breaking_exception": (
            "[parent] Data too large, data for [indices:data/write/bulk[s]] would be "
            "[1031798784/984mb], which is larger than the limit of [1020054732/972.7mb]"
        ),
        "unavailable_shards_exception": (
            f"[{name}][0] primary shard is not active Timeout: [1m], request: [BulkShardRequest "
            f"[[{name}][0]] containing [1] requests]"
        ),
        "version_conflict_engine_exception": (
            f"[{doc_id}]: version conflict, document already exists (current version [1])"
        ),
        "document_parsing_exception": (
            f"[1:1] failed to parse field [message] of type [keyword] in document with id "
            f"'{doc_id}'. Preview of field's value: 'scripted'"
        ),
        "index_not_found_exception": f"no such index [{name}]",
        "security_exception": (
            f"action [indices:data/write/bulk[s]] is unauthorized for user [shipper] with "
            f"effective roles [shipper_writer] on indices [{name}], this action is granted by "
            "the index privileges [create_doc,create,delete,index,write,all]"
        ),
    }
    extra: dict[str, Any] = {}
    if rule.error_type in ("version_conflict_engine_exception", "es_rejected_execution_exception"):
        extra = shard if rule.error_type == "version_conflict_engine_exception" else {}
    elif rule.error_type == "circuit_breaking_exception":
        extra = {"bytes_wanted": 1031798784, "bytes_limit": 1020054732, "durability": "TRANSIENT"}
    elif rule.error_type == "index_not_found_exception":
        extra = {
            "resource.type": "index_or_alias",
            "resource.id": name,
            "index_uuid": "_na_",
            "index": name,
        }
    reason = rule.reason or reasons.get(rule.error_type, f"scripted {rule.error_type} for [{name}]")
    return EsError(rule.status, rule.error_type, reason, extra=extra)


def _whole_request_error(status: int) -> EsError:
    if status == 429:
        return EsError(
            429,
            "es_rejected_execution_exception",
            "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, "
            "replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1048576, "
            "max_coordinating_and_primary_bytes=107374182]",
        )
    if status == 503:
        return EsError(
            503, "cluster_block_exception", "blocked by: [SERVICE_UNAVAILABLE/2/no master];"
        )
    if status == 500:
        return EsError(500, "illegal_state_exception", "scripted internal error")
    return EsError(status, "status_exception", f"scripted {status}")


def _parse_action_line(
    line: bytes, number: int
) -> tuple[Literal["create", "delete", "index", "update"], dict[str, Any]]:
    try:
        action_line = json.loads(line)
    except ValueError as error:
        raise EsError(
            400,
            "x_content_parse_exception",
            f"[{number}:1] Unexpected token on action line: {error}",
        ) from None
    if not isinstance(action_line, dict):
        found = (
            "START_ARRAY"
            if isinstance(action_line, list)
            else "VALUE_STRING"
            if isinstance(action_line, str)
            else "VALUE_NUMBER"
        )
        raise EsError(
            400,
            "illegal_argument_exception",
            f"Malformed action/metadata line [{number}], expected START_OBJECT but found [{found}]",
        )
    if len(action_line) != 1:
        raise EsError(
            400,
            "illegal_argument_exception",
            f"Malformed action/metadata line [{number}], expected a simple value for field "
            f"[{next(iter(action_line), '')}] but found [START_OBJECT]",
        )
    ((action, params),) = action_line.items()
    if action not in _BULK_ACTIONS:
        raise EsError(
            400,
            "illegal_argument_exception",
            f"Malformed action/metadata line [{number}], expected field [create], [delete], "
            f"[index] or [update] but found [{action}]",
        )
    if not isinstance(params, dict):
        raise EsError(
            400,
            "illegal_argument_exception",
            f"Malformed action/metadata line [{number}], expected START_OBJECT but found "
            f"[{type(params).__name__}]",
        )
    for key in params:
        if key not in _BULK_ITEM_PARAMS:
            raise EsError(
                400,
                "illegal_argument_exception",
                f"Action/metadata line [{number}] contains an unknown parameter [{key}]",
            )
        if key in _ITEM_PARAMS_NOT_MODELLED:
            raise EsError(
                400,
                "illegal_argument_exception",
                f"Action/metadata line [{number}] parameter [{key}] is not implemented by this "
                "test server",
            )
    if action == "index" and params.get("op_type") == "create":
        action = "create"
    return action, params


def _compatible_with(header: str | None) -> int | None:
    if not header:
        return None
    first = header.split(",", 1)[0]
    for parameter in first.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "compatible-with":
            try:
                return int(value.strip())
            except ValueError:
                return -1
    return None


def _response_media_type(request: Request) -> str:
    version = _compatible_with(request.headers.get("accept"))
    if version is None:
        return "application/json"
    return f"application/vnd.elasticsearch+json;compatible-with={version}"


def _dump(value: Any, *, pretty: bool) -> bytes:
    if pretty:
        return (
            json.dumps(value, indent=2, ensure_ascii=False).replace('": ', '" : ') + "\n"
        ).encode()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _json_body(request: Request) -> Any:
    if not request.body:
        return None
    try:
        return json.loads(request.body)
    except ValueError as error:
        raise EsError(400, "x_content_parse_exception", f"[1:1] {error}") from None


def _b64(text: str) -> str:
    try:
        return base64.b64decode(text, validate=False).decode("utf-8", "replace")
    except ValueError:
        return ""


def _uuid() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")[:22]


def _auto_id() -> str:
    """A 20-character id like Elasticsearch's time-based base64 UUIDs."""
    return base64.urlsafe_b64encode(os.urandom(15)).decode()


def _globs_overlap(a: str, b: str) -> bool:
    return fnmatch.fnmatchcase(a, b) or fnmatch.fnmatchcase(b, a)


def _java_list(values: Any) -> str:
    items = [values] if isinstance(values, str) else list(values)
    return "[" + ", ".join(str(v) for v in items) + "]"


def _retry_after(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


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


def _decode(wire: bytes, encoding: str | None, limit: int) -> bytes:
    """Decompress, stopping one byte past `limit` (the caller then answers 413)."""
    wbits = 31 if encoding in ("gzip", "x-gzip") else 15
    decompressor = zlib.decompressobj(wbits)
    data = decompressor.decompress(wire, limit + 1)
    if len(data) <= limit and not decompressor.eof:
        data += decompressor.flush()
    return data
