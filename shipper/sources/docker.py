"""The `docker_json` source: discovers container directories under the root and follows each."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from shipper.backfill import Backlog
from shipper.checkpoints import CheckpointStore
from shipper.config import ContainerMatch, DockerJsonSourceConfig
from shipper.pipeline.pipeline import Pipeline
from shipper.processing.metadata import (
    MetadataCache,
    MetadataOptions,
    Selection,
    default_host_name,
    log_driver,
    own_container_id,
)
from shipper.sources.docker_events import ContainerEvent, DockerEvents
from shipper.sources.docker_json import decode_chunk
from shipper.sources.following import FollowingSource, Target
from shipper.sources.rotation import DockerRotation
from shipper.sources.shaping import SourceShaping
from shipper.sources.tailer import LOG_SUFFIX, Shaping
from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)


class DockerJsonSource(FollowingSource):
    """One follower per container directory, with the container's metadata on every record.

    With `docker_host`, Docker's event stream makes container changes take effect at once; the
    files remain the truth without it.
    """

    def __init__(
        self,
        name: str,
        config: DockerJsonSourceConfig,
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
        self._metadata = MetadataCache(
            MetadataOptions(
                host_name=config.host_name or default_host_name(),
                dedot_labels=config.dedot_labels,
                env_allowlist=tuple(config.env_allowlist),
            ),
            on_error=self._metadata_error,
        )
        self._shaping = SourceShaping(name, config, telemetry)
        self._own_id = own_container_id() if config.exclude_self else None
        self._selection = Selection(
            include=_patterns(config.include) if config.include is not None else None,
            exclude=_patterns(config.exclude),
            opt_out_label=config.opt_out_label,
        )
        self._excluded: set[str] = set()  # containers left out, said once
        self._not_json_file: set[str] = set()  # containers already warned about
        self._root_missing_logged = False
        self._unlistable: set[str] = set()  # container directories whose error was logged

    def discover(self) -> Iterator[Target]:
        try:
            directories = [entry for entry in os.scandir(self.root) if entry.is_dir()]
        except OSError as exc:
            if not self._root_missing_logged:
                log.warning(
                    "Log root is not readable; will look again.",
                    extra={"root": str(self.root), "error": exc.strerror or str(exc)},
                )
                self._root_missing_logged = True
            return
        self._root_missing_logged = False
        for entry in directories:
            base = entry.name + LOG_SUFFIX
            if (
                entry.name == self._own_id
                or not self.ours(entry.path)
                or self.follower_of(os.path.join(entry.path, base))
            ):
                continue
            try:
                names = os.listdir(entry.path)
            except FileNotFoundError:
                continue  # removed since the scan
            except OSError as exc:
                if entry.path not in self._unlistable:  # once, not at every scan
                    self._unlistable.add(entry.path)
                    log.error(
                        "Cannot list container directory; will try again.",
                        extra={"path": entry.path, "error": exc.strerror or str(exc)},
                    )
                continue
            self._unlistable.discard(entry.path)
            if not any(name.startswith(base) for name in names):
                self._check_log_driver(entry.path, entry.name)
            elif self._selected(entry.path, entry.name):
                yield Target(entry.path, DockerRotation(base), entry.name)

    def shaping(self, target: Target) -> Shaping:
        facts = self._metadata.facts(target.directory, target.container_id)
        name, image, labels = facts if facts is not None else ("", "", {})
        return self._shaping.for_file(
            decode=decode_chunk,
            enrich=functools.partial(self._metadata.get, target.directory, target.container_id),
            name=name,
            image=image,
            labels=labels,
        )

    def forgotten(self, target: Target) -> None:
        self._metadata.forget(target.directory)

    async def side_tasks(self) -> None:
        if self._config.docker_host is not None:
            await DockerEvents(
                self._config.docker_host, self._on_event, telemetry=self._telemetry
            ).run()

    def _on_event(self, event: ContainerEvent) -> None:
        """A container changed: act now rather than at the next look."""
        directory = os.path.join(self.root, event.container_id)
        followers = self.followers_in(directory)
        if event.action in ("create", "start") and not followers:
            self.request_scan()
        elif event.action == "rename":
            # Docker rewrites config.v2.json on a rename; read it again for the next chunk.
            self._metadata.forget(directory)
        elif event.action == "die":
            for follower in followers:
                follower.flush_pending()  # its last multiline record or partial line, now
        elif event.action == "destroy":
            for follower in followers:
                follower.hint()  # drained through open descriptors, then released

    def _selected(self, directory: str, container_id: str) -> bool:
        if self._selection.ships(self._metadata.facts(directory, container_id)):
            self._excluded.discard(container_id)
            return True
        if container_id not in self._excluded:
            self._excluded.add(container_id)
            log.info(
                "Container left out by the configuration.", extra={"container_id": container_id}
            )
        return False

    def _metadata_error(self, container_id: str, reason: str) -> None:
        self._telemetry.inc("shipper_metadata_errors_total", source=self.name)
        log.warning(
            "Container metadata unavailable; its records ship with the container id only.",
            extra={"container_id": container_id, "reason": reason},
        )

    def _check_log_driver(self, directory: str, container_id: str) -> None:
        """A container with no json-file log: say once if its driver keeps logs off disk."""
        if container_id in self._not_json_file:
            return
        driver = log_driver(directory)
        if driver is not None and driver != "json-file":
            self._not_json_file.add(container_id)
            log.warning(
                "Container logs with another driver than json-file: nothing on disk to ship.",
                extra={"container_id": container_id, "log_driver": driver},
            )


def _patterns(match: ContainerMatch) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    return tuple(match.names), tuple(match.images), tuple(match.labels)
