"""The YAML file that drives shipper: strict parsing, ${ENV} expansion, a frozen pydantic model."""

from __future__ import annotations

import base64
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from shipper.errors import ConfigError

__all__ = [
    "DEFAULT_ORIGIN",
    "AddFieldsConfig",
    "BatchConfig",
    "ByteSize",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "ConsoleOutputConfig",
    "ContainerMatch",
    "CriSourceConfig",
    "DeadLetterConfig",
    "DecodeJsonConfig",
    "DockerJsonSourceConfig",
    "DropFieldsConfig",
    "Duration",
    "ElasticsearchCompressionConfig",
    "ElasticsearchOutputConfig",
    "ElasticsearchTlsConfig",
    "FileOutputConfig",
    "FilesSourceConfig",
    "HealthConfig",
    "HecTemplate",
    "IndexName",
    "LogLevelConfig",
    "LogRateLimitConfig",
    "LoggingConfig",
    "MonitoringConfig",
    "MultilineConfig",
    "MultilineParserConfig",
    "MultilineRule",
    "OutputConfig",
    "PipelineConfig",
    "PodMatch",
    "ProcessorConfig",
    "RedactConfig",
    "Regex",
    "RegexParserConfig",
    "RenameFieldsConfig",
    "RetryConfig",
    "SourceConfig",
    "SplunkHecAckConfig",
    "SplunkHecOutputConfig",
    "TimestampConfig",
    "load_config",
    "parse_config",
]

DEFAULT_ORIGIN = "<embedded default>"
"""How errors name the config embedded in the package (shipper/default.yaml)."""

KiB = 1024
MiB = 1024 * KiB

# -------------------------------------------------------------------------------------------------
# Value types. Validators raise PydanticCustomError so the message is exactly ours: it never quotes
# the value, which may come from a secret environment variable. Our error kinds start "config_".

_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_DURATION_RE = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ms|s|m|h)?")
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[A-Za-z]+)?")
_NAME_RE = re.compile(r"[a-z0-9_-]+")


def _negative() -> PydanticCustomError:
    return PydanticCustomError("config_negative", "must not be negative")


def _parse_duration(value: object) -> float:
    """Seconds from a plain number or "<number><ms|s|m|h>"; a bare number string is seconds too."""
    invalid = PydanticCustomError(
        "config_duration",
        "invalid duration: expected a number with a unit such as 250ms, 5s, 1m or 2h",
    )
    # bool is an int subclass: `linger: yes` is a mistake, not one second.
    if isinstance(value, bool):
        raise invalid
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise invalid
        if value < 0:
            raise _negative()
        return float(value)
    if not isinstance(value, str):
        raise invalid
    text = value.strip()
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise _negative() if text.startswith("-") and _DURATION_RE.fullmatch(text[1:]) else invalid
    number = Decimal(match["number"]) * _DURATION_UNITS[match["unit"] or "s"]
    return float(number)


def _parse_size(value: object) -> int:
    """Bytes from a plain integer or "<number><unit>"; KiB, MiB… are binary, KB, MB… decimal."""
    invalid = PydanticCustomError(
        "config_size", "invalid size: expected a number with a unit such as 5MiB"
    )
    if isinstance(value, bool):
        raise invalid
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise invalid
        if value < 0:
            raise _negative()
        number = Decimal(str(value))
    elif isinstance(value, str):
        text = value.strip()
        match = _SIZE_RE.fullmatch(text)
        if match is None:
            raise _negative() if text.startswith("-") and _SIZE_RE.fullmatch(text[1:]) else invalid
        # Units are case-insensitive: "5mb" in a config always means megabytes, never megabits.
        multiplier = _SIZE_UNITS.get((match["unit"] or "b").lower())
        if multiplier is None:
            raise invalid
        number = Decimal(match["number"]) * multiplier
    else:
        raise invalid
    if number != number.to_integral_value():
        raise PydanticCustomError(
            "config_size_fraction", "invalid size: not a whole number of bytes"
        )
    return int(number)


def _at_least(minimum: int, shown: str) -> Callable[[int], int]:
    """A lower bound whose message speaks in the unit a user would write ("4KiB", not 4096)."""

    def check(value: int) -> int:
        if value < minimum:
            raise PydanticCustomError(
                "config_too_small", "must be at least {minimum}", {"minimum": shown}
            )
        return value

    return check


def _positive(value: float) -> float:
    # An interval of zero would turn a wait into a busy loop.
    if value <= 0:
        raise PydanticCustomError("config_not_positive", "must be greater than zero")
    return value


def _non_empty_path(value: object) -> object:
    # `${UNSET:-}` yields "", which Path() would silently turn into the current directory.
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("config_empty_path", "must not be empty")
    return value


def _check_name(value: object) -> str:
    if not isinstance(value, str) or _NAME_RE.fullmatch(value) is None:
        raise PydanticCustomError(
            "config_name", "invalid name: use only lowercase letters, digits, '_' and '-'"
        )
    return value


Duration = Annotated[float, BeforeValidator(_parse_duration)]
"""Seconds, written "250ms", "1.5s", "1m", "2h" or as a plain number of seconds."""

ByteSize = Annotated[int, BeforeValidator(_parse_size)]
"""Bytes, written "512B", "256KiB", "10MiB", "1GiB" (binary), "5MB" (decimal) or a plain integer."""

_PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
_Path = Annotated[Path, BeforeValidator(_non_empty_path)]
_Name = Annotated[str, BeforeValidator(_check_name)]

# -------------------------------------------------------------------------------------------------
# The schema.


class _Model(BaseModel):
    # hide_input_in_errors keeps values out of pydantic's str(), _format_errors out of ours.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def _compile(value: object) -> re.Pattern[str]:
    # The pattern is not quoted in the error: configs are shared, and values are never echoed.
    if isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("config_regex", "expected a regular expression (a string)")
    try:
        return re.compile(value)
    except re.error as exc:
        raise PydanticCustomError(
            "config_regex",
            "invalid regular expression: {reason} at position {position}",
            {"reason": exc.msg, "position": exc.pos if exc.pos is not None else 0},
        ) from None


Regex = Annotated[re.Pattern[str], BeforeValidator(_compile)]
"""A Python regular expression (the `re` module's syntax), compiled when the config is read."""


class ContainerMatch(_Model):
    """Containers matching any of these shell-style globs (`*`, `?`, `[...]`)."""

    names: list[str] = Field(default_factory=list)  # container names, without the leading /
    images: list[str] = Field(default_factory=list)  # image names as given to docker run
    labels: list[str] = Field(default_factory=list)  # "key" (label set) or "key=value-glob"


# -- multiline ------------------------------------------------------------------------------------

MULTILINE_PRESETS = ("java", "python", "go")
"""Built-in multiline parsers: the stack traces of these languages become one record."""


