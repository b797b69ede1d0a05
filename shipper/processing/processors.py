"""A source's processing steps (decode_json, regex, timestamp, log_level, redact and add, drop or
rename fields), run in order on the document of every record before any output gets it."""

# How the steps behave, for an operator coming from Filebeat or Fluent Bit:
#
# Paths. A field is named by a dotted path (`http.request.method`): reading walks nested objects
# (and, where that fails, also finds a key written with dots, such as `"http.method"` in decoded
# JSON); writing creates the objects on the way.
#
# Shipper's own fields (config.SHIPPER_FIELDS: @timestamp, message, stream, container, log, host,
# agent, ecs, kubernetes, docker, event) are written by processors only at `log.level` (log_level,
# add_fields, rename_fields), `event.created` (timestamp), `@timestamp` (timestamp), `message`
# (decode_json's message_key or overwrite_keys, rename_fields) and `log.flags` (every failure).
# The config refuses anything else, so what ships always has the shape the outputs expect.
#
# Conflicts. decode_json and regex never replace a field silently: a key that would replace a
# field the record has (overwrite_keys false; regex never overwrites; shipper's own fields always,
# `message` but through overwrite_keys) is kept at `json_conflicts.<path>` (decode_json) or
# `regex_conflicts.<path>` (regex), where <path> is where it would have gone, and the record is
# flagged `json_key_conflict` / `regex_key_conflict`. A decoded key with dots whose first part is
# one of shipper's fields (`"log.level"`) counts as that field: Elasticsearch would merge it there.
# A target occupied by something that is not an object keeps it: the decoded keys go to the
# conflict field, whole.
#
# Failures. decode_json, regex and timestamp flag a record (`json_decode_failed`,
# `regex_no_match`, `timestamp_failed`) when they could not do their job, the field missing
# included, unless flag_on_failure is false; rename_fields flags `rename_conflict`. Each failure
# counts in shipper_processing_failures_total{source, processor}, flagged or not. Flags are
# appended to `log.flags`, the list the decoders' own flags are in. A step that raises anyway (a
# bug) flags `processing_error` (a redact step that raises replaces its fields whole: it fails
# closed); a document too deeply nested to serialise keeps its first 200 levels and is flagged
# `nesting_truncated`, a lone surrogate becomes "?" (`unicode_replaced`). The record always
# ships. A missing field is no failure for log_level, redact, drop_fields and rename_fields: they
# skip it. Dropping or renaming a nested field leaves its parent, even empty (as Filebeat does).
# Not checked: keys Elasticsearch refuses ("", ".") and nesting past its mapping depth limit
# (20): such a document is rejected and dead-lettered.
#
# timestamp. The field is read with each format in turn: rfc3339 (ISO 8601 with a zone, "T" or a
# space between date and time, "," or "." before 0-9 fraction digits, offsets "+01:00" or
# "+0100"), unix, unix_ms, unix_us, unix_ns (an integer, a float or a decimal string; exact for
# integers and strings, so unix_ns keeps every nanosecond; a value outside years 1-9999 fails, so
# `[unix, unix_ms]` tells seconds from milliseconds), or a strptime layout (no zone in it: UTC;
# no year in it, as in syslog's "%b %d %H:%M:%S": the current year, or the previous one if that
# would put the time more than a day ahead). On success Docker's time moves to `event.created`
# (the first time only: a second timestamp step does not overwrite it).
#
# redact. Each listed field's string, or every string inside it when it is an object or a list,
# is scanned by each preset, then each custom pattern (whole match replaced, or only its group
# named `secret`). credit_card: a run of 13-19 digits (single spaces or dashes between) that
# passes Luhn, or else its longest run of whole digit groups that does. bearer_token: the token
# after "bearer" (8 characters at least). password: the value after a key ending in password,
# passwd, pwd, secret, api_key/apikey/api-key or token, with = : or =>, quoted (JSON, escaped
# JSON, single quotes: quotes kept) or bare (up to a space, & , ; a quote, } or ]; a bare value
# that opens an object or a list is left to the key rule after decoding); inside a
# redacted object it also replaces the whole value of any key named so (`db_password`,
# `X-Api-Key`). Redacting the raw `message` first, before decode_json, covers every field derived
# from it. Presets are linear-time (a 1 MiB line costs a few scans, never a backtracking blow-up).

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Protocol

import orjson

from shipper.config import (
    CONFLICT_FIELDS,
    SHIPPER_FIELDS,
    AddFieldsConfig,
    DecodeJsonConfig,
    DropFieldsConfig,
    LogLevelConfig,
    ProcessorConfig,
    RedactConfig,
    RegexParserConfig,
    RenameFieldsConfig,
    TimestampConfig,
)
from shipper.model import RecordGroup
from shipper.sinks.ecs import build_document
from shipper.sources.docker_json import normalize_time
from shipper.telemetry.counters import Telemetry

