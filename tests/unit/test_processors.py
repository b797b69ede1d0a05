"""Tests for the processing steps (shipper.processing.processors) on groups decoded from real
json-file lines, and for the encoders emitting the documents they build."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from shipper.config import ConfigError, ProcessorConfig, parse_config
from shipper.model import Batch, Chunk, LogFile, RecordGroup
from shipper.processing import processors as processors_module
from shipper.processing.metadata import MetadataOptions, build_enrichment
from shipper.processing.processors import Processors, parse_time
from shipper.sinks.ecs import encode_batch, encode_plain, encode_spliced
from shipper.sources.docker_json import decode_chunk
from shipper.telemetry.counters import Telemetry
from tests.unit.test_ecs import hostile_string

READ_TIME = "2030-01-01T00:00:00.000000000Z"
DOCKER_TIME = "2024-05-06T07:08:09.5Z"
DOCKER_TIME_NORMALIZED = "2024-05-06T07:08:09.500000000Z"
FILE = LogFile(
    source="docker",
    container_id="c0ffee",
    path="/var/lib/docker/containers/c0ffee/c0ffee-json.log",
    handle="h1",
    fingerprint="fp",
)
REDACTED = "[REDACTED]"


def json_file_line(
    message: str, *, time: str = DOCKER_TIME, attrs: dict[str, str] | None = None
) -> bytes:
    entry: dict[str, Any] = {"log": message + "\n", "stream": "stdout"}
    if attrs is not None:
        entry["attrs"] = attrs
    entry["time"] = time
    return orjson.dumps(entry) + b"\n"


def group_of(*messages: str, **line_options: Any) -> RecordGroup:
    data = b"".join(json_file_line(message, **line_options) for message in messages)
    return decode_chunk(Chunk(FILE, 0, data), read_time=READ_TIME)


def processors(*steps: dict[str, Any], telemetry: Telemetry | None = None) -> Processors:
    return Processors(
        [ProcessorConfig.model_validate(step) for step in steps],
        source="docker",
        telemetry=telemetry or Telemetry(),
    )


def run(steps: list[dict[str, Any]], *messages: str, **line_options: Any) -> list[dict[str, Any]]:
    """The documents shipped for `messages` after `steps`, as dicts."""
    group = group_of(*messages, **line_options)
    processors(*steps).apply(group)
    assert group.documents is not None
    assert len(group.documents) == len(group)
    return [orjson.loads(line) for line in group.documents]


def one(steps: list[dict[str, Any]], message: str, **line_options: Any) -> dict[str, Any]:
    return run(steps, message, **line_options)[0]


def flags(document: dict[str, Any]) -> list[str]:
    return list(document.get("log", {}).get("flags", []))


# --- the chain ----------------------------------------------------------------------------------


def test_no_steps_is_false_and_leaves_the_group_alone() -> None:
    empty = processors()
    assert not empty
    group = group_of("hello")
    empty.apply(group)
    assert group.documents is None
    assert processors({"drop_fields": {"fields": ["stream"]}})


def test_documents_are_the_plain_documents_when_steps_change_nothing() -> None:
    group = group_of("a", "b", '{"c": 1}')
    expected = encode_plain(group, range(len(group)))
    processors({"drop_fields": {"fields": ["absent"]}}).apply(group)
    assert group.documents is not None
    assert b"".join(group.documents) == expected


def test_steps_run_in_order() -> None:
    message = '{"ts": "2024-01-02T03:04:05Z"}'
    decode = {"decode_json": {}}
    timestamp = {"timestamp": {"field": "ts"}}
    first = one([decode, timestamp], message)
    assert first["@timestamp"] == "2024-01-02T03:04:05.000000000Z"
    # The other way round the field does not exist yet when the timestamp step runs.
    second = one([timestamp, decode], message)
    assert second["@timestamp"] == DOCKER_TIME_NORMALIZED
    assert flags(second) == ["timestamp_failed"]
    renamed = one(
        [{"rename_fields": {"fields": {"a": "b", "b": "c"}}}, {"add_fields": {"fields": {"a": 1}}}],
        "x",
    )
    assert renamed["a"] == 1
    assert "b" not in renamed


def test_flags_join_the_decoders_own_and_are_not_repeated() -> None:
    document = one(
        [{"regex": {"pattern": "(?P<x>nope)"}}, {"regex": {"pattern": "(?P<y>never)"}}],
        "text",
        time="not a time",
    )
    assert flags(document) == ["invalid_time", "regex_no_match"]
    assert document["@timestamp"] == READ_TIME


def test_metadata_shared_by_records_is_never_changed() -> None:
    config = {
        "Name": "/web-1",
        "Config": {"Image": "nginx", "Labels": {"app": "web", "tier": "front"}},
        "State": {"StartedAt": "2024-05-06T07:00:00Z"},
    }
    enrichment = build_enrichment("c0ffee", config, MetadataOptions(host_name="node-1"))
    before = orjson.dumps(enrichment.document)
    group = group_of("one", "two", attrs={"tag": "web"})
    group.enrichment = enrichment
    attrs_before = orjson.dumps(list(group.attrs.values()))
    steps = processors(
        {"add_fields": {"fields": {"labels": {"team": "a"}}}},
        {"drop_fields": {"fields": ["container.labels.tier", "docker.attrs.tag", "host.name"]}},
        {"rename_fields": {"fields": {"container.labels.app": "service.name"}}},
        {"add_fields": {"fields": {"labels.env": "prod"}}},
        {"redact": {"fields": ["container", "labels"], "patterns": ["web|team"]}},
    )
    steps.apply(group)
    steps.apply(group)  # and again: the second run sees the same borrowed objects
    assert orjson.dumps(enrichment.document) == before
    assert orjson.dumps(list(group.attrs.values())) == attrs_before
    assert group.documents is not None
    document = orjson.loads(group.documents[1])
    assert document["service"] == {"name": "web"}
    assert document["container"]["labels"] == {}
    assert document["container"]["name"] == REDACTED + "-1"
    assert document["host"] == {}  # dropping a field leaves its parent, as in Filebeat
    assert document["docker"]["attrs"] == {}
    assert document["labels"] == {"team": "a", "env": "prod"}
    add_fields_value = steps._steps[0]._fields[0][1]  # type: ignore[attr-defined]
    assert add_fields_value == {"team": "a"}


def test_counters() -> None:
    telemetry = Telemetry()
    group = group_of("password=hunter2", '{"a": 1}', "plain")
    processors(
        {"redact": {"presets": ["password"]}},
        {"decode_json": {}},
        {"regex": {"pattern": r"(?P<word>\w+)=", "flag_on_failure": False}},
        telemetry=telemetry,
    ).apply(group)
    value = telemetry.value
    assert value("shipper_redactions_total", source="docker") == 1
    failures = "shipper_processing_failures_total"
    assert value(failures, source="docker", processor="decode_json") == 2
    assert value(failures, source="docker", processor="regex") == 2  # counted, not flagged
    assert group.documents is not None
    assert flags(orjson.loads(group.documents[1])) == []


# --- dotted paths -------------------------------------------------------------------------------


def test_dotted_paths_read_nested_and_dotted_keys_and_write_nested() -> None:
    document = one(
        [
            {"decode_json": {}},
            {"log_level": {"field": "a.b.level"}},
            {"rename_fields": {"fields": {"http.method": "http.request.method"}}},
            {"add_fields": {"fields": {"service.name": "shop", "service.env.tier": 1}}},
        ],
        '{"a": {"b": {"level": "WARN"}}, "http.method": "GET"}',
    )
    assert document["log"]["level"] == "warn"
    assert document["http"] == {"request": {"method": "GET"}}
    assert "http.method" not in document
    assert document["service"] == {"name": "shop", "env": {"tier": 1}}


# --- decode_json --------------------------------------------------------------------------------


def test_decode_json_puts_keys_at_the_top() -> None:
    document = one([{"decode_json": {}}], '  {"user": {"id": 7}, "ok": true, "n": null}  ')
    assert document["user"] == {"id": 7}
    assert document["ok"] is True
    assert document["n"] is None
    assert document["message"] == '  {"user": {"id": 7}, "ok": true, "n": null}  '
    assert flags(document) == []


@pytest.mark.parametrize(
    "message",
    ["plain text", "[1, 2]", '"a string"', "{not json", '{"a": 1} trailing', "", "42", "{"],
)
def test_decode_json_flags_what_is_not_a_json_object(message: str) -> None:
    document = one([{"decode_json": {}}], message)
    assert document["message"] == message
    assert flags(document) == ["json_decode_failed"]
    quiet = one([{"decode_json": {"flag_on_failure": False}}], message)
    assert flags(quiet) == []


def test_decode_json_message_key() -> None:
    steps = [{"decode_json": {"message_key": "msg"}}]
    assert one(steps, '{"msg": "hello", "a": 1}')["message"] == "hello"
    assert "msg" not in one(steps, '{"msg": "hello", "a": 1}')
    assert one(steps, '{"msg": {"b": [1, 2]}}')["message"] == '{"b":[1,2]}'
    missing = one(steps, '{"a": 1}')
    assert missing["message"] == '{"a": 1}'
    assert missing["a"] == 1


def test_decode_json_field_and_target() -> None:
    document = one(
        [
            {"regex": {"pattern": r"payload=(?P<payload>\{.*\})"}},
            {"decode_json": {"field": "payload", "target": "app.data"}},
        ],
        'payload={"x": 1, "y": {"z": 2}}',
    )
    assert document["app"] == {"data": {"x": 1, "y": {"z": 2}}}


def test_decode_json_conflicts_at_the_top_are_kept_and_flagged() -> None:
    message = (
        '{"service": "new", "fresh": 1, "container": {"id": "x"}, "@timestamp": "t",'
        ' "log.level": "info", "message": "m", "json_conflicts": 5}'
    )
    steps: list[dict[str, Any]] = [{"add_fields": {"fields": {"service": "old"}}}]
    document = one([*steps, {"decode_json": {}}], message)
    assert document["service"] == "old"
    assert document["fresh"] == 1
    assert document["container"] == {"id": "c0ffee"}
    assert document["@timestamp"] == DOCKER_TIME_NORMALIZED
    assert document["message"] == message
    assert document["json_conflicts"] == {
        "service": "new",
        "container": {"id": "x"},
        "@timestamp": "t",
        "log.level": "info",
        "message": "m",
        "json_conflicts": 5,
    }
    assert flags(document) == ["json_key_conflict"]
    # overwrite_keys replaces the record's own fields and `message`, never shipper's others.
    overwritten = one([*steps, {"decode_json": {"overwrite_keys": True}}], message)
    assert overwritten["service"] == "new"
    assert overwritten["message"] == "m"
    assert overwritten["container"] == {"id": "c0ffee"}
    assert set(overwritten["json_conflicts"]) == {
        "container",
        "@timestamp",
        "log.level",
        "json_conflicts",
    }


def test_decode_json_conflicts_under_a_target() -> None:
    steps: list[dict[str, Any]] = [{"add_fields": {"fields": {"app.level": "old", "app.x": 0}}}]
    document = one([*steps, {"decode_json": {"target": "app"}}], '{"level": "new", "y": 2}')
    assert document["app"] == {"level": "old", "x": 0, "y": 2}
    assert document["json_conflicts"] == {"app": {"level": "new"}}
    assert flags(document) == ["json_key_conflict"]
    overwritten = one(
        [*steps, {"decode_json": {"target": "app", "overwrite_keys": True}}], '{"level": "new"}'
    )
    assert overwritten["app"] == {"level": "new", "x": 0}
    occupied = one(
        [{"add_fields": {"fields": {"app": "text"}}}, {"decode_json": {"target": "app"}}],
        '{"a": 1}',
    )
    assert occupied["app"] == "text"
    assert occupied["json_conflicts"] == {"app": {"a": 1}}


# --- regex --------------------------------------------------------------------------------------


def test_regex_named_groups_become_fields() -> None:
    pattern = r"(?P<method>[A-Z]+) (?P<path>\S+)(?: (?P<status>\d{3}))?"
    document = one([{"regex": {"pattern": pattern}}], "10.0.0.1 - GET /index.html")
    # search, not fullmatch; the status group took no part and is left out
    assert document["method"] == "GET"
    assert document["path"] == "/index.html"
    assert "status" not in document
    targeted = one([{"regex": {"pattern": pattern, "target": "http"}}], "POST /a 201")
    assert targeted["http"] == {"method": "POST", "path": "/a", "status": "201"}


def test_regex_no_match_and_non_string_field() -> None:
    step = {"regex": {"pattern": r"(?P<n>\d+)"}}
    assert flags(one([step], "no digits")) == ["regex_no_match"]
    document = one(
        [{"decode_json": {}}, {"regex": {"pattern": r"(?P<n>\d+)", "field": "v"}}], '{"v": 5}'
    )
    assert flags(document) == ["regex_no_match"]
    quiet = one([{"regex": {"pattern": r"(?P<n>\d+)", "flag_on_failure": False}}], "x")
    assert flags(quiet) == []


def test_regex_conflicts() -> None:
    document = one(
        [{"regex": {"pattern": r"(?P<stream>\w+) (?P<message>\w+) (?P<user>\w+)"}}],
        "err boom bob",
    )
    assert document["stream"] == "stdout"
    assert document["message"] == "err boom bob"
    assert document["user"] == "bob"
    assert document["regex_conflicts"] == {"stream": "err", "message": "boom"}
    assert flags(document) == ["regex_key_conflict"]


# --- timestamp ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "formats", "expected"),
    [
        ("2024-01-02T03:04:05Z", ["rfc3339"], "2024-01-02T03:04:05.000000000Z"),
        ("2024-01-02T03:04:05.1Z", ["rfc3339"], "2024-01-02T03:04:05.100000000Z"),
        ("2024-01-02T03:04:05.123456789Z", ["rfc3339"], "2024-01-02T03:04:05.123456789Z"),
        ("2024-01-02T03:04:05.123+01:00", ["rfc3339"], "2024-01-02T02:04:05.123000000Z"),
        ("2024-01-02 03:04:05.5-0230", ["rfc3339"], "2024-01-02T05:34:05.500000000Z"),
        ("2024-01-02t03:04:05z", ["rfc3339"], "2024-01-02T03:04:05.000000000Z"),
        ("2024-01-02 03:04:05,250+0000", ["rfc3339"], "2024-01-02T03:04:05.250000000Z"),
        ("2024-01-01T00:30:00+01:00", ["rfc3339"], "2023-12-31T23:30:00.000000000Z"),
        (" 2024-01-02T03:04:05Z ", ["rfc3339"], "2024-01-02T03:04:05.000000000Z"),
        (1704164645, ["unix"], "2024-01-02T03:04:05.000000000Z"),
        (1704164645.25, ["unix"], "2024-01-02T03:04:05.250000000Z"),
        ("1704164645.123456789", ["unix"], "2024-01-02T03:04:05.123456789Z"),
        ("1704164645.1234567891", ["unix"], "2024-01-02T03:04:05.123456789Z"),
        (1704164645123, ["unix_ms"], "2024-01-02T03:04:05.123000000Z"),
        ("1704164645123.5", ["unix_ms"], "2024-01-02T03:04:05.123500000Z"),
        (1704164645123456, ["unix_us"], "2024-01-02T03:04:05.123456000Z"),
        (1704164645123456789, ["unix_ns"], "2024-01-02T03:04:05.123456789Z"),
        ("1704164645123456789", ["unix_ns"], "2024-01-02T03:04:05.123456789Z"),
        (-1, ["unix"], "1969-12-31T23:59:59.000000000Z"),
        ("-0.5", ["unix"], "1969-12-31T23:59:59.500000000Z"),
        (0, ["unix"], "1970-01-01T00:00:00.000000000Z"),
        # seconds first: a count of milliseconds is past year 9999 as seconds, so unix_ms reads it
        (1704164645123, ["unix", "unix_ms"], "2024-01-02T03:04:05.123000000Z"),
        (1704164645, ["unix", "unix_ms"], "2024-01-02T03:04:05.000000000Z"),
        ("not a time", ["rfc3339", "unix"], None),
        ("02/Jan/2024:03:04:05 +0100", ["%d/%b/%Y:%H:%M:%S %z"], "2024-01-02T02:04:05.000000000Z"),
        ("2024-01-02 03:04:05.123456", ["%Y-%m-%d %H:%M:%S.%f"], "2024-01-02T03:04:05.123456000Z"),
        ("2024-01-02 03:04:05", ["rfc3339", "%Y-%m-%d %H:%M:%S"], "2024-01-02T03:04:05.000000000Z"),
        ("2024-01-02T03:04:05", ["rfc3339"], None),  # no zone: rfc3339 refuses to guess
        ("2024-02-30T03:04:05Z", ["rfc3339"], None),
        ("2024-01-02T03:04:05.1234567891Z", ["rfc3339"], None),
        (True, ["unix", "rfc3339"], None),
        (None, ["unix"], None),
        ({"a": 1}, ["unix", "rfc3339"], None),
        ([1], ["unix"], None),
        ("NaN", ["unix"], None),
        ("inf", ["unix"], None),
        (float("nan"), ["unix"], None),
        (float("inf"), ["unix_ms"], None),
        (1e300, ["unix"], None),
        ("1e9", ["unix"], None),
        ("", ["unix", "rfc3339", "%Y"], None),
        ("١٧٠٤١٦٤٦٤٥", ["unix"], None),  # digits, but not ASCII ones
        (253402300800, ["unix"], None),  # year 10000
        (-62135596801, ["unix"], None),  # before year 1
        (253402300799, ["unix"], "9999-12-31T23:59:59.000000000Z"),
        ("9" * 40, ["unix_ns"], None),
        (2**63 - 1, ["unix_ns"], "2262-04-11T23:47:16.854775807Z"),
    ],
)
def test_parse_time(value: object, formats: list[str], expected: str | None) -> None:
    assert parse_time(value, formats) == expected


def test_parse_time_without_a_year_takes_the_current_one() -> None:
    now = datetime.now(UTC)
    parsed = parse_time("Jan  2 03:04:05", ["%b %d %H:%M:%S"])
    assert parsed is not None
    assert parsed[4:] == "-01-02T03:04:05.000000000Z"
    assert int(parsed[:4]) in (now.year, now.year - 1)


def test_timestamp_sets_timestamp_and_keeps_dockers_time_in_event_created() -> None:
    group = group_of('{"ts": "2024-01-02T03:04:05.123456789+01:00"}', '{"ts": "bad"}', "plain")
    telemetry = Telemetry()
    processors(
        {"decode_json": {"flag_on_failure": False}},
        {"timestamp": {"field": "ts", "remove_field": True}},
        telemetry=telemetry,
    ).apply(group)
    assert group.documents is not None
    good, bad, plain = (orjson.loads(line) for line in group.documents)
    assert good["@timestamp"] == "2024-01-02T02:04:05.123456789Z"
    assert good["event"] == {"created": DOCKER_TIME_NORMALIZED}
    assert "ts" not in good
    assert group.timestamps == [
        "2024-01-02T02:04:05.123456789Z",
        DOCKER_TIME_NORMALIZED,
        DOCKER_TIME_NORMALIZED,
    ]
    assert bad["@timestamp"] == DOCKER_TIME_NORMALIZED
    assert bad["ts"] == "bad"  # a field that was not read stays
    assert "event" not in bad
    assert flags(bad) == ["timestamp_failed"]
    assert flags(plain) == ["timestamp_failed"]  # the field is missing
    assert (
        telemetry.value("shipper_processing_failures_total", source="docker", processor="timestamp")
        == 2
    )


def test_a_second_timestamp_step_keeps_the_first_event_created() -> None:
    document = one(
        [
            {"decode_json": {}},
            {"timestamp": {"field": "a", "formats": ["unix"]}},
            {"timestamp": {"field": "b", "formats": ["unix"]}},
        ],
        '{"a": 1, "b": 2}',
    )
    assert document["@timestamp"] == "1970-01-01T00:00:02.000000000Z"
    assert document["event"] == {"created": DOCKER_TIME_NORMALIZED}


# --- log_level ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(" WARNING ", "warning"), ("Info", "info"), (30, "30"), (1.5, "1.5"), ("", None)],
)
def test_log_level(value: object, expected: str | None) -> None:
    document = one(
        [{"decode_json": {}}, {"log_level": {"field": "level", "remove_field": True}}],
        orjson.dumps({"level": value}).decode(),
    )
    assert document["log"].get("level") == expected
    assert ("level" in document) is (expected is None)


@pytest.mark.parametrize("message", ['{"level": {"a": 1}}', '{"level": null}', '{"other": 1}'])
def test_log_level_leaves_what_is_not_a_level(message: str) -> None:
    document = one([{"decode_json": {}}, {"log_level": {"field": "level"}}], message)
    assert "level" not in document["log"]
    assert flags(document) == []


# --- redact -------------------------------------------------------------------------------------


def redact(message: str, *presets: str) -> str:
    result: str = one([{"redact": {"presets": list(presets)}}], message)["message"]
    return result


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("card 4111111111111111 ok", f"card {REDACTED} ok"),
        ("card 4111 1111 1111 1111 ok", f"card {REDACTED} ok"),
        ("card 4111-1111-1111-1111.", f"card {REDACTED}."),
        ("amex 378282246310005", f"amex {REDACTED}"),
        ("visa13 4222222222222", f"visa13 {REDACTED}"),
        ("card=5555555555554444&x=1", f"card={REDACTED}&x=1"),
        # a card beside another group of digits still goes
        ("paid 4111 1111 1111 1111 2 items", f"paid {REDACTED} 2 items"),
        # Luhn-invalid: an order number, not a card
        ("order 4111111111111112 shipped", "order 4111111111111112 shipped"),
        ("order 1234-5678-9012-3456", "order 1234-5678-9012-3456"),
        # too short, too long, or separated by more than one space
        ("id 411111111111", "id 411111111111"),
        ("id 41111111111111111111", "id 41111111111111111111"),
        ("4111  1111  1111  1111", "4111  1111  1111  1111"),
        ("at 2024-05-06 07:08:09", "at 2024-05-06 07:08:09"),
    ],
)
def test_redact_credit_card(message: str, expected: str) -> None:
    assert redact(message, "credit_card") == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "Authorization: Bearer eyJhbGciOi.eyJzdWIi.SflKxwRJSM",
            f"Authorization: Bearer {REDACTED}",
        ),
        (
            "curl -H 'authorization: bearer abcdef123456=='",
            f"curl -H 'authorization: bearer {REDACTED}'",
        ),
        ("the bearer of bad news", "the bearer of bad news"),
    ],
)
def test_redact_bearer_token(message: str, expected: str) -> None:
    assert redact(message, "bearer_token") == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("key AKIAIOSFODNN7EXAMPLE used", f"key {REDACTED} used"),
        ("id=ASIAIOSFODNN7EXAMPLE", f"id={REDACTED}"),
        ("XAKIAIOSFODNN7EXAMPLE", "XAKIAIOSFODNN7EXAMPLE"),
        ("AKIAIOSFODNN7EXAMPLE1", "AKIAIOSFODNN7EXAMPLE1"),
        ("akiaiosfodnn7example", "akiaiosfodnn7example"),
    ],
)
def test_redact_aws_access_key(message: str, expected: str) -> None:
    assert redact(message, "aws_access_key") == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("login password=hunter2 ok", f"login password={REDACTED} ok"),
        ("PASSWORD: hunter2", f"PASSWORD: {REDACTED}"),
        ("db_password = s3cr3t;x", f"db_password = {REDACTED};x"),
        (
            '{"password": "hu\\"nter2", "user": "bob"}',
            f'{{"password": "{REDACTED}", "user": "bob"}}',
        ),
        ('{"api_key":12345}', f'{{"api_key":"{REDACTED}"}}'),
        ("?user=bob&passwd=x1&next=/", f"?user=bob&passwd={REDACTED}&next=/"),
        ("pwd='a b c' rest", f"pwd='{REDACTED}' rest"),
        ("X-Api-Key: abc123", f"X-Api-Key: {REDACTED}"),
        ("apikey=abc api-key=def", f"apikey={REDACTED} api-key={REDACTED}"),
        ("client_secret=abc", f"client_secret={REDACTED}"),
        ("access_token: abc", f"access_token: {REDACTED}"),
        ('{\\"token\\": \\"abc\\"}', f'{{\\"token\\": \\"{REDACTED}\\"}}'),
        ("opts = {:password => 'x'}", f"opts = {{:password => '{REDACTED}'}}"),
        # the value only: keys, prose and empty values stay
        ("passwords are stored hashed", "passwords are stored hashed"),
        ("password_hash=abc", "password_hash=abc"),
        ("tokens=5", "tokens=5"),
        ('{"password": ""}', '{"password": ""}'),
        # an object or a list under a secret key is left whole (the key rule redacts it once
        # decoded): replacing its first character would break the JSON
        ('{"token": {"a": 1}}', '{"token": {"a": 1}}'),
        ("password:\nnext line", "password:\nnext line"),
    ],
)
def test_redact_password(message: str, expected: str) -> None:
    assert redact(message, "password") == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("mail bob.smith+tag@mail.example.co.uk now", f"mail {REDACTED} now"),
        ("<alice@example.com>", f"<{REDACTED}>"),
        ("user@localhost", "user@localhost"),
        ("@handle and a@b", "@handle and a@b"),
    ],
)
def test_redact_email(message: str, expected: str) -> None:
    assert redact(message, "email") == expected


def test_redact_custom_patterns_whole_match_or_secret_group() -> None:
    document = one(
        [
            {
                "redact": {
                    "patterns": [r"ssn \d{3}-\d{2}-\d{4}", r"session=(?P<secret>[0-9a-f]+)(;|$)"],
                    "replacement": "***",
                }
            }
        ],
        "ssn 123-45-6789 session=deadbeef; session=cafe",
    )
    assert document["message"] == "*** session=***; session=***"


def test_redact_secret_group_that_took_no_part_replaces_nothing() -> None:
    document = one([{"redact": {"patterns": [r"id=(?:(?P<secret>\d+)|none)"]}}], "id=none id=42")
    assert document["message"] == f"id=none id={REDACTED}"


def test_redact_nested_values_and_secret_keys() -> None:
    message = orjson.dumps(
        {
            "req": {
                "headers": {"Authorization": "Bearer abcdefgh12345", "X-Api-Key": "k"},
                "cards": ["4111111111111111", 4111111111111111, "x"],
                "auth": {"password": "hunter2", "token": 12345, "secret": None, "pwd": True},
            },
            "other": "4111111111111111",
        }
    ).decode()
    telemetry = Telemetry()
    group = group_of(message)
    processors(
        {"decode_json": {}},
        {"redact": {"fields": ["req"], "presets": ["bearer_token", "password", "credit_card"]}},
        telemetry=telemetry,
    ).apply(group)
    assert group.documents is not None
    document = orjson.loads(group.documents[0])
    assert document["req"] == {
        "headers": {"Authorization": f"Bearer {REDACTED}", "X-Api-Key": REDACTED},
        "cards": [REDACTED, 4111111111111111, "x"],
        "auth": {"password": REDACTED, "token": REDACTED, "secret": None, "pwd": True},
    }
    assert document["other"] == "4111111111111111"  # not a listed field
    assert telemetry.value("shipper_redactions_total", source="docker") == 5


def test_redact_a_listed_field_named_like_a_secret() -> None:
    document = one(
        [{"decode_json": {}}, {"redact": {"fields": ["db.password"], "presets": ["password"]}}],
        '{"db": {"password": "hunter2"}}',
    )
    assert document["db"] == {"password": REDACTED}


def test_redact_twice_changes_nothing_more() -> None:
    telemetry = Telemetry()
    group = group_of('password=a token: b {"secret": "c"}')
    step = {"redact": {"presets": ["password"]}}
    processors(step, step, telemetry=telemetry).apply(group)
    assert group.documents is not None
    assert orjson.loads(group.documents[0])["message"] == (
        f'password={REDACTED} token: {REDACTED} {{"secret": "{REDACTED}"}}'
    )
    assert telemetry.value("shipper_redactions_total", source="docker") == 3


def test_redact_before_decode_covers_the_decoded_fields() -> None:
    document = one(
        [{"redact": {"presets": ["password", "email"]}}, {"decode_json": {"message_key": "msg"}}],
        '{"msg": "hi bob@example.com", "password": "hunter2"}',
    )
    assert document["message"] == f"hi {REDACTED}"
    assert document["password"] == REDACTED


def test_redact_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: object, text: str) -> str:
        raise RuntimeError("boom " + text)

    monkeypatch.setattr(processors_module._Redactor, "text", broken)
    document = one([{"redact": {"presets": ["email"]}}], "mail bob@example.com")
    assert document["message"] == REDACTED
    assert flags(document) == ["processing_error"]


def test_redact_presets_are_linear_on_long_lines() -> None:
    # Each of these would take minutes with a backtracking pattern; pytest's timeout guards.
    longest = [
        "a" * 300_000,
        "1 " * 150_000,
        "1" * 300_000,
        "a@" * 150_000,
        "password" * 40_000,
        "a." * 150_000 + "@",
        "x@" + "a" * 300_000,
        "bearer " + "a" * 300_000,
    ]
    presets = ["credit_card", "bearer_token", "aws_access_key", "password", "email"]
    for message in longest:
        assert one([{"redact": {"presets": presets}}], message)["message"] is not None


# --- add_fields, drop_fields, rename_fields -----------------------------------------------------


def test_add_fields() -> None:
    steps: list[dict[str, Any]] = [
        {"decode_json": {}},
        {"add_fields": {"fields": {"service.name": "shop", "env": "prod", "log.level": "info"}}},
    ]
    document = one(steps, '{"env": "dev", "service": {"version": "1"}}')
    assert document["service"] == {"version": "1", "name": "shop"}
    assert document["env"] == "dev"  # overwrite: false keeps an existing value
    assert document["log"]["level"] == "info"
    overwrite = {"add_fields": {"fields": {"env": "prod", "service.name": "x"}, "overwrite": True}}
    replaced = one([{"decode_json": {}}, overwrite], '{"env": "dev", "service": "flat"}')
    assert replaced["env"] == "prod"
    assert replaced["service"] == {"name": "x"}
    kept = one([{"decode_json": {}}, steps[1]], '{"service": "flat"}')
    assert kept["service"] == "flat"


def test_drop_fields() -> None:
    document = one(
        [
            {"decode_json": {}},
            {"drop_fields": {"fields": ["a.b", "missing", "missing.deeper", "stream", "agent"]}},
        ],
        '{"a": {"b": 1, "c": 2}}',
    )
    assert document["a"] == {"c": 2}
    assert "stream" not in document
    assert "missing" not in document


def test_rename_fields() -> None:
    steps: list[dict[str, Any]] = [
        {"decode_json": {}},
        {
            "rename_fields": {
                "fields": {"msg": "message", "lvl": "log.level", "a.b": "x.y", "no": "n"}
            }
        },
    ]
    document = one(steps, '{"msg": "m", "lvl": "info", "a": {"b": 1}}')
    assert document["message"] == '{"msg": "m", "lvl": "info", "a": {"b": 1}}'
    assert document["msg"] == "m"  # message exists: a conflict, both stay
    assert document["log"]["level"] == "info"
    assert document["x"] == {"y": 1}
    assert document["a"] == {}
    assert flags(document) == ["rename_conflict"]
    overwrite = [steps[0], {"rename_fields": {"fields": {"msg": "message"}, "overwrite": True}}]
    replaced = one(overwrite, '{"msg": "m"}')
    assert replaced["message"] == "m"
    assert "msg" not in replaced
    assert flags(replaced) == []
    blocked = one([steps[0], {"rename_fields": {"fields": {"a": "s.t"}}}], '{"a": 1, "s": "flat"}')
    assert blocked["a"] == 1
    assert blocked["s"] == "flat"
    assert flags(blocked) == ["rename_conflict"]


# --- config validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step",
    [
        {"decode_json": {"target": "container"}},
        {"decode_json": {"target": "log.extra"}},
        {"decode_json": {"target": "json_conflicts"}},
        {"decode_json": {"target": "a..b"}},
        {"decode_json": {"message_key": ""}},
        {"regex": {"pattern": "(?P<a>x)", "target": "kubernetes"}},
        {"timestamp": {"field": "ts", "formats": ["iso8601"]}},
        {"redact": {"presets": ["email"], "replacement": "\ud800"}},
        {"add_fields": {"fields": {"container.name": "x"}}},
        {"add_fields": {"fields": {"event.dataset": "x"}}},
        {"add_fields": {"fields": {"big": 2**70}}},
        {"add_fields": {"fields": {"set": {1, 2}}}},
        {"drop_fields": {"fields": ["@timestamp"]}},
        {"rename_fields": {"fields": {"@timestamp": "t"}}},
        {"rename_fields": {"fields": {"a": "@timestamp"}}},
        {"rename_fields": {"fields": {"a": "host.name"}}},
    ],
)
def test_config_refuses(step: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="config_"):
        ProcessorConfig.model_validate(step)


@pytest.mark.parametrize(
    "step",
    [
        {"decode_json": {"target": "app.json"}},
        {"timestamp": {"field": "ts", "formats": ["unix_ms", "%d/%b/%Y:%H:%M:%S %z"]}},
        {"add_fields": {"fields": {"log.level": "info", "service.name": "x"}}},
        {"drop_fields": {"fields": ["agent", "message"]}},
        {"rename_fields": {"fields": {"msg": "message", "level": "log.level", "log.offset": "o"}}},
    ],
)
def test_config_accepts(step: dict[str, Any]) -> None:
    ProcessorConfig.model_validate(step)


def test_config_errors_name_shippers_field_not_the_value(tmp_path: Any) -> None:
    text = f"""
