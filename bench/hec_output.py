"""Benchmark: a Docker root of json-file logs shipped by `shipper run` to a `splunk_hec` output.

The input and the measurement are bench/file_output.py's (generate.py's root, /proc sampling of
shipper's process tree, rusage), and the run is bench/es_output.py's (`run_shipper`: wall time
ends at the sink's answer that completes the count). The collector is a loopback HEC sink in
this process, built on es_output.py's HTTP/1.1 loop: it answers `/services/collector/health`
as a healthy HEC, every `/services/collector/event` request `{"text":"Success","code":0}` after
counting its events (one per line: shipper frames one envelope a line; gzip bodies are
decompressed to count them), and, with --acks, an `ackId` per request per channel and `true`
to every ack poll for ids it issued (each id once, as HEC does). With --acks the count is of
acknowledged events, so the wall time includes the last ack poll. Unless --no-verify, the
bodies go to a spool file (by a writer thread, after the answer) that is checked after the
run: every input line's (container id from `source`, seq) exactly once.

    .venv/bin/python bench/hec_output.py                  # 20 containers x 100,000 lines
    .venv/bin/python bench/hec_output.py --gzip           # the same, gzip request bodies (level 1)
    .venv/bin/python bench/hec_output.py --acks           # indexer acknowledgement, as configured
    .venv/bin/python bench/hec_output.py --quick          # 4 x 10,000: does it work?
"""

from __future__ import annotations

import argparse
import gzip
import queue
import shutil
import sys
import threading
import time
from pathlib import Path

import orjson
from es_output import FastBulkSink, RunResult, run_shipper
from file_output import (
    RunPaths,
    _count_levels,
    _machine,
    _table,
    add_input_arguments,
    conclude,
    machine_speed,
    parse_input_arguments,
    prepare_input,
)
from generate import GeneratedRoot

import shipper
from shipper.docker_writer import SEQ_PATTERN

TOKEN = "00000000-bench-4hec-0000-000000000000"  # noqa: S105 - the loopback sink's own
_EVENT_PATHS = frozenset(
    {"/services/collector", "/services/collector/event", "/services/collector/event/1.0"}
)
_ACK_PATHS = frozenset({"/services/collector/ack", "/services/collector/ack/1.0"})
_HEALTH_PATHS = frozenset({"/services/collector/health", "/services/collector/health/1.0"})
_HEALTHY = b'{"text":"HEC is healthy","code":17}'
_SUCCESS = b'{"text":"Success","code":0}'
_SUCCESS_ACK = b'{"text":"Success","code":0,"ackId":%d}'


# --- the sink ---------------------------------------------------------------------------------


class FastHecSink(FastBulkSink):
    """es_output.py's loopback server (a thread per connection, CPU counted with thread_time),
    answering as HEC; nothing is parsed but the ack polls, nothing stored but the spool."""

    def __init__(self, expect: int, spool: Path | None, *, acks: bool) -> None:
        super().__init__(expect, None)
        self.acks = acks
        self.events_received = 0
        self.ack_polls = 0
        self._auth = f"Splunk {TOKEN}"
        self._next_ack: dict[str, int] = {}  # channel -> next ackId
        self._pending: dict[tuple[str, int], int] = {}  # (channel, ackId) -> events
        self._spooled: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._spool_cpu = 0.0
        self._spool_thread: threading.Thread | None = None
        if spool is not None:
            self._spool_thread = threading.Thread(
                target=self._write_spool, args=(spool,), name="sink-spool", daemon=True
            )
            self._spool_thread.start()

    def cpu_s(self) -> float:
        return super().cpu_s() + self._spool_cpu

    def stop(self) -> None:
        super().stop()
        if self._spool_thread is not None:
            self._spooled.put(None)
            self._spool_thread.join()

    def _write_spool(self, path: Path) -> None:
        with path.open("wb") as spool:
            while (body := self._spooled.get()) is not None:
                started = time.thread_time()
                spool.write(body)
                self._spool_cpu += time.thread_time() - started

    def _answer(
        self, method: str, target: str, headers: dict[str, str], wire: bytes
    ) -> tuple[int, bytes]:
        path = target.split("?", 1)[0].rstrip("/")
        if path in _HEALTH_PATHS:
            return 200, _HEALTHY
        if method != "POST" or not (path in _EVENT_PATHS or path in _ACK_PATHS):
            self.errors.append(f"unexpected request {method} {target}")
            return 404, b'{"text":"The requested URL was not found on this server.","code":404}'
        if headers.get("authorization") != self._auth:
            self.errors.append("a request without the bench token")
            return 403, b'{"text":"Invalid token","code":4}'
        body = wire
        if headers.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(wire)
        channel = headers.get("x-splunk-request-channel", "")
        if path in _ACK_PATHS:
            return 200, self._ack(channel, orjson.loads(body)["acks"])
        count = body.count(b"\n") + 1  # one envelope a line, no newline after the last
        with self._lock:
            if self.first_request_ns is None:
                self.first_request_ns = time.time_ns()
            self.requests += 1
            self.events_received += count
            self.wire_bytes += len(wire)
            self.body_bytes += len(body)
            if self.acks:
                ack_id = self._next_ack.get(channel, 0)
                self._next_ack[channel] = ack_id + 1
                self._pending[(channel, ack_id)] = count
            else:
                self.items += count
        if self._spool_thread is not None:
            self._spooled.put(body + b"\n")
        return 200, _SUCCESS_ACK % ack_id if self.acks else _SUCCESS

    def _ack(self, channel: str, ids: list[int]) -> bytes:
        answers: dict[str, bool] = {}
        with self._lock:
            self.ack_polls += 1
            for ack_id in ids:
                count = self._pending.pop((channel, ack_id), None)
                answers[str(ack_id)] = count is not None
                if count is not None:
                    self.items += count  # acknowledged: this is when shipper may move on
        return orjson.dumps({"acks": answers})