__all__ = [
    "FLAG_JSON_DECODE_FAILED",
    "FLAG_JSON_KEY_CONFLICT",
    "FLAG_NESTING_TRUNCATED",
    "FLAG_PROCESSING_ERROR",
    "FLAG_REGEX_KEY_CONFLICT",
    "FLAG_REGEX_NO_MATCH",
    "FLAG_RENAME_CONFLICT",
    "FLAG_TIMESTAMP_FAILED",
    "FLAG_UNICODE_REPLACED",
    "Processors",
    "parse_time",
]

log = logging.getLogger(__name__)

FLAG_JSON_DECODE_FAILED = "json_decode_failed"
FLAG_JSON_KEY_CONFLICT = "json_key_conflict"
FLAG_REGEX_NO_MATCH = "regex_no_match"
FLAG_REGEX_KEY_CONFLICT = "regex_key_conflict"
FLAG_TIMESTAMP_FAILED = "timestamp_failed"
FLAG_RENAME_CONFLICT = "rename_conflict"
FLAG_PROCESSING_ERROR = "processing_error"
FLAG_NESTING_TRUNCATED = "nesting_truncated"
FLAG_UNICODE_REPLACED = "unicode_replaced"

_MISSING: Final = object()
_NESTED = (dict, list)

# orjson refuses to serialise past 254 levels, though it parses 1024: a decoded document deeper
# than this keeps its first levels and the rest becomes this text.
_MAX_DEPTH = 200
_TOO_DEEP = "[nested too deeply]"

Document = dict[str, Any]


class _Context:
    """What the steps share while one group is processed."""

    __slots__ = ("failures", "shared")

    def __init__(self, shared: set[int]) -> None:
        # Containers the document borrows (the container's metadata, a record's attrs, values of
        # add_fields): copied before anything is written into them, so one record's processing
        # never shows in another record (copy on write, instead of a deep copy per record).
        self.shared = shared
        self.failures: dict[str, int] = {}

    def fail(self, document: Document, processor: str, flag: str | None) -> None:
        self.failures[processor] = self.failures.get(processor, 0) + 1
        if flag is not None:
            add_flag(document, flag, self.shared)


class _Step(Protocol):
    name: str

    def run(self, document: Document, context: _Context) -> None: ...


# -------------------------------------------------------------------------------------------------
# Paths.


