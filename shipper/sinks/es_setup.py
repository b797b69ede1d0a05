"""What `shipper setup` installs in Elasticsearch, and what `shipper test-output` checks.

`setup` puts, for each `elasticsearch` output:

- an ILM policy: `shipper-logs` for data streams (hot: rollover at 50gb primary shard size or 30
  days; delete 30 days after rollover by default), `shipper-logs-dated` for dated indices (delete
  30 days after creation: they roll by name, not by ILM); a single index gets none;
- an index template for the target's name pattern (`logs-docker-*` for `logs-docker-default`),
  priority 200 so it wins over Elastic's built-in `logs-*-*` (100), `data_stream: {}` for a data
  stream, with mappings for the record shape of docs/records.md;
- the data stream (or index) itself when its name is fixed, so the mappings are in force at once.

Each step reads what is there first and writes only what differs: running it again changes
nothing. `test-output` connects, reads the cluster's name and version, and asks
`_security/user/_has_privileges` whether the credentials hold what shipping needs; it writes
nothing.

The client is built exactly as the output builds it (ElasticsearchSink: same hosts, TLS,
credentials, headers, timeouts, no retries inside the client), so a check that passes here passes
for `shipper run`. Every text that may hold a server's words is scrubbed of the credentials.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import orjson
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    ConnectionTimeout,
    ElasticsearchWarning,
    SSLError,
    TransportError,
    UnsupportedProductError,
)
from elasticsearch import ConnectionError as ClientConnectionError

from shipper.config import (
    ConsoleOutputConfig,
    ElasticsearchOutputConfig,
    FileOutputConfig,
    IndexName,
    OutputConfig,
    SplunkHecOutputConfig,
)
from shipper.errors import FatalSinkError, ShipperError
from shipper.sinks.elasticsearch import ElasticsearchSink

__all__ = [
    "DATED_POLICY_NAME",
    "DEFAULT_DELETE_AFTER",
    "POLICY_NAME",
    "ROLLOVER_MAX_AGE",
    "ROLLOVER_MAX_PRIMARY_SHARD_SIZE",
    "SETUP_CLUSTER_PRIVILEGES",
    "SETUP_INDEX_PRIVILEGES",
    "SHIP_INDEX_PRIVILEGES",
    "TEMPLATE_PRIORITY",
    "TEMPLATE_VERSION",
    "Plan",
    "SetupError",
    "check_output",
    "parse_delete_after",
    "plan_setup",
    "record_mappings",
    "run_setup",
    "shipping_names",
    "target_patterns",
]

POLICY_NAME = "shipper-logs"
"""The ILM policy of data stream targets: rollover, then delete."""
DATED_POLICY_NAME = "shipper-logs-dated"
"""The ILM policy of dated index targets (`logs-%Y.%m.%d`): delete only, they roll by name."""
ROLLOVER_MAX_PRIMARY_SHARD_SIZE = "50gb"  # Elastic's own `logs` policy and shard-size advice
ROLLOVER_MAX_AGE = "30d"
DEFAULT_DELETE_AFTER = "30d"
TEMPLATE_PRIORITY = 200
"""Above the built-in `logs-*-*` template (100): index templates do not merge, the highest wins."""
TEMPLATE_VERSION = 1
"""Raised whenever the template's body changes, so `setup` replaces an older one."""

SHIP_INDEX_PRIVILEGES = ("create_doc", "auto_configure")
"""What shipping needs on its target: write new documents, create the data stream or index on
first use (and add fields to its mapping)."""
SHIP_CLUSTER_PRIVILEGES = ("monitor",)
"""Optional: lets the start-up check read the cluster's version."""
SETUP_CLUSTER_PRIVILEGES = ("manage_index_templates", "manage_ilm")
SETUP_INDEX_PRIVILEGES = ("create_index", "view_index_metadata")
"""`setup` only: create the data stream (or index) of a fixed name, and read what is there."""

