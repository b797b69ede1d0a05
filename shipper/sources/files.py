"""The `files` source: plain-text or NDJSON files named by globs (sidecar mode)."""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from shipper import __version__
from shipper.backfill import Backlog
from shipper.checkpoints import CheckpointStore
from shipper.config import DecodeJsonConfig, FilesSourceConfig, ProcessorConfig
from shipper.model import Enrichment
from shipper.pipeline.pipeline import Pipeline
from shipper.processing.metadata import ECS_VERSION, default_host_name
from shipper.sources.following import FollowingSource, Target
from shipper.sources.plain import decode_text_chunk
from shipper.sources.rotation import LogrotateRotation, logrotate_live_name
from shipper.sources.shaping import SourceShaping
from shipper.sources.tailer import Shaping
from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)


class FilesSource(FollowingSource):
    """One follower per file matching `paths` (less `exclude`), with its rotated generations
    (`app.log.1`, `app.log.2.gz`, `app.log-20240101`) read before it, oldest first.

    A sidecar cannot read Docker's metadata: every record carries the configured `fields`
    (which may name environment variables, e.g. from the Kubernetes downward API).
    """

    def __init__(
        self,
        name: str,
        config: FilesSourceConfig,
        *,
        store: CheckpointStore,
        pipeline: Pipeline,
        telemetry: Telemetry,
        backfill: Backlog | None = None,
    ) -> None:
        super().__init__(
            name,
            config,
            _watch_root(config.paths),
            store=store,
            pipeline=pipeline,
            telemetry=telemetry,
            backfill=backfill,
        )
        self._config = config
        # NDJSON is text whose every line is decoded: the decode_json step, first. The app's
        # own `message` key becomes the record's message (shipper's other fields stay).
        leading = (
            [ProcessorConfig(decode_json=DecodeJsonConfig(overwrite_keys=True))]
            if config.format == "ndjson"
            else []
        )
        self._shaping = SourceShaping(name, config, telemetry, leading_steps=leading)
        fields = static_fields(config.fields, host_name=config.host_name or default_host_name())
        self._enrichment = Enrichment(fields, orjson.dumps(fields)[1:-1])

    def discover(self) -> Iterator[Target]:
        live: set[str] = set()
        for pattern in self._config.paths:
            for found in glob.glob(pattern, recursive=True):
                path = os.path.normpath(found)
                if self._excluded(path) or not os.path.isfile(path):
                    continue
                # A glob such as /logs/* matches rotated files too: each is read as a
                # generation of its live file (even one missing for now), never on its own.
                directory, name = os.path.split(path)
                base = logrotate_live_name(name)
                live_path = os.path.join(directory, base) if base is not None else path
                live.add(live_path if self._selected(live_path) else path)
        for path in sorted(live):
            if self.follower_of(path) is None:
                directory, base = os.path.split(path)
                yield Target(directory, LogrotateRotation(base), "")

    def _selected(self, path: str) -> bool:
        """Whether `path` is named by the configured globs (whether or not it exists)."""
        return not self._excluded(path) and any(
            fnmatch.fnmatchcase(path, os.path.normpath(pattern)) for pattern in self._config.paths
        )

    def _excluded(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self._config.exclude)

    def shaping(self, target: Target) -> Shaping:
        enrichment = self._enrichment
        # Multiline rules match a file by its name through `names` (there is no container).
        return self._shaping.for_file(
            decode=decode_text_chunk, enrich=lambda: enrichment, name=target.rotation.base
        )


def static_fields(fields: dict[str, Any], *, host_name: str) -> dict[str, Any]:
    """The configured fields (dotted keys made nested), with host, agent and ECS version."""
    document: dict[str, Any] = {}
    for dotted, value in fields.items():
        *parents, last = dotted.split(".")
        node = document
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = value
    host = document.setdefault("host", {})
    if isinstance(host, dict):
        host.setdefault("name", host_name)
    document["agent"] = {"type": "shipper", "version": __version__}
    document["ecs"] = {"version": ECS_VERSION}
    return document


def _watch_root(patterns: list[str]) -> Path:
    """The deepest directory holding every pattern's matches: what to watch for new files."""
    prefixes = []
    for pattern in patterns:
        parts = Path(pattern).parts
        fixed = list(parts[: _first_glob(parts)])
        prefixes.append(os.path.join(*fixed) if fixed else ".")
    return Path(os.path.commonpath(prefixes)) if prefixes else Path(".")


def _first_glob(parts: tuple[str, ...]) -> int:
    for index, part in enumerate(parts):
        if any(char in part for char in "*?["):
            return index
    return len(parts) - 1  # a plain path: watch its directory