def _split(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _locate(document: Document, parts: tuple[str, ...]) -> tuple[str, ...] | None:
    """The keys that lead to the field at `parts`, or None if the record has no such field.

    Where the nested walk fails, a key holding the rest of the path with its dots is taken
    (`{"http.method": ...}` as decoded JSON often has it).
    """
    node: dict[str, Any] = document
    last = len(parts) - 1
    for depth, part in enumerate(parts):
        child = node.get(part, _MISSING)
        if child is not _MISSING:
            if depth == last:
                return parts
            if type(child) is dict:
                node = child
                continue
        if depth < last:
            rest = ".".join(parts[depth:])
            if rest in node:
                return (*parts[:depth], rest)
        return None
    return None  # an empty path: never configured (the config's pattern refuses it)


def _value(document: Document, keys: tuple[str, ...]) -> Any:
    node: Any = document
    for key in keys:
        node = node[key]
    return node


def _get(document: Document, parts: tuple[str, ...]) -> Any:
    """The value at `parts`, or _MISSING."""
    if len(parts) == 1:
        return document.get(parts[0], _MISSING)
    keys = _locate(document, parts)
    return _MISSING if keys is None else _value(document, keys)


def _owned_parent(document: Document, keys: tuple[str, ...], shared: set[int]) -> dict[str, Any]:
    """The object holding the last of `keys`, copying on the way any the document borrows."""
    node = document
    for key in keys[:-1]:
        child = node[key]
        if id(child) in shared:
            child = dict(child)
            node[key] = child
        node = child
    return node


def _set(
    document: Document, parts: tuple[str, ...], value: Any, shared: set[int], *, overwrite: bool
) -> bool:
    """Write `value` at `parts`, creating objects on the way; whether it was written.

    Without `overwrite` an existing field is kept, and so is a value that is not an object where
    the path needs one; with it both are replaced.
    """
    node = document
    for part in parts[:-1]:
        child = node.get(part, _MISSING)
        if type(child) is not dict:
            if child is not _MISSING and not overwrite:
                return False
            child = {}
            node[part] = child
        elif id(child) in shared:
            child = dict(child)
            node[part] = child
        node = child
    last = parts[-1]
    if not overwrite and last in node:
        return False
    node[last] = value
    return True


def _pop(document: Document, parts: tuple[str, ...], shared: set[int]) -> tuple[Any, Any]:
    """Remove the field at `parts`: (its value, a function that puts it back), or (_MISSING, …)."""
    keys = _locate(document, parts)
    if keys is None:
        return _MISSING, None
    parent = _owned_parent(document, keys, shared)
    value = parent.pop(keys[-1])

    def restore() -> None:
        parent[keys[-1]] = value

    return value, restore


def add_flag(document: Document, flag: str, shared: set[int] | None = None) -> None:
    """Append `flag` to the record's `log.flags` (once)."""
    shared = shared or set()
    record_log = document.get("log")
    if type(record_log) is not dict:
        # Only a drop_fields of `log` gets here: the flag still has to be seen.
        record_log = {}
        document["log"] = record_log
    elif id(record_log) in shared:
        record_log = dict(record_log)
        document["log"] = record_log
    flags = record_log.get("flags")
    if type(flags) is not list:
        record_log["flags"] = [flag]
        return
    if id(flags) in shared:
        flags = list(flags)
        record_log["flags"] = flags
    if flag not in flags:
        flags.append(flag)


def _as_text(value: Any) -> str | None:
    """A decoded value as the text of a message: itself if a string, else its JSON."""
    if type(value) is str:
        return value
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        return None


def _place(
    document: Document,
    fields: dict[str, Any],
    target: tuple[str, ...],
    context: _Context,
    *,
    overwrite: bool,
    bucket: str,
    flag: str,
) -> None:
    """Put decoded `fields` under `target` (or at the top), following the conflict rule."""
    if target:
        conflicts = _place_under(document, fields, target, context.shared, overwrite=overwrite)
    else:
        conflicts = _place_top(document, fields, overwrite=overwrite)
    if conflicts:
        # At the path they would have had, under the bucket: `json_conflicts.app.level`.
        node = document.get(bucket)
        if type(node) is not dict:
            node = {}
            document[bucket] = node
        for part in target:
            child = node.get(part)
            if type(child) is not dict:
                child = {}
                node[part] = child
            node = child
        node.update(conflicts)
        add_flag(document, flag, context.shared)


def _place_top(document: Document, fields: dict[str, Any], *, overwrite: bool) -> dict[str, Any]:
    conflicts: dict[str, Any] = {}
    for key, value in fields.items():
        head = key.partition(".")[0]
        if head in SHIPPER_FIELDS or head in CONFLICT_FIELDS:
            if key == "message" and overwrite:
                text = _as_text(value)
                if text is not None:
                    document["message"] = text
                    continue
            conflicts[key] = value
        elif overwrite or key not in document:
            document[key] = value
        else:
            conflicts[key] = value
    return conflicts


def _place_under(
    document: Document,
    fields: dict[str, Any],
    target: tuple[str, ...],
    shared: set[int],
    *,
    overwrite: bool,
) -> dict[str, Any]:
    keys = _locate(document, target)
    if keys is None:
        # The decoded object itself becomes the target: no copy, no loop over its keys.
        written = _set(document, target, fields, shared, overwrite=False)
        return {} if written else fields  # else: a value that is not an object is in the way
    holder = _value(document, keys)
    if type(holder) is not dict:
        return fields
    if id(holder) in shared:
        holder = dict(holder)
        _owned_parent(document, keys, shared)[keys[-1]] = holder
    conflicts: dict[str, Any] = {}
    for key, value in fields.items():
        if overwrite or key not in holder:
            holder[key] = value
        else:
            conflicts[key] = value
    return conflicts


# -------------------------------------------------------------------------------------------------
# decode_json and regex.


class _DecodeJson:
    name = "decode_json"

    def __init__(self, config: DecodeJsonConfig) -> None:
        self._field = _split(config.field)
        self._target = _split(config.target) if config.target else ()
        self._overwrite = config.overwrite_keys
        self._message_key = config.message_key
        self._flag = FLAG_JSON_DECODE_FAILED if config.flag_on_failure else None

    def run(self, document: Document, context: _Context) -> None:
        value = _get(document, self._field)
        decoded: Any = None
        if type(value) is str:
            text = value.lstrip()  # the same object when there is nothing to strip
            if text.startswith("{"):
                try:
                    decoded = orjson.loads(text)
                except orjson.JSONDecodeError:
                    decoded = None
        if type(decoded) is not dict:
            context.fail(document, self.name, self._flag)
            return
        key = self._message_key
        if key is not None and key in decoded:
            message = _as_text(decoded[key])
            if message is not None:
                del decoded[key]
                document["message"] = message
        if decoded:
            _place(
                document,
                decoded,
                self._target,
                context,
                overwrite=self._overwrite,
                bucket="json_conflicts",
                flag=FLAG_JSON_KEY_CONFLICT,
            )


class _Regex:
    name = "regex"

    def __init__(self, config: RegexParserConfig) -> None:
        self._field = _split(config.field)
        self._search = config.pattern.search
        self._target = _split(config.target) if config.target else ()
        self._flag = FLAG_REGEX_NO_MATCH if config.flag_on_failure else None

    def run(self, document: Document, context: _Context) -> None:
        value = _get(document, self._field)
        match = self._search(value) if type(value) is str else None
        if match is None:
            context.fail(document, self.name, self._flag)
            return
        fields = {key: text for key, text in match.groupdict().items() if text is not None}
        if fields:
            _place(
                document,
                fields,
                self._target,
                context,
                overwrite=False,
                bucket="regex_conflicts",
                flag=FLAG_REGEX_KEY_CONFLICT,
            )


# -------------------------------------------------------------------------------------------------
# timestamp and log_level.

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_NS = -62_135_596_800 * 10**9  # 0001-01-01T00:00:00Z
_END_NS = 253_402_300_800 * 10**9  # 10000-01-01T00:00:00Z, excluded
_DECIMAL = re.compile(r"([+-]?)([0-9]{1,30})(?:\.([0-9]*))?", re.ASCII)
# RFC 3339 as applications write it: "T" or a space, "." or "," before the fraction, and an
# offset with or without its colon; normalize_time then checks and converts what this matched.
_RFC3339_LOOSE = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:[.,]([0-9]{1,9}))?"
    r"(Z|z|[+-][0-9]{2}:?[0-9]{2})",
    re.ASCII,
)
_FRACTION_DIGITS = {"unix": 9, "unix_ms": 6, "unix_us": 3, "unix_ns": 0}

