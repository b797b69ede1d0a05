"""Container metadata read from Docker's own files (config.v2.json, hostconfig.json), no socket.

Docker keeps each container's configuration next to its log: `<id>/config.v2.json` (name, image,
labels, env, state; replaced by rename whenever it changes) and `<id>/hostconfig.json` (the log
driver). Reading them needs no access to the Docker API. The metadata of a container becomes
the ECS fields every record of it carries, serialised once per container and spliced into each
record (DESIGN.md §2), so enrichment costs nothing per line.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import socket
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from shipper import __version__
from shipper.model import Enrichment

log = logging.getLogger(__name__)

ECS_VERSION = "8.11.0"
# Docker labels that Kubernetes' dockershim / cri-dockerd set on every container of a pod.
_KUBERNETES_LABELS = {
    "io.kubernetes.pod.name": ("pod", "name"),
    "io.kubernetes.pod.namespace": ("namespace",),
    "io.kubernetes.pod.uid": ("pod", "uid"),
    "io.kubernetes.container.name": ("container", "name"),
}
_COMPOSE_LABELS = {
    "com.docker.compose.project": "project",
    "com.docker.compose.service": "service",
}


@dataclass(frozen=True, slots=True)
class MetadataOptions:
    host_name: str
    dedot_labels: bool = True
    env_allowlist: Collection[str] = ()


def default_host_name() -> str:
    """The node's name: NODE_NAME (set from the Kubernetes downward API) or the hostname.
    shipper usually runs in a container, whose own hostname says little."""
    return os.environ.get("NODE_NAME") or socket.gethostname()


def build_enrichment(
    container_id: str, config: dict[str, Any] | None, options: MetadataOptions
) -> Enrichment:
    """The ECS fields for a container from its parsed config.v2.json (None: unknown)."""
    container: dict[str, Any] = {"id": container_id}
    document: dict[str, Any] = {"container": container}
    if config is not None:
        name = config.get("Name")
        if isinstance(name, str) and name:
            container["name"] = name.lstrip("/")
        raw_settings = config.get("Config")
        settings: dict[str, Any] = raw_settings if isinstance(raw_settings, dict) else {}
        image = settings.get("Image")
        if isinstance(image, str) and image:
            container["image"] = {"name": image}
        labels = settings.get("Labels")
        if isinstance(labels, dict) and labels:
            text_labels = {str(k): str(v) for k, v in labels.items()}
            container["labels"] = _dedot(text_labels) if options.dedot_labels else text_labels
            kubernetes = _kubernetes(text_labels)
            if kubernetes:
                document["kubernetes"] = kubernetes
            compose = {
                field: text_labels[label]
                for label, field in _COMPOSE_LABELS.items()
                if label in text_labels
            }
        else:
            compose = {}
        docker: dict[str, Any] = {}
        times = _times(config)
        if times:
            docker["container"] = times
        env = _allowed_env(settings.get("Env"), options.env_allowlist)
        if env:
            docker.setdefault("container", {})["env"] = env
        if compose:
            docker["compose"] = compose
        if docker:
            document["docker"] = docker
    document["host"] = {"name": options.host_name}
    document["agent"] = {"type": "shipper", "version": __version__}
    document["ecs"] = {"version": ECS_VERSION}
    return Enrichment(document, orjson.dumps(document)[1:-1])


def _dedot(labels: dict[str, str]) -> dict[str, str]:
    # `app` beside `app.kubernetes.io/name` would make `labels.app` both a keyword and an
    # object in Elasticsearch, and every document of that index after the first a 400.
    return {key.replace(".", "_"): value for key, value in labels.items()}


def _kubernetes(labels: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for label, path in _KUBERNETES_LABELS.items():
        value = labels.get(label)
        if value is None:
            continue
        target = fields
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return fields


_GO_ZERO_TIME = "0001-01-01T00:00:00"


def _times(config: dict[str, Any]) -> dict[str, str]:
    times = {}
    if isinstance(config.get("Created"), str):
        times["created"] = config["Created"]
    state = config.get("State")
    started = state.get("StartedAt") if isinstance(state, dict) else None
    # Docker writes config.v2.json at create with Go's zero time as StartedAt and rewrites it
    # once started; a container's first lines can be read in between. No value beats year 1.
    if isinstance(started, str) and not started.startswith(_GO_ZERO_TIME):
        times["started"] = started
    return times


def _allowed_env(env: object, allowlist: Collection[str]) -> dict[str, str]:
    """Only the variables named in the allow-list: the environment is where secrets live."""
    if not allowlist or not isinstance(env, list):
        return {}
    allowed = {}
    for item in env:
        if isinstance(item, str) and "=" in item:
            key, value = item.split("=", 1)
            if key in allowlist:
                allowed[key] = value
    return allowed


class MetadataCache:
    """The enrichment of each container, read once and again only when Docker replaced its
    config.v2.json (it writes a temporary file and renames it: a new inode).

    `get` costs one stat() when nothing changed; it is called once per chunk, before the chunk is
    shipped, so a rename is on the next chunk's records. Missing, unreadable or corrupt metadata
    gives the records just their container id, counted and logged once; it never blocks them.
    """

    def __init__(self, options: MetadataOptions, on_error: Callable[[str, str], None]) -> None:
        self._options = options
        self._on_error = on_error
        # Per container directory: the file's version, its enrichment, and its facts. Not the
        # parsed file: that is kilobytes a container (env, mounts, state), secrets among them.
        self._entries: dict[
            str, tuple[tuple[int, int, int] | None, Enrichment, ContainerFacts | None]
        ] = {}

    def get(self, directory: str, container_id: str) -> Enrichment:
        path = os.path.join(directory, "config.v2.json")
        try:
            stat = os.stat(path)
            version: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except OSError:
            version = None
        cached = self._entries.get(directory)
        if cached is not None and cached[0] == version:
            return cached[1]
        config = self._read(path, container_id) if version is not None else None
        if version is None:
            self._on_error(container_id, "config.v2.json is missing")
        enrichment = build_enrichment(container_id, config, self._options)
        facts = container_facts(config) if config is not None else None
        self._entries[directory] = (version, enrichment, facts)
        return enrichment

    def facts(self, directory: str, container_id: str) -> ContainerFacts | None:
        """Name, image and labels from config.v2.json as last read (reading it if needed);
        None if it is unusable."""
        self.get(directory, container_id)
        return self._entries[directory][2]

    def forget(self, directory: str) -> None:
        self._entries.pop(directory, None)

    def _read(self, path: str, container_id: str) -> dict[str, Any] | None:
        try:
            with open(path, "rb") as file:
                config = orjson.loads(file.read())
        except OSError as exc:
            self._on_error(container_id, f"cannot read {path}: {exc.strerror or exc}")
            return None
        except orjson.JSONDecodeError:
            self._on_error(container_id, f"{path} is not valid JSON")
            return None
        if not isinstance(config, dict):
            self._on_error(container_id, f"{path} is not a JSON object")
            return None
        return config


def log_driver(directory: str) -> str | None:
    """The container's log driver from hostconfig.json, or None if that cannot be read."""
    try:
        with open(os.path.join(directory, "hostconfig.json"), "rb") as file:
            host_config = orjson.loads(file.read())
    except (OSError, orjson.JSONDecodeError):
        return None
    log_config = host_config.get("LogConfig") if isinstance(host_config, dict) else None
    driver = log_config.get("Type") if isinstance(log_config, dict) else None
    return driver if isinstance(driver, str) else None