state_dir: {tmp_path}
sources:
  docker:
    type: docker_json
    processors:
      - add_fields:
          fields:
            container.secretvalue123: x
outputs:
  out:
    type: console
"""
    with pytest.raises(ConfigError) as error:
        parse_config(text, "<test>")
    assert "`container` is written by shipper itself" in str(error.value)
    assert "secretvalue123" not in str(error.value)


# --- encoders -----------------------------------------------------------------------------------


def test_encoders_emit_the_documents_byte_for_byte() -> None:
    group = group_of('{"a": 1}', "two", "three", time="bad time")
    plain_before = encode_plain(group, [0, 1, 2])
    assert encode_spliced(group, [0, 1, 2]) == plain_before
    processors({"decode_json": {}}).apply(group)
    assert group.documents is not None
    for indices in ([0, 1, 2], [2, 0], [], [1, 1]):
        expected = b"".join(group.documents[i] for i in indices)
        assert encode_plain(group, indices) == expected
        assert encode_spliced(group, indices) == expected
    other = group_of("untouched")
    batch = Batch([group, other], [[2, 0], [0]])
    assert encode_batch(batch) == group.documents[2] + group.documents[0] + encode_plain(other, [0])
    assert encode_plain(group, [0, 1, 2]) != plain_before
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in group.documents)


# --- hostile input ------------------------------------------------------------------------------

CHAIN: list[dict[str, Any]] = [
    {"redact": {"presets": ["credit_card", "bearer_token", "aws_access_key", "password", "email"]}},
    {"decode_json": {"message_key": "msg"}},
    {"regex": {"pattern": r"(?P<word>\w+)=(?P<value>\S*)", "target": "kv"}},
    {"timestamp": {"field": "ts", "formats": ["rfc3339", "unix", "unix_ms", "%Y %H"]}},
    {"log_level": {"field": "level"}},
    {"redact": {"fields": ["message", "kv", "data", "ts"], "presets": ["password", "email"]}},
    {"add_fields": {"fields": {"data.added": [1, {"x": "y"}]}}},
    {"rename_fields": {"fields": {"data": "payload", "level": "lvl"}}},
    {"drop_fields": {"fields": ["kv.word", "payload.added"]}},
]

HOSTILE_MESSAGES = [
    "{" * 5000,
    '{"a":' * 1000 + "1" + "}" * 1000,  # parses (1024 levels), too deep to serialise
    '{"data":' + '{"a":' * 300 + "1" + "}" * 300 + "}",
    '{"data": [' + "[" * 500 + "]" * 500 + "]}",
    '{"n": 123456789012345678901234567890, "ts": 123456789012345678901234567890}',
    '{"ts": 1e400}',
    '{"ts": -1e308, "level": 1e308}',
    '{"ts": "NaN", "level": "NaN"}',
    '{"ts": "Infinity"}',
    '{"s": "\\ud800"}',  # a lone surrogate escape
    '{"s": "\\udc00\\ud800"}',
    '{"msg": null, "level": null, "ts": null}',
    '{"msg": [1, {"a": "password=x"}], "level": [], "ts": {}}',
    '{"ts": true, "level": false, "data": "password=1"}',
    '{"": 1, ".": 2, "a..b": 3, "@timestamp": 4, "log": 5}',
    '{"message": {"nested": true}}',
    '{"data": {"password": ' + '{"a":' * 300 + "1" + "}" * 300 + "}}",
    "\x00\x01\x1b[31m\u2028\ufeff",
    "4111 1111 1111 1111 " * 1000,
    "password=" * 1000,
    "a=" * 10_000,
    '{"ts": "2024-01-02T03:04:05.999999999999Z"}',
    '{"ts": "9999-12-31T23:59:59-01:00"}',
    '{"ts": "0001-01-01T00:00:00+01:00"}',
    '{"ts": "' + "1" * 5000 + '"}',
    "",
]


@pytest.mark.parametrize("message", HOSTILE_MESSAGES)
def test_hostile_input_ships(message: str) -> None:
    group = group_of(message)
    processors(*CHAIN).apply(group)
    assert group.documents is not None
    document = orjson.loads(group.documents[0])
    assert document["@timestamp"] == group.timestamps[0]
    assert document["container"] == {"id": "c0ffee"}


def test_too_deep_documents_are_cut_and_flagged() -> None:
    document = one([{"decode_json": {}}], '{"a":' * 1000 + "1" + "}" * 1000)
    assert "nesting_truncated" in flags(document)
    depth, node = 0, document["a"]
    while isinstance(node, dict):
        depth, node = depth + 1, node["a"]
    assert node == "[nested too deeply]"
    assert 100 < depth < 254


@pytest.mark.parametrize("seed", range(20))
def test_random_hostile_groups_never_raise(seed: int) -> None:
    rng = random.Random(seed)
    messages = []
    for _ in range(20):
        roll = rng.random()
        if roll < 0.3:
            messages.append(hostile_string(rng))
        elif roll < 0.6:
            value = {hostile_string(rng, max_pieces=3): hostile_string(rng) for _ in range(4)}
            value["ts"] = rng.choice([hostile_string(rng), rng.random() * 10 ** rng.randint(0, 30)])
            value["msg"] = rng.choice([hostile_string(rng), None, {"x": [1]}])
            messages.append(orjson.dumps(value).decode())
        else:
            secret, domain = hostile_string(rng), hostile_string(rng)
            messages.append(f"password={secret} {rng.randrange(10**18)} a@{domain}.com")
    group = group_of(*messages)
    processors(*CHAIN).apply(group)
    assert group.documents is not None
    assert len(group.documents) == len(messages)
    for line, timestamp in zip(group.documents, group.timestamps, strict=True):
        assert orjson.loads(line)["@timestamp"] == timestamp
    indices = list(range(len(group)))
    assert encode_plain(group, indices) == encode_spliced(group, indices)


def test_lone_surrogates_from_a_source_are_replaced_not_fatal() -> None:
    # No decoder lets one through, but a processor must not be the place where a record dies.
    group = RecordGroup(file=FILE, start=0, end=10)
    group.messages.append("bad \ud800 password=hunter2")
    group.streams.append("stdout")
    group.timestamps.append(DOCKER_TIME_NORMALIZED)
    group.offsets.append(0)
    processors(
        {"redact": {"presets": ["password"]}}, {"regex": {"pattern": r"(?P<bad>\S+ \S+)"}}
    ).apply(group)
    assert group.documents is not None
    document = orjson.loads(group.documents[0])
    assert document["message"] == f"bad ? password={REDACTED}"
    assert document["bad"] == "bad ?"
    assert flags(document) == ["unicode_replaced"]


def test_redact_replacement_is_literal_text() -> None:
    replacement = r"<\g<0>\1 $1>"
    document = one(
        [
            {
                "redact": {
                    "presets": ["email", "password"],
                    "patterns": ["x+"],
                    "replacement": replacement,
                }
            }
        ],
        "a@example.com xx password=p",
    )
    assert document["message"] == f"{replacement} {replacement} password={replacement}"