TimeParser = Callable[[Any], str | None]


def _format_ns(epoch_ns: int) -> str:
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    moment = _EPOCH + timedelta(seconds=seconds)
    return f"{moment.replace(tzinfo=None).isoformat(timespec='seconds')}.{nanos:09d}Z"


def _rfc3339(value: Any) -> str | None:
    if type(value) is not str:
        return None
    parts = _RFC3339_LOOSE.fullmatch(value.strip())
    if parts is None:
        return None
    date, clock, fraction, zone = parts.groups()
    seconds = _utc_seconds(date, clock, zone)
    if seconds is None:
        return None
    return f"{seconds}.{(fraction or '').ljust(9, '0')}Z"


@functools.lru_cache(maxsize=4096)
def _utc_seconds(date: str, clock: str, zone: str) -> str | None:
    """`YYYY-MM-DDTHH:MM:SS` in UTC, or None if no such time. Cached because the records of a
    second share it, and the zone arithmetic is most of a timestamp's cost."""
    if len(zone) == 5:  # +0100
        zone = f"{zone[:3]}:{zone[3:]}"
    normalized = normalize_time(f"{date}T{clock}{zone}")
    return None if normalized is None else normalized[:19]


def _epoch_parser(fraction_digits: int) -> TimeParser:
    """Parses a count of seconds (9 fraction digits), ms (6), µs (3) or ns (0) since the epoch."""
    scale = 10**fraction_digits

    def parse(value: Any) -> str | None:
        if type(value) is int:
            nanoseconds = value * scale
        else:
            if type(value) is float:
                # The float's shortest repr is the number the application wrote, as far as a
                # double holds it; Decimal turns an exponent into plain digits.
                text = format(Decimal(repr(value)), "f")  # nan and inf fail the match below
            elif type(value) is str:
                text = value.strip()
            else:
                return None
            number = _DECIMAL.fullmatch(text)
            if number is None:
                return None
            sign, whole, fraction = number.groups()
            # Integer arithmetic on the digits: no float ever rounds a nanosecond away.
            digits = (fraction or "")[:fraction_digits].ljust(fraction_digits, "0")
            nanoseconds = int(whole) * scale + (int(digits) if digits else 0)
            if sign == "-":
                nanoseconds = -nanoseconds
        if not _MIN_NS <= nanoseconds < _END_NS:
            return None
        return _format_ns(nanoseconds)

    return parse


def _layout_parser(layout: str) -> TimeParser:
    """Parses with a strptime layout; UTC unless it has a zone, this year unless it has one."""
    has_year = any(code in layout for code in ("%Y", "%y", "%G", "%c", "%x"))

    def parse(value: Any) -> str | None:
        if type(value) is not str:
            return None
        text = value.strip()
        try:
            if has_year:
                moment = datetime.strptime(text, layout)  # noqa: DTZ007 (zone handled below)
            else:
                # Parsing with the year in front (not setting it afterwards) keeps 29 February.
                now = datetime.now(UTC)
                moment = datetime.strptime(f"{now.year} {text}", f"%Y {layout}")  # noqa: DTZ007
                if (moment.replace(tzinfo=moment.tzinfo or UTC) - now).days >= 1:
                    moment = datetime.strptime(f"{now.year - 1} {text}", f"%Y {layout}")  # noqa: DTZ007
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            moment = moment.astimezone(UTC)
        except (ValueError, OverflowError):
            return None
        stamp = moment.replace(tzinfo=None).isoformat(timespec="seconds")
        return f"{stamp}.{moment.microsecond:06d}000Z"

    return parse


