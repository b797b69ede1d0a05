"""`shipper setup` / `shipper test-output` internals: the template and policy bodies, and what
they do to tests/fake_elasticsearch.py through the real client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from elasticsearch import AsyncElasticsearch

from shipper.config import (
    ConsoleOutputConfig,
    ElasticsearchOutputConfig,
    FileOutputConfig,
    parse_config,
)
from shipper.model import Enrichment, LogFile, RecordGroup
from shipper.sinks.ecs import build_document
from shipper.sinks.es_setup import (
    DATED_POLICY_NAME,
    POLICY_NAME,
    TEMPLATE_PRIORITY,
    Plan,
    SetupError,
    check_output,
    parse_delete_after,
    plan_setup,
    record_mappings,
    run_setup,
    shipping_names,
    target_patterns,
)
from tests.fake_elasticsearch import FakeElasticsearch

ADMIN_PASSWORD = "admin-pw-s3cr3t-1"
WRITER_PASSWORD = "writer-pw-s3cr3t-2"
BUILTIN_LOGS_PRIORITY = 100  # Elastic's `logs-*-*` template


@pytest.fixture
def es() -> Iterator[FakeElasticsearch]:
    with FakeElasticsearch() as server:
        server.add_user("admin", ADMIN_PASSWORD, superuser=True)
        server.add_user(
            "writer",
            WRITER_PASSWORD,
            indices={"logs-docker-*": {"create_doc", "auto_configure"}},
        )
        yield server
    assert server.internal_errors == []


def output(options: dict[str, Any]) -> ElasticsearchOutputConfig:
    text = yaml.safe_dump(
        {
            "sources": {"docker": {"type": "docker_json"}},
            "outputs": {
                "es": {"type": "elasticsearch", "hosts": ["http://127.0.0.1:9"], **options}
            },
        }
    )
    config = parse_config(text, "es.yaml", environ={}).outputs["es"]
    assert isinstance(config, ElasticsearchOutputConfig)
    return config


def admin(es: FakeElasticsearch, **options: Any) -> ElasticsearchOutputConfig:
    return output({"hosts": [es.url], "username": "admin", "password": ADMIN_PASSWORD, **options})


def writer(es: FakeElasticsearch, **options: Any) -> ElasticsearchOutputConfig:
    return output({"hosts": [es.url], "username": "writer", "password": WRITER_PASSWORD, **options})


def flat_types(properties: dict[str, Any], prefix: str = "") -> dict[str, str]:
    types: dict[str, str] = {}
    for name, spec in properties.items():
        if "properties" in spec:
            types.update(flat_types(spec["properties"], f"{prefix}{name}."))
        else:
            types[f"{prefix}{name}"] = spec["type"]
    return types


class Lines:
    def __init__(self) -> None:
        self.said: list[str] = []
        self.warned: list[str] = []

    def say(self, line: str) -> None:
        self.said.append(line)

    def warn(self, line: str) -> None:
        self.warned.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.said + self.warned)


async def setup(config: ElasticsearchOutputConfig, delete_after: str | None = "30d") -> Lines:
    lines = Lines()
    await run_setup("es", config, delete_after=delete_after, say=lines.say, warn=lines.warn)
    return lines


# --- bodies --------------------------------------------------------------------------------------


def test_mappings_follow_the_record_shape() -> None:
    mappings = record_mappings()
    types = flat_types(mappings["properties"])
    assert types["@timestamp"] == "date_nanos"  # the 9 fraction digits survive
    assert types["event.created"] == "date_nanos"
    assert types["message"] == "match_only_text"
    for name in (
        "stream",
        "container.id",
        "container.name",
        "container.image.name",
        "host.name",
        "kubernetes.namespace",
        "kubernetes.pod.name",
        "kubernetes.pod.uid",
        "kubernetes.container.name",
        "log.file.path",
        "log.file.fingerprint",
        "log.flags",
        "agent.type",
        "agent.version",
        "ecs.version",
    ):
        assert types[name] == "keyword", name
    assert types["log.offset"] == "long"
    # Keys chosen by whoever starts a container: one field each, however many keys.
    assert types["container.labels"] == "flattened"
    assert types["docker.attrs"] == "flattened"
    assert mappings["dynamic"] is True  # processors' fields
    assert mappings["date_detection"] is False


def test_default_data_stream_plan() -> None:
    plan = plan_setup(output({}), delete_after="30d")
    assert plan.data_stream
    assert plan.create == "logs-docker-default"
    assert plan.template_name == "shipper-logs-docker"
    template = plan.template
    assert template["index_patterns"] == ["logs-docker-*"]
    assert template["priority"] == TEMPLATE_PRIORITY > BUILTIN_LOGS_PRIORITY
    assert template["data_stream"] == {}
    assert template["template"]["settings"]["index"]["lifecycle"] == {"name": POLICY_NAME}
    assert template["template"]["mappings"] == record_mappings()
    assert plan.policy_name == POLICY_NAME
    assert plan.policy is not None
    phases = plan.policy["policy"]["phases"]
    assert phases["hot"]["actions"]["rollover"] == {
        "max_primary_shard_size": "50gb",
        "max_age": "30d",
    }
    assert phases["delete"]["min_age"] == "30d"
    assert "delete" in phases["delete"]["actions"]


def test_delete_after_is_configurable_or_off() -> None:
    assert parse_delete_after("30d") == "30d"
    assert parse_delete_after(" 12H ") == "12h"
    assert parse_delete_after("never") is None
    for bad in ("5 days", "0d", "-1d", "1w", ""):
        with pytest.raises(ValueError, match="30d or 12h"):
            parse_delete_after(bad)
    policy = plan_setup(output({}), delete_after="7d").policy
    assert policy is not None
    assert policy["policy"]["phases"]["delete"]["min_age"] == "7d"
    kept = plan_setup(output({}), delete_after=None).policy
    assert kept is not None
    assert set(kept["policy"]["phases"]) == {"hot"}  # rollover only, nothing deleted


def test_dated_index_plan_has_no_data_stream_and_no_rollover() -> None:
    plan = plan_setup(output({"index": "logs-docker-%Y.%m.%d"}), delete_after="30d")
    assert not plan.data_stream
    assert "data_stream" not in plan.template
    assert plan.template["index_patterns"] == ["logs-docker-*.*.*"]
    assert plan.template_name == "shipper-logs-docker-index"
    assert plan.create is None  # one index a day, created on first write
    assert plan.policy_name == DATED_POLICY_NAME
    assert plan.policy is not None
    # ILM rollover needs an alias on plain indices: dated ones roll by name, ILM only deletes.
    assert set(plan.policy["policy"]["phases"]) == {"delete"}
    never = plan_setup(output({"index": "logs-docker-%Y.%m.%d"}), delete_after=None)
    assert never.policy is None
    assert "lifecycle" not in never.template["template"]["settings"]["index"]


def test_single_index_plan_has_no_lifecycle() -> None:
    plan = plan_setup(output({"index": "app-logs"}), delete_after="30d")
    assert plan.policy is None  # deleting by age would delete it all at once
    assert plan.create == "app-logs"
    assert plan.template["index_patterns"] == ["app-logs"]
    assert "lifecycle" not in plan.template["template"]["settings"]["index"]


@pytest.mark.parametrize(
    ("options", "patterns", "names"),
    [
        ({}, ["logs-docker-*"], ["logs-docker-default"]),
        ({"data_stream": "shipper-logs"}, ["shipper-logs"], ["shipper-logs"]),
        (
            {
                "data_stream": "logs-{kubernetes.namespace}-default",
                "allowed_indices": ["logs-prod-default", "logs-dev-default"],
                "fallback_index": "logs-other-default",
            },
            ["logs-*-default"],
            ["logs-prod-default", "logs-dev-default", "logs-other-default"],
        ),
        (
            {
                "index": "apps-{container.labels.team}-%Y.%m.%d",
                "allowed_indices": ["apps-*"],
                "fallback_index": "misc-%Y.%m",
            },
            ["apps-*-*.*.*", "misc-*.*"],
            ["apps-*", "misc-*.*"],
        ),
    ],
)
def test_patterns_and_names(options: dict[str, Any], patterns: list[str], names: list[str]) -> None:
    config = output(options)
    assert target_patterns(config) == patterns
    assert shipping_names(config) == names


def test_a_target_that_starts_with_a_field_gets_no_catch_all_template() -> None:
    config = output(
        {
            "data_stream": "{container.labels.stream}",
            "allowed_indices": ["logs-*"],
            "fallback_index": "logs-docker-default",
        }
    )
    with pytest.raises(SetupError, match="fixed beginning"):
        plan_setup(config, delete_after="30d")


# --- against the fake, with the real client ------------------------------------------------------


async def test_setup_installs_policy_template_and_data_stream(es: FakeElasticsearch) -> None:
    lines = await setup(admin(es))
    assert es.ilm_policies[POLICY_NAME]["policy"]["phases"]["hot"]["actions"]["rollover"]
    template = es.templates["shipper-logs-docker"]
    assert template["priority"] == TEMPLATE_PRIORITY
    assert "data_stream" in template
    stream = es.data_streams["logs-docker-default"]
    assert stream.template == "shipper-logs-docker"  # ours wins over the built-in `logs`
    backing = es.indices[stream.write_index]
    assert backing.mappings["@timestamp"] == "date_nanos"
    assert backing.mappings["container.labels"] == "flattened"
    assert backing.settings["index"]["lifecycle"]["name"] == POLICY_NAME
    assert any("Elasticsearch 8.19" in line for line in lines.said)
    assert any("created" in line for line in lines.said)
    assert lines.warned == []


async def test_setup_twice_changes_nothing(es: FakeElasticsearch) -> None:
    await setup(admin(es))
    writes = len(es.requests)
    lines = await setup(admin(es))
    again = es.requests[writes:]
    assert [r.method for r in again if r.method in ("PUT", "DELETE")] == []
    assert es.ilm_policies[POLICY_NAME]["version"] == 1
    assert any("ILM policy shipper-logs: unchanged" in line for line in lines.said)
    assert any("index template shipper-logs-docker: unchanged" in line for line in lines.said)
    assert any("data stream logs-docker-default: exists" in line for line in lines.said)


async def test_setup_updates_what_changed(es: FakeElasticsearch) -> None:
    await setup(admin(es))
    lines = await setup(admin(es), delete_after="7d")
    assert es.ilm_policies[POLICY_NAME]["version"] == 2
    assert es.ilm_policies[POLICY_NAME]["policy"]["phases"]["delete"]["min_age"] == "7d"
    assert any("ILM policy shipper-logs: updated" in line for line in lines.said)
    lines = await setup(admin(es), delete_after=None)
    assert set(es.ilm_policies[POLICY_NAME]["policy"]["phases"]) == {"hot"}


async def test_records_index_into_the_set_up_data_stream(es: FakeElasticsearch) -> None:
    await setup(admin(es))
    group = RecordGroup(
        file=LogFile("docker", "c0ffee", "/var/lib/docker/containers/c0ffee/c-json.log", "h", "fp"),
        start=0,
        end=200,
    )
    labels = {f"team_{n}": str(n) for n in range(50)} | {"app_kubernetes_io/name": "web"}
    document = {
        "container": {
            "id": "c0ffee",
            "name": "web",
            "image": {"name": "nginx:1"},
            "labels": labels,
        },
        "docker": {
            "container": {"created": "2024-05-01T12:00:00Z", "started": "0001-01-01T00:00:00Z"}
        },
        "host": {"name": "h"},
        "agent": {"type": "shipper", "version": "0.1.0"},
        "ecs": {"version": "8.11.0"},
    }
    group.enrichment = Enrichment(document, orjson.dumps(document)[1:-1])
    for n, time in enumerate(("2024-05-01T12:00:00.002469134Z", "2024-05-01T12:00:00.999999999Z")):
        group.messages.append(f"line {n}")
        group.timestamps.append(time)
        group.streams.append("stdout")
        group.offsets.append(100 * n)
    group.attrs[1] = {"com.docker.compose.service": "web", "tag": "web-1"}
    group.flags[1] = ["truncated"]
    sources = [build_document(group, i) for i in range(2)]
    sources[1]["event"] = {"created": "2024-05-01T12:00:00.000000001Z"}
    sources[1]["log"]["level"] = "warn"
    body = b"".join(
        b'{"create":{"_index":"logs-docker-default"}}\n' + orjson.dumps(s) + b"\n" for s in sources
    )
    client = AsyncElasticsearch(
        hosts=[es.url], basic_auth=("admin", ADMIN_PASSWORD), node_class="httpxasync", max_retries=0
    )
    try:
        answer = await client.bulk(operations=body)
    finally:
        await client.close()
    assert answer["errors"] is False, answer
    stored = es.documents("logs-docker-default")
    assert [d.source["@timestamp"] for d in stored] == [s["@timestamp"] for s in sources]
    mappings = es.indices[stored[0].index].mappings
    assert not [field for field in mappings if field.startswith("container.labels.")]
    assert not [field for field in mappings if field.startswith("docker.attrs.")]


async def test_dated_index_setup_creates_nothing_but_the_template(es: FakeElasticsearch) -> None:
    lines = await setup(admin(es, index="logs-docker-%Y.%m.%d"))
    template = es.templates["shipper-logs-docker-index"]
    assert "data_stream" not in template
    assert template["template"]["settings"]["index"]["lifecycle"]["name"] == DATED_POLICY_NAME
    assert DATED_POLICY_NAME in es.ilm_policies
    assert es.data_streams == {}
    assert not [name for name in es.indices if name.startswith("logs-docker")]
    assert "indices of this output are created on first write, with this template" in lines.said
    lines = await setup(admin(es, index="logs-docker-%Y.%m.%d"), delete_after=None)
    assert any("--delete-after never" in line for line in lines.said)


async def test_an_existing_data_stream_is_left_with_a_rollover_hint(es: FakeElasticsearch) -> None:
    es.create_data_stream("logs-docker-default")  # made earlier by the built-in `logs` template
    lines = await setup(admin(es))
    assert es.data_streams["logs-docker-default"].generation == 1  # not rolled over by setup
    [warning] = lines.warned
    assert "made by index template logs" in warning
    assert "POST logs-docker-default/_rollover" in warning


async def test_missing_setup_privileges_are_named_and_nothing_changes(
    es: FakeElasticsearch,
) -> None:
    es.add_user("half", "half-pw-123456", cluster={"manage_index_templates"})
    config = output({"hosts": [es.url], "username": "half", "password": "half-pw-123456"})
    with pytest.raises(SetupError) as caught:
        await setup(config)
    message = str(caught.value)
    assert "`manage_ilm`" in message
    assert "`create_index`, `view_index_metadata` on `logs-docker-default`" in message
    assert "manage_index_templates" not in message  # held
    assert "shipper-logs-docker" not in es.templates
    assert es.ilm_policies == {}


async def test_wrong_password_is_a_clear_error_without_the_secret(es: FakeElasticsearch) -> None:
    config = output({"hosts": [es.url], "username": "admin", "password": "not-the-password"})
    with pytest.raises(SetupError, match=r"refuses the credentials \(401") as caught:
        await setup(config)
    assert "not-the-password" not in str(caught.value)


async def test_setup_without_security(es: FakeElasticsearch) -> None:
    with FakeElasticsearch(version="9.1.3") as open_cluster:
        lines = await setup(output({"hosts": [open_cluster.url]}))
        assert "shipper-logs-docker" in open_cluster.templates
        assert open_cluster.data_streams["logs-docker-default"].template == "shipper-logs-docker"
    assert any("security is off" in line for line in lines.said)
    assert any("Elasticsearch 9.1.3" in line for line in lines.said)


async def test_a_plan_is_pure(es: FakeElasticsearch) -> None:
    before = len(es.requests)
    plan = plan_setup(admin(es), delete_after="30d")
    assert isinstance(plan, Plan)
    assert len(es.requests) == before


# --- test-output ---------------------------------------------------------------------------------


async def check(config: Any) -> tuple[bool, Lines]:
    lines = Lines()
    ok = await check_output("es", config, say=lines.say, warn=lines.warn)
    return ok, lines


async def test_a_shipping_only_user_can_ship(es: FakeElasticsearch) -> None:
    ok, lines = await check(writer(es))
    assert ok, lines.text
    assert any("no `monitor`" in line for line in lines.warned)
    assert any("for `shipper setup` only" in line and "manage_ilm" in line for line in lines.said)
    assert any("`create_doc`, `auto_configure`" in line for line in lines.said)
    # Nothing but GET / and _has_privileges was sent.
    assert [(r.method, r.path) for r in es.requests] == [
        ("GET", "/"),
        ("POST", "/_security/user/_has_privileges"),
    ]


async def test_missing_shipping_privileges_are_named(es: FakeElasticsearch) -> None:
    es.add_user("reader", "reader-pw-1234", cluster={"monitor"}, indices={"logs-*": {"read"}})
    config = output({"hosts": [es.url], "username": "reader", "password": "reader-pw-1234"})
    ok, lines = await check(config)
    assert not ok
    assert (
        "missing index privilege `create_doc`, `auto_configure` on `logs-docker-default`"
        in lines.said
    )
    assert any("cluster docker-cluster, Elasticsearch 8.19.2" in line for line in lines.said)


async def test_dated_targets_are_checked_on_their_pattern(es: FakeElasticsearch) -> None:
    ok, lines = await check(writer(es, index="logs-docker-%Y.%m.%d"))
    assert ok, lines.text
    assert any("`logs-docker-*.*.*`" in line for line in lines.said)
    ok, lines = await check(writer(es, index="other-%Y.%m.%d"))
    assert not ok


async def test_unreachable_cluster_fails_with_where(es: FakeElasticsearch) -> None:
    with pytest.raises(SetupError, match=r"cannot reach Elasticsearch at http://127\.0\.0\.1:9"):
        await check(output({}))


def file_output(path: Path) -> FileOutputConfig:
    return FileOutputConfig(type="file", path=path)


async def test_file_and_console_outputs(tmp_path: Path) -> None:
    ok, lines = await check(file_output(tmp_path / "new" / "dir" / "out.ndjson"))
    assert ok
    assert "writable" in lines.said[0]
    assert not (tmp_path / "new").exists()  # checked, not created
    (tmp_path / "plain").write_text("")
    ok, lines = await check(file_output(tmp_path / "plain" / "out.ndjson"))
    assert not ok
    assert "not a directory" in lines.said[0]
    ok, lines = await check(file_output(tmp_path))
    assert not ok
    ok, _ = await check(ConsoleOutputConfig(type="console"))
    assert ok


@pytest.mark.parametrize(
    ("path", "privilege"),
    [
        ("/_ilm/policy/shipper-logs", "the cluster privilege `manage_ilm`"),
        ("/_index_template/shipper-logs-docker", "the cluster privilege `manage_index_templates`"),
        ("/_data_stream/logs-docker-default", "`create_index` on `logs-docker-default`"),
    ],
)
async def test_a_step_refused_with_403_names_its_privilege(
    es: FakeElasticsearch, path: str, privilege: str
) -> None:
    # _has_privileges said yes, yet the cluster refuses the write (e.g. a role changed meanwhile).
    es.fail_requests(1, status=403, match=lambda r: r.method == "PUT" and r.path == path)
    with pytest.raises(SetupError, match="not allowed to") as caught:
        await setup(admin(es))
    assert privilege in str(caught.value)
    assert "(403" in str(caught.value)
