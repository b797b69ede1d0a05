"""The composition root: builds every component from a Config and runs them in the right order."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from shipper.backfill import Backlog
from shipper.checkpoints import CheckpointStore
from shipper.config import (
    Config,
    ConsoleOutputConfig,
    CriSourceConfig,
    DockerJsonSourceConfig,
    ElasticsearchOutputConfig,
    FileOutputConfig,
    FilesSourceConfig,
    OutputConfig,
    SourceConfig,
    SplunkHecOutputConfig,
)
from shipper.errors import ShipperError
from shipper.pipeline.budget import ByteBudget
from shipper.pipeline.output import OutputRunner
from shipper.pipeline.pipeline import Pipeline
from shipper.pipeline.sender import Rejected, Sender
from shipper.sharding import Shard
from shipper.sinks import Sink
from shipper.sinks.console import ConsoleSink
from shipper.sinks.dead_letter import DeadLetterFile
from shipper.sinks.file import FileSink
from shipper.sources.docker import DockerJsonSource
from shipper.sources.files import FilesSource
from shipper.sources.following import FollowingSource
from shipper.sources.handover import Handover
from shipper.sources.kubernetes import CriSource
from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)


def _file_sink(name: str, config: OutputConfig, telemetry: Telemetry) -> Sink:
    del name, telemetry  # a file needs neither
    assert isinstance(config, FileOutputConfig)  # noqa: S101 - the registry key guarantees it
    return FileSink(config.path, fsync=config.fsync)


def _console_sink(name: str, config: OutputConfig, telemetry: Telemetry) -> Sink:
    del name, telemetry  # the console needs neither
    assert isinstance(config, ConsoleOutputConfig)  # noqa: S101 - the registry key guarantees it
    return ConsoleSink(config.stream)


def _elasticsearch_sink(name: str, config: OutputConfig, telemetry: Telemetry) -> Sink:
    # Imported here (see OUTPUT_MODULES): the Elasticsearch client takes a while to import,
    # and most configs without this output never need it.
    from shipper.sinks.elasticsearch import ElasticsearchSink  # noqa: PLC0415

    assert isinstance(config, ElasticsearchOutputConfig)  # noqa: S101 - the registry key guarantees it
    return ElasticsearchSink(config, name=name, telemetry=telemetry)


def _splunk_hec_sink(name: str, config: OutputConfig, telemetry: Telemetry) -> Sink:
    from shipper.sinks.splunk_hec import SplunkHecSink  # noqa: PLC0415 - imported when used

    assert isinstance(config, SplunkHecOutputConfig)  # noqa: S101 - the registry key guarantees it
    return SplunkHecSink(config, name=name, telemetry=telemetry)


# Builds an output's sink from its name, its config and the app's telemetry.
SinkFactory = Callable[[str, OutputConfig, Telemetry], Sink]

# Output types by their `type:` in the config; an explicit table, not import side effects.
SINKS: dict[str, SinkFactory] = {
    "file": _file_sink,
    "console": _console_sink,
    "elasticsearch": _elasticsearch_sink,
    "splunk_hec": _splunk_hec_sink,
}


# The modules an output type imports when its first sink is built, rather than with this one.
OUTPUT_MODULES: dict[str, str] = {
    "elasticsearch": "shipper.sinks.elasticsearch",
    "splunk_hec": "shipper.sinks.splunk_hec",
}


def import_outputs(config: Config) -> None:
    """Import now what the configured outputs will: worker 0 does before it forks the others
    (shipper.workers), so they share these pages rather than each importing its own copy (the
    Elasticsearch client alone is about 25 MiB)."""
    for output in config.outputs.values():
        module = OUTPUT_MODULES.get(output.type)
        if module is not None:
            importlib.import_module(module)


def build_sender(
    name: str,
    config: OutputConfig,
    sink: Sink,
    *,
    dead_letter: Callable[[str, list[Rejected]], Awaitable[None]],
    telemetry: Telemetry,
) -> Sender:
    """An output's Sender, retrying as its `retry:` says: the running App's and the one
    `shipper replay-dead-letters` sends with, so a replay retries as shipping does."""
    return Sender(
        name,
        sink,
        initial_backoff=config.retry.initial_backoff,
        max_backoff=config.retry.max_backoff,
        max_attempts=config.retry.max_attempts,
        dead_letter=dead_letter,
        telemetry=telemetry,
    )


class Source(Protocol):
    """What the app needs of a source: a name, and a task that reads until cancelled."""

    name: str

    async def run(self) -> None: ...


# Source types by their config class (which the `type:` in the config chose); each takes
# (name, config, *, store, pipeline, telemetry, backfill).
SOURCES: dict[type, Callable[..., Source]] = {
    DockerJsonSourceConfig: DockerJsonSource,
    CriSourceConfig: CriSource,
    FilesSourceConfig: FilesSource,
}


def build_source(
    name: str,
    config: SourceConfig,
    store: CheckpointStore,
    pipeline: Pipeline,
    telemetry: Telemetry,
    *,
    backfill: Backlog | None = None,
) -> Source:
    """The source a config describes (its `type:` chose the config class, which chooses this).
    With `backfill`, it reads what its files hold now and returns (`run --once`)."""
    return SOURCES[type(config)](
        name, config, store=store, pipeline=pipeline, telemetry=telemetry, backfill=backfill
    )


class App:
    """One running shipper: sources → pipeline → outputs, checkpoints flushed on an interval.

    Shutdown order (on `stop`): stop reading; let the outputs send what was read, within
    `pipeline.shutdown_timeout`; then flush the checkpoints, which by then cover every record
    that reached a final outcome. Whatever did not settle in time is read again next start.
    """

    def __init__(
        self,
        config: Config,
        *,
        telemetry: Telemetry | None = None,
        sinks: dict[str, SinkFactory] | None = None,
        once: bool = False,
        handover: Handover | None = None,
        shard: Shard | None = None,
        first_start: bool | None = None,
    ) -> None:
        self.config = config
        # One worker's share of the files, when `pipeline.workers` runs several (shipper.workers),
        # and whether the supervisor found this to be the first start (see CheckpointStore.load).
        self.shard = shard
        self._first_start = first_start
        # Deleted files still being read, passed between the pipelines of a reload (runner).
        self.handover = handover
        # A backfill (`run --once`): read every file up to its current end, then stop.
        self.once = once
        # What the backfill has to read and has settled (its progress); None unless `once`.
        self.backlog: Backlog | None = Backlog() if once else None
        # Set when a backfill read everything and every output gave it a final outcome.
        self.drained = False
        self.telemetry = telemetry or Telemetry()
        self._sinks = SINKS if sinks is None else sinks
        self.store = CheckpointStore(
            config.checkpoint_path, on_corrupt=config.checkpoints.on_corrupt, shard=shard
        )
        self.dead_letters = DeadLetterFile(config.dead_letter_path)
        # The budget bounds the whole process tree: each worker holds its share of it.
        workers = shard.count if shard is not None else 1
        self.budget = ByteBudget(config.pipeline.max_buffered_bytes // workers, self.telemetry)
        self.outputs = [self._build_output(name, cfg) for name, cfg in config.outputs.items()]
        self.pipeline = Pipeline(self.outputs, self.budget, self.telemetry)
        self.sources: list[Source] = []
        self.started = asyncio.Event()
        # When (time.monotonic()) the checkpoint file last held every settled offset: written,
        # or nothing new to write. None before the first flush. shipper_checkpoint_age_seconds.
        self.checkpoints_current_at: float | None = None

    def _build_output(self, name: str, config: OutputConfig) -> OutputRunner:
        sink = self._sinks[config.type](name, config, self.telemetry)
        sender = build_sender(
            name, config, sink, dead_letter=self._dead_letter, telemetry=self.telemetry
        )
        return OutputRunner(
            name,
            sink,
            sender,
            inputs=config.inputs,
            max_records=config.batch.max_records,
            max_bytes=config.batch.max_bytes,
            linger=config.batch.linger,
            max_in_flight=config.max_in_flight,
            telemetry=self.telemetry,
        )

    async def _dead_letter(self, output: str, rejected: list[Rejected]) -> None:
        await self.dead_letters.write(output, rejected)
        log.warning(
            "Records dead-lettered.",
            extra={"output": output, "count": len(rejected), "file": str(self.dead_letters.path)},
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down in order; ShipperError if it cannot start."""
        self.store.load(first_start=self._first_start)
        if self.store.set_aside_path is not None:
            log.error(
                "Checkpoint file was corrupt; set it aside and started fresh.",
                extra={
                    "set_aside": str(self.store.set_aside_path),
                    "reason": self.store.corrupt_reason,
                },
            )
        # Write the checkpoint file once before shipping anything: if it cannot be written,
        # every restart would ship everything again, so refuse to start instead.
        self.flush_checkpoints(force=True)
        await self._open_sinks()
        self.sources = [
            build_source(
                name, cfg, self.store, self.pipeline, self.telemetry, backfill=self.backlog
            )
            for name, cfg in self.config.sources.items()
        ]
        if self.handover is not None:
            self.handover.discard_others(set(self.config.sources))
            for source in self.sources:
                if isinstance(source, FollowingSource):
                    source.handover = self.handover
        if self.backlog is not None:
            self.backlog.expect(len(self.sources))
        output_tasks = [
            asyncio.create_task(output.run(), name=f"output:{output.name}")
            for output in self.outputs
        ]
        source_tasks = [
            asyncio.create_task(source.run(), name=f"source:{source.name}")
            for source in self.sources
        ]
        flusher = asyncio.create_task(self._flush_periodically(), name="checkpoints")
        log.info(
            "shipper started.",
            extra={
                "sources": list(self.config.sources),
                "outputs": list(self.config.outputs),
                "checkpoints": str(self.config.checkpoint_path),
            },
        )
        self.started.set()
        failure: BaseException | None = None
        stopping = asyncio.create_task(stop.wait())
        try:
            if self.once:
                failure = await self._backfill(stopping, source_tasks, output_tasks)
            else:
                done, _ = await asyncio.wait(
                    [stopping, *output_tasks, *source_tasks], return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if task is not stopping and not task.cancelled() and task.exception():
                        failure = task.exception()
        finally:
            stopping.cancel()
            await self._shutdown(source_tasks, output_tasks, flusher)
        if failure is not None:
            raise failure

    async def _backfill(
        self,
        stopping: asyncio.Task[bool],
        source_tasks: list[asyncio.Task[None]],
        output_tasks: list[asyncio.Task[None]],
    ) -> BaseException | None:
        """`run --once`: wait until every source has read its files, then close the outputs
        and wait, with no time limit (an output that is down is retried as usual), until they
        have sent everything. `stop` ends either wait, and the usual shutdown follows. Returns
        what failed, if anything; `drained` says whether everything was delivered."""
        failure: BaseException | None = None
        reading = set(source_tasks)
        while reading:
            done, _ = await asyncio.wait(
                [stopping, *reading, *output_tasks], return_when=asyncio.FIRST_COMPLETED
            )
            if stopping in done:
                return failure
            for task in done:
                error = task.exception() if not task.cancelled() else None
                if task in reading:
                    reading.discard(task)
                    failure = failure or error
                elif error is not None:
                    # An output failed for good while sources still read: what they read could
                    # never settle, and a full memory budget would keep them waiting forever.
                    return error
        log.info("Backfill: everything is read; waiting until the outputs have delivered it.")
        for output in self.outputs:
            output.close()
        sending = set(output_tasks)
        while sending:
            done, _ = await asyncio.wait([stopping, *sending], return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                return failure
            for task in done:
                sending.discard(task)
                error = task.exception() if not task.cancelled() else None
                failure = failure or error
        self.drained = failure is None
        return failure

    async def _open_sinks(self) -> None:
        """Open every output's sink; if one refuses, close those already open (a reload that
        cannot start falls back to the previous config and must not leak their clients)."""
        opened: list[OutputRunner] = []
        try:
            for output in self.outputs:
                await output.sink.open()
                opened.append(output)
        except BaseException:
            for output in opened:
                with contextlib.suppress(Exception):
                    await output.sink.close()
            raise

    async def _shutdown(
        self,
        source_tasks: list[asyncio.Task[None]],
        output_tasks: list[asyncio.Task[None]],
        flusher: asyncio.Task[None],
    ) -> None:
        log.info("Stopping: no more reading; finishing what is in flight.")
        for task in source_tasks:
            task.cancel()
        await asyncio.gather(*source_tasks, return_exceptions=True)
        for output in self.outputs:
            output.close()
        timeout = self.config.pipeline.shutdown_timeout
        _, unfinished = (
            await asyncio.wait(output_tasks, timeout=timeout) if output_tasks else ((), ())
        )
        if unfinished:
            log.warning(
                "Outputs did not finish in time; their records are read again at the next start.",
                extra={"timeout_s": timeout, "buffered_bytes": self.budget.used},
            )
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        for output in self.outputs:
            await output.sink.close()
        self.flush_checkpoints()
        log.info("shipper stopped.", extra={"checkpoints": str(self.config.checkpoint_path)})

    def flush_checkpoints(self, *, force: bool = False) -> None:
        if self.store.flush(force=force):
            self.telemetry.inc("shipper_checkpoint_flushes_total")
        # Not reached when the write failed (it raises): then the age grows.
        self.checkpoints_current_at = time.monotonic()

    async def _flush_periodically(self) -> None:
        failing: str | None = None
        while True:
            await asyncio.sleep(self.config.checkpoints.flush_interval)
            try:
                self.flush_checkpoints()
            except ShipperError as exc:
                # A full or read-only disk: keep shipping; the next flush tries again, and the
                # worst case of a crash meanwhile is more duplicates, never a loss. Said once
                # per cause, not at every interval.
                if str(exc) != failing:
                    log.error("Cannot write checkpoints.", extra={"error": str(exc)})
                    failing = str(exc)
            else:
                if failing is not None:
                    log.info("Checkpoints are written again.")
                    failing = None