class MultilineParserConfig(_Model):
    """A custom multiline parser: which lines start a record and which continue one.

    With only `start`, every line that does not match it continues the record before it; with only
    `continue`, every line that does not match it starts a record; with both, a line matching
    neither is a record of its own.
    """

    start: Regex | None = None
    continue_: Regex | None = Field(default=None, alias="continue")

    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, populate_by_name=True
    )

    @model_validator(mode="after")
    def _one_pattern(self) -> Self:
        if self.start is None and self.continue_ is None:
            raise PydanticCustomError(
                "config_multiline_pattern", "give `start`, `continue` or both"
            )
        return self


class MultilineRule(_Model):
    """Containers matching `match` use `parser` (first matching rule wins)."""

    match: ContainerMatch
    parser: str  # a preset or a name from `parsers`; "none" turns multiline off


class MultilineConfig(_Model):
    """Joins the lines of one event (a stack trace) into one record, per container and stream."""

    # The parser for containers no rule or label chooses: a preset, a name from `parsers`, or none.
    default: str = "none"
    parsers: dict[_Name, MultilineParserConfig] = Field(default_factory=dict)
    rules: list[MultilineRule] = Field(default_factory=list)
    # A container label whose value names the parser for that container. It may name only a
    # preset, a parser defined above or "none": a label can never bring its own pattern.
    label: str | None = "shipper.multiline"
    max_lines: int = Field(default=500, ge=2)
    max_bytes: Annotated[ByteSize, AfterValidator(_at_least(KiB, "1KiB"))] = MiB
    # A record waits this long for its next line before it ships: the last trace of a container
    # that then goes quiet must not wait for its next log line.
    flush_timeout: _PositiveDuration = 2.0

    @model_validator(mode="after")
    def _known_parsers(self) -> Self:
        known = {*MULTILINE_PRESETS, "none", *self.parsers}
        problems = [
            f"parsers.{name}: a built-in parser has this name"
            for name in (*MULTILINE_PRESETS, "none")
            if name in self.parsers
        ]
        if self.default not in known:
            problems.append("default: no parser of this name (presets: java, python, go, none)")
        problems.extend(
            f"rules[{index}].parser: no parser of this name"
            for index, rule in enumerate(self.rules)
            if rule.parser not in known
        )
        if problems:
            raise PydanticCustomError(
                "config_multiline", "{problems}", {"problems": "; ".join(problems)}
            )
        return self


# -- processing -----------------------------------------------------------------------------------

_FieldPath = Annotated[str, Field(min_length=1, pattern=r"^[^.\s]+(\.[^.\s]+)*$")]
"""A dotted path into the record (`http.request.method`)."""

_FIELD_PATH_RE = re.compile(r"[^.\s]+(\.[^.\s]+)*")

SHIPPER_FIELDS = frozenset(
    {
        "@timestamp",
        "message",
        "stream",
        "container",
        "log",
        "host",
        "agent",
        "ecs",
        "kubernetes",
        "docker",
        "event",
    }
)
"""Top-level fields shipper writes itself: processors write under them only at stated paths."""

CONFLICT_FIELDS = ("json_conflicts", "regex_conflicts")
_PER_RECORD_FIELDS = frozenset({"@timestamp", "message", "stream", "log", "agent", "ecs", "event"})
"""Where decode_json and regex keep a key that would have replaced a field of the record."""


def _reserved_head(path: str, allowed: tuple[str, ...] = ()) -> str | None:
    """The reserved top-level field `path` would write under (None: free, or `allowed`)."""
    if path in allowed:
        return None
    head = path.partition(".")[0]
    return head if head in SHIPPER_FIELDS or head in CONFLICT_FIELDS else None


def _reserved_error(option: str, head: str, allowed: tuple[str, ...] = ()) -> PydanticCustomError:
    # Names only the reserved field (ours), never the user's value.
    exception = f" except at {' or '.join(allowed)}" if allowed else ""
    return PydanticCustomError(
        "config_reserved_field",
        "{option}: `{head}` is written by shipper itself; processors may not write under it"
        "{exception}",
        {"option": option, "head": head, "exception": exception},
    )


def _check_target(target: str) -> None:
    if not target:
        return
    if _FIELD_PATH_RE.fullmatch(target) is None:
        raise PydanticCustomError(
            "config_target", 'target: expected a dotted field path, or "" for the top level'
        )
    head = _reserved_head(target)
    if head is not None:
        raise _reserved_error("target", head)


class DecodeJsonConfig(_Model):
    """Decodes a message that is a JSON object into fields of the record."""

    field: _FieldPath = "message"
    # Where the decoded keys go: "" puts them at the top of the record, beside @timestamp.
    target: str = ""
    # Whether decoded keys replace fields the record already has (shipper's own are never replaced
    # but `message`, and `@timestamp` through the timestamp processor only).
    overwrite_keys: bool = False
    # A decoded key whose value becomes the record's message (e.g. "msg"); null keeps the line.
    message_key: str | None = None
    # A message that is not a JSON object is shipped as it is, flagged `json_decode_failed`.
    flag_on_failure: bool = True

    @model_validator(mode="after")
    def _valid_target(self) -> Self:
        _check_target(self.target)
        if self.message_key == "":
            raise PydanticCustomError(
                "config_message_key", "message_key: must not be empty (null keeps the line)"
            )
        return self


class RegexParserConfig(_Model):
    """Takes the named groups of a regular expression as fields of the record."""

    field: _FieldPath = "message"
    pattern: Regex
    target: str = ""
    flag_on_failure: bool = True  # a message the pattern does not match is flagged `regex_no_match`

    @model_validator(mode="after")
    def _named_groups(self) -> Self:
        _check_target(self.target)
        if not self.pattern.groupindex:
            raise PydanticCustomError(
                "config_regex_groups", "the pattern has no named group (?P<name>...)"
            )
        return self


TIME_FORMATS = ("rfc3339", "unix", "unix_ms", "unix_us", "unix_ns")


class TimestampConfig(_Model):
    """Sets @timestamp from a field the application wrote; Docker's own time moves to
    `event.created` (it is when dockerd read the line, not when the event happened)."""

    field: _FieldPath
    # Tried in order: rfc3339 (ISO 8601 with a zone), unix, unix_ms, unix_us, unix_ns, or a
    # strptime layout such as "%d/%b/%Y:%H:%M:%S %z" (a layout without a zone is read as UTC).
    formats: list[str] = Field(default_factory=lambda: ["rfc3339"], min_length=1)
    flag_on_failure: bool = True  # a value no format reads is flagged `timestamp_failed`
    remove_field: bool = False

    @model_validator(mode="after")
    def _known_formats(self) -> Self:
        for index, time_format in enumerate(self.formats):
            if time_format not in TIME_FORMATS and "%" not in time_format:
                raise PydanticCustomError(
                    "config_time_format",
                    "formats[{index}]: expected one of {names} or a strptime layout (with %)",
                    {"index": index, "names": ", ".join(TIME_FORMATS)},
                )
        return self


class LogLevelConfig(_Model):
    """Sets `log.level` (lowercase) from a field the application wrote."""

    field: _FieldPath
    remove_field: bool = False


