"""Several worker processes, each shipping a share of the files, and the supervision of them.

One CPython process tops out near one core (bench/README.md), so `pipeline.workers: N` runs N
workers, each a whole pipeline (sources, buffer, outputs, retries, dead letters) over the files
whose directory hashes to it (shipper.sharding). Nothing crosses between workers but the
checkpoint file (merged under a lock) and the output files (appended under a lock): a
container's lines stay in one process, in order, and each worker moves checkpoints only for
what its outputs confirmed, as one process does.

The process the operator started is worker 0: before it starts its event loop it forks the
others (so they share its imported code, page for page), then ships its own share while a
supervision thread reads the others' reports (every second, over a pipe) into the one
monitoring endpoint, and watches them. SIGTERM and SIGHUP reach every worker. A worker that
dies or goes silent stops shipper in order with exit code 1, for systemd or the orchestrator
to start it again, as when a single process dies: the workers read on from their checkpoints.
A separate supervisor process would cost a whole interpreter's memory (about 40 MiB of PSS
under load) for a loop that waits.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn

from shipper.app import import_outputs
from shipper.checkpoints import CheckpointStore
from shipper.config import Config
from shipper.errors import ShipperError
from shipper.runner import EXIT_FATAL, EXIT_OK, WorkerRole, run_worker
from shipper.sharding import Shard
from shipper.telemetry.counters import Telemetry
from shipper.telemetry.report import WorkerBoard, WorkerReport

log = logging.getLogger(__name__)

# How long the supervision thread waits for a report before it looks at the workers again.
TICK = 0.5
# After a stop, how long past `pipeline.shutdown_timeout` a worker may take to write its
# checkpoints and exit before it is killed.
STOP_GRACE = 10.0


def supervise(config: Config, path: Path | None) -> int:
    """Run `config.pipeline.workers` workers until SIGTERM or SIGINT; the exit code."""
    try:
        first_start = _check_checkpoints(config)
    except ShipperError as exc:
        log.error("shipper cannot go on.", extra={"error": str(exc)})
        return EXIT_FATAL
    count = config.pipeline.workers
    import_outputs(config)
    # The workers are forks: what this process imported is shared with them as long as
    # nothing writes to it. The collector would (it marks every object it traces); frozen,
    # it leaves the imported objects alone in every process.
    gc.freeze()
    children: list[_Child] = []
    for index in range(1, count):
        children.append(_fork(config, path, Shard(index, count), first_start, children))
    supervision = Supervision(config, children, count)
    supervision.start()
    log.info(
        "Workers started.",
        extra={"workers": count, "pids": [os.getpid(), *(child.pid for child in children)]},
    )
    try:
        code = run_worker(
            config,
            path,
            worker=WorkerRole(Shard(0, count), first_start, supervision.report_local, supervision),
        )
    finally:
        supervision.stop_children()
    return code if code != EXIT_OK else supervision.exit_code


def _check_checkpoints(config: Config) -> bool:
    """Load the checkpoint file once, before any worker: a corrupt one is handled here
    (on_corrupt), not by several workers at once; whether this is a first start."""
    store = CheckpointStore(config.checkpoint_path, on_corrupt=config.checkpoints.on_corrupt)
    store.load()
    if store.set_aside_path is not None:
        log.error(
            "Checkpoint file was corrupt; set it aside and started fresh.",
            extra={"set_aside": str(store.set_aside_path), "reason": store.corrupt_reason},
        )
    return store.first_start


@dataclass(slots=True)
class _Child:
    """A forked worker as worker 0 sees it."""

    index: int
    pid: int
    reports: Connection | None  # the read end of its report pipe; None once it closed
    started: bool = False  # it reported that its pipeline started
    exit_code: int | None = None  # once reaped


def _fork(
    config: Config, path: Path | None, shard: Shard, first_start: bool, siblings: list[_Child]
) -> _Child:
    reports, sending = multiprocessing.Pipe(duplex=False)
    # What the fork must not keep of this process: its siblings' report pipes, its own read end.
    inherited = [reports.fileno()]
    inherited += [child.reports.fileno() for child in siblings if child.reports is not None]
    pid = os.fork()
    if pid == 0:
        _worker_main(
            config,
            path,
            shard,
            first_start=first_start,
            reports=sending,
            inherited=inherited,
        )
    sending.close()
    return _Child(shard.index, pid, reports)


class Supervision:
    """Worker 0's watch over the others, on a thread of its own: their reports into the board
    the monitoring endpoint answers from, their ends, and the signals worker 0 forwards."""

    def __init__(self, config: Config, children: list[_Child], count: int) -> None:
        self.config = config
        self.children = children
        self.board = WorkerBoard(count)
        # The supervision's own series (the endpoint adds the workers' reports to them).
        self.telemetry = Telemetry()
        self.telemetry.set("shipper_workers", count)
        self.exit_code = EXIT_OK
        self._stopping = threading.Event()
        self._request_stop: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name="supervision", daemon=True)

    # -- worker 0's side (its event loop) ------------------------------------------------------

    def attach(self, request_stop: Callable[[], None]) -> None:
        """How the supervision asks worker 0 to stop (thread-safe: a loop callback)."""
        self._request_stop = request_stop

    def report_local(self, report: WorkerReport) -> None:
        """Worker 0's own report, straight into the board."""
        self.board.update(report, time.monotonic())

    def forward(self, signum: int) -> None:
        """A signal worker 0 received, for every other worker too."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping.set()
            signum = signal.SIGTERM
        for child in self.children:
            if child.exit_code is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    # -- the thread ----------------------------------------------------------------------------

    def start(self) -> None:
        self.board.beat(time.monotonic())  # /livez: the supervision runs from now on
        self._thread.start()

    def stop_children(self) -> None:
        """Worker 0 has stopped: stop the others in order, killing what outlives the grace."""
        self.forward(signal.SIGTERM)
        deadline = time.monotonic() + self.config.pipeline.shutdown_timeout + STOP_GRACE
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            for child in self.children:
                if child.exit_code is None:
                    log.error(
                        "A worker did not stop in time; killing it.",
                        extra={"stopped_worker": child.index, "pid": child.pid},
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGKILL)
            self._thread.join(timeout=STOP_GRACE)

    def _run(self) -> None:
        try:
            while any(child.exit_code is None for child in self.children):
                self._tick()
        except Exception:
            log.exception("The supervision of the workers failed; stopping.")
            self.exit_code = EXIT_FATAL
            self._stop_all()

    def _tick(self) -> None:
        waiting = [child.reports for child in self.children if child.reports is not None]
        if waiting:
            for ready in multiprocessing.connection.wait(waiting, timeout=TICK):
                self._receive(ready)
        else:
            self._stopping.wait(TICK)
        for child in self.children:
            if child.exit_code is None:
                self._reap(child)
        now = time.monotonic()
        silent = self.board.silent(now)
        if 0 not in silent:
            # Worker 0's loop reports too: while it does not, /livez goes stale and the
            # orchestrator restarts the whole process.
            self.board.beat(now)
        for child in self.children:
            if child.index in silent and child.exit_code is None and not self._stopping.is_set():
                log.error(
                    "A worker sent no report for too long; killing it and stopping.",
                    extra={"stopped_worker": child.index, "pid": child.pid},
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)

    def _receive(self, ready: object) -> None:
        child = next(child for child in self.children if child.reports is ready)
        assert child.reports is not None  # noqa: S101 - found by it
        try:
            report = child.reports.recv()
        except (EOFError, OSError):
            child.reports.close()  # it is exiting: reaped at this tick or the next
            child.reports = None
            return
        if isinstance(report, WorkerReport) and report.worker == child.index:
            self.board.update(report, time.monotonic())
            child.started = child.started or report.started

    def _reap(self, child: _Child) -> None:
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = child.pid, 0
        if pid == 0:
            return
        code = child.exit_code = os.waitstatus_to_exitcode(status)
        self.board.forget(child.index)
        how = {"exit_code": code} if code >= 0 else {"signal": signal.Signals(-code).name}
        if self._stopping.is_set():
            if code != 0:
                self.exit_code = EXIT_FATAL
                log.error(
                    "A worker stopped with an error.", extra={"stopped_worker": child.index, **how}
                )
            return
        self.exit_code = EXIT_FATAL
        log.error(
            # Its own error said why (a config it cannot run, an output it cannot open).
            "A worker could not start; stopping."
            if code == EXIT_FATAL and not child.started
            else "A worker ended; stopping the others in order. Started again, every worker "
            "reads on from its checkpoints.",
            extra={"stopped_worker": child.index, **how},
        )
        self._stop_all()

    def _stop_all(self) -> None:
        self.forward(signal.SIGTERM)
        if self._request_stop is not None:
            self._request_stop()


def _worker_main(
    config: Config,
    path: Path | None,
    shard: Shard,
    *,
    first_start: bool,
    reports: Connection,
    inherited: list[int],
) -> NoReturn:
    """A forked worker's whole life: never returns into worker 0's code."""
    code = EXIT_FATAL
    try:
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        _tag_logs(shard.index)
        reporter = _Reporter(reports)
        code = run_worker(config, path, worker=WorkerRole(shard, first_start, reporter.send))
    except BaseException:
        log.exception("A worker failed.")
    finally:
        logging.shutdown()
        os._exit(code)


def _tag_logs(worker: int) -> None:
    """Every log line of this worker says which one it is (a `worker` field; none: worker 0)."""
    make_record = logging.getLogRecordFactory()

    def tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.worker = worker
        return record

    logging.setLogRecordFactory(tagged)


class _Reporter:
    """Sends a worker's latest report to worker 0 from a thread of its own, so that a busy
    worker 0 never blocks this worker's event loop; a report not sent yet is replaced by a newer
    one. If worker 0 is gone (the pipe broke), this worker stops."""

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
                log.error("Worker 0 is gone; stopping this worker.")
                os.kill(os.getpid(), signal.SIGTERM)
                return
