"""Shared parts of the scenario benchmarks (backlog.py, many_containers.py, live_tail.py).

Each scenario runs the real `shipper run` CLI in its own process against es_output.py's loopback
bulk sink, extended here: `TimedBulkSink` can stall (answer `_bulk` 429, or hold requests) until
released, and records when each accepted request arrived, spooling its body for the check after
the run (`analyse`): every input line indexed once, each container's first arrival, and the
end-to-end latency of lines that carry their write time (`wt=<time_ns>`). `ShipperProcess` starts
shipper and samples its process tree from /proc as file_output.py does.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import queue
import re
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson
from es_output import BulkChecker, FastBulkSink, _pairs
from es_output import write_config as write_es_config
from file_output import (
    DEFAULT_OUT,
    _cpu_s,
    _machine,
    _pss_kib,
    _stop,
    _table,
    _tree,
    add_workers_argument,
)
from file_output import conclude as conclude_report
from generate import GeneratedRoot

import shipper

StallMode = Literal["429", "hold"]

# What Elasticsearch answers when its write queue is full: the whole `_bulk` refused for now.
_REJECTED = orjson.dumps(
    {
        "error": {
            "root_cause": [{"type": "es_rejected_execution_exception", "reason": "bench stall"}],
            "type": "es_rejected_execution_exception",
            "reason": "rejected execution of coordinating operation (bench stall)",
        },
        "status": 429,
    }
)
WRITE_TIME = re.compile(r"\bwt=(\d{19})\b")
"""The write time (time.time_ns) live_tail.py appends to every message."""

# shipper listens for monitoring on 127.0.0.1:9910 by default; port 0 lets two runs (or a run
# next to another shipper) coexist, and the bound URL is read back from shipper's log.
MONITORING_ANY_PORT = "monitoring:\n  port: 0\n"


# --- the sink ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One accepted `_bulk` request: when its body was in, and how many items it held."""

    received_ns: int
    items: int