REDACTION_PRESETS = ("credit_card", "bearer_token", "aws_access_key", "password", "email")


class RedactConfig(_Model):
    """Replaces what matches before the record leaves the host."""

    fields: list[_FieldPath] = Field(default_factory=lambda: ["message"], min_length=1)
    presets: list[Literal["credit_card", "bearer_token", "aws_access_key", "password", "email"]] = (
        Field(default_factory=list)
    )
    patterns: list[Regex] = Field(default_factory=list)
    replacement: str = "[REDACTED]"

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.presets and not self.patterns:
            raise PydanticCustomError(
                "config_redact", "give `presets`, `patterns` or both: nothing would be redacted"
            )
        try:
            self.replacement.encode()
        except UnicodeEncodeError:
            raise PydanticCustomError(
                "config_replacement", "replacement: not valid Unicode text (a lone surrogate)"
            ) from None
        return self


class AddFieldsConfig(_Model):
    """Fields added to every record, e.g. {"service.name": "checkout"}."""

    fields: dict[_FieldPath, Any] = Field(min_length=1)
    overwrite: bool = False

    @model_validator(mode="after")
    def _writable(self) -> Self:
        allowed = ("log.level",)
        for path in self.fields:
            head = _reserved_head(path, allowed)
            if head is not None:
                raise _reserved_error("fields", head, allowed)
        try:
            orjson.dumps(self.fields)
        except orjson.JSONEncodeError:
            # Caught here, not on the first record: a YAML set, an integer past 64 bits...
            raise PydanticCustomError(
                "config_json_value", "fields: a value cannot be written as JSON"
            ) from None
        return self


class DropFieldsConfig(_Model):
    """Fields removed from every record (those it has)."""

    fields: list[_FieldPath] = Field(min_length=1)

    @model_validator(mode="after")
    def _keeps_timestamp(self) -> Self:
        # Elasticsearch data streams refuse a document without @timestamp.
        if "@timestamp" in self.fields:
            raise PydanticCustomError(
                "config_drop_timestamp", "fields: @timestamp cannot be dropped"
            )
        return self


class RenameFieldsConfig(_Model):
    """Fields moved to another name, `{from: to}`, in the order given."""

    fields: dict[_FieldPath, _FieldPath] = Field(min_length=1)
    overwrite: bool = False

    @model_validator(mode="after")
    def _writable(self) -> Self:
        allowed = ("message", "log.level")
        for source, target in self.fields.items():
            if source == "@timestamp":
                raise PydanticCustomError(
                    "config_rename_timestamp", "fields: @timestamp cannot be renamed"
                )
            head = _reserved_head(target, allowed)
            if head is not None:
                raise _reserved_error("fields", head, allowed)
        return self


class ProcessorConfig(_Model):
    """One processing step: exactly one of these keys, as in `- decode_json: {}`."""

    decode_json: DecodeJsonConfig | None = None
    regex: RegexParserConfig | None = None
    timestamp: TimestampConfig | None = None
    log_level: LogLevelConfig | None = None
    redact: RedactConfig | None = None
    add_fields: AddFieldsConfig | None = None
    drop_fields: DropFieldsConfig | None = None
    rename_fields: RenameFieldsConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise PydanticCustomError(
                "config_processor",
                "a processor is exactly one of: {names}",
                {"names": ", ".join(type(self).model_fields)},
            )
        return self

    @property
    def step(self) -> BaseModel:
        """The one step configured here."""
        for name in type(self).model_fields:
            value: BaseModel | None = getattr(self, name)
            if value is not None:
                return value
        raise AssertionError("validated to hold exactly one step")


# -- sources ---------------------------------------------------------------------------------------


def _unix_socket(value: str) -> str:
    # Only a local socket: shipper never sends traffic off the host, and a tcp:// URL may carry
    # credentials, so the value is not quoted.
    path = value.removeprefix("unix://")
    if not path.startswith("/") or not path.strip("/"):
        raise PydanticCustomError(
            "config_docker_host",
            "only a local unix socket is supported: unix:///path/to/docker.sock or a path",
        )
    return value


class _TailingSourceBase(_Model):
    """Options of every source that follows files."""

    # Only for files present at the very first start (no checkpoint file yet); later files are
    # always read from their beginning, otherwise lines written between two runs would be lost.
    start_at: Literal["beginning", "end"] = "beginning"
    rescan_interval: _PositiveDuration = 10.0
    watch: bool = True
    read_chunk_size: Annotated[ByteSize, AfterValidator(_at_least(4 * KiB, "4KiB"))] = 256 * KiB
    # How often a file at its end is checked for growth.
    poll_interval: _PositiveDuration = 0.25
    # A line split into parts (Docker's 16 KiB parts, CRI's P entries) waits this long for the rest
    # (the last output of a container without newline looks the same) before it ships as it is.
    partial_flush_timeout: _PositiveDuration = 2.0
    # A rejoined line longer than this is cut and flagged `truncated`.
    max_message_bytes: Annotated[ByteSize, AfterValidator(_at_least(16 * KiB, "16KiB"))] = MiB
    # Rotated files deleted while shipper still reads them stay on disk until drained.
    # null: no limit (nothing is lost while the files existed). A size: past it, per followed
    # file, the oldest such files are given up and their unread bytes counted as lost.
    max_pinned_bytes: ByteSize | None = None
    # `host.name` on every record; null: NODE_NAME (Kubernetes downward API) or the hostname.
    host_name: str | None = None
    multiline: MultilineConfig = Field(default_factory=MultilineConfig)
    processors: list[ProcessorConfig] = Field(default_factory=list)


class DockerJsonSourceConfig(_TailingSourceBase):
    """Container logs written by Docker's json-file driver: <root>/<id>/<id>-json.log*."""

    type: Literal["docker_json"]
    root: _Path = Path("/var/lib/docker/containers")
    # Label keys with dots become underscores (`app.kubernetes.io/name` -> `app_kubernetes_io/name`)
    # so `app` and `app.kubernetes.io/name` cannot clash in an Elasticsearch mapping.
    dedot_labels: bool = True
    # Container environment variables shipped (as docker.container.env); none by default: the
    # environment is where secrets live.
    env_allowlist: list[str] = Field(default_factory=list)
    # Leave out shipper's own container (its logs would be shipped, logged, shipped again).
    exclude_self: bool = True
    # Which containers to ship: those matching `include` (null: all), less those matching
    # `exclude`, less those whose label `opt_out_label` is "true".
    include: ContainerMatch | None = None
    exclude: ContainerMatch = Field(default_factory=ContainerMatch)
    opt_out_label: str = "shipper.exclude"
    # Docker Engine API socket (e.g. unix:///var/run/docker.sock); null: files only. With it,
    # container events make renames, stops and removals take effect at once.
    docker_host: Annotated[str, AfterValidator(_unix_socket)] | None = None


