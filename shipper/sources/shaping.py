"""SourceShaping: a source's multiline parsers and processing steps, compiled once, and the
Shaping each followed file gets from them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from shipper.config import (
    CriSourceConfig,
    DockerJsonSourceConfig,
    FilesSourceConfig,
    ProcessorConfig,
)
from shipper.model import Enrichment
from shipper.processing.multiline import MultilineJoiner, build_parsers, choose_parser
from shipper.processing.processors import Processors
from shipper.sources.tailer import ChunkDecoder, Shaping
from shipper.telemetry.counters import Telemetry


class SourceShaping:
    """Compiled once per source; `for_file` is called once per followed file."""

    def __init__(
        self,
        name: str,
        config: DockerJsonSourceConfig | CriSourceConfig | FilesSourceConfig,
        telemetry: Telemetry,
        *,
        leading_steps: Sequence[ProcessorConfig] = (),
    ) -> None:
        self._multiline = config.multiline
        self._parsers = build_parsers(config.multiline)
        steps = [*leading_steps, *config.processors]
        processors = Processors(steps, source=name, telemetry=telemetry)
        self._processors = processors if processors else None

    def for_file(
        self,
        *,
        decode: ChunkDecoder,
        enrich: Callable[[], Enrichment | None] | None,
        name: str = "",
        image: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Shaping:
        """The Shaping of one file: its container's multiline parser (by rule, label or
        default) gets a joiner of its own, since a joiner keeps that file's state."""
        parser = choose_parser(
            self._multiline, self._parsers, name=name, image=image, labels=labels or {}
        )
        multiline = (
            MultilineJoiner(
                parser, max_lines=self._multiline.max_lines, max_bytes=self._multiline.max_bytes
            )
            if parser is not None
            else None
        )
        return Shaping(
            decode=decode,
            enrich=enrich,
            multiline=multiline,
            multiline_timeout=self._multiline.flush_timeout,
            processors=self._processors,
        )