def _time_parser(time_format: str) -> TimeParser:
    if time_format == "rfc3339":
        return _rfc3339
    if time_format in _FRACTION_DIGITS:
        return _epoch_parser(_FRACTION_DIGITS[time_format])
    return _layout_parser(time_format)


def parse_time(value: Any, formats: Sequence[str]) -> str | None:
    """`value` read by the first of `formats` that can, as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`."""
    for time_format in formats:
        parsed = _time_parser(time_format)(value)
        if parsed is not None:
            return parsed
    return None


class _Timestamp:
    name = "timestamp"

    def __init__(self, config: TimestampConfig) -> None:
        self._field = _split(config.field)
        self._parsers = [_time_parser(time_format) for time_format in config.formats]
        self._flag = FLAG_TIMESTAMP_FAILED if config.flag_on_failure else None
        self._remove = config.remove_field and self._field != ("@timestamp",)

    def run(self, document: Document, context: _Context) -> None:
        value = _get(document, self._field)
        parsed = None
        if value is not _MISSING:
            for parse in self._parsers:
                parsed = parse(value)
                if parsed is not None:
                    break
        if parsed is None:
            context.fail(document, self.name, self._flag)
            return
        if self._remove:
            _pop(document, self._field, context.shared)
        previous = document.get("@timestamp")
        if previous is not None:
            _set(document, ("event", "created"), previous, context.shared, overwrite=False)
        document["@timestamp"] = parsed


class _LogLevel:
    name = "log_level"

    def __init__(self, config: LogLevelConfig) -> None:
        self._field = _split(config.field)
        self._remove = config.remove_field and self._field != ("log", "level")

    def run(self, document: Document, context: _Context) -> None:
        value = _get(document, self._field)
        # A level is a word or a number (pino and bunyan write 30, 50); an object is not one.
        if type(value) is str:
            level = value.strip().lower()
        elif type(value) in (int, float):
            level = str(value)
        else:
            return
        if not level:
            return
        if self._remove:
            _pop(document, self._field, context.shared)
        _set(document, ("log", "level"), level, context.shared, overwrite=True)


# -------------------------------------------------------------------------------------------------
# redact.

# The key of a secret: a word ending in one of these (`password`, `db_password`, `X-Api-Key`,
# `access_token`), at most 40 characters before it so a scan never backtracks through a long word.
_CREDENTIAL_NAME = r"[\w.-]{0,40}?(?:password|passwd|pwd|secret|api[_-]?key|token)"
_CREDENTIAL_KEY = re.compile(_CREDENTIAL_NAME, re.ASCII | re.IGNORECASE)

_PRESETS: dict[str, re.Pattern[str]] = {
    # 13 to 19 digits, single spaces or dashes between them allowed; Luhn decides.
    "credit_card": re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])", re.ASCII),
    # The token of a bearer credential (RFC 6750's b64token); 8 characters at least, so "the
    # bearer of" in prose stays.
    "bearer_token": re.compile(
        r"(?<![\w-])bearer[ \t]+(?P<secret>[A-Za-z0-9\-._~+/]{8,}=*)", re.ASCII | re.IGNORECASE
    ),
    "aws_access_key": re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
    # key=value, key: value, key => value and JSON ("key": "value", also escaped inside a JSON
    # string); the value only is replaced, its quotes kept.
    "password": re.compile(
        rf"(?<![\w.-]){_CREDENTIAL_NAME}(?P<close>\\?[\"']?)[ \t]*(?:[:=]>?|=>)[ \t]*"
        r"(?P<value>\"(?:[^\"\\\n]|\\.)*\"|\\\"(?:[^\"\\\n]|\\[^\"\n])*\\\"|'[^'\n]*'"
        r"|[^\s&,;\"'}\]{\[][^\s&,;\"'}\]]*)",
        re.ASCII | re.IGNORECASE,
    ),
    # Starts only where a run of local-part characters starts: linear on a long word without @.
    "email": re.compile(
        r"(?<![\w.%+-])[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])",
        re.ASCII,
    ),
}
# Cheap tests that skip a scan when the text cannot hold a match (most lines hold none): a
# substring test costs a fraction of a regex scan. Case-insensitive presets test the lowercased
# text, made once per string.
_NEEDLES: dict[str, tuple[str, ...]] = {
    "aws_access_key": ("AKIA", "ASIA"),
    "email": ("@",),
}
_FOLDED_NEEDLES: dict[str, tuple[str, ...]] = {
    "bearer_token": ("bearer",),
    "password": ("pass", "pwd", "secret", "key", "token"),
}
_CARD_SEPARATOR = re.compile(r"[ -]")


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


