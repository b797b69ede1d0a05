"""The `cri` source: Kubernetes container logs the kubelet writes for containerd or CRI-O."""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import orjson

from shipper.backfill import Backlog
from shipper.checkpoints import CheckpointStore
from shipper.config import CriSourceConfig, PodMatch
from shipper.model import Enrichment
from shipper.pipeline.pipeline import Pipeline
from shipper.processing.metadata import default_host_name
from shipper.sources.cri import (
    PodLogRef,
    container_ids_from_symlinks,
    decode_cri_chunk,
    parse_pod_log_path,
    pod_enrichment,
)
from shipper.sources.following import FollowingSource, Target
from shipper.sources.rotation import KubeletRotation
from shipper.sources.shaping import SourceShaping
from shipper.sources.tailer import Shaping
from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)


class CriSource(FollowingSource):
    """One follower per `<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`, with the
    Kubernetes fields its path names on every record.

    A container restarted by the kubelet writes a new `<restart+1>.log` beside the old one:
    each is followed on its own (the old one is finished, kept for `kubectl logs --previous`).
    """

    def __init__(
        self,
        name: str,
        config: CriSourceConfig,
        *,
        store: CheckpointStore,
        pipeline: Pipeline,
        telemetry: Telemetry,
        backfill: Backlog | None = None,
    ) -> None:
        super().__init__(
            name,
            config,
            Path(config.root),
            store=store,
            pipeline=pipeline,
            telemetry=telemetry,
            backfill=backfill,
        )
        self._config = config
        self._host_name = config.host_name or default_host_name()
        self._docker_root = (
            os.path.realpath(config.docker_root) if config.docker_root is not None else None
        )
        self._container_links = (
            str(config.container_links) if config.container_links is not None else None
        )
        self._links_missing_said = False
        self._shaping = SourceShaping(name, config, telemetry)
        self._refs: dict[str, PodLogRef] = {}  # by Target.key
        self._enrichments: dict[str, Enrichment] = {}
        self._said: set[str] = set()  # paths left out, logged once

    def discover(self) -> Iterator[Target]:
        new: list[tuple[str, PodLogRef]] = []
        for pod in _subdirectories(str(self.root)):
            for container in _subdirectories(pod):
                if not self.ours(container):
                    continue
                try:
                    names = os.listdir(container)
                except OSError:
                    continue  # removed since listed; the next scan sees the truth
                for name in names:
                    path = os.path.join(container, name)
                    if self.follower_of(path) is not None or not name.endswith(".log"):
                        continue
                    ref = parse_pod_log_path(path)
                    if ref is None or not self._wanted(path, ref):
                        continue
                    new.append((path, ref))
        if not new:
            return
        ids = self._container_ids()  # once per scan that found new files
        for path, ref in new:
            directory, base = os.path.split(path)
            target = Target(directory, KubeletRotation(base), f"{ref.pod_uid}/{ref.container_name}")
            self._refs[target.key] = ref
            fields = pod_enrichment(
                ref, host_name=self._host_name, container_id=ids.get(os.path.realpath(path))
            )
            self._enrichments[target.key] = Enrichment(fields, orjson.dumps(fields)[1:-1])
            yield target

    def shaping(self, target: Target) -> Shaping:
        ref = self._refs[target.key]
        enrichment = self._enrichments[target.key]
        return self._shaping.for_file(
            decode=decode_cri_chunk,
            enrich=lambda: enrichment,
            name=ref.container_name,
        )

    def forgotten(self, target: Target) -> None:
        self._refs.pop(target.key, None)
        self._enrichments.pop(target.key, None)

    def _container_ids(self) -> dict[str, str]:
        if self._container_links is None:
            return {}
        ids = container_ids_from_symlinks(self._container_links)
        if not ids and not self._links_missing_said:
            self._links_missing_said = True
            log.warning(
                "No kubelet container links found: records carry no container.id (mount the "
                "links directory at the same path as on the node, or set container_links).",
                extra={"container_links": self._container_links},
            )
        return ids

    def _wanted(self, path: str, ref: PodLogRef) -> bool:
        if self._docker_root is not None and os.path.islink(path):
            real = os.path.realpath(path)
            if os.path.commonpath([real, self._docker_root]) == self._docker_root:
                # A dockershim node links pod logs to Docker's own files: the docker_json
                # source ships those, and shipping them here too would send every line twice.
                self._say_once(path, "Pod log links into Docker's directory; left to docker_json.")
                return False
        include, exclude = self._config.include, self._config.exclude
        if include is not None and not _matches(include, ref):
            return False
        if _matches(exclude, ref):
            self._say_once(path, "Pod container left out by the configuration.")
            return False
        return True

    def _say_once(self, path: str, message: str) -> None:
        if path not in self._said:
            self._said.add(path)
            log.info(message, extra={"path": path})


def _matches(match: PodMatch, ref: PodLogRef) -> bool:
    return (
        any(fnmatch.fnmatchcase(ref.namespace, p) for p in match.namespaces)
        or any(fnmatch.fnmatchcase(ref.pod_name, p) for p in match.pods)
        or any(fnmatch.fnmatchcase(ref.container_name, p) for p in match.containers)
    )


def _subdirectories(directory: str) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []
