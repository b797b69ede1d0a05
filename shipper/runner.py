"""The `run` command's process: signals, the monitoring endpoint, reloading the config on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from shipper.app import App
from shipper.config import DEFAULT_ORIGIN, Config, LoggingConfig, MonitoringConfig, load_config
from shipper.errors import ConfigError, ShipperError
from shipper.sharding import Shard
from shipper.sources.handover import Handover
from shipper.telemetry.counters import Telemetry
from shipper.telemetry.logging import setup_logging
from shipper.telemetry.report import WorkerBoard, WorkerReport
from shipper.telemetry.server import HEARTBEAT_INTERVAL, MonitoringServer

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 1

# Config sections no App uses: a reload that changes only these is applied in place, without
# restarting the pipeline (so followers keep their files, deleted-but-open ones included).
_PROCESS_SECTIONS = frozenset({"logging", "monitoring"})

# Where RLIMIT_NOFILE cannot go above on Linux when the hard limit is "unlimited".
_NR_OPEN = Path("/proc/sys/fs/nr_open")
_NR_OPEN_DEFAULT = 1024 * 1024


class Supervision(Protocol):
    """What worker 0 runs beside its pipeline when there are several (shipper.workers)."""

    board: WorkerBoard  # the workers' latest reports: what the endpoint answers from
    telemetry: Telemetry  # the supervision's own series

    def attach(self, request_stop: Callable[[], None]) -> None: ...

    def forward(self, signum: int) -> None: ...


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What makes a process one worker of several (shipper.workers): its share of the files,
    whether the first worker found this to be a first start, where its reports go, and, for
    worker 0, the supervision of the others."""

    shard: Shard
    first_start: bool | None
    send_report: Callable[[WorkerReport], None]
    supervision: Supervision | None = None


def run_until_signalled(config: Config, path: Path | None, *, once: bool = False) -> int:
    """Run shipper until SIGTERM or SIGINT (or, with `once`, until the backlog is shipped),
    reloading `path` on SIGHUP; the exit code. With `pipeline.workers` above 1 this process
    supervises that many workers instead (a backfill always runs in one process)."""
    raise_open_files_limit()
    if config.pipeline.workers > 1 and not once:
        from shipper.workers import supervise  # noqa: PLC0415 - only several workers need it

        return supervise(config, path)
    return run_worker(config, path, once=once)


def run_worker(
    config: Config, path: Path | None, *, once: bool = False, worker: WorkerRole | None = None
) -> int:
    """The event loop's life: the whole process, or one worker's when `worker` is given."""
    try:
        return asyncio.run(_serve(config, path, once=once, worker=worker))
    except ShipperError as exc:
        log.error("shipper cannot go on.", extra={"error": str(exc)})
        return EXIT_FATAL


def raise_open_files_limit() -> None:
    """Lift the soft open-files limit to the hard one: one descriptor per followed file, plus
    the deleted files still being drained, can pass the usual soft limit of 1,024 on a busy
    host long before the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # "Unlimited" cannot be set on Linux (EPERM past fs.nr_open): aim for nr_open instead.
    target = _nr_open() if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning(
            "Cannot raise the open-files limit.",
            extra={"soft": soft, "hard": hard, "error": str(exc)},
        )
        return
    log.info("Raised the open-files limit.", extra={"from": soft, "to": target})


def _nr_open() -> int:
    try:
        return int(_NR_OPEN.read_text())
    except (OSError, ValueError):
        return _NR_OPEN_DEFAULT


async def _serve(
    config: Config,
    path: Path | None,
    *,
    once: bool,
    telemetry: Telemetry | None = None,
    log_stream: TextIO | None = None,
    worker: WorkerRole | None = None,
) -> int:
    """The process's life on the event loop; `telemetry` and `log_stream` (stderr if None)
    let in-process tests watch it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload = asyncio.Event()
    supervision = worker.supervision if worker is not None else None
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _request_stop, stop, signum, supervision)
    # A backfill ends by itself; a reload would only start it over.
    if once:
        loop.add_signal_handler(signal.SIGHUP, _ignore_reload)
    else:
        loop.add_signal_handler(signal.SIGHUP, _request_reload, reload, supervision)
    if supervision is not None:

        def stop_soon() -> None:  # from the supervision's thread
            loop.call_soon_threadsafe(stop.set)

        # A worker that died stops every worker, this one included.
        supervision.attach(stop_soon)
    # The `run` command blocks SIGHUP until now, as its default action ends the process: one
    # sent during startup is delivered here and reloads.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    runner = _Runner(path, telemetry or Telemetry(), stop, reload, log_stream, worker=worker)
    runner.apply(config)
    try:
        if once:
            from shipper.backfill import run_backfill  # noqa: PLC0415 - only --once needs it

            app = App(config, telemetry=runner.telemetry, once=True)
            runner.watch(app)  # /readyz and shipper_ready follow the backfill too
            return await run_backfill(app, stop)
        await runner.serve(config)
        return EXIT_OK
    finally:
        runner.close()


