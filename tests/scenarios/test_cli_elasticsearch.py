"""`shipper setup` and `shipper test-output` as an operator runs them: the real command in a child
process against tests/fake_elasticsearch.py; exit codes, what they say, and no secret said."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.fake_elasticsearch import FakeElasticsearch

ADMIN_PASSWORD = "adm1n-pw-do-not-print"
WRITER_PASSWORD = "wr1ter-pw-do-not-print"
KEY_ID, KEY_SECRET = "shipkey1", "apikey-s3cret-do-not-print"


def secret_forms() -> list[str]:
    """Every form a secret could leak in: as given, and as the Authorization header sends it."""
    forms = [ADMIN_PASSWORD, WRITER_PASSWORD, KEY_SECRET]
    for user, password in (("admin", ADMIN_PASSWORD), ("writer", WRITER_PASSWORD)):
        forms.append(base64.b64encode(f"{user}:{password}".encode()).decode())
    forms.append(base64.b64encode(f"{KEY_ID}:{KEY_SECRET}".encode()).decode())
    return forms


def shipper(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "shipper", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", ""), **env},
        check=False,
    )
    said = result.stdout + result.stderr
    for secret in secret_forms():
        assert secret not in said, f"a secret was printed by shipper {' '.join(args)}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def es() -> Iterator[FakeElasticsearch]:
    with FakeElasticsearch() as server:
        server.add_user("admin", ADMIN_PASSWORD, superuser=True)
        server.add_user(
            "writer", WRITER_PASSWORD, indices={"logs-docker-*": {"create_doc", "auto_configure"}}
        )
        yield server
    assert server.internal_errors == []


def write_config(tmp_path: Path, output: str, extra_outputs: str = "") -> Path:
    config = tmp_path / "shipper.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "monitoring:\n  port: 0\n"
        f"sources:\n  docker:\n    type: docker_json\n    root: {tmp_path / 'containers'}\n"
        f"outputs:\n  es:\n    type: elasticsearch\n    hosts: ['${{ES_URL}}']\n{output}"
        f"{extra_outputs}"
    )
    return config


BASIC = "    username: ${ES_USER}\n    password: ${ES_PASSWORD}\n"


def basic_env(es: FakeElasticsearch, user: str, password: str) -> dict[str, str]:
    return {"ES_URL": es.url, "ES_USER": user, "ES_PASSWORD": password}


# --- setup ---------------------------------------------------------------------------------------


def test_setup_installs_then_changes_nothing(es: FakeElasticsearch, tmp_path: Path) -> None:
    config = write_config(tmp_path, BASIC)
    env = basic_env(es, "admin", ADMIN_PASSWORD)
    first = shipper("setup", "--config", str(config), env=env)
    assert first.returncode == 0, first.stderr
    assert "ILM policy shipper-logs: created" in first.stdout
    assert "index template shipper-logs-docker: created" in first.stdout
    assert "data stream logs-docker-default: created" in first.stdout
    assert "Elasticsearch 8.19.2" in first.stdout
    assert es.data_streams["logs-docker-default"].template == "shipper-logs-docker"
    second = shipper("setup", "--config", str(config), env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("unchanged") == 2
    assert "data stream logs-docker-default: exists" in second.stdout
    assert es.ilm_policies["shipper-logs"]["version"] == 1


def test_setup_names_the_missing_privileges(es: FakeElasticsearch, tmp_path: Path) -> None:
    config = write_config(tmp_path, BASIC)
    result = shipper("setup", "--config", str(config), env=basic_env(es, "writer", WRITER_PASSWORD))
    assert result.returncode == 1
    for privilege in ("manage_index_templates", "manage_ilm", "create_index"):
        assert f"`{privilege}`" in result.stderr
    assert "output es" in result.stderr
    assert "shipper-logs-docker" not in es.templates
    assert es.ilm_policies == {}


def test_setup_with_a_wrong_password(es: FakeElasticsearch, tmp_path: Path) -> None:
    config = write_config(tmp_path, BASIC)
    result = shipper("setup", "--config", str(config), env=basic_env(es, "admin", WRITER_PASSWORD))
    assert result.returncode == 1
    assert "refuses the credentials (401" in result.stderr


def test_setup_with_an_api_key_from_a_file(es: FakeElasticsearch, tmp_path: Path) -> None:
    es.add_api_key(KEY_ID, KEY_SECRET, superuser=True)
    (tmp_path / "key").write_text(f"{KEY_ID}:{KEY_SECRET}\n")
    config = write_config(tmp_path, f"    api_key_file: {tmp_path / 'key'}\n")
    result = shipper("setup", "--config", str(config), env={"ES_URL": es.url})
    assert result.returncode == 0, result.stderr
    assert "shipper-logs-docker" in es.templates


@pytest.mark.parametrize(
    ("args", "config_text", "message"),
    [
        ((), "outputs: [\n", "invalid config"),
        (("--output", "nope"), None, "no output of this name (defined: archive, es)"),
        (("--output", "archive"), None, "not of type elasticsearch"),
        (("--delete-after", "a month"), None, "--delete-after"),
    ],
)
def test_setup_refuses_a_bad_config_or_arguments_with_exit_2(
    es: FakeElasticsearch,
    tmp_path: Path,
    args: tuple[str, ...],
    config_text: str | None,
    message: str,
) -> None:
    archive = f"  archive:\n    type: file\n    path: {tmp_path / 'out.ndjson'}\n"
    config = write_config(tmp_path, BASIC, archive)
    if config_text is not None:
        config.write_text(config_text)
    env = basic_env(es, "admin", ADMIN_PASSWORD)
    result = shipper("setup", "--config", str(config), *args, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert es.requests == []


def test_setup_without_an_elasticsearch_output_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "shipper.yaml"
    config.write_text(
        "sources:\n  docker:\n    type: docker_json\n"
        f"outputs:\n  archive:\n    type: file\n    path: {tmp_path / 'out'}\n"
    )
    result = shipper("setup", "--config", str(config), env={})
    assert result.returncode == 2
    assert "no output is of type elasticsearch" in result.stderr


def test_setup_dry_run_prints_the_bodies_and_connects_to_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, BASIC)
    env = {"ES_URL": "http://127.0.0.1:9", "ES_USER": "admin", "ES_PASSWORD": ADMIN_PASSWORD}
    result = shipper("setup", "--config", str(config), "--dry-run", "--delete-after", "7d", env=env)
    assert result.returncode == 0, result.stderr
    assert "PUT _ilm/policy/shipper-logs" in result.stdout
    assert "PUT _index_template/shipper-logs-docker" in result.stdout
    assert "PUT _data_stream/logs-docker-default" in result.stdout
    assert '"type": "date_nanos"' in result.stdout
    assert '"min_age": "7d"' in result.stdout


def test_setup_against_9x(tmp_path: Path) -> None:
    with FakeElasticsearch(version="9.1.3") as es:
        es.add_user("admin", ADMIN_PASSWORD, superuser=True)
        config = write_config(tmp_path, BASIC)
        result = shipper(
            "setup", "--config", str(config), env=basic_env(es, "admin", ADMIN_PASSWORD)
        )
        assert result.returncode == 0, result.stderr
        assert "Elasticsearch 9.1.3" in result.stdout
        assert es.data_streams["logs-docker-default"].template == "shipper-logs-docker"


# --- test-output ---------------------------------------------------------------------------------


def test_test_output_with_a_least_privilege_api_key(es: FakeElasticsearch, tmp_path: Path) -> None:
    encoded = es.add_api_key(
        KEY_ID, KEY_SECRET, indices={"logs-docker-*": {"create_doc", "auto_configure"}}
    )
    archive = f"  archive:\n    type: file\n    path: {tmp_path / 'out' / 'logs.ndjson'}\n"
    config = write_config(tmp_path, "    api_key: ${ES_API_KEY}\n", archive)
    result = shipper(
        "test-output", "--config", str(config), env={"ES_URL": es.url, "ES_API_KEY": encoded}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no `monitor` cluster privilege" in result.stdout  # a warning, not a failure
    assert "privileges to ship to data stream `logs-docker-default`: ok" in result.stdout
    assert "for `shipper setup` only" in result.stdout
    assert "logs.ndjson: writable" in result.stdout
    assert "ok: 2 output(s) can ship" in result.stdout
    assert {request.path for request in es.requests} == {"/", "/_security/user/_has_privileges"}
    assert es.documents() == []


def test_test_output_names_what_is_missing(es: FakeElasticsearch, tmp_path: Path) -> None:
    es.add_user("reader", WRITER_PASSWORD, cluster={"monitor"}, indices={"logs-*": {"read"}})
    config = write_config(tmp_path, BASIC)
    result = shipper(
        "test-output", "--config", str(config), env=basic_env(es, "reader", WRITER_PASSWORD)
    )
    assert result.returncode == 1
    assert "cluster docker-cluster, Elasticsearch 8.19.2" in result.stdout
    assert (
        "missing index privilege `create_doc`, `auto_configure` on `logs-docker-default`"
        in result.stdout
    )
    assert "cannot ship: es" in result.stderr


def test_test_output_with_a_wrong_password(es: FakeElasticsearch, tmp_path: Path) -> None:
    config = write_config(tmp_path, BASIC)
    result = shipper(
        "test-output", "--config", str(config), env=basic_env(es, "writer", ADMIN_PASSWORD)
    )
    assert result.returncode == 1
    assert "refuses the credentials (401" in result.stderr


def test_test_output_when_elasticsearch_is_down(tmp_path: Path) -> None:
    es = FakeElasticsearch()
    es.start()
    url = es.url
    es.stop()  # the port is free: connections are refused
    config = write_config(tmp_path, BASIC)
    env = {"ES_URL": url, "ES_USER": "admin", "ES_PASSWORD": ADMIN_PASSWORD}
    result = shipper("test-output", "--config", str(config), env=env)
    assert result.returncode == 1
    assert f"cannot reach Elasticsearch at {url}" in result.stderr


def test_test_output_one_output_by_name(es: FakeElasticsearch, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    archive = f"  archive:\n    type: file\n    path: {tmp_path / 'file' / 'out.ndjson'}\n"
    config = write_config(tmp_path, BASIC, archive)
    env = basic_env(es, "writer", WRITER_PASSWORD)
    result = shipper("test-output", "--config", str(config), "--output", "archive", env=env)
    assert result.returncode == 1
    assert "is not a directory" in result.stdout
    assert es.requests == []
    result = shipper("test-output", "--config", str(config), "--output", "es", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "archive" not in result.stdout


def test_setup_logs_nothing_unformatted(es: FakeElasticsearch, tmp_path: Path) -> None:
    """Whatever reaches stderr besides shipper's own error lines is one JSON object a line."""
    config = write_config(tmp_path, BASIC + "    tls: {verify: false}\n")
    result = shipper("setup", "--config", str(config), env=basic_env(es, "admin", ADMIN_PASSWORD))
    assert result.returncode == 0, result.stderr
    assert "warning: TLS certificate verification is off" in result.stdout
    for line in result.stderr.splitlines():
        orjson.loads(line)