_DELETE_AFTER_RE = re.compile(r"[1-9]\d*[dh]")
_SECURITY_OFF = ("Security must be explicitly enabled", "security is not enabled")


class SetupError(ShipperError):
    """A step of `setup` or `test-output` failed; the message says what to do, with no secret."""


Say = Callable[[str], None]


# --- what is installed ---------------------------------------------------------------------------


def parse_delete_after(text: str) -> str | None:
    """An ILM age such as "30d" or "12h", or None for "never" (keep data until deleted by hand)."""
    value = text.strip().lower()
    if value in ("never", "0", "off"):
        return None
    if _DELETE_AFTER_RE.fullmatch(value) is None:
        raise ValueError("expected a number of days or hours such as 30d or 12h, or never")
    return value


def _keyword() -> dict[str, Any]:
    # ignore_above: a value longer than this is kept in _source but not indexed, instead of
    # failing the whole document (a keyword term may not exceed 32766 bytes).
    return {"type": "keyword", "ignore_above": 1024}


def _flattened() -> dict[str, Any]:
    return {"type": "flattened", "ignore_above": 1024}


def record_mappings() -> dict[str, Any]:
    """Mappings for the record shape of docs/records.md.

    `container.labels`, `docker.attrs` and `docker.container.env` are `flattened`: whoever starts
    a container chooses its label keys, and with dynamic mapping every new key would add a field
    to the index, up to `index.mapping.total_fields.limit` (1000), after which every document
    with a new key fails. A flattened field is one field whatever the keys, and its values stay
    searchable as keywords (`container.labels.team: payments`). The `*_conflicts` objects hold
    whatever a processor could not place, so they are flattened too.

    Fields processors add (decode_json, regex, add_fields...) are mapped dynamically, without
    date detection (as Elastic's own `logs@mappings`): a string that happens to look like a date
    must not fix the field's type, or the next record with ordinary text there is refused.
    """
    keyword = _keyword
    return {
        "dynamic": True,
        "date_detection": False,
        "properties": {
            "@timestamp": {"type": "date_nanos"},
            "message": {"type": "match_only_text"},
            "stream": keyword(),
            "container": {
                "properties": {
                    "id": keyword(),
                    "name": keyword(),
                    "image": {"properties": {"name": keyword()}},
                    "labels": _flattened(),
                }
            },
            "kubernetes": {
                "properties": {
                    "namespace": keyword(),
                    "pod": {"properties": {"name": keyword(), "uid": keyword()}},
                    "container": {"properties": {"name": keyword()}},
                }
            },
            "docker": {
                "properties": {
                    "container": {
                        "properties": {
                            # As Docker wrote them; `date` (not date_nanos) accepts Docker's
                            # 0001-01-01T00:00:00Z for a container that never started.
                            "created": {"type": "date"},
                            "started": {"type": "date"},
                            "env": _flattened(),
                        }
                    },
                    "compose": {"properties": {"project": keyword(), "service": keyword()}},
                    "attrs": _flattened(),
                }
            },
            "host": {"properties": {"name": keyword()}},
            "agent": {"properties": {"type": keyword(), "version": keyword()}},
            "ecs": {"properties": {"version": keyword()}},
            "log": {
                "properties": {
                    "file": {"properties": {"path": keyword(), "fingerprint": keyword()}},
                    "offset": {"type": "long"},
                    "flags": keyword(),
                    "level": keyword(),
                }
            },
            "event": {"properties": {"created": {"type": "date_nanos"}}},
            "json_conflicts": _flattened(),
            "regex_conflicts": _flattened(),
        },
    }


def _glob(name: IndexName) -> str:
    """The name with each record field and date code replaced by `*`."""
    text = "".join(
        re.sub(r"%.", "*", part) if isinstance(part, str) else "*" for part in name.parts
    )
    return re.sub(r"\*+", "*", text)


def _is_data_stream(config: ElasticsearchOutputConfig) -> bool:
    return config.index is None


