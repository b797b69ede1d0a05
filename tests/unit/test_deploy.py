"""deploy/ agrees with the code: each file is loaded as its tool would read it, and every config,
mounted path, port, probe, signal and privilege in it is checked against shipper itself."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipper import cli
from shipper.config import (
    Config,
    CriSourceConfig,
    DockerJsonSourceConfig,
    ElasticsearchOutputConfig,
    FileOutputConfig,
    FilesSourceConfig,
    MonitoringConfig,
    SplunkHecOutputConfig,
    parse_config,
)
from shipper.telemetry.counters import DEFINITIONS, Telemetry
from shipper.telemetry.server import MonitoringServer

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"

CONFIG_PATH = "/etc/shipper/shipper.yaml"
RUN = ["run", "--config", CONFIG_PATH]
HEALTH = ["shipper", "health", "--config", CONFIG_PATH]
MiB = 1024 * 1024
# What shipper needs beyond its buffer budget (pipeline.max_buffered_bytes): the interpreter,
# the libraries, per-file state. A memory limit below budget + this gets the agent OOM-killed
# exactly when it is behind.
HEADROOM = 100 * MiB
# Values for the variables a manifest gives its container (secrets, the downward API).
SAMPLES = {"POD_IP": "10.1.2.3", "NODE_NAME": "node-1", "POD_NAME": "checkout-7d9f-abcde"}


# -------------------------------------------------------------------------------------------------
# Reading each file as its tool does.


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def instruction(name: str) -> list[str]:
    return [arguments for keyword, arguments in dockerfile() if keyword == name]


def exec_form(arguments: str) -> list[str]:
    """The JSON (exec) form of CMD, ENTRYPOINT and HEALTHCHECK CMD: no shell in between."""
    assert arguments.startswith("["), f"not the exec form: {arguments}"
    value = json.loads(arguments)
    assert isinstance(value, list)
    return [str(item) for item in value]


def unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """section → key → every value given, in order (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = sections.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        assert equals and section is not None, f"{path.name}: not a unit file line: {line}"
        section.setdefault(key.strip(), []).append(value.strip())
    return sections


def compose() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


def kubernetes(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]


def only(items: list[Any], what: str) -> Any:
    assert len(items) == 1, f"expected one {what}, found {len(items)}"
    return items[0]


def seconds(text: str | int | float) -> float:
    """A Compose, Kubernetes or systemd duration ("30s", "5min", "1m30s", 30) in seconds."""
    if isinstance(text, int | float):
        return float(text)
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h)?", text)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == text.replace(" ", ""), text
    return sum(float(number) * units[unit or "s"] for number, unit in parts)


def quantity(text: str) -> int:
    """A Kubernetes memory quantity ("256Mi", "1Gi", "500M") in bytes."""
    factors = {"Ki": 1024, "Mi": MiB, "Gi": 1024 * MiB, "k": 1000, "M": 1000**2, "G": 1000**3}
    for suffix, factor in factors.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


def validated(text: str, origin: str, variables: set[str]) -> Config:
    """The config, validated with only the variables the manifest provides: a reference to
    any other is an error, as it would be in the container."""
    environ = {name: SAMPLES.get(name, f"sample-{name.lower()}") for name in variables}
    return parse_config(text, origin, environ=environ)


def roots(config: Config) -> set[str]:
    """Every directory the sources read from (and follow links into)."""
    paths: set[str] = set()
    for source in config.sources.values():
        if isinstance(source, DockerJsonSourceConfig):
            paths.add(str(source.root))
        elif isinstance(source, CriSourceConfig):
            paths.add(str(source.root))
            paths.update(str(p) for p in (source.container_links, source.docker_root) if p)
        elif isinstance(source, FilesSourceConfig):
            paths.update(str(Path(glob).parent) for glob in source.paths)
    return paths


def written(config: Config) -> set[Path]:
    """Every file shipper writes: checkpoints, dead letters, `file` outputs."""
    files = {config.checkpoint_path, config.dead_letter_path}
    files.update(o.path for o in config.outputs.values() if isinstance(o, FileOutputConfig))
    return files