_OWN_ID = re.compile(r"/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf)")


def own_container_id(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The id of the Docker container shipper runs in, if any: Docker bind-mounts the
    container's hostname, hosts and resolv.conf from `<root>/<id>/`."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as file:
            match = _OWN_ID.search(file.read())
    except OSError:
        return None
    return match[1] if match else None


@dataclass(frozen=True, slots=True)
class Selection:
    """Which containers to ship, from the source's include/exclude globs and opt-out label."""

    include: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None
    exclude: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]
    opt_out_label: str

    def ships(self, facts: ContainerFacts | None) -> bool:
        """Whether the container with these facts is shipped. Unknown metadata (None) ships:
        a filter must not drop lines because a file could not be read."""
        if facts is None:
            return True
        name, image, labels = facts
        if labels.get(self.opt_out_label, "").lower() == "true":
            return False
        if self.include is not None and not matches_globs(self.include, name, image, labels):
            return False
        return not matches_globs(self.exclude, name, image, labels)


class ContainerFacts(NamedTuple):
    """What selection and file shaping need of a container's config.v2.json."""

    name: str  # without Docker's leading "/"
    image: str
    labels: dict[str, str]


def container_facts(config: dict[str, Any]) -> ContainerFacts:
    """The facts of a parsed config.v2.json."""
    raw_name = config.get("Name")
    name = raw_name.lstrip("/") if isinstance(raw_name, str) else ""
    raw_settings = config.get("Config")
    settings: dict[str, Any] = raw_settings if isinstance(raw_settings, dict) else {}
    image = settings.get("Image") if isinstance(settings.get("Image"), str) else ""
    raw_labels = settings.get("Labels")
    labels = {str(k): str(v) for k, v in raw_labels.items()} if isinstance(raw_labels, dict) else {}
    return ContainerFacts(name, str(image), labels)


def matches_globs(
    patterns: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]],
    name: str,
    image: str,
    labels: Mapping[str, str],
) -> bool:
    """Whether any glob matches: (names, images, labels as "key" or "key=value-glob")."""
    names, images, label_patterns = patterns
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in names):
        return True
    if any(fnmatch.fnmatchcase(image, pattern) for pattern in images):
        return True
    for pattern in label_patterns:
        key, has_value, value = pattern.partition("=")
        if key in labels and (not has_value or fnmatch.fnmatchcase(labels[key], value)):
            return True
    return False
