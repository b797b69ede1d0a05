"""Several worker processes, each following a share of the files: the supervisor that runs them.

One CPython process tops out near one core (bench/README.md), so `pipeline.workers: N` forks N
workers, each a whole pipeline (sources, buffer, outputs, retries, dead letters) over the files
whose directory hashes to it (shipper.sharding). Nothing crosses between workers but the
checkpoint file (merged under a lock) and the output files (appended under a lock): a
container's lines stay in one process, in order, and each worker moves checkpoints only for
what its outputs confirmed, as one process does.

The supervisor is the process the operator started. It owns the monitoring endpoint (the
workers report to it every second over a pipe), forwards SIGTERM and SIGHUP, restarts a worker
that dies or goes silent (with a backoff), and exits when all of them have stopped. It has no
event loop: a plain loop waiting on the workers' pipes and on signals, so that forking a
replacement worker never copies a running loop into it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from shipper.checkpoints import CheckpointStore
from shipper.config import Config, load_config
from shipper.errors import ConfigError, ShipperError
from shipper.runner import EXIT_FATAL, EXIT_OK, WorkerRole, run_worker
from shipper.sharding import Shard
from shipper.telemetry.counters import Telemetry
from shipper.telemetry.logging import setup_logging
from shipper.telemetry.report import WorkerBoard, WorkerReport
from shipper.telemetry.server import MonitoringServer

log = logging.getLogger(__name__)

# What signal.signal() returns: the handler that was in place, to put back.
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

# How long the supervisor's loop waits for a report or a signal before it looks around again.
TICK = 0.5
# A worker that dies is started again after this, doubled at each death up to the maximum; a
# worker that ran this long without dying counts as healthy again.
RESTART_BACKOFF = 1.0
RESTART_BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0
# After SIGTERM, how long past `pipeline.shutdown_timeout` a worker may take to write its
# checkpoints and exit before it is killed.
STOP_GRACE = 10.0


@dataclass(slots=True)
class _Worker:
    """One worker process as the supervisor sees it."""

    index: int
    pid: int | None = None
    reports: Connection | None = None  # the read end of its report pipe
    started_at: float = 0.0  # time.monotonic() of the fork
    started: bool = False  # it reported that its pipeline started
    restart_at: float | None = None
    backoff: float = RESTART_BACKOFF
    exit_code: int | None = None
    inherited: list[int] = field(default_factory=list)  # fds its fork must close


def supervise(config: Config, path: Path | None) -> int:
    """Run `config.pipeline.workers` workers until SIGTERM or SIGINT; the exit code."""
    try:
        return _Supervisor(config, path).run()
    except ShipperError as exc:
        log.error("shipper cannot go on.", extra={"error": str(exc)})
        return EXIT_FATAL


class _Supervisor:
    def __init__(self, config: Config, path: Path | None) -> None:
        self.config = config
        self.path = path
        self.telemetry = Telemetry()
        self.workers = [_Worker(index) for index in range(config.pipeline.workers)]
        self.board = WorkerBoard(len(self.workers))
        self.monitoring: MonitoringServer | None = None
        self.stopping = False
        self.reload = False
        self.stop_deadline = 0.0
        self.failed = False

    def run(self) -> int:
        first_start = self._check_checkpoints()
        # The workers are forks: what the supervisor imported is shared with them, page for
        # page, as long as nothing writes to it. The collector would (it marks every object it
        # traces); frozen, it leaves the imported objects alone in every process.
        gc.freeze()
        wakeup_read, wakeup_write = socket.socketpair()
        wakeup_read.setblocking(False)
        wakeup_write.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wakeup_write.fileno())
        handlers = self._install_signals()
        try:
            for worker in self.workers:
                self._start(worker, first_start, wakeup_read, wakeup_write)
            self.board.beat(time.monotonic())  # /livez: the loop below runs from now on
            self.monitoring = MonitoringServer(self.config.monitoring, self.telemetry)
            self.monitoring.watch_workers(self.board)
            self.monitoring.start()
            self.telemetry.set("shipper_workers", len(self.workers))
            log.info(
                "Supervising workers.",
                extra={
                    "workers": len(self.workers),
                    "pids": [worker.pid for worker in self.workers],
                },
            )
            while not self._finished():
                self._tick(wakeup_read, wakeup_write)
        finally:
            for worker in self.workers:
                if worker.pid is not None:  # only if the loop itself failed
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGKILL)
            if self.monitoring is not None:
                self.monitoring.stop()
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            wakeup_read.close()
            wakeup_write.close()
        log.info("shipper stopped.", extra={"workers": len(self.workers)})
        return EXIT_FATAL if self.failed else EXIT_OK

    # -- start -----------------------------------------------------------------------------------

    def _check_checkpoints(self) -> bool:
        """Load the checkpoint file once, before any worker: a corrupt one is handled here
        (on_corrupt), not by several workers at once; returns whether this is a first start."""
        store = CheckpointStore(
            self.config.checkpoint_path, on_corrupt=self.config.checkpoints.on_corrupt
        )
        store.load()
        if store.set_aside_path is not None:
            log.error(
                "Checkpoint file was corrupt; set it aside and started fresh.",
                extra={"set_aside": str(store.set_aside_path), "reason": store.corrupt_reason},
            )
        return store.first_start

    def _install_signals(self) -> dict[signal.Signals, _Handler]:
        def stop(signum: int, _frame: FrameType | None) -> None:
            if not self.stopping:
                log.info("Asked to stop.", extra={"signal": signal.Signals(signum).name})
            self.stopping = True

        def reload(_signum: int, _frame: FrameType | None) -> None:
            self.reload = True

        def child(_signum: int, _frame: FrameType | None) -> None:
            return None  # only wakes the loop (the wakeup fd): it reaps there

        handlers = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, stop),
            signal.SIGINT: signal.signal(signal.SIGINT, stop),
            signal.SIGHUP: signal.signal(signal.SIGHUP, reload),
            signal.SIGCHLD: signal.signal(signal.SIGCHLD, child),
        }
        # The `run` command held SIGHUP back until it could be handled: it can now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        return handlers

    def _start(
        self,
        worker: _Worker,
        first_start: bool | None,
        wakeup_read: socket.socket,
        wakeup_write: socket.socket,
    ) -> None:
        reports, sending = multiprocessing.Pipe(duplex=False)
        # What the fork inherits of the supervisor and must not keep: the other workers'
        # pipes, the wakeup socket pair, the monitoring endpoint's socket.
        inherited = [reports.fileno(), wakeup_read.fileno(), wakeup_write.fileno()]
        inherited += [w.reports.fileno() for w in self.workers if w.reports is not None]
        if self.monitoring is not None:
            inherited += self.monitoring.sockets()
        pid = os.fork()
        if pid == 0:
            _worker_main(
                self.config,
                self.path,
                Shard(worker.index, len(self.workers)),
                first_start=first_start,
                reports=sending,
                inherited=inherited,
            )
        sending.close()
        worker.pid = pid
        worker.reports = reports
        worker.started_at = time.monotonic()
        worker.started = False
        worker.restart_at = None
        worker.exit_code = None

    # -- the loop --------------------------------------------------------------------------------

    def _tick(self, wakeup_read: socket.socket, wakeup_write: socket.socket) -> None:
        now = time.monotonic()
        self.board.beat(now)
        waiting: list[Connection | socket.socket] = [wakeup_read]
        waiting += [w.reports for w in self.workers if w.reports is not None]
        for ready in multiprocessing.connection.wait(waiting, timeout=TICK):
            if ready is wakeup_read:
                with contextlib.suppress(BlockingIOError):
                    while wakeup_read.recv(4096):
                        pass
                continue
            self._receive(ready)
        self._reap()
        now = time.monotonic()
        if self.stopping:
            self._stop_all(now)
            return
        if self.reload:
            self.reload = False
            self._reload()
        for index in self.board.silent(now):
            worker = self.workers[index]
            if worker.pid is not None:
                log.error(
                    "A worker sent no report for too long; killing it to start it again.",
                    extra={"worker": index, "pid": worker.pid},
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
        for worker in self.workers:
            if worker.pid is None and worker.restart_at is not None and now >= worker.restart_at:
                self.telemetry.inc("shipper_worker_restarts_total", worker=str(worker.index))
                self._start(worker, None, wakeup_read, wakeup_write)
                log.info("Worker started again.", extra={"worker": worker.index, "pid": worker.pid})

    def _receive(self, ready: object) -> None:
        worker = next(w for w in self.workers if w.reports is ready)
        assert worker.reports is not None  # noqa: S101 - found by it
        try:
            report = worker.reports.recv()
        except (EOFError, OSError):
            worker.reports.close()  # it is exiting: reaped below or at the next tick
            worker.reports = None
            return
        if isinstance(report, WorkerReport) and report.worker == worker.index:
            self.board.update(report, time.monotonic())
            worker.started = worker.started or report.started

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is None:
                continue
            self._ended(worker, status)

    def _ended(self, worker: _Worker, status: int) -> None:
        worker.pid = None
        if worker.reports is not None:
            worker.reports.close()
            worker.reports = None
        self.board.forget(worker.index)
        code = os.waitstatus_to_exitcode(status)
        worker.exit_code = code
        how = {"exit_code": code} if code >= 0 else {"signal": signal.Signals(-code).name}
        if self.stopping:
            if code != 0:
                self.failed = True
                log.error("A worker stopped with an error.", extra={"worker": worker.index, **how})
            return
        if code == EXIT_FATAL and not worker.started:
            # It could not start (its reason is logged above): starting it again would fail
            # the same way, and a single process would exit here too.
            log.error("A worker could not start; stopping.", extra={"worker": worker.index, **how})
            self.failed = True
            self.stopping = True
            return
        ran = time.monotonic() - worker.started_at
        if ran >= HEALTHY_AFTER:
            worker.backoff = RESTART_BACKOFF
        log.error(
            "A worker ended; starting it again. Its files are read on from its checkpoints.",
            extra={
                "worker": worker.index,
                "ran_s": round(ran, 1),
                "restart_in_s": worker.backoff,
                **how,
            },
        )
        worker.restart_at = time.monotonic() + worker.backoff
        worker.backoff = min(worker.backoff * 2, RESTART_BACKOFF_MAX)

    def _stop_all(self, now: float) -> None:
        if not self.stop_deadline:
            self.stop_deadline = now + self.config.pipeline.shutdown_timeout + STOP_GRACE
            for worker in self.workers:
                worker.restart_at = None
                if worker.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGTERM)
        elif now >= self.stop_deadline:
            for worker in self.workers:
                if worker.pid is not None:
                    log.error(
                        "A worker did not stop in time; killing it.",
                        extra={"worker": worker.index, "pid": worker.pid},
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGKILL)
            self.stop_deadline = now + STOP_GRACE  # then reap what the kill ended

    def _finished(self) -> bool:
        return self.stopping and all(worker.pid is None for worker in self.workers)

    def _reload(self) -> None:
        """Validate the file once here; if it says something new, every worker reloads it."""
        try:
            following = load_config(self.path)
        except ConfigError as exc:
            log.error(
                "Config reload refused; the running config goes on.",
                extra={"config": str(self.path), "error": str(exc)},
            )
            return
        if following == self.config:
            log.info("Config reload: nothing changed.", extra={"config": str(self.path)})
            return
        if following.pipeline.workers != self.config.pipeline.workers:
            log.warning(
                "pipeline.workers changes at the next start; the workers reload the rest.",
                extra={
                    "running": self.config.pipeline.workers,
                    "configured": following.pipeline.workers,
                },
            )
        if following.logging != self.config.logging:
            setup_logging(
                following.logging.level,
                following.logging.format,
                rate_limit=following.logging.rate_limit,
            )
        if following.monitoring != self.config.monitoring and self.monitoring is not None:
            self.monitoring.stop()
            self.monitoring = MonitoringServer(following.monitoring, self.telemetry)
            self.monitoring.watch_workers(self.board)
            self.monitoring.start()
        self.config = following
        for worker in self.workers:
            if worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGHUP)


def _worker_main(
    config: Config,
    path: Path | None,
    shard: Shard,
    *,
    first_start: bool | None,
    reports: Connection,
    inherited: list[int],
) -> NoReturn:
    """A forked worker's whole life: never returns into the supervisor's code."""
    code = EXIT_FATAL
    try:
        # SIGHUP waits until the worker's loop handles it (as in the `run` command); the rest
        # are the supervisor's handlers, which mean nothing here.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        _tag_logs(shard.index)
        reporter = _Reporter(reports)
        code = run_worker(
            config,
            path,
            worker=WorkerRole(shard, first_start, reporter.send),
        )
    except BaseException:
        log.exception("A worker failed.")
    finally:
        logging.shutdown()
        os._exit(code)


def _tag_logs(worker: int) -> None:
    """Every log line of this worker says which one it is (a `worker` field)."""
    make_record = logging.getLogRecordFactory()

    def tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.worker = worker
        return record

    logging.setLogRecordFactory(tagged)


class _Reporter:
    """Sends a worker's latest report to the supervisor from a thread of its own, so a busy
    supervisor never blocks the worker's event loop; reports it could not send yet are replaced
    by newer ones. A supervisor that is gone (the pipe broke) stops the worker."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._latest: WorkerReport | None = None
        self._ready = threading.Condition()
        threading.Thread(target=self._run, name="report", daemon=True).start()

    def send(self, report: WorkerReport) -> None:
        with self._ready:
            self._latest = report
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while self._latest is None:
                    self._ready.wait()
                report, self._latest = self._latest, None
            try:
                self._connection.send(report)
            except OSError:
                log.error("The supervisor is gone; stopping this worker.")
                os.kill(os.getpid(), signal.SIGTERM)
                return