class _Redactor:
    """Replaces secrets in text and in decoded values; `hits` counts the replacements."""

    def __init__(self, config: RedactConfig) -> None:
        self.hits = 0
        self.replacement = config.replacement
        self._keys = "password" in config.presets
        # A whole match is replaced by a template (re's own loop, no Python call per match);
        # backslashes are its only special characters.
        whole = config.replacement.replace("\\", "\\\\")
        rules: list[
            tuple[re.Pattern[str], Callable[[re.Match[str]], str] | str, tuple[str, ...], bool]
        ] = []
        replacers: dict[str, Callable[[re.Match[str]], str] | str] = {
            "credit_card": self._card,
            "bearer_token": self._secret_group,
            "aws_access_key": whole,
            "password": self._password,
            "email": whole,
        }
        for preset in config.presets:
            replace = replacers[preset]
            if preset in _FOLDED_NEEDLES:
                rules.append((_PRESETS[preset], replace, _FOLDED_NEEDLES[preset], True))
            else:
                rules.append((_PRESETS[preset], replace, _NEEDLES.get(preset, ()), False))
        for pattern in config.patterns:
            custom = self._secret_group if "secret" in pattern.groupindex else whole
            rules.append((pattern, custom, (), False))
        self._rules = rules

    def text(self, text: str) -> str:
        folded: str | None = None
        for pattern, replace, needles, fold in self._rules:
            if needles:
                haystack = text
                if fold:
                    if folded is None:
                        folded = text.lower()
                    haystack = folded
                for needle in needles:  # a plain loop: any() with a generator costs twice this
                    if needle in haystack:
                        break
                else:
                    continue
            replaced, count = pattern.subn(replace, text)
            if count:
                if type(replace) is str:
                    self.hits += count  # callables count what they really replace
                text = replaced
                folded = None
        return text

    def value(self, value: Any, key: str) -> Any:
        """`value` (of a field named `key`) redacted: itself when nothing matched."""
        if self._keys and self._is_secret_scalar(key, value):
            self.hits += 1
            return self.replacement
        if type(value) is str:
            return self.text(value)
        if type(value) not in _NESTED:
            return value
        before = self.hits
        # Iterative, and copying: decoded JSON may be 1024 levels deep (past Python's recursion
        # limit), and a value may be borrowed by other records (copied, never changed in place).
        root: Any = dict(value) if type(value) is dict else list(value)
        stack: list[Any] = [root]
        while stack:
            node = stack.pop()
            entries = list(node.items()) if type(node) is dict else list(enumerate(node))
            for name, item in entries:
                if type(name) is str and self._keys and self._is_secret_scalar(name, item):
                    node[name] = self.replacement
                    self.hits += 1
                elif type(item) is str:
                    node[name] = self.text(item)
                elif type(item) in _NESTED:
                    child = dict(item) if type(item) is dict else list(item)
                    node[name] = child
                    stack.append(child)
        return root if self.hits != before else value

    def _is_secret_scalar(self, key: str, value: Any) -> bool:
        """Whether `value` is what a key named like a secret holds (and not redacted yet)."""
        return (
            type(value) in (str, int, float)
            and value not in ("", self.replacement)
            and _CREDENTIAL_KEY.fullmatch(key) is not None
        )

    def _secret_group(self, match: re.Match[str]) -> str:
        start, end = match.span("secret")
        if start < 0:  # the group did not take part in this match
            return match.group()
        self.hits += 1
        text, offset = match.string, match.start()
        return text[offset:start] + self.replacement + text[end : match.end()]

    def _password(self, match: re.Match[str]) -> str:
        value = match["value"]
        inner = value.strip("\\\"'")
        if not inner or match.string.startswith(
            self.replacement, match.start("value") + value.find(inner)
        ):
            return match.group()  # empty, or redacted already (a second redact step)
        self.hits += 1
        head = match.string[match.start() : match.start("value")]
        replacement = self.replacement
        if value.startswith('\\"') or (value[0] != '"' and match["close"] == '\\"'):
            return f'{head}\\"{replacement}\\"'
        if value[0] in "\"'":
            return f"{head}{value[0]}{replacement}{value[0]}"
        if match["close"] == '"':
            # A JSON key with a bare value (a number, true): quoted, the JSON stays valid.
            return f'{head}"{replacement}"'
        return head + replacement

    def _card(self, match: re.Match[str]) -> str:
        text = match.group()
        if _luhn(text.replace(" ", "").replace("-", "")):
            self.hits += 1
            return self.replacement
        # A card number beside another group of digits ("4111 1111 1111 1111 2 items") makes a
        # run that fails Luhn: look for the longest run of whole groups that passes.
        groups = [(part.start(), part.end()) for part in re.finditer(r"[0-9]+", text)]
        if len(groups) < 2:
            return text
        spans = []
        for first in range(len(groups)):
            count = 0
            for last in range(first, len(groups)):
                count += groups[last][1] - groups[last][0]
                if 13 <= count <= 19:
                    spans.append((count, first, last))
        for _, first, last in sorted(spans, reverse=True):
            start, end = groups[first][0], groups[last][1]
            if _luhn(_CARD_SEPARATOR.sub("", text[start:end])):
                self.hits += 1
                return text[:start] + self.replacement + text[end:]
        return text