def _fixed(config: ElasticsearchOutputConfig) -> str | None:
    """The target's name when it has neither record fields nor date codes."""
    target = config.target
    return None if target.fields or target.dated else target.text


def target_patterns(config: ElasticsearchOutputConfig) -> list[str]:
    """The index patterns of the output's template.

    A fixed data stream name in Elastic's `<type>-<dataset>-<namespace>` form covers every
    namespace of its dataset (`logs-docker-default` → `logs-docker-*`); any other fixed name is
    taken as it is; a name with record fields or date codes has them replaced by `*`
    (`logs-{kubernetes.namespace}-default` → `logs-*-default`). The fallback index is added
    when the target's pattern does not cover it.
    """
    fixed = _fixed(config)
    if fixed is None:
        pattern = _glob(config.target)
    elif _is_data_stream(config) and fixed.rpartition("-")[0].count("-") >= 1:
        pattern = fixed.rpartition("-")[0] + "-*"
    else:
        pattern = fixed
    patterns = [pattern]
    if config.fallback_index is not None:
        fallback = _glob(config.fallback_index)
        if not any(fnmatchcase(fallback, p) for p in patterns):
            patterns.append(fallback)
    for candidate in patterns:
        if candidate.startswith("*"):
            raise SetupError(
                "the target starts with a record field, so its index template would match every "
                "index of the cluster: give the name a fixed beginning (e.g. "
                "logs-{container.labels.team}-default)"
            )
    return patterns


def shipping_names(config: ElasticsearchOutputConfig) -> list[str]:
    """The index names (or patterns) records of this output may be written to."""
    target = config.target
    names = [*config.allowed_indices] if target.fields else [_glob(target)]
    if config.fallback_index is not None:
        names.append(_glob(config.fallback_index))
    return list(dict.fromkeys(names))


def _template_name(patterns: Sequence[str], *, data_stream: bool) -> str:
    # logs-docker-* → shipper-logs-docker; logs-*-default → shipper-logs-default; indices get
    # their own name, so a data stream and dated indices of the same stem never share one.
    stem = re.sub(r"[-_.]*\*[-_.]*", "-", patterns[0]).strip("-_.")
    stem = re.sub(r"[^a-z0-9_.-]+", "-", stem) or "logs"
    return f"shipper-{stem}" if data_stream else f"shipper-{stem}-index"


@dataclass(frozen=True, slots=True)
class Plan:
    """What `setup` installs for one output."""

    policy_name: str | None
    policy: dict[str, Any] | None  # the PUT _ilm/policy body
    template_name: str
    template: dict[str, Any]  # the PUT _index_template body
    create: str | None  # a data stream or index of fixed name to create when missing
    data_stream: bool
    patterns: list[str] = field(default_factory=list)

    def describe_policy(self) -> str:
        if self.policy is None:
            return ""
        phases = self.policy["policy"]["phases"]
        parts = []
        if "hot" in phases:
            parts.append(
                f"rollover at {ROLLOVER_MAX_PRIMARY_SHARD_SIZE} primary shard size or "
                f"{ROLLOVER_MAX_AGE}"
            )
        if "delete" in phases:
            after = "rollover" if "hot" in phases else "creation"
            parts.append(f"delete {phases['delete']['min_age']} after {after}")
        else:
            parts.append("never delete")
        return "; ".join(parts)