class TimedBulkSink(FastBulkSink):
    """es_output.py's loopback bulk sink, which can be stalled, and which keeps an arrival time
    per accepted request.

    While stalled, `_bulk` requests are answered 429 (mode "429": nothing counted, shipper
    retries after its backoff) or held unanswered until `release()` (mode "hold": then counted
    and answered 201 as usual). `GET /` is always answered: the cluster is up, only busy.
    Accepted bodies go to `spool` with their arrival, written by one thread in arrival order
    after the answer, so the spool's items and `arrivals` line up; without a spool only the
    arrivals are kept.
    """

    def __init__(self, expect: int, spool: Path | None, *, stall: StallMode | None = None) -> None:
        super().__init__(expect, None)  # the parent's spool is not ordered with the arrivals
        self.stall_mode = stall
        self.released = threading.Event()
        if stall is None:
            self.released.set()
        self.released_ns: int | None = None
        self.first_attempt_ns: int | None = None  # first `_bulk`, refused or not
        self.refused_requests = 0  # answered 429 while stalled
        self.held_requests = 0
        self.arrivals: list[Arrival] = []
        self._spooled: queue.SimpleQueue[tuple[bytes, Arrival] | None] = queue.SimpleQueue()
        self._spool_cpu = 0.0
        self._spool_thread = threading.Thread(
            target=self._write_spool, args=(spool,), name="sink-spool", daemon=True
        )
        self._spool_thread.start()

    def release(self) -> None:
        if not self.released.is_set():
            self.released_ns = time.time_ns()
            self.released.set()

    def cpu_s(self) -> float:
        return super().cpu_s() + self._spool_cpu

    def stop(self) -> None:
        self.release()  # a held connection thread must not keep stop() waiting
        super().stop()
        self._spooled.put(None)
        self._spool_thread.join()

    def _write_spool(self, path: Path | None) -> None:
        with open(path, "wb") if path is not None else contextlib.nullcontext() as spool:
            while (entry := self._spooled.get()) is not None:
                started = time.thread_time()
                body, arrival = entry
                if spool is not None:
                    spool.write(body)
                with self._lock:
                    self.arrivals.append(arrival)
                    self._spool_cpu += time.thread_time() - started

    def _answer(
        self, method: str, target: str, headers: dict[str, str], wire: bytes
    ) -> tuple[int, bytes]:
        received_ns = time.time_ns()
        is_bulk = method == "POST" and target.split("?", 1)[0].endswith("/_bulk")
        if is_bulk:
            with self._lock:
                if self.first_attempt_ns is None:
                    self.first_attempt_ns = received_ns
            if not self.released.is_set():
                if self.stall_mode == "429":
                    with self._lock:
                        self.refused_requests += 1
                    return 429, _REJECTED
                with self._lock:
                    self.held_requests += 1
                self.released.wait()
        status, payload = super()._answer(method, target, headers, wire)
        if is_bulk and status == 200:
            # gzip is never on in the scenarios (the targets are for gzip off): wire is the body.
            self._spooled.put((wire, Arrival(received_ns, wire.count(b"\n") // 2)))
        return status, payload


# --- shipper ----------------------------------------------------------------------------------


def write_config(
    path: Path,
    *,
    root: Path,
    url: str,
    state: Path,
    max_buffered: str | None = None,
    workers: int = 1,
) -> None:
    """es_output.py's config (defaults but for the paths), monitoring on any free port, and
    `pipeline.max_buffered_bytes` (e.g. "32MiB") and `pipeline.workers` if given."""
    extra = MONITORING_ANY_PORT
    pipeline = ""
    if max_buffered is not None:
        pipeline += f"  max_buffered_bytes: {orjson.dumps(max_buffered).decode()}\n"
    if workers != 1:
        pipeline += f"  workers: {workers}\n"
    if pipeline:
        extra += "pipeline:\n" + pipeline
    write_es_config(path, root=root, url=url, state=state, gzip_level=None, extra=extra)


@dataclass
class Sample:
    """One look at shipper's process tree."""

    at_ns: int
    pss_kib: int
    processes: int
    open_fds: int
    cpu_s: float  # utime + stime of the tree so far


@dataclass
class Usage:
    """What getrusage(RUSAGE_CHILDREN) says of a finished shipper."""

    user_s: float = 0.0
    sys_s: float = 0.0
    maxrss_kib: int = 0

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def _open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@contextlib.contextmanager
def open_files_soft_limit(soft: int | None) -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE set to `soft` (a child started meanwhile inherits it),
    or to the hard limit with None; restored afterwards."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = before[1] if soft is None else min(soft, before[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


class ShipperProcess:
    """`python -m shipper run --config CONFIG` in its own process, stderr to `log_path`; with
    `profile`, under cProfile, which writes its stats there when shipper exits."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        *,
        open_files_soft: int | None = None,
        profile: Path | None = None,
    ) -> None:
        self.log_path = log_path
        self.samples: list[Sample] = []
        self.exit_code: int | None = None
        self.shutdown_s: float | None = None
        self.usage = Usage()
        self._children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with log_path.open("wb") as log, open_files_soft_limit(open_files_soft):
            self.started_ns = time.time_ns()
            profiler = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
            self.proc = subprocess.Popen(
                [sys.executable, *profiler, "-m", "shipper", "run", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def sample(self) -> Sample:
        pids = _tree(self.proc.pid)
        sample = Sample(
            at_ns=time.time_ns(),
            pss_kib=sum(map(_pss_kib, pids)),
            processes=len(pids),
            open_fds=sum(map(_open_fds, pids)),
            cpu_s=sum(map(_cpu_s, pids)),
        )
        self.samples.append(sample)
        return sample

    def peak_pss_kib(self, start_ns: int = 0, end_ns: int | None = None) -> int:
        """The highest summed PSS sampled between `start_ns` and `end_ns` (wall clock)."""
        return max(
            (
                s.pss_kib
                for s in self.samples
                if s.at_ns >= start_ns and (end_ns is None or s.at_ns <= end_ns)
            ),
            default=0,
        )

    def cpu_at(self, at_ns: int) -> float:
        """The tree's CPU seconds at the last sample taken by `at_ns`."""
        before = [s.cpu_s for s in self.samples if s.at_ns <= at_ns]
        return before[-1] if before else 0.0

    def monitoring_url(self) -> str | None:
        """Where shipper's monitoring endpoint listens, from its log."""
        with contextlib.suppress(OSError):
            for line in self.log_path.read_bytes().splitlines():
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                    entry = orjson.loads(line)
                    if entry.get("message") == "Monitoring endpoint listening.":
                        return str(entry["url"])
        return None

    def log_times_ns(self, message: str) -> list[int]:
        """The times (ns since the epoch, millisecond resolution) of shipper's log lines with
        `message`."""
        from datetime import datetime  # noqa: PLC0415 - only for this

        times: list[int] = []
        with contextlib.suppress(OSError):
            for line in self.log_path.read_bytes().splitlines():
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError, KeyError):
                    entry = orjson.loads(line)
                    if entry.get("message") == message:
                        moment = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
                        times.append(round(moment.timestamp() * 1e9))
        return times

    def stop(self) -> None:
        terminated = time.monotonic()
        try:
            self.exit_code = _stop(self.proc)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.shutdown_s = time.monotonic() - terminated
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.usage = Usage(
            user_s=after.ru_utime - self._children_before.ru_utime,
            sys_s=after.ru_stime - self._children_before.ru_stime,
            maxrss_kib=after.ru_maxrss,
        )


def scrape_metrics(url: str | None, names: tuple[str, ...]) -> dict[str, float]:
    """The unlabelled samples `names` from shipper's /metrics (empty if it cannot be read)."""
    if url is None:
        return {}
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:  # noqa: S310 - loopback
            text = answer.read().decode()
    except OSError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            found[name] = float(value)
    return found


# --- after the run ----------------------------------------------------------------------------


@dataclass
class Deliveries:
    """What the spool says about the documents the sink accepted."""

    items: int = 0
    problems: list[str] = field(default_factory=list)
    first_arrival_ns: dict[str, int] = field(default_factory=dict)  # container id -> first doc
    # (write time, arrival - write time) of each document whose message carries `wt=`
    latencies_ns: list[tuple[int, int]] = field(default_factory=list)


def analyse(
    spool: Path,
    arrivals: list[Arrival],
    generated: GeneratedRoot,
    *,
    check: bool = True,
    limit: int = 10,
) -> Deliveries:
    """Read the spool back item by item, each with its request's arrival time: every input line
    indexed once (es_output.BulkChecker, unless not `check`), the first arrival of each
    container, and `wt=` latencies. Without `check` only the arrival counts are looked at."""
    result = Deliveries(items=sum(a.items for a in arrivals))
    if not check:
        return result
    checker = BulkChecker(generated, limit)
    # Item n (from 0) came in the request whose cumulative count first exceeds n.
    ends: list[int] = []
    total = 0
    for arrival in arrivals:
        total += arrival.items
        ends.append(total)
    request = 0
    for number, (action, line) in enumerate(_pairs(spool), 1):
        while request < len(ends) and ends[request] < number:
            request += 1
        if request >= len(ends):
            checker.problems.append(f"item {number}: beyond the requests the sink accepted")
            break
        document = checker.add(number, action, line)
        received_ns = arrivals[request].received_ns
        cid = document.get("container", {}).get("id")
        if isinstance(cid, str) and cid not in result.first_arrival_ns:
            result.first_arrival_ns[cid] = received_ns
        message = document.get("message")
        if isinstance(message, str) and (match := WRITE_TIME.search(message)):
            written_ns = int(match.group(1))
            result.latencies_ns.append((written_ns, received_ns - written_ns))
        if checker.full:
            break
    result.problems = checker.finish()
    return result


def percentile(ordered: list[int], fraction: float) -> int:
    """The nearest-rank percentile of an ascending list (fraction in 0..1)."""
    if not ordered:
        return 0
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def shipper_row() -> tuple[str, str]:
    """The report's first row: shipper's version, a digest of its source (figures from a tree
    that others are changing can then be told apart), and the machine."""
    package = Path(shipper.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return "shipper", f"{shipper.__version__} (source {digest.hexdigest()[:12]}), {_machine()}"


def mib(kib: int) -> str:
    return f"{kib / 1024:,.1f} MiB"


def add_run_arguments(
    parser: argparse.ArgumentParser, *, poll: float, keep_help: str = "keep the spool and state"
) -> None:
    """What every scenario run takes after its own options: --poll, --keep, --workers, --out,
    --profile."""
    parser.add_argument(
        "--poll", type=float, default=poll, help="seconds between samples (%(default)s)"
    )
    parser.add_argument("--keep", action="store_true", help=keep_help)
    add_workers_argument(parser)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="working directory (default: bench/out)"
    )
    add_profile_argument(parser)


def add_profile_argument(parser: argparse.ArgumentParser) -> None:
    """--profile FILE: run shipper under cProfile (its figures are then not comparable)."""
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run shipper under cProfile and write its stats to FILE (read them with "
        "`python -m pstats FILE`); cProfile slows shipper down, so the figures are not the "
        "benchmark's",
    )


def conclude(rows: list[tuple[str, str]], failures: list[str], log_path: Path) -> int:
    """Print the table, then OK or the failures with the end of shipper's log; the exit code."""
    return conclude_report(_table(rows), failures, log_path)


def run_failures(
    proc: ShipperProcess, sink: TimedBulkSink, deliveries: Deliveries, expected: int
) -> list[str]:
    """What every scenario requires: no sink error, exit code 0, each line accepted once."""
    failures = list(deliveries.problems)
    failures.extend(f"sink: {error}" for error in sink.errors[:5])
    if proc.exit_code != 0:
        failures.append(f"exit code {proc.exit_code}, expected 0")
    if sink.items != expected:
        failures.append(f"{sink.items:,} documents accepted, {expected:,} lines written")
    return failures