class _Redact:
    name = "redact"

    def __init__(self, config: RedactConfig) -> None:
        self._fields = [_split(field) for field in config.fields]
        self.redactor = _Redactor(config)

    def run(self, document: Document, context: _Context) -> None:
        for parts in self._fields:
            if len(parts) == 1:
                keys: tuple[str, ...] | None = parts if parts[0] in document else None
            else:
                keys = _locate(document, parts)
            if keys is None:
                continue
            before = self.redactor.hits
            redacted = self.redactor.value(_value(document, keys), keys[-1])
            if self.redactor.hits != before:
                _owned_parent(document, keys, context.shared)[keys[-1]] = redacted

    def blank(self, document: Document, context: _Context) -> None:
        """Replace every listed field whole: what is left when redacting it failed."""
        for parts in self._fields:
            keys = _locate(document, parts)
            if keys is not None:
                _owned_parent(document, keys, context.shared)[keys[-1]] = self.redactor.replacement


# -------------------------------------------------------------------------------------------------
# add_fields, drop_fields, rename_fields.


class _AddFields:
    name = "add_fields"

    def __init__(self, config: AddFieldsConfig) -> None:
        self._fields = [(_split(path), value) for path, value in config.fields.items()]
        self._overwrite = config.overwrite

    def run(self, document: Document, context: _Context) -> None:
        for parts, value in self._fields:
            _set(document, parts, value, context.shared, overwrite=self._overwrite)


class _DropFields:
    name = "drop_fields"

    def __init__(self, config: DropFieldsConfig) -> None:
        self._fields = [_split(field) for field in config.fields]

    def run(self, document: Document, context: _Context) -> None:
        for parts in self._fields:
            _pop(document, parts, context.shared)


class _RenameFields:
    name = "rename_fields"

    def __init__(self, config: RenameFieldsConfig) -> None:
        self._fields = [
            (_split(source), _split(target))
            for source, target in config.fields.items()
            if source != target
        ]
        self._overwrite = config.overwrite

    def run(self, document: Document, context: _Context) -> None:
        shared = context.shared
        for source, target in self._fields:
            if _get(document, source) is _MISSING:
                continue
            if not self._overwrite and _get(document, target) is not _MISSING:
                context.fail(document, self.name, FLAG_RENAME_CONFLICT)
                continue
            value, restore = _pop(document, source, shared)
            if not _set(document, target, value, shared, overwrite=self._overwrite):
                restore()  # a value that is not an object is in the target's way
                context.fail(document, self.name, FLAG_RENAME_CONFLICT)


_STEPS: dict[type[Any], Callable[[Any], _Step]] = {
    DecodeJsonConfig: _DecodeJson,
    RegexParserConfig: _Regex,
    TimestampConfig: _Timestamp,
    LogLevelConfig: _LogLevel,
    RedactConfig: _Redact,
    AddFieldsConfig: _AddFields,
    DropFieldsConfig: _DropFields,
    RenameFieldsConfig: _RenameFields,
}


def _build(config: ProcessorConfig) -> _Step:
    step = config.step
    return _STEPS[type(step)](step)


# -------------------------------------------------------------------------------------------------
# The chain.