class PodMatch(_Model):
    """Pod containers matching any of these shell-style globs."""

    namespaces: list[str] = Field(default_factory=list)
    pods: list[str] = Field(default_factory=list)
    containers: list[str] = Field(default_factory=list)


class CriSourceConfig(_TailingSourceBase):
    """Kubernetes container logs written by the kubelet for containerd or CRI-O:
    <root>/<namespace>_<pod>_<uid>/<container>/<restart>.log*."""

    type: Literal["cri"]
    root: _Path = Path("/var/log/pods")
    # Where a docker_json source reads: a CRI file that is a symlink into it is left to that
    # source, so no line is shipped twice (dockershim nodes link pod logs to Docker's files).
    docker_root: _Path | None = Path("/var/lib/docker/containers")
    # The kubelet's links <pod>_<namespace>_<container>-<container id>.log to each pod log file:
    # where `container.id` comes from. null: records carry no container.id.
    container_links: _Path | None = Path("/var/log/containers")
    include: PodMatch | None = None
    exclude: PodMatch = Field(default_factory=PodMatch)
    # The kubelet renames a log file and then asks the runtime to reopen it: lines written in
    # between go to the renamed file. It is watched until it has not grown for this long.
    rotate_wait: _PositiveDuration = 5.0


class FilesSourceConfig(_TailingSourceBase):
    """Plain-text or NDJSON files named by globs, e.g. on a volume shared with an application
    container (sidecar mode); rotated files beside them (`app.log.1`, `app.log.2.gz`,
    `app.log-20240101`) are followed too."""

    type: Literal["files"]
    paths: list[str] = Field(min_length=1)  # globs of the live files, e.g. /logs/*.log
    exclude: list[str] = Field(default_factory=list)  # globs of paths never read
    # text: each line is the message; ndjson: each line is a JSON object decoded into the record
    # (a line that is not is shipped as text, flagged `json_decode_failed`).
    format: Literal["text", "ndjson"] = "text"
    # An application goes on writing to a renamed file until it reopens its log (logrotate's
    # `create` and a postrotate signal): the renamed file is watched until it has not grown for
    # this long (Fluent Bit's Rotate_Wait).
    rotate_wait: _PositiveDuration = 5.0
    # Fields every record of this source carries, e.g. {"service.name": "checkout",
    # "kubernetes.pod.name": "${POD_NAME}"}: the metadata a sidecar cannot read from Docker.
    fields: dict[_FieldPath, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _static_fields(self) -> Self:
        # Each record's own fields are written beside these: the same key twice would make
        # an invalid document. container.*, kubernetes.*, host.* are what a sidecar adds.
        for path in self.fields:
            head = path.partition(".")[0]
            if head in _PER_RECORD_FIELDS:
                raise PydanticCustomError(
                    "config_reserved_field",
                    "fields: `{head}` is written by shipper for each record",
                    {"head": head},
                )
        try:
            orjson.dumps(self.fields)
        except orjson.JSONEncodeError:
            raise PydanticCustomError(
                "config_json_value", "fields: a value cannot be written as JSON"
            ) from None
        return self


SourceConfig = Annotated[
    DockerJsonSourceConfig | CriSourceConfig | FilesSourceConfig, Field(discriminator="type")
]


class BatchConfig(_Model):
    """A batch is sent when any of these limits is reached."""

    max_records: int = Field(default=2000, gt=0)
    max_bytes: Annotated[ByteSize, AfterValidator(_at_least(1, "1B"))] = 5 * MiB
    linger: Duration = 0.25


class RetryConfig(_Model):
    """Exponential backoff between attempts to send one batch."""

    # Zero would resend as fast as the destination answers, hammering one that is already failing.
    initial_backoff: _PositiveDuration = 0.5
    max_backoff: _PositiveDuration = 30.0
    max_attempts: int = Field(default=0, ge=0)  # 0 = retry forever

    @model_validator(mode="after")
    def _backoff_order(self) -> Self:
        if self.initial_backoff > self.max_backoff:
            raise PydanticCustomError(
                "config_backoff_order", "initial_backoff must not be greater than max_backoff"
            )
        return self


class _OutputBase(_Model):
    """Options every output has, whatever its type."""

    inputs: list[str] | None = None  # source names; None = every source
    batch: BatchConfig = Field(default_factory=BatchConfig)
    max_in_flight: int = Field(default=1, ge=1, le=64)
    retry: RetryConfig = Field(default_factory=RetryConfig)


class FileOutputConfig(_OutputBase):
    """Appends one JSON object a line to a local file."""

    type: Literal["file"]
    path: _Path
    fsync: bool = False


class ConsoleOutputConfig(_OutputBase):
    """Writes one JSON object a line to the process's stdout or stderr."""

    type: Literal["console"]
    stream: Literal["stdout", "stderr"] = "stdout"


# -- the elasticsearch output -------------------------------------------------------------------

# Characters Elasticsearch refuses in index and data stream names (besides upper case).
_INDEX_FORBIDDEN = frozenset('\\/*?"<>|,#: ')
# Date codes an index name may hold, formatted from each record's @timestamp (UTC). Others (%c,
# %p, %Z...) would put spaces, capitals or locale text into a name.
INDEX_DATE_CODES = frozenset("YmdHyjGV")
_TEMPLATE_TOKEN_RE = re.compile(
    r"\{(?P<field>[^{}]*)\}|%(?P<code>.?)|(?P<text>[^{}%]+)|(?P<stray>.)"
)


@dataclass(frozen=True, slots=True)
class IndexName:
    """An index or data stream name as configured: literal text, date codes (`%Y`, `%m`, `%d`,
    `%H`...: UTC, from each record's @timestamp) and `{field.path}` references to a field of the
    record. `parts` holds literal text (date codes kept, for strftime) and field paths."""

    text: str
    parts: tuple[str | tuple[str, ...], ...]

    @property
    def fields(self) -> tuple[tuple[str, ...], ...]:
        return tuple(part for part in self.parts if isinstance(part, tuple))

    @property
    def dated(self) -> bool:
        return any(isinstance(part, str) and "%" in part for part in self.parts)

    @property
    def hourly(self) -> bool:
        return any(isinstance(part, str) and "%H" in part for part in self.parts)


def _index_error(message: str) -> PydanticCustomError:
    return PydanticCustomError("config_index_name", message)


def _parse_index_name(value: object) -> IndexName:
    if not isinstance(value, str):
        raise PydanticCustomError("config_index_name", "expected a string")
    if not value:
        raise _index_error("must not be empty")
    parts = _index_parts(value)
    _check_index_text(parts)
    return IndexName(value, parts)


def _index_parts(value: str) -> tuple[str | tuple[str, ...], ...]:
    """Literal text (date codes kept) and field paths, in order."""
    parts: list[str | tuple[str, ...]] = []
    literal = ""
    for match in _TEMPLATE_TOKEN_RE.finditer(value):
        if match["field"] is not None:
            if _FIELD_PATH_RE.fullmatch(match["field"]) is None:
                raise _index_error("{...} must hold a dotted field path, e.g. {container.name}")
            if literal:
                parts.append(literal)
                literal = ""
            parts.append(tuple(match["field"].split(".")))
        elif match["code"] is not None:
            if match["code"] not in INDEX_DATE_CODES:
                raise _index_error(
                    "unsupported date code after %: use %Y, %m, %d, %H, %y, %j, %G or %V"
                )
            literal += "%" + match["code"]
        elif match["text"] is not None:
            literal += match["text"]
        else:
            raise _index_error("unbalanced { or }: a field is written {field.path}")
    if literal:
        parts.append(literal)
    return tuple(parts)


def _check_index_text(parts: tuple[str | tuple[str, ...], ...]) -> None:
    """Elasticsearch's naming rules, on the literal text (field values are checked per record)."""
    # What the literal text looks like once dated: digits where the codes are.
    static = "".join(re.sub(r"%.", "0", part) for part in parts if isinstance(part, str))
    if static != static.lower():
        raise _index_error("Elasticsearch names must be lowercase")
    if _INDEX_FORBIDDEN.intersection(static) or any(c.isspace() for c in static):
        raise _index_error(
            'holds a character Elasticsearch does not allow in names: \\ / * ? " < > | , # : '
            "or a space"
        )
    if isinstance(parts[0], str) and parts[0][0] in "-_+":
        raise _index_error("Elasticsearch names must not start with -, _ or +")
    if len(static.encode()) > 255:
        raise _index_error("longer than the 255 bytes Elasticsearch allows")
    if static in (".", "..") and len(parts) == 1:
        raise _index_error("not a valid Elasticsearch name")


_IndexName = Annotated[IndexName, PlainValidator(_parse_index_name)]

_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Set by shipper itself (body format, compression) or by the credential options.
_RESERVED_HEADERS = frozenset(
    {"accept", "authorization", "content-encoding", "content-length", "content-type", "host"}
)


def _header_names(reserved: frozenset[str], why: str) -> Callable[[str], str]:
    """A check of an output's extra header names: valid, and none of those shipper sets."""

    def check(value: str) -> str:
        if _HEADER_NAME_RE.fullmatch(value) is None:
            raise PydanticCustomError("config_header", "not a valid HTTP header name")
        if value.lower() in reserved:
            raise PydanticCustomError(
                "config_header", "set by shipper itself ({why})", {"why": why}
            )
        return value

    return check


_header_name = _header_names(
    _RESERVED_HEADERS, "credentials go in username/password, api_key or bearer_token"
)


def _http_url(value: str, *, example: str, credentials: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path) of an output's http(s) URL, or the error naming what is wrong:
    no credentials (the URL is logged and shown in errors; they have options of their own,
    kept secret: `credentials` says which), no query or fragment."""
    invalid = PydanticCustomError(
        "config_url", "expected an http:// or https:// URL such as {example}", {"example": example}
    )
    try:
        url = urlsplit(value.strip())
        port = url.port
    except ValueError:
        raise invalid from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise invalid
    if url.username is not None or url.password is not None:
        raise PydanticCustomError(
            "config_url_credentials",
            "credentials in the URL are not allowed: use {credentials}",
            {"credentials": credentials},
        )
    if url.query or url.fragment:
        raise PydanticCustomError("config_url", "a query or fragment is not allowed in the URL")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return url.scheme, host, port, url.path.rstrip("/")


def _elasticsearch_url(value: str) -> str:
    """The URL with its port: 9200 when none is given, as Filebeat does."""
    scheme, host, port, path = _http_url(
        value,
        example="https://es.example.com:9200",
        credentials="username and password, api_key or bearer_token",
    )
    return f"{scheme}://{host}:{port or 9200}{path}"


def _cloud_id(value: str) -> str:
    # name:base64("host$es-uuid$kibana-uuid"), as the Elastic Cloud console shows it.
    _, _, encoded = value.rpartition(":")
    try:
        decoded = base64.b64decode(encoded.encode(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        decoded = ""
    if "$" not in decoded:
        raise PydanticCustomError(
            "config_cloud_id", "not an Elastic Cloud id (name:base64 text from the console)"
        )
    return value


def _non_empty_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise PydanticCustomError("config_empty", "must not be empty")
    return value


_Secret = Annotated[SecretStr, AfterValidator(_non_empty_secret)]


class ElasticsearchTlsConfig(_Model):
    """How the Elasticsearch certificate is checked, and the client certificate, if any."""

    ca_file: _Path | None = None  # PEM bundle; None = the CA bundle shipped with Python (certifi)
    verify: bool = True
    client_cert: _Path | None = None
    client_key: _Path | None = None  # None: the key is in client_cert

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if self.client_key is not None and self.client_cert is None:
            raise PydanticCustomError("config_tls", "client_key needs client_cert")
        return self


class ElasticsearchCompressionConfig(_Model):
    """gzip request bodies: less network for some CPU (level 1 gets most of the gain)."""

    enabled: bool = False
    level: int = Field(default=1, ge=1, le=9)


class ElasticsearchOutputConfig(_OutputBase):
    """Indexes records in Elasticsearch 8.x or 9.x with the `_bulk` API, each exactly once
    within one backing index (a deterministic `_id` with the `create` action)."""

    type: Literal["elasticsearch"]
    # Where: `hosts` (URLs; requests go round them, failing ones are rested) or `cloud_id`.
    hosts: (
        Annotated[list[Annotated[str, AfterValidator(_elasticsearch_url)]], Field(min_length=1)]
        | None
    ) = None
    cloud_id: Annotated[str, AfterValidator(_cloud_id)] | None = None
    # Who: one of username + password, api_key ("id:key" or the encoded form) or bearer_token.
    # The *_file forms name a file read at start (e.g. a mounted secret), surrounding spaces cut.
    username: str | None = None
    password: _Secret | None = None
    password_file: _Path | None = None
    api_key: _Secret | None = None
    api_key_file: _Path | None = None
    bearer_token: _Secret | None = None
    bearer_token_file: _Path | None = None
    tls: ElasticsearchTlsConfig = Field(default_factory=ElasticsearchTlsConfig)
    headers: dict[Annotated[str, AfterValidator(_header_name)], str] = Field(default_factory=dict)
    timeout: _PositiveDuration = 30.0  # per request
    compression: ElasticsearchCompressionConfig = Field(
        default_factory=ElasticsearchCompressionConfig
    )
    # What: a data stream (the default) or an index; either may name record fields, the index
    # also date codes. A name built from fields must match `allowed_indices`, else (or when a
    # field is missing) the record goes to `fallback_index`.
    data_stream: _IndexName | None = Field(
        default_factory=lambda: _parse_index_name("logs-docker-default")
    )
    index: _IndexName | None = None
    allowed_indices: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    fallback_index: _IndexName | None = None
    pipeline: Annotated[str, Field(min_length=1)] | None = None
    # A batch is cut into several `_bulk` requests so that none is larger (before compression).
    max_request_bytes: Annotated[ByteSize, AfterValidator(_at_least(KiB, "1KiB"))] = 5 * MiB

    @property
    def target(self) -> IndexName:
        """The index or data stream name records are written to."""
        target = self.index if self.index is not None else self.data_stream
        assert target is not None  # noqa: S101 - the validator requires one
        return target

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = [*self._where(), *self._who(), *self._what()]
        if problems:
            raise PydanticCustomError(
                "config_elasticsearch", "{problems}", {"problems": "; ".join(problems)}
            )
        return self

    def _where(self) -> list[str]:
        if (self.hosts is None) == (self.cloud_id is None):
            return ["give `hosts` or `cloud_id` (one of them)"]
        return []

    def _who(self) -> list[str]:
        problems = []
        pairs = (
            ("password", self.password, self.password_file),
            ("api_key", self.api_key, self.api_key_file),
            ("bearer_token", self.bearer_token, self.bearer_token_file),
        )
        methods = 0
        for name, inline, from_file in pairs:
            if inline is not None and from_file is not None:
                problems.append(f"give `{name}` or `{name}_file`, not both")
            methods += inline is not None or from_file is not None
        has_password = self.password is not None or self.password_file is not None
        if has_password != (self.username is not None):
            problems.append("`username` and `password` (or `password_file`) go together")
        if methods > 1:
            problems.append(
                "choose one way to authenticate: username/password, api_key or bearer_token"
            )
        return problems

    def _what(self) -> list[str]:
        if self.index is not None and self.data_stream is not None:
            if "data_stream" in self.model_fields_set:
                return ["give `data_stream` or `index`, not both"]
        elif self.index is None and self.data_stream is None:
            return ["give `data_stream` or `index`"]
        problems = []
        if self.index is None and self.target.dated:
            problems.append(
                "data_stream: date codes belong in `index`; a data stream rolls over by itself"
            )
        return problems + self._routing()

    def _routing(self) -> list[str]:
        problems = []
        if self.target.fields:
            # A field's value (a container label...) is chosen by whoever starts the container:
            # without a list of allowed names it could write into any index.
            if not self.allowed_indices:
                problems.append("allowed_indices: required when the target names record fields")
            if self.fallback_index is None:
                problems.append("fallback_index: required when the target names record fields")
        else:
            if self.allowed_indices:
                problems.append("allowed_indices: only used when the target names record fields")
            if self.fallback_index is not None:
                problems.append("fallback_index: only used when the target names record fields")
        fallback = self.fallback_index
        if fallback is not None:
            if fallback.fields:
                problems.append("fallback_index: must not name record fields")
            if fallback.dated and self.index is None:
                problems.append("fallback_index: date codes belong in `index` targets")
        return problems


# -- the splunk_hec output ----------------------------------------------------------------------

# Splunk's rule for index names: lowercase letters, digits, '_' and '-', not starting with '_'
# or '-'.
_SPLUNK_INDEX_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SPLUNK_INDEX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_HEC_TEMPLATE_TOKEN_RE = re.compile(r"\{(?P<field>[^{}]*)\}|(?P<text>[^{}]+)|(?P<stray>.)")
# Indexed field names: Splunk reserves a leading '_', and the envelope's own keys have options.
_HEC_FIELD_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_HEC_ENVELOPE_KEYS = frozenset({"time", "host", "source", "sourcetype", "index", "event"})
_HEC_RESERVED_HEADERS = _RESERVED_HEADERS | {"x-splunk-request-channel"}


@dataclass(frozen=True, slots=True)
class HecTemplate:
    """A HEC envelope value as configured: literal text and `{field.path}` references to a
    field of the record (`docker:{container.name}`). `parts` holds the text and the paths."""

    text: str
    parts: tuple[str | tuple[str, ...], ...]

    @property
    def fields(self) -> tuple[tuple[str, ...], ...]:
        return tuple(part for part in self.parts if isinstance(part, tuple))


def _template_error(message: str) -> PydanticCustomError:
    return PydanticCustomError("config_hec_template", message)


def _parse_hec_template(value: object) -> HecTemplate:
    if not isinstance(value, str):
        raise PydanticCustomError("config_hec_template", "expected a string")
    if not value:
        raise _template_error("must not be empty")
    parts: list[str | tuple[str, ...]] = []
    for match in _HEC_TEMPLATE_TOKEN_RE.finditer(value):
        if match["field"] is not None:
            if _FIELD_PATH_RE.fullmatch(match["field"]) is None:
                raise _template_error("{...} must hold a dotted field path, e.g. {container.name}")
            parts.append(tuple(match["field"].split(".")))
        elif match["text"] is not None:
            parts.append(match["text"])
        else:
            raise _template_error("unbalanced { or }: a field is written {field.path}")
    return HecTemplate(value, tuple(parts))


def _parse_splunk_index(value: object) -> HecTemplate:
    template = _parse_hec_template(value)
    static = "".join(part for part in template.parts if isinstance(part, str))
    if not _SPLUNK_INDEX_CHARS.issuperset(static) or (
        isinstance(template.parts[0], str) and template.parts[0][0] in "_-"
    ):
        raise PydanticCustomError(
            "config_splunk_index",
            "Splunk index names hold only lowercase letters, digits, '_' and '-', and start "
            "with a letter or digit",
        )
    return template


def _splunk_index_name(value: str) -> str:
    if _SPLUNK_INDEX_RE.fullmatch(value) is None:
        raise PydanticCustomError(
            "config_splunk_index",
            "Splunk index names hold only lowercase letters, digits, '_' and '-', and start "
            "with a letter or digit",
        )
    return value


def _hec_field_name(value: str) -> str:
    if _HEC_FIELD_NAME_RE.fullmatch(value) is None:
        raise PydanticCustomError(
            "config_hec_field",
            "indexed field names hold letters, digits, '_', '.', ':' and '-', and start with a "
            "letter or digit (Splunk reserves a leading '_')",
        )
    if value in _HEC_ENVELOPE_KEYS:
        raise PydanticCustomError(
            "config_hec_field", "a key of the HEC envelope, set by its own option"
        )
    return value


_hec_header_name = _header_names(_HEC_RESERVED_HEADERS, "the token goes in `token` or `token_file`")


def _splunk_url(value: str) -> str:
    """The base URL with its port: 8088 (HEC's default) when none is given."""
    scheme, host, port, path = _http_url(
        value,
        example="https://splunk.example.com:8088",
        credentials="`token` or `token_file`",
    )
    if "/services/collector" in path:
        raise PydanticCustomError(
            "config_url",
            "give the base URL (e.g. https://splunk.example.com:8088): shipper adds "
            "/services/collector/... itself",
        )
    return f"{scheme}://{host}:{port or 8088}{path}"


_HecTemplate = Annotated[HecTemplate, PlainValidator(_parse_hec_template)]
_SplunkIndex = Annotated[HecTemplate, PlainValidator(_parse_splunk_index)]


class SplunkHecAckConfig(_Model):
    """Indexer acknowledgement: records count as delivered only once Splunk says they are
    indexed (the token must have `useACK` on; Splunk Enterprise only)."""

    enabled: bool = False
    poll_interval: _PositiveDuration = 1.0
    # An ack not confirmed within this time is given up: its records are sent again.
    timeout: _PositiveDuration = 300.0

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.timeout < self.poll_interval:
            raise PydanticCustomError(
                "config_ack_order", "timeout must not be shorter than poll_interval"
            )
        return self


class SplunkHecOutputConfig(_OutputBase):
    """Sends records to Splunk's HTTP Event Collector: JSON events on /services/collector/event
    (or lines on /services/collector/raw), with optional indexer acknowledgement."""

    type: Literal["splunk_hec"]
    url: Annotated[str, AfterValidator(_splunk_url)]
    # The HEC token, inline (from the environment: token: ${HEC_TOKEN}) or from a file.
    token: _Secret | None = None
    token_file: _Path | None = None
    endpoint: Literal["event", "raw"] = "event"
    tls: ElasticsearchTlsConfig = Field(default_factory=ElasticsearchTlsConfig)
    headers: dict[Annotated[str, AfterValidator(_hec_header_name)], str] = Field(
        default_factory=dict
    )
    timeout: _PositiveDuration = 30.0  # per request
    compression: ElasticsearchCompressionConfig = Field(
        default_factory=ElasticsearchCompressionConfig
    )
    # The envelope. null: host = the record's host.name, source = the log file's path,
    # sourcetype = docker:container:<container name>, index = the token's default index.
    host: _HecTemplate | None = Field(default_factory=lambda: _parse_hec_template("{host.name}"))
    source: _HecTemplate | None = Field(
        default_factory=lambda: _parse_hec_template("{log.file.path}")
    )
    sourcetype: _HecTemplate | None = Field(
        default_factory=lambda: _parse_hec_template("docker:container:{container.name}")
    )
    index: _SplunkIndex | None = None
    allowed_indexes: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    fallback_index: Annotated[str, AfterValidator(_splunk_index_name)] | None = None
    # Indexed fields: name -> dotted path of a record field; values are sent as strings.
    fields: dict[Annotated[str, AfterValidator(_hec_field_name)], _FieldPath] = Field(
        default_factory=dict
    )
    event: Literal["message", "record"] = "message"
    ack: SplunkHecAckConfig = Field(default_factory=SplunkHecAckConfig)
    # A batch is cut into several requests so that none is larger (before compression).
    max_request_bytes: Annotated[ByteSize, AfterValidator(_at_least(KiB, "1KiB"))] = 1000 * 1000

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = []
        if (self.token is None) == (self.token_file is None):
            problems.append("give `token` or `token_file` (one of them)")
        if self.index is not None and self.index.fields:
            # A field's value (a container label...) is chosen by whoever starts the container:
            # without a list of allowed names it could write into any index the token allows.
            if not self.allowed_indexes:
                problems.append("allowed_indexes: required when `index` names record fields")
        elif self.allowed_indexes:
            problems.append("allowed_indexes: only used when `index` names record fields")
        if self.endpoint == "raw" and self.fields:
            problems.append("fields: indexed fields are sent on the event endpoint only")
        if problems:
            raise PydanticCustomError(
                "config_splunk_hec", "{problems}", {"problems": "; ".join(problems)}
            )
        return self


# A new output type is a new class added to this union.
OutputConfig = Annotated[
    FileOutputConfig | ConsoleOutputConfig | ElasticsearchOutputConfig | SplunkHecOutputConfig,
    Field(discriminator="type"),
]


class PipelineConfig(_Model):
    max_buffered_bytes: Annotated[ByteSize, AfterValidator(_at_least(MiB, "1MiB"))] = 16 * MiB
    shutdown_timeout: Duration = 10.0
    # Processes that each follow a share of the files (by directory), for a second core: one
    # CPython process tops out near one core. 1 = everything in the one process.
    workers: int = Field(default=1, ge=1, le=64)


class CheckpointConfig(_Model):
    path: _Path | None = None  # None = <state_dir>/checkpoints.json
    flush_interval: _PositiveDuration = 1.0
    on_corrupt: Literal["fail", "reset"] = "fail"


class DeadLetterConfig(_Model):
    path: _Path | None = None  # None = <state_dir>/dead-letter.ndjson


class LogRateLimitConfig(_Model):
    """At most `messages` log lines of one kind (the same message text) per `interval`; the
    rest are counted and summed up in one line when the interval ends (0 = no limit)."""

    messages: int = Field(default=10, ge=0)
    interval: _PositiveDuration = 10.0


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    rate_limit: LogRateLimitConfig = Field(default_factory=LogRateLimitConfig)


class HealthConfig(_Model):
    """When /readyz turns false (Fluent Bit's v2 health checks are the anchor)."""

    # An output whose every attempt failed (or was held) for this long makes shipper unready.
    output_failing_after: _PositiveDuration = 60.0
    # A file with unread bytes that no reading has advanced for this long, while the memory
    # budget had room, makes shipper unready (a stuck follower, a hung file system).
    reading_stalled_after: _PositiveDuration = 60.0


class MonitoringConfig(_Model):
    """The HTTP endpoint for Prometheus (/metrics) and probes (/livez, /readyz)."""

    enabled: bool = True
    # Loopback by default: the metrics name containers and paths. The DaemonSet binds the pod
    # address (${POD_IP}) so Prometheus and the kubelet's probes can reach it.
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=9910, ge=0, le=65535)  # 0: any free port (tests)
    health: HealthConfig = Field(default_factory=HealthConfig)


class Config(_Model):
    """The whole configuration; build it with load_config() or parse_config()."""

    state_dir: _Path = Path("/var/lib/shipper")
    sources: dict[_Name, SourceConfig]
    outputs: dict[_Name, OutputConfig]
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    checkpoints: CheckpointConfig = Field(default_factory=CheckpointConfig)
    dead_letter: DeadLetterConfig = Field(default_factory=DeadLetterConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

    @property
    def checkpoint_path(self) -> Path:
        return self.checkpoints.path or self.state_dir / "checkpoints.json"

    @property
    def dead_letter_path(self) -> Path:
        return self.dead_letter.path or self.state_dir / "dead-letter.ndjson"

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        # A model validator cannot give its error a location, so each line carries its own path. The
        # source name is not quoted: it is a value, and values are never echoed.
        problems: list[str] = []
        if not self.sources:
            problems.append("sources: define at least one source")
        if not self.outputs:
            problems.append("outputs: define at least one output")
        defined = ", ".join(sorted(self.sources)) or "none"
        for name, output in self.outputs.items():
            if output.inputs is None:
                continue
            if not output.inputs:
                problems.append(
                    f"outputs.{name}.inputs: name at least one source, or leave it out for all"
                )
            problems.extend(
                f"outputs.{name}.inputs[{index}]: no source of this name (defined: {defined})"
                for index, source in enumerate(output.inputs)
                if source not in self.sources
            )
        if problems:
            raise PydanticCustomError(
                "config_references", "{problems}", {"problems": "\n".join(problems)}
            )
        return self


# -------------------------------------------------------------------------------------------------
# YAML.

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in a mapping: YAML's "last one wins" hides typos."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_duplicate_keys(node, (), set())
        return super().construct_document(node)


def _check_duplicate_keys(node: yaml.Node, path: tuple[str | int, ...], seen: set[int]) -> None:
    # An alias points back to a node already checked; `seen` also stops a recursive alias looping.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                _check_duplicate_keys(value_node, path, seen)
                continue
            key_path = (*path, key_node.value)
            line = key_node.start_mark.line + 1
            identity = (key_node.tag, key_node.value)
            if identity in first_line:
                raise yaml.constructor.ConstructorError(
                    problem=f"{_dotted(key_path)}: duplicate key "
                    f"(first defined on line {first_line[identity]})",
                    problem_mark=key_node.start_mark,
                )
            first_line[identity] = line
            _check_duplicate_keys(value_node, key_path, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicate_keys(item, (*path, index), seen)


def _load_yaml(text: str, origin: str) -> object:
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        # Problem and context only: str(error) adds a snippet of the file, which may hold a secret.
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({error.context})" if error.context else ""
        message = f"{origin}: {where}{error.problem}{context}"
    except yaml.reader.ReaderError as error:
        message = f"{origin}: character {error.position}: {error.reason}"
    except yaml.YAMLError:
        message = f"{origin}: not valid YAML"
    finally:
        loader.dispose()
    # Raised outside the except clause so the YAML error, whose snippet of the file may hold a
    # secret, is not even kept as __context__ for a crash reporter to print.
    raise ConfigError(message)


# -------------------------------------------------------------------------------------------------
# ${VAR} expansion.

_REFERENCE_RE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<close>\})?")
_VARIABLE_RE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


def _expand(
    value: object, path: tuple[str | int, ...], environ: Mapping[str, str], problems: list[str]
) -> object:
    """Expand ${VAR} and ${VAR:-default} in string values, recursively; keys are left untouched."""
    if isinstance(value, str):
        return _expand_string(value, path, environ, problems)
    if isinstance(value, list):
        return [_expand(item, (*path, i), environ, problems) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {
            key: _expand(item, (*path, _path_part(key)), environ, problems)
            for key, item in value.items()
        }
    return value


def _expand_string(
    text: str, path: tuple[str | int, ...], environ: Mapping[str, str], problems: list[str]
) -> str:
    def replace(match: re.Match[str]) -> str:
        if match[0] == "$${":
            return "${"
        variable = _VARIABLE_RE.fullmatch(match["body"]) if match["close"] else None
        if variable is None:
            problems.append(
                f"{_dotted(path)}: invalid ${{...}} reference: write ${{NAME}} or "
                "${NAME:-default}, or $${ for a literal ${"
            )
            return match[0]
        name, default = variable["name"], variable["default"]
        found = environ.get(name)
        # As in the shell, ":-" also replaces a variable that is set but empty.
        if default is not None and not found:
            return default
        if found is None:
            problems.append(f"{_dotted(path)}: environment variable {name} is not set")
            return match[0]
        return found

    return _REFERENCE_RE.sub(replace, text)


# -------------------------------------------------------------------------------------------------
# Error messages: a dotted key path and a message of ours, never the offending value.

_MESSAGES = {
    "extra_forbidden": "unknown option",
    "missing": "missing required option",
    "model_type": "expected a mapping of options",
    "model_attributes_type": "expected a mapping of options",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "path_type": "expected a path",
}


def _path_part(key: object) -> str | int:
    return key if isinstance(key, str | int) and not isinstance(key, bool) else str(key)


def _dotted(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _strings_in(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in (*_strings_in(key), *_strings_in(item))]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _strings_in(item)]
    return []


def _describe(error: ErrorDetails) -> tuple[tuple[str | int, ...], str]:
    """The location as the user wrote it and a message that does not contain the input."""
    loc = list(error["loc"])
    # Pydantic puts the discriminator's value in the location (outputs.archive.file.path) and
    # "[key]" after a dict key that failed; neither is a key the user wrote.
    if len(loc) >= 3 and loc[0] in ("sources", "outputs"):
        del loc[2]
    loc = [part for part in loc if part != "[key]"]
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "union_tag_invalid":
        loc.append("type")
        message = f"unknown type: expected one of {ctx['expected_tags']}"
    elif kind == "union_tag_not_found":
        loc.append("type")
        message = "missing required option"
    elif kind == "literal_error":
        message = f"expected {ctx['expected']}"
    elif kind.startswith("config_") or kind in _MESSAGES:
        # Ours: written not to contain the input.
        message = _MESSAGES.get(kind, error["msg"])
    else:
        message = error["msg"].replace("Input should be", "must be", 1)
        # Pydantic's own wording: last line of defence in case a message quotes its input.
        if any(len(s) >= 4 and s in message for s in _strings_in(error.get("input"))):
            message = "invalid value"
    return tuple(loc), message


def _format_errors(error: ValidationError, origin: str) -> str:
    lines: list[str] = []
    for details in error.errors(include_url=False):
        loc, message = _describe(details)
        if loc:
            lines.append(f"{origin}: {_dotted(loc)}: {message}")
        else:
            # Config-wide checks put each problem's own path at the start of its line.
            lines.extend(f"{origin}: {line}" for line in message.splitlines())
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------
# Entry points.


def parse_config(text: str, origin: str, *, environ: Mapping[str, str] | None = None) -> Config:
    """Parse and validate config text; `origin` names it in errors, `environ` is os.environ if None.

    Raises ConfigError listing every problem found in the stage that failed (YAML, then ${VAR}
    expansion, then validation), one per line.
    """
    data = _load_yaml(text, origin)
    if data is None:
        raise ConfigError(f"{origin}: the file is empty: expected a mapping of options")
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of options")
    problems: list[str] = []
    data = _expand(data, (), os.environ if environ is None else environ, problems)
    if problems:
        raise ConfigError("\n".join(f"{origin}: {problem}" for problem in problems))
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        message = _format_errors(error, origin)
    # Outside the except clause: pydantic's error is not kept as __context__, as a few of its
    # messages quote the input (e.g. an unknown `type`) even with hide_input_in_errors.
    raise ConfigError(message)


def load_config(path: Path | None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load the config file at `path`, or the default embedded in the package when it is None."""
    if path is None:
        text = resources.files("shipper").joinpath("default.yaml").read_text(encoding="utf-8")
        return parse_config(text, DEFAULT_ORIGIN, environ=environ)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        problem = f"not valid UTF-8 (byte {error.start})"
    except OSError as error:
        problem = f"cannot read: {error.strerror or error}"
    else:
        return parse_config(text, str(path), environ=environ)
    # Outside the except clause: a decode error carries the file's bytes, secrets included.
    raise ConfigError(f"{path}: {problem}")
