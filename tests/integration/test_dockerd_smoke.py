"""The `dockerd` fixture works: a real container's output lands in a json-file log."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.integration.dockerd import IMAGE, Dockerd
from tests.integration.jsonlog import read_entries


def test_docker_version(dockerd: Dockerd, record_property: Callable[[str, object], None]) -> None:
    version = dockerd.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    record_property("docker_server_version", version)
    print(f"Docker server {version}, storage driver {dockerd.storage_driver}")
    assert version == dockerd.server_version
    assert dockerd.docker("images", "-q", IMAGE).stdout.strip(), "busybox image imported"


def test_container_output_lands_in_json_file(dockerd: Dockerd) -> None:
    container_id = dockerd.run_container(
        "smoke", "for i in 1 2 3; do echo line-$i; done", log_opts={"max-size": "1m"}
    )
    assert dockerd.wait_exited(container_id, timeout=30) == 0

    folder = dockerd.containers_root / container_id
    log = folder / f"{container_id}-json.log"
    assert log == dockerd.json_log(container_id)
    assert log.exists()
    entries = read_entries(log)
    assert [entry["log"] for entry in entries] == ["line-1\n", "line-2\n", "line-3\n"]
    assert {entry["stream"] for entry in entries} == {"stdout"}

    config = json.loads((folder / "config.v2.json").read_text())
    assert config["ID"] == container_id
    assert config["Name"] == "/smoke"
    assert config["LogPath"] == str(log)
    host_config = json.loads((folder / "hostconfig.json").read_text())
    assert host_config["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