def under(path: Path | str, directory: str) -> bool:
    return Path(path) == Path(directory) or Path(directory) in Path(path).parents


# -------------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_base_is_a_pinned_slim_python_matching_the_package() -> None:
    base = only(instruction("FROM"), "FROM")
    match = re.fullmatch(
        r"python:3\.(?P<minor>\d+)\.\d+-slim(?:-[a-z]+)?(?:@sha256:[0-9a-f]{64})?", base
    )
    assert match, f"base image not pinned to a patch version of python:*-slim: {base}"
    requires = re.search(r'requires-python = ">=3\.(\d+)"', (REPO / "pyproject.toml").read_text())
    assert requires and int(match["minor"]) >= int(requires[1])


def test_dockerfile_copies_what_the_package_build_needs() -> None:
    copied = {item for arguments in instruction("COPY") for item in arguments.split()[:-1]}
    assert {"pyproject.toml", "shipper"} <= copied
    readme = re.search(r'readme = "([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert readme and readme[1] in copied, "pyproject.toml reads a readme the build lacks"
    install = " ".join(instruction("RUN"))
    assert "pip install /src" in install


def test_dockerfile_runs_unprivileged_and_writes_only_its_state_volume() -> None:
    user = only(instruction("USER"), "USER")
    assert user.split(":")[0] == "10001", "the image's default user must not be root"
    env = " ".join(instruction("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "a read-only root file system refuses .pyc files"
    volumes = exec_form(only(instruction("VOLUME"), "VOLUME"))
    assert volumes == ["/var/lib/shipper"]
    # Writable by the default user and, through group 0, by root with every capability dropped.
    assert "install -d -o shipper -g 0 -m 0770 /var/lib/shipper" in " ".join(instruction("RUN"))
    # The config directory must be enterable by root without CAP_DAC_OVERRIDE (compose mounts
    # the config there and runs as uid 0 with every capability dropped).
    assert "install -d -o root -g root -m 0755 /etc/shipper" in " ".join(instruction("RUN"))


def test_dockerfile_healthcheck_asks_the_config_the_command_runs() -> None:
    entrypoint = exec_form(only(instruction("ENTRYPOINT"), "ENTRYPOINT"))
    command = exec_form(only(instruction("CMD"), "CMD"))
    assert entrypoint == ["shipper"]
    assert command == RUN
    options, _, check = only(instruction("HEALTHCHECK"), "HEALTHCHECK").partition(" CMD ")
    assert exec_form(check) == HEALTH, "the HEALTHCHECK must ask the config `run` uses"
    assert "--interval=" in options and "--timeout=" in options
    # The CLI accepts exactly this command line.
    arguments = cli._parser().parse_args(exec_form(check)[1:])
    assert arguments.command == "health" and str(arguments.config) == CONFIG_PATH
    assert not arguments.live
    assert only(instruction("STOPSIGNAL"), "STOPSIGNAL") == "SIGTERM"


def test_dockerfile_exposes_the_monitoring_port_every_deploy_config_uses() -> None:
    exposed = int(only(instruction("EXPOSE"), "EXPOSE"))
    assert exposed == MonitoringConfig().port
    ports = {config.monitoring.port for config in every_config()}
    assert ports == {exposed}


# -------------------------------------------------------------------------------------------------
# compose.yaml


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of the short syntax `source:target[:mode]`."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        mounts.append((source, target, mode[0] if mode else "rw"))
    return mounts


def shipper_services() -> dict[str, dict[str, Any]]:
    """The services that run `shipper run`, by name."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("command") == RUN
    }


def compose_config(service: dict[str, Any]) -> tuple[str, Config]:
    """The config file mounted at CONFIG_PATH, validated with the service's environment."""
    source = only(
        [s for s, target, _ in volume_mounts(service) if target == CONFIG_PATH], "config mount"
    )
    assert source.startswith("./"), "the config must be a file of deploy/"
    text = (DEPLOY / source).read_text()
    return source, validated(text, source, set(service.get("environment", {})))


def test_compose_has_an_elasticsearch_and_a_splunk_profile_each_with_its_own_shipper() -> None:
    services = shipper_services()
    by_profile = {only(service["profiles"], "profile"): name for name, service in services.items()}
    assert set(by_profile) == {"elasticsearch", "splunk"}
    configs = {name: compose_config(service) for name, service in services.items()}
    assert len({file for file, _ in configs.values()}) == len(services), "one config each"
    es_config = configs[by_profile["elasticsearch"]][1]
    splunk_config = configs[by_profile["splunk"]][1]
    assert configs[by_profile["elasticsearch"]][0] == "./compose.shipper.yaml"
    assert any(isinstance(o, ElasticsearchOutputConfig) for o in es_config.outputs.values())
    assert any(isinstance(o, SplunkHecOutputConfig) for o in splunk_config.outputs.values())


def test_compose_profiles_are_self_contained() -> None:
    services = compose()["services"]
    for name, service in services.items():
        profiles = set(service.get("profiles", []))
        assert profiles, f"{name}: every service belongs to a profile"
        for dependency in service.get("depends_on", {}):
            assert profiles <= set(services[dependency].get("profiles", [])), (name, dependency)
    # Compose interpolates every service before it picks a profile's: a required variable
    # (${VAR:?...}) of one profile would stop the other from starting.
    assert ":?" not in (DEPLOY / "compose.yaml").read_text()


@pytest.mark.parametrize("name", sorted(shipper_services()))
def test_compose_shipper_runs_as_root_with_nothing_else(name: str) -> None:
    service = shipper_services()[name]
    assert service["user"] == "0", "Docker's logs are 0640 root:root in 0710 root directories"
    assert service["cap_drop"] == ["ALL"]
    assert "cap_add" not in service
    assert service["read_only"] is True
    assert "no-new-privileges:true" in service["security_opt"]
    assert "privileged" not in service


@pytest.mark.parametrize("name", sorted(shipper_services()))
def test_compose_shipper_mounts_agree_with_its_config(name: str) -> None:
    service = shipper_services()[name]
    _, config = compose_config(service)
    mounts = volume_mounts(service)
    for root in roots(config):
        source, _, mode = only([m for m in mounts if m[1] == root], f"mount of {root}")
        assert (source, mode) == (root, "ro"), f"{root}: read-only, at the host's own path"
    # The state: a named volume (it outlives the container) at state_dir, the image's VOLUME.
    state = str(config.state_dir)
    assert [state] == exec_form(only(instruction("VOLUME"), "VOLUME"))
    source, _, mode = only([m for m in mounts if m[1] == state], "state mount")
    assert mode == "rw" and source in compose()["volumes"]
    assert all(under(path, state) for path in written(config))
    # Everything else the config names (CA files) is mounted read-only.
    for output in config.outputs.values():
        if isinstance(output, ElasticsearchOutputConfig) and output.tls.ca_file:
            assert any(
                under(output.tls.ca_file, target) and mode == "ro" for _, target, mode in mounts
            )
    assert (CONFIG_PATH, "ro") in {(target, mode) for _, target, mode in mounts}


@pytest.mark.parametrize("name", sorted(shipper_services()))
def test_compose_shipper_health_ports_and_grace_agree_with_its_config(name: str) -> None:
    service = shipper_services()[name]
    _, config = compose_config(service)
    assert service["healthcheck"]["test"] == ["CMD", *HEALTH]
    # Published on the host's loopback only; inside the container shipper must listen on every
    # address for the published port to reach it (`shipper health` asks 127.0.0.1 then).
    assert config.monitoring.host in ("0.0.0.0", "::")  # noqa: S104 - compared only
    for port in service["ports"]:
        host_ip, _, container_port = port.split(":")
        assert host_ip == "127.0.0.1"
        assert int(container_port) == config.monitoring.port
    assert seconds(service["stop_grace_period"]) > config.pipeline.shutdown_timeout


def test_compose_destinations_match_the_outputs() -> None:
    services = compose()["services"]
    for name, service in shipper_services().items():
        _, config = compose_config(service)
        profile = service["profiles"][0]
        for output in config.outputs.values():
            if isinstance(output, ElasticsearchOutputConfig):
                assert output.hosts is not None
                hosts = {re.sub(r"^https?://([^:/]+).*", r"\1", h) for h in output.hosts}
            else:
                assert isinstance(output, SplunkHecOutputConfig)
                hosts = {re.sub(r"^https?://([^:/]+).*", r"\1", output.url)}
                splunk = services[only(sorted(hosts), "HEC host")]
                environment = splunk["environment"]
                assert "--accept-license" in environment["SPLUNK_START_ARGS"]
                # The token HEC is set up with is the one shipper sends.
                assert environment["SPLUNK_HEC_TOKEN"] == service["environment"]["HEC_TOKEN"]
                plain = str(environment.get("SPLUNK_HEC_SSL", "true")).lower() == "false"
                assert output.url.startswith("http://" if plain else "https://")
            for host in hosts:
                assert profile in services[host]["profiles"], f"{name}: {host} in its profile"
                assert host in service["depends_on"] or any(
                    host in services[d].get("depends_on", {}) for d in service["depends_on"]
                ), f"{name} starts before {host}"


# -------------------------------------------------------------------------------------------------
# Kubernetes


def pod_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def shipper_container(workload: dict[str, Any]) -> dict[str, Any]:
    return only([c for c in pod_containers(workload) if c.get("args") == RUN], "shipper container")


def configmap_config(
    docs: list[dict[str, Any]], container: dict[str, Any], pod: dict[str, Any]
) -> Config:
    """The config in the ConfigMap mounted at /etc/shipper, validated with the container's env."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = only(
        [m for m in container["volumeMounts"] if m["mountPath"] == str(Path(CONFIG_PATH).parent)],
        "config mount",
    )
    assert mount.get("readOnly") is True
    name = volumes[mount["name"]]["configMap"]["name"]
    configmap = only(
        [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name], name
    )
    text = configmap["data"][Path(CONFIG_PATH).name]
    return validated(text, f"ConfigMap {name}", {e["name"] for e in container.get("env", [])})


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(
        only([p for p in container["ports"] if p["name"] == port], f"port {port}")["containerPort"]
    )


def mount_for(container: dict[str, Any], path: str) -> dict[str, Any]:
    return only([m for m in container["volumeMounts"] if m["mountPath"] == path], f"mount {path}")


def check_probes_and_scrape(workload: dict[str, Any], config: Config) -> None:
    container = shipper_container(workload)
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert container_port(container, get["port"]) == config.monitoring.port
        assert "host" not in get, "the kubelet asks the pod's IP, which shipper binds"
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == config.monitoring.port
    assert annotations["prometheus.io/path"] == "/metrics"
    # Bound to the pod's address, which the downward API gives.
    assert config.monitoring.host == SAMPLES["POD_IP"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def check_secrets(container: dict[str, Any], pod: dict[str, Any], config: Config) -> None:
    for variable in container.get("env", []):
        if re.search(r"PASSWORD|TOKEN|API_KEY", variable["name"]):
            assert "secretKeyRef" in variable.get("valueFrom", {}), variable["name"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for output in config.outputs.values():
        if isinstance(output, ElasticsearchOutputConfig) and output.tls.ca_file:
            mount = only(
                [m for m in container["volumeMounts"] if under(output.tls.ca_file, m["mountPath"])],
                "CA mount",
            )
            assert "secret" in volumes[mount["name"]]
            secret = volumes[mount["name"]]["secret"]
            assert {item["path"] for item in secret["items"]} == {output.tls.ca_file.name}


def test_daemonset_objects_belong_together() -> None:
    docs = kubernetes("daemonset.yaml")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "DaemonSet", "Namespace", "ServiceAccount"]
    namespace = only([d for d in docs if d["kind"] == "Namespace"], "Namespace")["metadata"]
    assert namespace["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace["name"], doc["kind"]
    account = only([d for d in docs if d["kind"] == "ServiceAccount"], "ServiceAccount")
    daemonset = only([d for d in docs if d["kind"] == "DaemonSet"], "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    # No API access is needed: pod metadata comes from the paths under /var/log/pods.
    assert account["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False
    selector = daemonset["spec"]["selector"]["matchLabels"]
    assert selector.items() <= daemonset["spec"]["template"]["metadata"]["labels"].items()


def daemonset() -> tuple[list[dict[str, Any]], dict[str, Any], Config]:
    docs = kubernetes("daemonset.yaml")
    workload = only([d for d in docs if d["kind"] == "DaemonSet"], "DaemonSet")
    container = shipper_container(workload)
    return docs, workload, configmap_config(docs, container, workload["spec"]["template"]["spec"])


def test_daemonset_mounts_the_node_paths_its_config_reads() -> None:
    _, workload, config = daemonset()
    container = shipper_container(workload)
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert any(isinstance(s, CriSourceConfig) for s in config.sources.values())
    expected = {"/var/log/pods", "/var/log/containers", "/var/lib/docker/containers"}
    assert roots(config) == expected
    for root in sorted(roots(config)):
        mount = mount_for(container, root)
        assert mount.get("readOnly") is True, f"{root} must be read-only"
        # At the node's own path: the kubelet's links in /var/log/containers are absolute.
        assert volumes[mount["name"]]["hostPath"]["path"] == root
    state = mount_for(container, str(config.state_dir))
    assert not state.get("readOnly")
    assert volumes[state["name"]]["hostPath"] == {
        "path": str(config.state_dir),
        "type": "DirectoryOrCreate",
    }
    assert all(under(path, str(config.state_dir)) for path in written(config))
    # shipper's own pods are left out, or it ships its own logs about shipping.
    namespace = workload["metadata"]["namespace"]
    for source in config.sources.values():
        if isinstance(source, CriSourceConfig):
            assert namespace in source.exclude.namespaces
        if isinstance(source, DockerJsonSourceConfig):
            assert f"io.kubernetes.pod.namespace={namespace}" in source.exclude.labels
    check_secrets(container, pod, config)


def test_daemonset_runs_as_root_with_nothing_else_on_every_node() -> None:
    _, workload, config = daemonset()
    pod = workload["spec"]["template"]["spec"]
    security = shipper_container(workload)["securityContext"]
    assert security["runAsUser"] == 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in security
    assert {"operator": "Exists"} in pod["tolerations"], "every taint tolerated"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["terminationGracePeriodSeconds"] > config.pipeline.shutdown_timeout
    assert not pod.get("hostNetwork")


def test_daemonset_memory_limit_covers_the_buffer_budget() -> None:
    _, workload, config = daemonset()
    resources = shipper_container(workload)["resources"]
    limit = quantity(resources["limits"]["memory"])
    assert limit >= config.pipeline.max_buffered_bytes + HEADROOM
    assert quantity(resources["requests"]["memory"]) <= limit


def test_daemonset_probes_and_scrape_annotations_match_the_monitoring_config() -> None:
    _, workload, config = daemonset()
    check_probes_and_scrape(workload, config)
    env = {e["name"]: e for e in shipper_container(workload)["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def sidecar() -> tuple[dict[str, Any], Config]:
    docs = kubernetes("sidecar.yaml")
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment"]
    workload = only([d for d in docs if d["kind"] == "Deployment"], "Deployment")
    container = shipper_container(workload)
    return workload, configmap_config(docs, container, workload["spec"]["template"]["spec"])


def test_sidecar_reads_the_log_volume_the_application_writes() -> None:
    workload, config = sidecar()
    pod = workload["spec"]["template"]["spec"]
    shipper = shipper_container(workload)
    volumes = {v["name"]: v for v in pod["volumes"]}
    app = only([c for c in pod["containers"] if c is not shipper], "application container")
    sources = [s for s in config.sources.values() if isinstance(s, FilesSourceConfig)]
    assert sources and len(sources) == len(config.sources)
    for directory in sorted(roots(config)):
        mount = mount_for(shipper, directory)
        assert mount.get("readOnly") is True
        assert "emptyDir" in volumes[mount["name"]]
        shared = only([m for m in app["volumeMounts"] if m["name"] == mount["name"]], "app mount")
        assert not shared.get("readOnly"), "the application writes there"
        # What the application writes there is what the source's globs match.
        written_by_app = re.findall(r">> (\S+)", " ".join(app["command"]))
        assert written_by_app
        for path in written_by_app:
            target = Path(path.replace(shared["mountPath"], directory, 1))
            assert any(target.match(glob) for s in sources for glob in s.paths), path
    state = mount_for(shipper, str(config.state_dir))
    assert not state.get("readOnly") and "emptyDir" in volumes[state["name"]]
    assert all(under(path, str(config.state_dir)) for path in written(config))
    check_secrets(shipper, pod, config)


def test_sidecar_runs_unprivileged_starts_first_and_stops_last() -> None:
    workload, config = sidecar()
    pod = workload["spec"]["template"]["spec"]
    shipper = shipper_container(workload)
    # A native sidecar: started before the application, stopped after it.
    assert shipper in pod["initContainers"] and shipper["restartPolicy"] == "Always"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == 10001, "the emptyDirs are group 10001"
    security = shipper["securityContext"]
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["terminationGracePeriodSeconds"] > config.pipeline.shutdown_timeout
    limit = quantity(shipper["resources"]["limits"]["memory"])
    assert limit >= config.pipeline.max_buffered_bytes + HEADROOM
    check_probes_and_scrape(workload, config)
    env = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in shipper["env"]
        if "fieldRef" in e.get("valueFrom", {})
    }
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"


# -------------------------------------------------------------------------------------------------
# systemd


def unit() -> dict[str, list[str]]:
    return unit_file(SYSTEMD / "shipper.service")["Service"]


def single(service: dict[str, list[str]], key: str) -> str:
    return only(service[key], key)


def host_config() -> Config:
    return validated((SYSTEMD / "shipper.yaml").read_text(), "systemd/shipper.yaml", set())


def test_systemd_unit_runs_and_reloads_the_installed_config() -> None:
    service = unit()
    assert single(service, "Type") in ("exec", "simple")
    start = shlex.split(single(service, "ExecStart"))
    assert Path(start[0]).name == "shipper" and start[1:] == RUN
    reload = service["ExecReload"]
    # shipper reloads on SIGHUP; anything before it must check the same config.
    assert reload[-1] == "/bin/kill -HUP $MAINPID"
    for line in reload[:-1]:
        argv = shlex.split(line)
        assert argv == [start[0], "check-config", "--config", CONFIG_PATH]
    assert single(service, "Restart") == "on-failure"
    assert "2" in single(service, "RestartPreventExitStatus").split(), "exit 2: invalid config"
    assert seconds(single(service, "TimeoutStopSec")) > host_config().pipeline.shutdown_timeout
    assert single(service, "LimitNOFILE") == "1048576"
    install = unit_file(SYSTEMD / "shipper.service")["Install"]
    assert install["WantedBy"] == ["multi-user.target"]


def test_systemd_unit_holds_one_capability_as_a_non_root_user() -> None:
    service = unit()
    assert single(service, "User") not in ("root", "0")
    assert single(service, "AmbientCapabilities") == "CAP_DAC_READ_SEARCH"
    assert single(service, "CapabilityBoundingSet") == "CAP_DAC_READ_SEARCH"
    assert single(service, "NoNewPrivileges") == "yes"
    assert single(service, "ProtectSystem") == "strict"
    for key in ("ProtectHome", "PrivateTmp", "ProtectKernelTunables", "ProtectKernelModules"):
        assert single(service, key) == "yes", key
    assert set(single(service, "RestrictAddressFamilies").split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
    }
    assert "@system-service" in service["SystemCallFilter"]


def test_systemd_unit_paths_agree_with_the_host_config() -> None:
    service = unit()
    config = host_config()
    state = Path("/var/lib") / single(service, "StateDirectory")
    assert config.state_dir == state
    writable = single(service, "ReadWritePaths").split()
    assert writable == [str(state)]
    # ProtectSystem=strict: everything shipper writes must be under a writable path.
    assert all(any(under(path, w) for w in writable) for path in written(config))
    read_only = [p.lstrip("-") for p in single(service, "ReadOnlyPaths").split()]
    for root in roots(config):
        assert root in read_only
    assert str(Path(CONFIG_PATH).parent) in read_only
    # No secret in the config: the password is read from a file the unit's user can read.
    for output in config.outputs.values():
        if isinstance(output, ElasticsearchOutputConfig):
            assert output.password is None and output.password_file is not None
    assert config.monitoring.host == "127.0.0.1"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    # verify wants ExecStart's program to exist: point it at this environment's shipper.
    program = Path(sys.executable).parent / "shipper"
    text = (SYSTEMD / "shipper.service").read_text()
    start = shlex.split(single(unit(), "ExecStart"))[0]
    (tmp_path / "shipper.service").write_text(text.replace(start, str(program)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "shipper.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [line for line in result.stderr.splitlines() if "shipper.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


# -------------------------------------------------------------------------------------------------
# Every config, and the endpoints the probes ask.


def every_config() -> list[Config]:
    configs = [compose_config(s)[1] for s in shipper_services().values()]
    configs.append(daemonset()[2])
    configs.append(sidecar()[1])
    configs.append(host_config())
    return configs


def probe_paths() -> set[str]:
    """Every path a deploy file asks shipper's monitoring endpoint for."""
    paths = {"/readyz"}  # `shipper health`, the Dockerfile's and compose's HEALTHCHECK
    for workload in (daemonset()[1], sidecar()[0]):
        container = shipper_container(workload)
        paths.update(container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe"))
        paths.add(workload["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    return paths


def status_of(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


async def test_every_probe_path_is_served_by_the_monitoring_endpoint() -> None:
    paths = probe_paths()
    assert paths == {"/livez", "/readyz", "/metrics"}
    server = MonitoringServer(MonitoringConfig(host="127.0.0.1", port=0), Telemetry())
    server.start()
    try:
        assert server.port
        base = f"http://127.0.0.1:{server.port}"
        for path in sorted(paths):
            assert await asyncio.to_thread(status_of, base + path) != 404, path
        # The check can fail: a path the endpoint does not serve is a 404.
        assert await asyncio.to_thread(status_of, base + "/healthz") == 404
    finally:
        server.stop()


async def test_the_healthcheck_command_reaches_the_endpoint_its_config_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = MonitoringServer(MonitoringConfig(host="127.0.0.1", port=0), Telemetry())
    server.start()
    try:
        assert server.port
        # As in the compose configs: listening on every address, asked on 127.0.0.1.
        config = tmp_path / "shipper.yaml"
        config.write_text(
            f"sources: {{docker: {{type: docker_json, root: {tmp_path}}}}}\n"
            "outputs: {out: {type: console}}\n"
            f"monitoring: {{host: 0.0.0.0, port: {server.port}}}\n"
        )
        argv = [*HEALTH[1:-1], str(config)]
        assert await asyncio.to_thread(cli.main, [*argv, "--live"]) == 0
        # No App runs behind this endpoint: alive, not ready (starting).
        assert await asyncio.to_thread(cli.main, argv) == 1
        assert "starting" in capsys.readouterr().err
    finally:
        server.stop()
    # Nothing listens any more: the HEALTHCHECK fails rather than hangs or passes.
    assert await asyncio.to_thread(cli.main, [*argv, "--live"]) == 1


# -------------------------------------------------------------------------------------------------
# The operator's guide


def test_the_operators_guide_lists_every_metric_as_declared() -> None:
    guide = (REPO / "docs" / "operations.md").read_text()
    rows = re.findall(
        r"^\| `(shipper_\w+)` \| (counter|gauge|histogram) \|([^|]*)\|", guide, re.MULTILINE
    )
    documented = {name: (kind, re.findall(r"`(\w+)`", labels)) for name, kind, labels in rows}
    assert set(documented) == set(DEFINITIONS)
    for name, definition in DEFINITIONS.items():
        assert documented[name] == (definition.kind.value, list(definition.labels)), name


@pytest.mark.parametrize(
    "document", ["docs/operations.md", "deploy/README.md", "README.md", "docs/configuration.md"]
)
def test_links_into_the_repository_lead_somewhere(document: str) -> None:
    path = REPO / document
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{document}: {target}"