# --- the run ----------------------------------------------------------------------------------


def write_config(
    path: Path,
    *,
    root: Path,
    url: str,
    state: Path,
    gzip_level: int | None,
    acks: bool,
    ack_poll_interval: str | None,
    max_in_flight: int | None,
) -> None:
    # Defaults everywhere else (batch 2000 records / 250 ms, requests up to 1 MB, one request
    # in flight, event: message, the token's default index): the figures are those of an
    # unchanged config, apart from what the options say.
    lines = [
        "# Written by bench/hec_output.py for one benchmark run.",
        f"state_dir: {orjson.dumps(str(state)).decode()}",
        "sources:",
        "  docker:",
        "    type: docker_json",
        f"    root: {orjson.dumps(str(root)).decode()}",
        "    start_at: beginning",
        "outputs:",
        "  bench:",
        "    type: splunk_hec",
        f"    url: {orjson.dumps(url).decode()}",
        f'    token: "{TOKEN}"',
    ]
    if max_in_flight is not None:
        lines.append(f"    max_in_flight: {max_in_flight}")
    if gzip_level is not None:
        lines += ["    compression:", "      enabled: true", f"      level: {gzip_level}"]
    if acks:
        lines += ["    ack:", "      enabled: true"]
        if ack_poll_interval is not None:
            lines.append(f"      poll_interval: {ack_poll_interval}")
    lines += ["logging:", "  level: info", "  format: json", ""]
    path.write_text("\n".join(lines))


def verify_events(spool: Path, generated: GeneratedRoot, limit: int = 10) -> list[str]:
    """Problems found: every input line indexed once, by (container id, seq). The container is
    the directory of the event's `source` (the log file's path, shipper's default)."""
    expected = {c.id: c for c in generated.containers}
    seen = {c.id: bytearray(c.lines) for c in generated.containers}
    problems: list[str] = []
    with spool.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            envelope = orjson.loads(line)
            cid = Path(envelope.get("source", "")).parent.name
            match = SEQ_PATTERN.search(envelope.get("event", ""))
            if cid not in expected or match is None:
                problems.append(f"event {number}: unknown container or no seq")
            else:
                index = int(match.group(1)) - expected[cid].first_seq
                if not 0 <= index < expected[cid].lines:
                    problems.append(f"event {number}: seq {match.group(1)} was not in the input")
                else:
                    seen[cid][index] += 1
                    if seen[cid][index] == 2:
                        problems.append(f"event {number}: {expected[cid].name} seq sent twice")
            if len(problems) >= limit:
                return problems
    for cid, counts in seen.items():
        missing = counts.count(0)
        if missing:
            problems.append(f"{expected[cid].name}: {missing} lines missing")
    return problems[:limit]


# --- the report -------------------------------------------------------------------------------