def _collect_ids(value: Any, ids: set[int]) -> None:
    """Add the id of every object and list inside `value` (itself included)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            ids.add(id(node))
            stack.extend(node.values())
        elif type(node) is list:
            ids.add(id(node))
            stack.extend(node)


def _serialisable(document: Document) -> Document:
    """A copy of `document` orjson can write, flagged with what changed: objects and lists past
    _MAX_DEPTH levels replaced by a text, lone surrogates (not UTF-8) by "?"."""
    flags: list[str] = []
    root: Document = dict(document)
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        entries = list(node.items()) if type(node) is dict else list(enumerate(node))
        for name, item in entries:
            if type(item) is str:
                if not item.isascii():
                    fixed = item.encode("utf-8", "replace").decode("utf-8")
                    if fixed != item:
                        node[name] = fixed
                        flags.append(FLAG_UNICODE_REPLACED)
            elif type(item) in _NESTED:
                if depth >= _MAX_DEPTH:
                    node[name] = _TOO_DEEP
                    flags.append(FLAG_NESTING_TRUNCATED)
                    continue
                child = dict(item) if type(item) is dict else list(item)
                node[name] = child
                stack.append((child, depth + 1))
    for flag in sorted(set(flags)):
        add_flag(root, flag)
    return root


class Processors:
    """A source's processing steps, compiled once; `apply` runs them on a record group.

    False when there are no steps: the follower then skips `apply` and the encoders splice each
    record from the group's columns (the fast path).
    """

    def __init__(
        self, steps: Sequence[ProcessorConfig], *, source: str, telemetry: Telemetry
    ) -> None:
        self._steps: list[_Step] = [_build(step) for step in steps]
        self._source = source
        self._telemetry = telemetry
        self._redactors = [step.redactor for step in self._steps if isinstance(step, _Redact)]
        # add_fields values are shared by every record: written into only after a copy.
        self._config_ids: set[int] = set()
        for step in steps:
            if step.add_fields is not None:
                for value in step.add_fields.fields.values():
                    _collect_ids(value, self._config_ids)
        self._reported: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._steps)

    def apply(self, group: RecordGroup) -> None:
        """Build each record's document, run the steps on it, and keep the NDJSON lines in
        `group.documents` (and the new @timestamp in `group.timestamps`)."""
        if not self._steps:
            return
        shared = set(self._config_ids)
        if group.enrichment is not None:
            _collect_ids(group.enrichment.document, shared)
        for attrs in group.attrs.values():
            shared.add(id(attrs))
        context = _Context(shared)
        hits_before = sum(redactor.hits for redactor in self._redactors)
        steps = self._steps
        timestamps = group.timestamps
        dumps = orjson.dumps
        newline = orjson.OPT_APPEND_NEWLINE
        documents: list[bytes] = []
        append = documents.append
        for index in range(len(group)):
            document = build_document(group, index)
            for step in steps:
                try:
                    step.run(document, context)
                except Exception as error:  # noqa: BLE001 (a bug in one step must not stop a source)
                    self._report(step.name, error)
                    if isinstance(step, _Redact):
                        step.blank(document, context)  # fail closed: never ship it unredacted
                    context.fail(document, step.name, FLAG_PROCESSING_ERROR)
            try:
                line = dumps(document, option=newline)
            except orjson.JSONEncodeError:
                line = self._serialise_anyway(group, index, document, context)
            append(line)
            timestamp = document.get("@timestamp")
            if type(timestamp) is str and timestamp is not timestamps[index]:
                timestamps[index] = timestamp
        group.documents = documents
        self._count(context, sum(redactor.hits for redactor in self._redactors) - hits_before)

    def _serialise_anyway(
        self, group: RecordGroup, index: int, document: Document, context: _Context
    ) -> bytes:
        """The line of a document orjson refused: too deeply nested (decoded JSON) or holding a
        lone surrogate (only a source that let one through); what it cannot write is replaced."""
        try:
            return orjson.dumps(_serialisable(document), option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError as error:
            # Nothing should get here (config values are checked to serialise): ship the record
            # as read, redacted all the same, rather than lose it.
            self._report("serialise", error)
            context.failures["serialise"] = context.failures.get("serialise", 0) + 1
            plain = build_document(group, index)
            for step in self._steps:
                if isinstance(step, _Redact):
                    try:
                        step.run(plain, _Context(context.shared))
                    except Exception:  # noqa: BLE001 (fail closed, as in apply)
                        step.blank(plain, context)
            add_flag(plain, FLAG_PROCESSING_ERROR)
            return orjson.dumps(_serialisable(plain), option=orjson.OPT_APPEND_NEWLINE)

    def _report(self, name: str, error: Exception) -> None:
        # Once per step, and the exception's type only: its message may quote the record.
        if name not in self._reported:
            self._reported.add(name)
            log.error(
                "processor %s failed on a record (%s); such records ship flagged %s",
                name,
                type(error).__name__,
                FLAG_PROCESSING_ERROR,
            )

    def _count(self, context: _Context, redactions: int) -> None:
        telemetry, source = self._telemetry, self._source
        for processor, count in context.failures.items():
            telemetry.inc(
                "shipper_processing_failures_total", count, source=source, processor=processor
            )
        if redactions:
            telemetry.inc("shipper_redactions_total", redactions, source=source)