def _policy(config: ElasticsearchOutputConfig, delete_after: str | None) -> tuple[str, Any] | None:
    phases: dict[str, Any] = {}
    if _is_data_stream(config):
        name = POLICY_NAME
        phases["hot"] = {
            "min_age": "0ms",
            "actions": {
                "rollover": {
                    "max_primary_shard_size": ROLLOVER_MAX_PRIMARY_SHARD_SIZE,
                    "max_age": ROLLOVER_MAX_AGE,
                }
            },
        }
    elif config.target.dated:
        # ILM's rollover needs an alias on plain indices; dated indices roll by their name, so
        # this policy only ages them out.
        name = DATED_POLICY_NAME
    else:
        return None  # one index: deleting it by age would delete all of it at once
    if delete_after is not None:
        phases["delete"] = {
            "min_age": delete_after,
            "actions": {"delete": {"delete_searchable_snapshot": True}},
        }
    if not phases:
        return None
    body = {
        "policy": {
            "_meta": {"managed_by": "shipper", "description": "shipper's container logs"},
            "phases": phases,
        }
    }
    return name, body


def plan_setup(config: ElasticsearchOutputConfig, *, delete_after: str | None) -> Plan:
    """The policy, template and data stream (or index) `setup` installs for this output."""
    patterns = target_patterns(config)
    policy = _policy(config, delete_after)
    index_settings: dict[str, Any] = {
        # A malformed value in one field (a processor's `status: "n/a"` where numbers came
        # first) is left unindexed instead of refusing the whole record, as Elastic's own
        # `logs@settings` does; the record is kept and its `_ignored` field names the field.
        "mapping": {"ignore_malformed": "true"},
    }
    if policy is not None:
        index_settings["lifecycle"] = {"name": policy[0]}
    data_stream = _is_data_stream(config)
    kind = "data streams" if data_stream else "indices"
    template: dict[str, Any] = {
        "index_patterns": patterns,
        "priority": TEMPLATE_PRIORITY,
        "version": TEMPLATE_VERSION,
        # Created on first write even where action.auto_create_index is off.
        "allow_auto_create": True,
        "template": {"settings": {"index": index_settings}, "mappings": record_mappings()},
        "_meta": {
            "managed_by": "shipper",
            "description": f"{kind} of container logs shipped by shipper (`shipper setup`)",
        },
    }
    if data_stream:
        template["data_stream"] = {}
    return Plan(
        policy_name=policy[0] if policy else None,
        policy=policy[1] if policy else None,
        template_name=_template_name(patterns, data_stream=data_stream),
        template=template,
        create=_fixed(config),
        data_stream=data_stream,
        patterns=patterns,
    )