def report(
    generated: GeneratedRoot, result: RunResult, sink: FastHecSink, *, mode: str, verified: str
) -> str:
    wall = result.wall_s or float("nan")
    cpu = result.cpu_user_s + result.cpu_sys_s
    samples = result.samples
    first = (
        f"{result.first_request_s:.2f} s (process start -> first event request)"
        if result.first_request_s is not None
        else "-"
    )
    at_last = (
        f"{samples.cpu_at_last_line_s:.2f} s" if samples.cpu_at_last_line_s is not None else "-"
    )
    requests = max(sink.requests, 1)
    ratio = sink.wire_bytes / sink.body_bytes if sink.body_bytes else float("nan")
    last = "last ack" if sink.acks else "last event"
    rows = [
        ("shipper", f"{shipper.__version__}, {_machine()}"),
        ("machine speed", machine_speed()),
        (
            "input",
            f"{len(generated.containers)} containers, {generated.lines:,} lines, "
            f"{generated.bytes / 1e6:,.1f} MB of json-file logs",
        ),
        ("output", mode),
        (f"wall (start -> {last})", f"{result.wall_s:.2f} s"),
        ("first request after", first),
        ("events/s", f"{generated.lines / wall:,.0f}"),
        ("MB/s (input bytes)", f"{generated.bytes / 1e6 / wall:,.1f}"),
        (
            "event requests",
            f"{sink.requests:,}, {sink.events_received / requests:,.0f} events and "
            f"{sink.body_bytes / requests / 1e6:.2f} MB each"
            + (f"; {sink.ack_polls:,} ack polls" if sink.acks else ""),
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
        ("CPU at last event", f"{at_last} (sampled from /proc)"),
        ("CPU per 1M lines", f"{cpu / generated.lines * 1e6:.2f} s"),
        (
            "peak PSS",
            f"{samples.peak_pss_kib / 1024:,.1f} MiB "
            f"(process tree, {samples.polls} samples, up to {samples.peak_processes} processes)",
        ),
        ("ru_maxrss", f"{result.maxrss_kib / 1024:,.1f} MiB (largest single process)"),
        ("shutdown (SIGTERM -> exit)", f"{result.shutdown_s:.2f} s, exit code {result.exit_code}"),
        (
            "events counted",
            f"{sink.items:,} of {generated.lines:,} expected"
            + (" (acknowledged)" if sink.acks else "")
            + f", {sink.events_received:,} received",
        ),
        ("every seq once", verified),
        ("sink CPU", f"{result.sink_cpu_s:.2f} s (in this process, not shipper's)"),
    ]
    return _table(rows)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ship a generated Docker root to a splunk_hec output and measure it."
    )
    add_input_arguments(parser, keep_help="keep the request bodies and state after the run")
    parser.add_argument("--gzip", action="store_true", help="gzip request bodies (compression)")
    parser.add_argument(
        "--gzip-level", type=int, default=1, help="with --gzip (default: %(default)s)"
    )
    parser.add_argument("--acks", action="store_true", help="indexer acknowledgement on")
    parser.add_argument(
        "--ack-poll-interval",
        help="with --acks: ack.poll_interval, e.g. 50ms (default: the config's default, 1s)",
    )
    parser.add_argument(
        "--max-in-flight", type=int, help="the output's max_in_flight (default: the config's, 1)"
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not keep the request bodies to check every seq after the run",
    )
    return parse_input_arguments(parser, argv)


def _failures(
    generated: GeneratedRoot, result: RunResult, sink: FastHecSink, timeout: float
) -> list[str]:
    failures: list[str] = []
    if result.timed_out:
        failures.append(f"timed out after {timeout:g}s with {sink.items:,} events")
    if result.exit_code != 0:
        failures.append(f"exit code {result.exit_code}, expected 0")
    if sink.items != generated.lines:
        failures.append(f"{sink.items:,} events counted, input has {generated.lines:,} lines")
    if sink.events_received != generated.lines:
        failures.append(f"{sink.events_received:,} events received (resent or lost)")
    return failures


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    out, root, generated = prepare_input(args)
    spool, state, config, log_path = RunPaths.fresh(out, "hec", spool="events.spool")
    spool.unlink(missing_ok=True)
    verify = not args.no_verify
    sink = FastHecSink(generated.lines, spool if verify else None, acks=args.acks)
    gzip_level = args.gzip_level if args.gzip else None
    mode = (
        f"splunk_hec, gzip {'level ' + str(gzip_level) if gzip_level else 'off'}, acks "
        + (f"on (poll {args.ack_poll_interval or '1s'})" if args.acks else "off")
        + (f", max_in_flight {args.max_in_flight}" if args.max_in_flight else "")
        + ", loopback HEC sink"
    )
    write_config(
        config,
        root=root,
        url=sink.url,
        state=state,
        gzip_level=gzip_level,
        acks=args.acks,
        ack_poll_interval=args.ack_poll_interval,
        max_in_flight=args.max_in_flight,
    )
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
        verified = "not checked (--no-verify)"
    else:
        print("verifying every seq ...", flush=True)
        problems = verify_events(spool, generated)
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