def _request_stop(stop: asyncio.Event, signum: int, supervision: Supervision | None) -> None:
    log.info("Asked to stop.", extra={"signal": signal.Signals(signum).name})
    stop.set()
    if supervision is not None:
        supervision.forward(signum)  # the other workers stop at the same time


def _request_reload(reload: asyncio.Event, supervision: Supervision | None) -> None:
    reload.set()
    if supervision is not None:
        supervision.forward(signal.SIGHUP)  # each worker reads the file and reloads


def _ignore_reload() -> None:
    log.warning("SIGHUP ignored: a --once backfill does not reload its config.")


def _describe(exc: Exception) -> str:
    # shipper's own errors and the OS's name paths and options, never a value; an unexpected
    # exception's text could quote anything, so only its type is logged.
    if isinstance(exc, ShipperError | OSError):
        return str(exc)
    return f"unexpected {type(exc).__name__}"


class _CouldNotStart(Exception):
    """A reloaded config's App failed before it started; the previous config can run again."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(_describe(cause))
        self.cause = cause


class _Runner:
    """One App after another: each reload that changes what the App uses shuts the running one
    down in order (checkpoints flushed) and starts the next from those checkpoints, with the
    same Telemetry and the same monitoring endpoint."""

    def __init__(
        self,
        path: Path | None,
        telemetry: Telemetry,
        stop: asyncio.Event,
        reload: asyncio.Event,
        log_stream: TextIO | None,
        *,
        worker: WorkerRole | None = None,
    ) -> None:
        self.path = path
        # A worker of several: no endpoint of its own; it reports to its supervisor instead.
        self.worker = worker
        self._first_start = worker.first_start if worker is not None else None
        self._reporting: asyncio.Task[None] | None = None
        # Worker 0 of several also serves the endpoint, from every worker's reports.
        self.endpoint: MonitoringServer | None = None
        # With no file, a reload reads the embedded default again: nothing changes.
        self.origin = str(path) if path is not None else DEFAULT_ORIGIN
        self.telemetry = telemetry
        self.stop = stop
        self.reload = reload
        self._log_stream = log_stream
        self._logging: LoggingConfig | None = None
        self._monitoring_config: MonitoringConfig | None = None
        self.monitoring: MonitoringServer | None = None
        self.app: App | None = None
        # Deleted files one App was still reading when a reload stopped it, for the next.
        self.handover = Handover()
        # The config of the last App that started: where a reload that cannot start goes back.
        self.good: Config | None = None
        self._changed: list[str] = []  # what the pending reload changed, for its log line
        self._current: Config | None = None  # what the running App runs (or in-place updates)
        self._noted: App | None = None  # the last App whose start was noted

    def apply(self, config: Config) -> None:
        """Logging and the monitoring endpoint as `config` says (only what changed)."""
        if config.logging != self._logging:
            setup_logging(
                config.logging.level,
                config.logging.format,
                self._log_stream,
                rate_limit=config.logging.rate_limit,
                on_suppressed=self._count_suppressed,
            )
            self._logging = config.logging
        if config.monitoring != self._monitoring_config:
            if self.monitoring is not None:
                self.monitoring.stop()
            self.monitoring = MonitoringServer(
                config.monitoring, self.telemetry, listen=self.worker is None
            )
            self._monitoring_config = config.monitoring
            self.monitoring.start()
            if self.app is not None:
                self.monitoring.watch(self.app)
            supervision = self.worker.supervision if self.worker is not None else None
            if supervision is not None:
                if self.endpoint is not None:
                    self.endpoint.stop()
                self.endpoint = MonitoringServer(config.monitoring, supervision.telemetry)
                self.endpoint.watch_workers(supervision.board)
                self.endpoint.start()
        if self.worker is not None and self._reporting is None:
            self._reporting = asyncio.create_task(self._report(self.worker), name="report")

    async def _report(self, worker: WorkerRole) -> None:
        """Hand the supervisor this worker's series and health every heartbeat."""
        while True:
            if self.monitoring is not None:
                worker.send_report(self.monitoring.report(worker.shard.index))
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def watch(self, app: App) -> None:
        """The App the monitoring endpoint reports on from now on."""
        self.app = app
        if self.monitoring is not None:
            self.monitoring.watch(app)

    def close(self) -> None:
        if self._reporting is not None:
            self._reporting.cancel()
        self.handover.discard_others(set())
        if self.monitoring is not None:
            self.monitoring.stop()
        if self.endpoint is not None:
            self.endpoint.stop()

    def _count_suppressed(self, level: str) -> None:
        self.telemetry.inc("shipper_log_messages_suppressed_total", level=level)

    async def serve(self, config: Config) -> None:
        """Run `config`, then each reloaded one, until asked to stop."""
        running = config
        while not self.stop.is_set():
            try:
                following = await self._run(running)
            except _CouldNotStart as failure:
                assert self.good is not None  # noqa: S101 - only raised when there is one
                self.telemetry.inc("shipper_reloads_total", result="failed")
                log.error(
                    "The reloaded config could not start; going back to the previous one.",
                    extra={"config": self.origin, "error": _describe(failure.cause)},
                )
                running = self.good
                self.apply(running)
                continue
            if following is None:
                return
            running = following

    async def _run(self, config: Config) -> Config | None:
        """Run an App on `config` until stopped (None), or until SIGHUP brought a config that
        needs a new App: that config, once this App has shut down in order."""
        # A reloaded config that fails to start is not fatal when a config ran before it.
        reloaded = self.good is not None and config is not self.good
        self._current = config
        app = self._build_app(config, reloaded=reloaded)
        app_stop = asyncio.Event()
        running = asyncio.create_task(app.run(app_stop), name="app")
        started = asyncio.create_task(app.started.wait(), name="started")
        stopping = asyncio.create_task(self.stop.wait(), name="stop")
        try:
            while True:
                reloading = asyncio.create_task(self.reload.wait(), name="reload")
                waiting = {running, stopping, reloading} | (set() if started.done() else {started})
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                reloading.cancel()
                self._note_started(app, reloaded=reloaded)
                if running.done() or stopping.done():
                    # Stopped, or the App ended by itself (a failure, or nothing to follow).
                    app_stop.set()
                    await self._finish(running, app, reloaded=reloaded)
                    return None
                if not self.reload.is_set():
                    continue
                # Cleared before the file is read: a SIGHUP sent after an edit made while it
                # is being read reads it again. SIGHUPs that come meanwhile coalesce into one.
                self.reload.clear()
                following = self._reread(self._current)
                if following is None:
                    continue
                if self._applied_in_place(self._current, following):
                    self._current = following
                    if app.started.is_set():
                        self.good = following
                    continue
                app_stop.set()
                await self._finish(running, app, reloaded=reloaded)
                # A SIGHUP during startup: the App started before it stopped for the reload.
                self._note_started(app, reloaded=reloaded)
                # SIGTERM during the reload: stop rather than start the new config.
                return None if self.stop.is_set() else following
        finally:
            stopping.cancel()
            started.cancel()

    def _note_started(self, app: App, *, reloaded: bool) -> None:
        """Once `app` has started, its config is the one a failed reload goes back to, and
        the reload that brought it is done."""
        if app.started.is_set() and self._noted is not app:
            self._noted = app
            self.good = self._current
            if reloaded:
                self._reloaded(restarted=True)

    def _build_app(self, config: Config, *, reloaded: bool) -> App:
        try:
            worker = self.worker
            app = App(
                config,
                telemetry=self.telemetry,
                handover=self.handover,
                shard=worker.shard if worker is not None else None,
                first_start=self._first_start,
            )
            self._first_start = None  # what the supervisor found holds for the first App only
        except Exception as exc:
            if not reloaded:
                raise
            raise _CouldNotStart(exc) from exc
        self.watch(app)
        return app

    def _applied_in_place(self, current: Config, following: Config) -> bool:
        """Apply a reload that changes only logging or monitoring (True); else say that the
        running App is about to stop for it (False)."""
        self._changed = [
            name
            for name in type(current).model_fields
            if getattr(current, name) != getattr(following, name)
        ]
        self.apply(following)
        if set(self._changed) <= _PROCESS_SECTIONS:
            self._reloaded(restarted=False)
            return True
        log.info(
            "Reloading: stopping the running config in order, then starting the new one.",
            extra={"config": self.origin, "changed": self._changed},
        )
        if following.checkpoint_path != current.checkpoint_path:
            log.warning(
                "The reloaded config keeps its checkpoints in another file: files are read "
                "from the positions recorded there, not from where this run got.",
                extra={
                    "from": str(current.checkpoint_path),
                    "to": str(following.checkpoint_path),
                },
            )
        return False

    @staticmethod
    async def _finish(running: asyncio.Task[None], app: App, *, reloaded: bool) -> None:
        """Wait for the App's end; its failure before it started is _CouldNotStart when a
        reload brought it (the config that ran before can take over again)."""
        try:
            await running
        except Exception as exc:
            if reloaded and not app.started.is_set():
                raise _CouldNotStart(exc) from exc
            raise

    def _reloaded(self, *, restarted: bool) -> None:
        self.telemetry.inc("shipper_reloads_total", result="ok")
        log.info(
            "Config reloaded.",
            extra={"config": self.origin, "changed": self._changed, "restarted": restarted},
        )

    def _reread(self, running: Config) -> Config | None:
        """The config file read again and validated; None (and the reason logged) if it is not
        valid or says nothing new, so the running config goes on."""
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            self.telemetry.inc("shipper_reloads_total", result="invalid")
            # load_config's message names the file and each problem, never a value.
            log.error(
                "Config reload refused; the running config goes on.",
                extra={"config": self.origin, "error": str(exc)},
            )
            return None
        if config == running:
            self.telemetry.inc("shipper_reloads_total", result="unchanged")
            log.info("Config reload: nothing changed.", extra={"config": self.origin})
            return None
        return config