def _contains(stored: Any, wanted: Any) -> bool:
    """Whether what Elasticsearch holds has everything shipper would put (it adds defaults of
    its own, such as `data_stream.hidden`, and may give settings back as strings)."""
    if isinstance(wanted, dict):
        return isinstance(stored, dict) and all(
            key in stored and _contains(stored[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(wanted)
            and all(_contains(s, w) for s, w in zip(stored, wanted, strict=True))
        )
    if stored == wanted:
        return True
    return not isinstance(stored, dict | list) and str(stored).lower() == str(wanted).lower()


# --- talking to the cluster ----------------------------------------------------------------------


def _json(body: Any) -> Any:
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
    return body


def _where(config: ElasticsearchOutputConfig) -> str:
    return ", ".join(config.hosts) if config.hosts else "Elastic Cloud (cloud_id)"


class _Cluster:
    """An Elasticsearch client built as the output builds its own, answering (status, JSON)."""

    def __init__(self, name: str, config: ElasticsearchOutputConfig, warn: Say) -> None:
        self.name = name
        self.config = config
        self._warn = warn
        sink = ElasticsearchSink(config, name=name)
        try:
            credentials = sink.read_credentials()
        except FatalSinkError as exc:
            raise SetupError(str(exc)) from None
        self.secrets = credentials.secrets()
        try:
            self._client = AsyncElasticsearch(**sink.client_options(credentials))
        except (ValueError, OSError) as exc:
            raise SetupError(
                f"cannot set up the Elasticsearch client: {self.scrub(str(exc))}"
            ) from None
        if not config.tls.verify:
            warn("TLS certificate verification is off (tls.verify: false)")

    async def __aenter__(self) -> _Cluster:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._client.close()

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[secret]")
        return text

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request; its status and parsed body, whatever the status. Raises SetupError
        when there is no answer from Elasticsearch at all."""
        headers = {"accept": "application/json"}
        data = None
        if body is not None:
            headers["content-type"] = "application/json"
            data = orjson.dumps(body)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ElasticsearchWarning)
            try:
                response = await self._client.perform_request(
                    method, path, params=dict(params or {}), headers=headers, body=data
                )
            except UnsupportedProductError:
                raise SetupError(
                    f"the server at {_where(self.config)} is not Elasticsearch (it does not say "
                    "X-Elastic-Product: Elasticsearch); OpenSearch and other look-alikes are not "
                    "supported"
                ) from None
            except ApiError as exc:
                status, raw = exc.meta.status, exc.body
            except ConnectionTimeout:
                raise SetupError(
                    f"no answer from {_where(self.config)} within {self.config.timeout:g}s"
                ) from None
            except SSLError as exc:
                raise SetupError(
                    f"TLS with {_where(self.config)} failed ({self._describe(exc)}): check "
                    "tls.ca_file, tls.client_cert and the host names in `hosts`"
                ) from None
            except (ClientConnectionError, TransportError) as exc:
                raise SetupError(
                    f"cannot reach Elasticsearch at {_where(self.config)}: {self._describe(exc)}"
                ) from None
            else:
                status, raw = response.meta.status, response.body
        for warning in caught:
            self._warn(
                f"Elasticsearch says about {method} {path}: {self.scrub(str(warning.message))}"
            )
        return status, _json(raw)

    def _describe(self, exc: TransportError) -> str:
        cause = exc.errors[0] if exc.errors else exc
        return self.scrub(f"{type(cause).__name__}: {cause}")

    def detail(self, body: Any) -> str:
        """ "type: reason" of an error answer, scrubbed, or ""."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            kind, reason = error.get("type") or "", error.get("reason") or ""
            text = f"{kind}: {reason}" if kind and reason else str(kind or reason)
        elif isinstance(error, str):
            text = error
        else:
            return ""
        return self.scrub(text)[:1000]

    def refused(self, status: int, body: Any, doing: str, needs: str | None = None) -> SetupError:
        """The error for a request Elasticsearch answered with a refusal."""
        detail = self.detail(body)
        detail = f" ({status}: {detail})" if detail else f" ({status})"
        if status == 401:
            return SetupError(
                f"Elasticsearch refuses the credentials{detail}: check username/password, "
                "api_key or bearer_token (or their files)"
            )
        if status == 403 and needs:
            return SetupError(f"not allowed to {doing}{detail}: the credentials need {needs}")
        return SetupError(f"cannot {doing}{detail}")

    async def identify(self, say: Say) -> None:
        """Say which cluster this is; refuse one that is not Elasticsearch 8.x or 9.x."""
        status, body = await self.request("GET", "/")
        if status == 403:
            self._warn(
                "the credentials may not read the cluster's name and version (403: no `monitor` "
                "cluster privilege); that is fine for shipping"
            )
            return
        if status in (400, 406):
            raise SetupError(
                f"the cluster refused a request for Elasticsearch 8.x and 9.x ({status}); "
                "Elasticsearch 7.x and older are not supported"
            )
        if status != 200:
            raise self.refused(status, body, "read the cluster's information (GET /)")
        info = body if isinstance(body, dict) else {}
        version = info.get("version")
        number = str(version.get("number")) if isinstance(version, dict) else "(unknown)"
        major = number.split(".", 1)[0]
        if not major.isdigit() or not 8 <= int(major) <= 9:
            raise SetupError(
                f"the cluster runs Elasticsearch {number}; shipper supports Elasticsearch 8.x "
                "and 9.x"
            )
        say(
            f"connected to {_where(self.config)}: cluster {info.get('cluster_name')}, "
            f"Elasticsearch {number}"
        )

    async def privileges(
        self, cluster: Sequence[str], index: Mapping[str, Sequence[str]]
    ) -> dict[str, list[str]] | None:
        """The privileges the credentials lack, by where ("cluster" or an index name); None
        when security is off (every request is allowed)."""
        body = {
            "cluster": list(cluster),
            "index": [
                {"names": [name], "privileges": list(privs)} for name, privs in index.items()
            ],
        }
        status, answer = await self.request("POST", "/_security/user/_has_privileges", body)
        if status != 200:
            text = self.detail(answer)
            if any(marker in text for marker in _SECURITY_OFF):
                return None
            raise self.refused(status, answer, "check the privileges (_has_privileges)")
        answer = answer if isinstance(answer, dict) else {}
        missing: dict[str, list[str]] = {}
        granted = answer.get("cluster") or {}
        lacking = [p for p in cluster if granted.get(p) is not True]
        if lacking:
            missing["cluster"] = lacking
        by_index = answer.get("index") or {}
        for name, privs in index.items():
            held = by_index.get(name) or {}
            lacking = [p for p in privs if held.get(p) is not True]
            if lacking:
                missing[name] = lacking
        return missing


def _listed(privileges: Sequence[str]) -> str:
    return ", ".join(f"`{p}`" for p in privileges)


def _missing_text(missing: Mapping[str, Sequence[str]]) -> list[str]:
    lines = []
    for where, privileges in missing.items():
        if where == "cluster":
            lines.append(f"cluster privilege {_listed(privileges)}")
        else:
            lines.append(f"index privilege {_listed(privileges)} on `{where}`")
    return lines


# --- setup ---------------------------------------------------------------------------------------


def _setup_privileges(plan: Plan) -> tuple[list[str], dict[str, list[str]]]:
    cluster = ["manage_index_templates"]
    if plan.policy is not None:
        cluster.append("manage_ilm")
    index = {plan.create: list(SETUP_INDEX_PRIVILEGES)} if plan.create else {}
    return cluster, index


async def run_setup(
    name: str,
    config: ElasticsearchOutputConfig,
    *,
    delete_after: str | None,
    say: Say,
    warn: Say,
) -> None:
    """Install the policy, template and data stream (or index) of one output; SetupError if a
    step fails (nothing after it is done; what was done before stays, and is right)."""
    plan = plan_setup(config, delete_after=delete_after)
    async with _Cluster(name, config, warn) as cluster:
        await cluster.identify(say)
        cluster_privileges, index_privileges = _setup_privileges(plan)
        missing = await cluster.privileges(cluster_privileges, index_privileges)
        if missing is None:
            say("security is off on this cluster: no privileges to check")
        elif missing:
            raise SetupError(
                "the credentials lack what `shipper setup` needs: "
                + "; ".join(_missing_text(missing))
                + " (nothing was changed; `shipper setup` needs more than shipping does, see the "
                "README's Elasticsearch section)"
            )
        if plan.policy_name is not None and plan.policy is not None:
            outcome = await _put_policy(cluster, plan.policy_name, plan.policy)
            say(f"ILM policy {plan.policy_name}: {outcome} ({plan.describe_policy()})")
        elif config.target.dated:
            say("ILM policy: none (--delete-after never: dated indices are kept until deleted)")
        else:
            say(
                "ILM policy: none (a single index cannot roll over: use a data stream or a dated "
                "index to age data out)"
            )
        outcome = await _put_template(cluster, plan.template_name, plan.template)
        kind = "data stream" if plan.data_stream else "index"
        say(
            f"index template {plan.template_name}: {outcome} (patterns "
            f"{', '.join(plan.patterns)}, priority {TEMPLATE_PRIORITY}, {kind})"
        )
        if plan.create is not None:
            await _ensure_target(cluster, plan, say, warn)
        else:
            kinds = "data streams" if plan.data_stream else "indices"
            say(f"{kinds} of this output are created on first write, with this template")


async def _put_policy(cluster: _Cluster, name: str, body: dict[str, Any]) -> str:
    path = f"/_ilm/policy/{quote(name, safe='')}"
    status, stored = await cluster.request("GET", path)
    if status == 200 and isinstance(stored, dict):
        current = (stored.get(name) or {}).get("policy")
        same_phases = isinstance(current, dict) and set(current.get("phases") or {}) == set(
            body["policy"]["phases"]
        )
        if same_phases and _contains(current, body["policy"]):
            return "unchanged"
    elif status != 404:
        raise cluster.refused(
            status, stored, f"read ILM policy {name}", "the cluster privilege `manage_ilm`"
        )
    existed = status == 200
    status, answer = await cluster.request("PUT", path, body)
    if status != 200:
        raise cluster.refused(
            status, answer, f"put ILM policy {name}", "the cluster privilege `manage_ilm`"
        )
    return "updated" if existed else "created"


async def _put_template(cluster: _Cluster, name: str, body: dict[str, Any]) -> str:
    path = f"/_index_template/{quote(name, safe='')}"
    needs = "the cluster privilege `manage_index_templates`"
    status, stored = await cluster.request("GET", path)
    if status == 200 and isinstance(stored, dict):
        found = stored.get("index_templates") or []
        current = found[0].get("index_template") if found else None
        if _contains(current, body):
            return "unchanged"
    elif status != 404:
        raise cluster.refused(status, stored, f"read index template {name}", needs)
    existed = status == 200
    status, answer = await cluster.request("PUT", path, body)
    if status != 200:
        raise cluster.refused(status, answer, f"put index template {name}", needs)
    return "updated" if existed else "created"


async def _ensure_target(cluster: _Cluster, plan: Plan, say: Say, warn: Say) -> None:
    target = plan.create
    assert target is not None  # noqa: S101 - only called for a fixed name
    quoted = quote(target, safe="")
    kind, path = (
        ("data stream", f"/_data_stream/{quoted}") if plan.data_stream else ("index", f"/{quoted}")
    )
    status, stored = await cluster.request("GET", path)
    if status == 200:
        template = _template_of(stored, target) if plan.data_stream else None
        if plan.data_stream and template not in (None, plan.template_name):
            warn(
                f"data stream {target} exists and was made by index template {template}: the new "
                f"mappings apply from its next backing index. Roll it over now with `POST "
                f"{target}/_rollover` (records replayed across a rollover may be indexed twice)"
            )
        elif not plan.data_stream:
            warn(
                f"index {target} exists already: the template applies to indices created from "
                "now on, not to this one"
            )
        say(f"{kind} {target}: exists")
        return
    if status != 404:
        raise cluster.refused(
            status,
            stored,
            f"read {kind} {target}",
            f"the index privilege `view_index_metadata` on `{target}`",
        )
    status, answer = await cluster.request("PUT", path)
    if status != 200:
        raise cluster.refused(
            status,
            answer,
            f"create {kind} {target}",
            f"the index privilege `create_index` on `{target}`",
        )
    say(f"{kind} {target}: created")


def _template_of(body: Any, name: str) -> str | None:
    streams = body.get("data_streams") if isinstance(body, dict) else None
    for stream in streams or []:
        if isinstance(stream, dict) and stream.get("name") == name:
            template = stream.get("template")
            return str(template) if template is not None else None
    return None


# --- test-output ---------------------------------------------------------------------------------


async def check_output(name: str, output: OutputConfig, *, say: Say, warn: Say) -> bool:
    """Whether this output can ship, saying why; writes nothing anywhere."""
    if isinstance(output, ElasticsearchOutputConfig):
        return await _check_elasticsearch(name, output, say=say, warn=warn)
    if isinstance(output, FileOutputConfig):
        problem = _unwritable(output.path)
        if problem is not None:
            say(f"cannot write {output.path}: {problem}")
            return False
        say(f"{output.path}: writable")
        return True
    if isinstance(output, ConsoleOutputConfig):
        say(f"writes to {output.stream}: nothing to check")
        return True
    if isinstance(output, SplunkHecOutputConfig):
        return await _check_splunk_hec(name, output, say=say)
    raise AssertionError(f"unknown output type {type(output).__name__}")


async def _check_splunk_hec(name: str, config: SplunkHecOutputConfig, *, say: Say) -> bool:
    """HEC's health, then whether it takes the token (an empty request: nothing indexed)."""
    # Imported here: only this command needs the HEC sink beside Elasticsearch's setup.
    from shipper.sinks.splunk_hec import SplunkHecSink  # noqa: PLC0415

    sink = SplunkHecSink(config, name=name)
    try:
        await sink.open()  # logs HEC's health, which does not check the token
        problem = await sink.check_token()
    except ShipperError as exc:
        say(str(exc))
        return False
    finally:
        await sink.close()
    if problem is not None:
        say(problem)
        return False
    say(f"{config.url}: HEC accepts the token")
    return True


def _unwritable(path: Path) -> str | None:
    """Why the file output could not write `path` (it creates missing directories), or None."""
    if path.exists():
        if path.is_dir():
            return "it is a directory"
        return None if os.access(path, os.W_OK) else "no write permission on the file"
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"no write permission on {parent}"
    return None


async def _check_elasticsearch(
    name: str, config: ElasticsearchOutputConfig, *, say: Say, warn: Say
) -> bool:
    names = shipping_names(config)
    kind = "data stream" if _is_data_stream(config) else "index"
    fixed = _fixed(config)
    index: dict[str, list[str]] = {n: list(SHIP_INDEX_PRIVILEGES) for n in names}
    if fixed is not None:
        index[fixed] = list(dict.fromkeys([*index.get(fixed, []), *SETUP_INDEX_PRIVILEGES]))
    async with _Cluster(name, config, warn) as cluster:
        # A 403 here (no `monitor`) is said as a warning by identify(), as `shipper run` does.
        await cluster.identify(say)
        missing = await cluster.privileges(
            [*SHIP_CLUSTER_PRIVILEGES, *SETUP_CLUSTER_PRIVILEGES], index
        )
    if missing is None:
        say("security is off on this cluster: every request is allowed")
        return True
    ship_missing, setup_missing = _sort_missing(missing, config, warn)
    if setup_missing:
        say(
            "for `shipper setup` only (not needed to ship), missing: "
            + "; ".join(_missing_text(setup_missing))
        )
    targets = ", ".join(f"`{n}`" for n in names)
    if ship_missing:
        for line in _missing_text(ship_missing):
            say(f"missing {line}")
        say(f"cannot ship to {kind} {targets}")
        return False
    say(f"privileges to ship to {kind} {targets}: ok ({_listed(SHIP_INDEX_PRIVILEGES)})")
    return True


def _sort_missing(
    missing: Mapping[str, Sequence[str]], config: ElasticsearchOutputConfig, warn: Say
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """What is missing to ship, and what is missing only for `shipper setup`."""
    target = config.target
    # A data stream, a dated index or one named by fields is created on first write; one fixed
    # index may exist already.
    creates = _is_data_stream(config) or target.dated or bool(target.fields)
    ship: dict[str, list[str]] = {}
    setup: dict[str, list[str]] = {}
    for where, privileges in missing.items():
        for privilege in privileges:
            if privilege in SHIP_CLUSTER_PRIVILEGES:
                continue  # optional; identify() has warned
            if privilege in SETUP_CLUSTER_PRIVILEGES or privilege in SETUP_INDEX_PRIVILEGES:
                setup.setdefault(where, []).append(privilege)
            elif privilege == "auto_configure" and not creates:
                warn(
                    f"no `auto_configure` on `{where}`: shipper cannot create the index if it "
                    "does not exist yet"
                )
            else:
                ship.setdefault(where, []).append(privilege)
    return ship, setup
