"""Benchmark: a Docker root of json-file logs shipped by `shipper run` to an `elasticsearch` output.

The input and the measurement are bench/file_output.py's (generate.py's root, /proc sampling of
shipper's process tree, rusage). The cluster is a loopback bulk sink in this process: a minimal
HTTP/1.1 server that answers `GET /` as Elasticsearch 8.19 and every `_bulk` item `201`, with
`X-Elastic-Product: Elasticsearch` (the official client refuses answers without it). It counts
the items of each request (decompressing gzip bodies to do so) and, unless --no-verify, appends
the bodies to a file that is checked after the run: every input line indexed once, `_id`s
unique. tests/fake_elasticsearch.py can stand in (--sink fake) to show why it is not used here:
it parses, checks and stores every document, and costs more CPU than shipper itself.

    .venv/bin/python bench/es_output.py                  # 20 containers x 100,000 lines
    .venv/bin/python bench/es_output.py --gzip           # the same, gzip request bodies (level 1)
    .venv/bin/python bench/es_output.py --quick          # 4 x 10,000: does it work?
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson
from file_output import (
    RunPaths,
    Samples,
    _count_levels,
    _cpu_s,
    _machine,
    _pss_kib,
    _stop,
    _table,
    _tree,
    add_input_arguments,
    add_workers_argument,
    conclude,
    machine_speed,
    parse_input_arguments,
    prepare_input,
)
from generate import GeneratedRoot

import shipper
from shipper.docker_writer import SEQ_PATTERN

REPO = Path(__file__).resolve().parent.parent
_INFO = orjson.dumps(
    {
        "name": "bench-sink",
        "cluster_name": "bench",
        "cluster_uuid": "bench-0000000000000000000000",
        "version": {
            "number": "8.19.2",
            "build_flavor": "default",
            "build_type": "docker",
            "lucene_version": "9.12.2",
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0",
        },
        "tagline": "You Know, for Search",
    }
)
_ITEM = b'{"create":{"status":201}}'


# --- the sink ---------------------------------------------------------------------------------


class Sink(Protocol):
    """What the run and the report read of a sink."""

    @property
    def url(self) -> str: ...
    @property
    def items(self) -> int: ...  # bulk items answered 201
    @property
    def requests(self) -> int: ...
    @property
    def wire_bytes(self) -> int: ...  # request bodies as received (compressed when gzipped)
    @property
    def body_bytes(self) -> int: ...  # request bodies decompressed
    @property
    def first_request_ns(self) -> int | None: ...
    @property
    def last_answer_ns(self) -> int | None: ...  # the answer that completed the count
    @property
    def errors(self) -> list[str]: ...

    def cpu_s(self) -> float: ...

    def stop(self) -> None: ...


class FastBulkSink:
    """Answers every `_bulk` item 201 after counting it; nothing is parsed or stored.

    A thread per connection, as shipper keeps one per request in flight. The CPU those threads
    use (thread_time around each request) is reported apart from shipper's.
    """

    def __init__(self, expect: int, spool: Path | None) -> None:
        self.expect = expect
        self.items = 0
        self.requests = 0
        self.wire_bytes = 0
        self.body_bytes = 0
        self.first_request_ns: int | None = None
        self.last_answer_ns: int | None = None
        self.errors: list[str] = []
        self._cpu = 0.0
        self._lock = threading.Lock()
        self._spool: BinaryIO | None = spool.open("wb") if spool is not None else None
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="sink-accept", daemon=True)
        self._accepting.start()

    def cpu_s(self) -> float:
        with self._lock:
            return self._cpu

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepting.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)
        if self._spool is not None:
            self._spool.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(
                target=self._serve, args=(connection,), name="sink-connection", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        rfile = connection.makefile("rb", buffering=1 << 20)
        try:
            while True:
                request_line = rfile.readline(65536)
                if not request_line:
                    return
                started = time.thread_time()
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (line := rfile.readline(65536)) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                wire = rfile.read(int(headers.get("content-length", "0")))
                status, payload = self._answer(method, target, headers, wire)
                connection.sendall(
                    b"HTTP/1.1 %d %s\r\nX-elastic-product: Elasticsearch\r\n"
                    b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                    % (status, b"OK" if status == 200 else b"Error", len(payload), payload)
                )
                with self._lock:
                    if self.last_answer_ns is None and self.items >= self.expect:
                        self.last_answer_ns = time.time_ns()
                if self._spool is not None and status == 200 and method == "POST":
                    # After the answer: shipper goes on meanwhile. As received, so a gzip
                    # run keeps a multi-member gzip file (gzip.open reads it whole).
                    self._spool.write(wire)
                with self._lock:
                    self._cpu += time.thread_time() - started
        except (OSError, ValueError) as error:
            self.errors.append(repr(error))
        finally:
            rfile.close()
            connection.close()

    def _answer(
        self, method: str, target: str, headers: dict[str, str], wire: bytes
    ) -> tuple[int, bytes]:
        path = target.split("?", 1)[0]
        if method in ("GET", "HEAD") and path == "/":
            return 200, _INFO
        if method != "POST" or not path.endswith("/_bulk"):
            self.errors.append(f"unexpected request {method} {target}")
            return 400, b'{"error":"the bench sink answers GET / and POST /_bulk only"}'
        body = wire
        if headers.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(wire)
        count = body.count(b"\n") // 2  # `create` actions: an action line and a document line
        with self._lock:
            if self.first_request_ns is None:
                self.first_request_ns = time.time_ns()
            self.items += count
            self.requests += 1
            self.wire_bytes += len(wire)
            self.body_bytes += len(body)
        return 200, b'{"errors":false,"items":[' + b",".join([_ITEM] * count) + b"]}"


class FakeSink:
    """tests/fake_elasticsearch.py in this process, for comparison (use it with --quick: it
    keeps every document in memory)."""

    def __init__(self, expect: int) -> None:
        sys.path.insert(0, str(REPO))
        from tests.fake_elasticsearch import FakeElasticsearch  # noqa: PLC0415

        self.expect = expect
        self.errors: list[str] = []
        self._es = FakeElasticsearch()
        self._es.start()
        self.url = self._es.url
        self.first_request_ns: int | None = None
        self.last_answer_ns: int | None = None
        self._started_cpu = _process_cpu()
        self._stopped = threading.Event()
        self._watch = threading.Thread(target=self._watch_items, daemon=True)
        self._watch.start()

    def _watch_items(self) -> None:
        es = self._es
        while not self._stopped.is_set():
            if self.first_request_ns is None and es.item_results["created"]:
                self.first_request_ns = time.time_ns()
            try:  # the condition is checked after every request the fake answers
                es.wait_until(lambda: es.item_results["created"] >= self.expect, timeout=0.01)
            except TimeoutError:
                continue
            self.last_answer_ns = time.time_ns()
            return

    @property
    def items(self) -> int:
        return self._es.item_results["created"]

    @property
    def requests(self) -> int:
        return len(self._es.bulk_requests())

    @property
    def wire_bytes(self) -> int:
        return sum(request.wire_size for request in self._es.bulk_requests())

    @property
    def body_bytes(self) -> int:
        return sum(request.body_size for request in self._es.bulk_requests())

    def cpu_s(self) -> float:
        # The whole bench process: the fake's threads, plus the sampling loop (small).
        return _process_cpu() - self._started_cpu

    def stop(self) -> None:
        self._stopped.set()
        self._watch.join(timeout=5)
        self.errors.extend(self._es.internal_errors)
        self._es.stop()


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the run ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    exit_code: int | None
    wall_s: float  # process start -> the answer that completed the count
    shutdown_s: float
    cpu_user_s: float
    cpu_sys_s: float
    maxrss_kib: int
    sink_cpu_s: float
    first_request_s: float | None
    samples: Samples = field(default_factory=Samples)
    timed_out: bool = False


def write_config(
    path: Path,
    *,
    root: Path,
    url: str,
    state: Path,
    gzip_level: int | None,
    extra: str = "",
) -> None:
    # Defaults everywhere else (batch 2000 records / 5 MiB / 250 ms, one request in flight,
    # the `logs-docker-default` data stream): the figures are those of an unchanged config.
    # `extra` is appended as top-level YAML (bench/scenario.py moves the monitoring port).
    compression = (
        f"    compression:\n      enabled: true\n      level: {gzip_level}\n"
        if gzip_level is not None
        else ""
    )
    path.write_text(
        "# Written by bench/es_output.py for one benchmark run.\n"
        f"state_dir: {orjson.dumps(str(state)).decode()}\n"
        "sources:\n"
        "  docker:\n"
        "    type: docker_json\n"
        f"    root: {orjson.dumps(str(root)).decode()}\n"
        "    start_at: beginning\n"
        "outputs:\n"
        "  bench:\n"
        "    type: elasticsearch\n"
        f"    hosts: [{orjson.dumps(url).decode()}]\n"
        f"{compression}"
        "logging:\n"
        "  level: info\n"
        "  format: json\n"
        f"{extra}"
    )


def run_shipper(
    config: Path, sink: Sink, log_path: Path, expected: int, *, timeout: float, poll: float
) -> RunResult:
    samples = Samples()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    timed_out = False
    with log_path.open("wb") as log:
        started_ns = time.time_ns()
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "shipper", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:
            while True:
                pids = _tree(proc.pid)
                samples.peak_pss_kib = max(samples.peak_pss_kib, sum(map(_pss_kib, pids)))
                samples.peak_processes = max(samples.peak_processes, len(pids))
                samples.polls += 1
                if sink.items and samples.first_line_s is None:
                    samples.first_line_s = time.monotonic() - started
                if sink.items >= expected:
                    samples.cpu_at_last_line_s = sum(_cpu_s(p) for p in _tree(proc.pid))
                    break
                if proc.poll() is not None:
                    break
                if time.monotonic() > started + timeout:
                    timed_out = True
                    break
                time.sleep(poll)
            finished_ns = sink.last_answer_ns or time.time_ns()
            terminated = time.monotonic()
            exit_code = _stop(proc)
            shutdown_s = time.monotonic() - terminated
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return RunResult(
        exit_code=exit_code,
        wall_s=max(finished_ns - started_ns, 0) / 1e9,
        shutdown_s=shutdown_s,
        cpu_user_s=children_after.ru_utime - children_before.ru_utime,
        cpu_sys_s=children_after.ru_stime - children_before.ru_stime,
        maxrss_kib=children_after.ru_maxrss,
        sink_cpu_s=sink.cpu_s(),
        first_request_s=(
            None if sink.first_request_ns is None else (sink.first_request_ns - started_ns) / 1e9
        ),
        samples=samples,
        timed_out=timed_out,
    )


def _pairs(spool: Path) -> Iterator[tuple[bytes, bytes]]:
    with spool.open("rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    with gzip.open(spool, "rb") if compressed else spool.open("rb") as lines:
        for action in lines:
            yield action, next(lines)


class BulkChecker:
    """Checks bulk items one at a time, in the order they were indexed: every input line indexed
    once (container id, seq), `_id`s unique. The scenario benches (bench/scenario.py) feed it
    too, and read the parsed documents it returns."""

    def __init__(self, generated: GeneratedRoot, limit: int = 10) -> None:
        self.limit = limit
        self.problems: list[str] = []
        self._expected = {c.id: c for c in generated.containers}
        self._seen = {c.id: bytearray(c.lines) for c in generated.containers}
        self._ids: set[bytes] = set()

    @property
    def full(self) -> bool:
        """Enough problems to stop looking."""
        return len(self.problems) >= self.limit

    def add(self, number: int, action: bytes, line: bytes) -> dict[str, Any]:
        """Check item `number` (from 1); its document, parsed."""
        problems = self.problems
        create = orjson.loads(action).get("create", {})
        doc_id = create.get("_id", "").encode()
        if not doc_id or doc_id in self._ids:
            problems.append(f"item {number}: _id missing or sent twice")
        self._ids.add(doc_id)
        document: dict[str, Any] = orjson.loads(line)
        cid = document.get("container", {}).get("id")
        match = SEQ_PATTERN.search(document.get("message", ""))
        if cid not in self._expected or match is None:
            problems.append(f"item {number}: unknown container or no seq")
            return document
        container = self._expected[cid]
        index = int(match.group(1)) - container.first_seq
        if not 0 <= index < container.lines:
            problems.append(f"item {number}: seq {match.group(1)} was not in the input")
            return document
        seen = self._seen[cid]
        seen[index] += 1
        if seen[index] == 2:
            problems.append(f"item {number}: {container.name} seq indexed twice")
        return document

    def finish(self) -> list[str]:
        """The problems found, with the lines never indexed, once every item was added."""
        if not self.full:
            for cid, counts in self._seen.items():
                missing = counts.count(0)
                if missing:
                    self.problems.append(f"{self._expected[cid].name}: {missing} lines missing")
        return self.problems[: self.limit]


def verify_bulk(spool: Path, generated: GeneratedRoot, limit: int = 10) -> list[str]:
    """Problems found: every input line indexed once (container id, seq), `_id`s unique."""
    checker = BulkChecker(generated, limit)
    for number, (action, line) in enumerate(_pairs(spool), 1):
        checker.add(number, action, line)
        if checker.full:
            break
    return checker.finish()


# --- the report -------------------------------------------------------------------------------


def report(
    generated: GeneratedRoot, result: RunResult, sink: Sink, *, mode: str, verified: str
) -> str:
    wall = result.wall_s or float("nan")
    cpu = result.cpu_user_s + result.cpu_sys_s
    samples = result.samples
    first = (
        f"{result.first_request_s:.2f} s (process start -> first _bulk request)"
        if result.first_request_s is not None
        else "-"
    )
    at_last = (
        f"{samples.cpu_at_last_line_s:.2f} s" if samples.cpu_at_last_line_s is not None else "-"
    )
    requests = max(sink.requests, 1)
    ratio = sink.wire_bytes / sink.body_bytes if sink.body_bytes else float("nan")
    rows = [
        ("shipper", f"{shipper.__version__}, {_machine()}"),
        ("machine speed", machine_speed()),
        (
            "input",
            f"{len(generated.containers)} containers, {generated.lines:,} lines, "
            f"{generated.bytes / 1e6:,.1f} MB of json-file logs",
        ),
        ("output", mode),
        ("wall (start -> last item)", f"{result.wall_s:.2f} s"),
        ("first request after", first),
        ("docs/s", f"{generated.lines / wall:,.0f}"),
        ("MB/s (input bytes)", f"{generated.bytes / 1e6 / wall:,.1f}"),
        (
            "_bulk requests",
            f"{sink.requests:,}, {sink.items / requests:,.0f} docs and "
            f"{sink.body_bytes / requests / 1e6:.2f} MB each",
        ),
        (
            "request bodies",
            f"{sink.body_bytes / 1e6:,.1f} MB, {sink.wire_bytes / 1e6:,.1f} MB on the wire "
            f"({ratio:.1%})",
        ),
        (
            "CPU user + sys",
            f"{result.cpu_user_s:.2f} + {result.cpu_sys_s:.2f} = {cpu:.2f} s "
            f"({cpu / wall:.2f} cores over the wall time; whole run incl. shutdown)",
        ),
        ("CPU at last item", f"{at_last} (sampled from /proc)"),
        ("CPU per 1M lines", f"{cpu / generated.lines * 1e6:.2f} s"),
        (
            "peak PSS",
            f"{samples.peak_pss_kib / 1024:,.1f} MiB "
            f"(process tree, {samples.polls} samples, up to {samples.peak_processes} processes)",
        ),
        ("ru_maxrss", f"{result.maxrss_kib / 1024:,.1f} MiB (largest single process)"),
        ("shutdown (SIGTERM -> exit)", f"{result.shutdown_s:.2f} s, exit code {result.exit_code}"),
        ("items answered", f"{sink.items:,} of {generated.lines:,} expected"),
        ("every seq once, _ids unique", verified),
        ("sink CPU", f"{result.sink_cpu_s:.2f} s (in this process, not shipper's)"),
    ]
    return _table(rows)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ship a generated Docker root to an elasticsearch output and measure it."
    )
    add_input_arguments(parser, keep_help="keep the request bodies and state after the run")
    parser.add_argument("--gzip", action="store_true", help="gzip request bodies (compression)")
    parser.add_argument(
        "--gzip-level", type=int, default=1, help="with --gzip (default: %(default)s)"
    )
    parser.add_argument(
        "--sink",
        choices=("fast", "fake"),
        default="fast",
        help="fast: the loopback bulk sink; fake: tests/fake_elasticsearch.py (default: fast)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not keep the request bodies to check every seq and _id after the run",
    )
    add_workers_argument(parser)
    return parse_input_arguments(parser, argv)


def _failures(generated: GeneratedRoot, result: RunResult, sink: Sink, timeout: float) -> list[str]:
    failures: list[str] = []
    if result.timed_out:
        failures.append(f"timed out after {timeout:g}s with {sink.items:,} items")
    if result.exit_code != 0:
        failures.append(f"exit code {result.exit_code}, expected 0")
    if sink.items != generated.lines:
        failures.append(f"{sink.items:,} items answered, input has {generated.lines:,} lines")
    return failures


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    out, root, generated = prepare_input(args)
    spool, state, config, log_path = RunPaths.fresh(out, "es")
    spool.unlink(missing_ok=True)
    verify = not args.no_verify and args.sink == "fast"
    sink: Sink = (
        FastBulkSink(generated.lines, spool if verify else None)
        if args.sink == "fast"
        else FakeSink(generated.lines)
    )
    gzip_level = args.gzip_level if args.gzip else None
    mode = f"elasticsearch, gzip {'level ' + str(gzip_level) if gzip_level else 'off'}, " + (
        "loopback bulk sink" if args.sink == "fast" else "tests/fake_elasticsearch.py"
    )
    extra = ""
    if args.workers != 1:
        mode += f", {args.workers} workers"
        extra = f"pipeline:\n  workers: {args.workers}\n"
    write_config(config, root=root, url=sink.url, state=state, gzip_level=gzip_level, extra=extra)
    print(f"running: {sys.executable} -m shipper run --config {config}  ({mode})", flush=True)
    try:
        result = run_shipper(
            config, sink, log_path, generated.lines, timeout=args.timeout, poll=args.poll
        )
    finally:
        sink.stop()

    failures = _failures(generated, result, sink, args.timeout)
    failures.extend(f"sink: {error}" for error in sink.errors[:5])
    if not verify:
        verified = "not checked" + (" (--no-verify)" if args.no_verify else " (--sink fake)")
    else:
        print("verifying every seq and _id ...", flush=True)
        problems = verify_bulk(spool, generated)
        verified = "yes" if not problems else "NO"
        failures.extend(problems)

    levels = _count_levels(log_path)
    text = report(generated, result, sink, mode=mode, verified=verified)
    text += f"\n  {'shipper log levels':<27}  {levels} ({log_path})"
    if not args.keep:
        shutil.rmtree(state, ignore_errors=True)
        spool.unlink(missing_ok=True)
    return conclude(text, failures, log_path)


if __name__ == "__main__":
    sys.exit(main())
