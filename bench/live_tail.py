"""Benchmark: end-to-end latency of `shipper run` tailing json-file logs written at a steady rate.

A writer process (shipper.docker_writer, byte for byte as dockerd writes json-file logs, with
the wall clock) appends realistic lines to --containers logs at --rate lines/s in all for
--duration seconds, each message ending in `wt=<time.time_ns() at the write>` (also the entry's
json-file time). shipper (the real CLI, defaults but for the paths) tails them to es_output.py's
loopback bulk sink, which notes when each request arrived; after the run each document's latency
is its request's arrival minus its write time. Before the timed writing, one warm-up line per
container (no `wt=`) must reach the sink, so start-up is not counted as latency.

    .venv/bin/python bench/live_tail.py            # 20 containers, 10,000 lines/s, 30 s
    .venv/bin/python bench/live_tail.py --quick    # 4 containers, 1,000 lines/s, 3 s
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import shutil
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from file_output import RunPaths, _count_levels, machine_speed
from generate import GeneratedContainer, GeneratedRoot
from scenario import (
    Deliveries,
    ShipperProcess,
    TimedBulkSink,
    add_run_arguments,
    analyse,
    conclude,
    mib,
    percentile,
    run_failures,
    shipper_row,
    write_config,
)

from shipper.docker_writer import DockerRootWriter, realistic_lines

_WINDOW_S = 5  # latency is also reported per window of write time, to show a trend


# --- the writer process -----------------------------------------------------------------------


@dataclass(frozen=True)
class WriterReport:
    """What the writer process wrote in its timed phase (the warm-up lines apart)."""

    containers: list[GeneratedContainer]  # every line, warm-up included
    lines: int
    started_ns: int
    finished_ns: int
    cpu_s: float
    max_behind_s: float  # the latest a line was written after its due time


def _write(
    root: Path, conn: Connection, *, containers: int, per_container: int, rate: float, seed: int
) -> None:
    """The writer process: create the containers, say "ready"; on "warm" write seq 0 of each;
    on "go" write the rest at `rate`, round robin; send a WriterReport."""
    rng = random.Random(seed)
    with DockerRootWriter(root, clock=time.time_ns) as writer:
        logs = [
            writer.add_container(
                f"live-{index + 1:03d}",
                image="bench/app:1.0",
                labels={"com.example.service": "shop", "com.example.instance": str(index + 1)},
            )
            for index in range(containers)
        ]
        # Generated beforehand: making realistic lines costs more than writing them, and the
        # writer shares the two cores with shipper.
        messages = [list(realistic_lines(rng, per_container, container=log.name)) for log in logs]
        conn.send("ready")
        if conn.recv() != "warm":
            return
        for log, lines in zip(logs, messages, strict=True):
            stream, message = lines[0]
            log.write(message, stream=stream)
        if conn.recv() != "go":
            return
        total = containers * (per_container - 1)
        interval = 1 / rate
        behind = 0.0
        cpu_before = time.process_time()
        started_ns = time.time_ns()
        started = time.monotonic()
        for n in range(total):
            delay = started + n * interval - time.monotonic()
            if delay > 0.0005:
                time.sleep(delay)  # ahead of schedule; below half a millisecond, just write
            else:
                behind = max(behind, -delay)
            log = logs[n % containers]
            stream, message = messages[n % containers][1 + n // containers]
            now = time.time_ns()
            log.write(f"{message} wt={now}", stream=stream, time_ns=now)
        finished_ns = time.time_ns()
        cpu = time.process_time() - cpu_before
        written = [
            GeneratedContainer(
                id=log.id,
                name=log.name,
                lines=per_container,
                bytes=log.log_path.stat().st_size,
                first_seq=0,
                files={log.log_path.name: log.log_path.stat().st_size},
            )
            for log in logs
        ]
    conn.send(WriterReport(written, total, started_ns, finished_ns, cpu, behind))


# --- the run ----------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Tail json-file logs written at a steady rate; measure end-to-end latency."
    )
    parser.add_argument("--containers", type=int, default=20, help="default: %(default)s")
    parser.add_argument(
        "--rate", type=float, default=10_000, help="lines/s over all containers (%(default)s)"
    )
    parser.add_argument(
        "--duration", type=float, default=30, help="seconds of writing (%(default)s)"
    )
    parser.add_argument("--seed", type=int, default=1, help="line generator seed")
    parser.add_argument(
        "--quick", action="store_true", help="4 containers, 1,000 lines/s, 3 s: does it work?"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=30,
        help="seconds after the writing for the last lines to arrive (%(default)s)",
    )
    add_run_arguments(parser, poll=0.2, keep_help="keep the logs, spool and state")
    args = parser.parse_args(argv)
    if args.quick:
        args.containers, args.rate, args.duration = 4, 1_000, 3
    return args


def _run(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = out / "live-tail-root"  # new logs every run: the writer appends to what it finds
    spool, state, config, log_path = RunPaths.fresh(out, "live")
    shutil.rmtree(root, ignore_errors=True)
    per_container = 1 + round(args.rate * args.duration / args.containers)
    expected = args.containers * per_container

    # spawn, not fork: the child must not inherit this process's sink threads.
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    writer = context.Process(
        target=_write,
        args=(root, child_conn),
        kwargs={
            "containers": args.containers,
            "per_container": per_container,
            "rate": args.rate,
            "seed": args.seed,
        },
        name="live-writer",
    )
    writer.start()
    sink = TimedBulkSink(expected, spool)
    try:
        if not conn.poll(300) or conn.recv() != "ready":
            raise SystemExit("the writer did not get ready")
        write_config(config, root=root, url=sink.url, state=state, workers=args.workers)
        print(
            f"running: {sys.executable} -m shipper run --config {config}  "
            f"({args.containers} containers, {args.rate:,.0f} lines/s for {args.duration:g} s)",
            flush=True,
        )
        proc = ShipperProcess(config, log_path, profile=args.profile)
        try:
            report, late = _measure(args, proc, sink, conn, expected)
        finally:
            proc.stop()
    finally:
        sink.stop()
        writer.join(timeout=10)
        if writer.is_alive():
            writer.kill()

    if report is None:
        print(f"FAILED: {late or 'the writer sent no report'}")
        return 1
    generated = GeneratedRoot(
        root=root,
        lines=expected,
        bytes=sum(c.bytes for c in report.containers),
        containers=report.containers,
        reused=False,
        seconds=0.0,
    )
    print("reading back every accepted document ...", flush=True)
    deliveries = analyse(spool, sink.arrivals, generated)
    rows = _rows(args, generated, proc, sink, deliveries, report=report)
    rows.append(("shipper log levels", f"{_count_levels(log_path)} ({log_path})"))
    if not args.keep:
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        spool.unlink(missing_ok=True)
    failures = run_failures(proc, sink, deliveries, expected)
    if late:
        failures.append(late)
    if len(deliveries.latencies_ns) != report.lines:
        failures.append(f"{len(deliveries.latencies_ns):,} timed lines, {report.lines:,} written")
    return conclude(rows, failures, log_path)


def _measure(
    args: argparse.Namespace,
    proc: ShipperProcess,
    sink: TimedBulkSink,
    conn: Connection,
    expected: int,
) -> tuple[WriterReport | None, str | None]:
    """Warm up, let the writer go, and sample until every line was accepted; the writer's
    report, and what went wrong if something did."""
    conn.send("warm")
    deadline = time.monotonic() + 120
    while sink.items < args.containers:  # every container's warm-up line is in: all followed
        proc.sample()
        if not proc.running or time.monotonic() > deadline:
            return None, f"the warm-up lines did not arrive ({sink.items} of {args.containers})"
        time.sleep(args.poll)
    conn.send("go")
    report: WriterReport | None = None
    deadline = time.monotonic() + args.duration + args.settle
    while True:
        proc.sample()
        if report is None and conn.poll():
            report = conn.recv()
            deadline = time.monotonic() + args.settle
        if report is not None and sink.items >= expected:
            proc.sample()
            return report, None
        if not proc.running:
            return report, "shipper exited during the run"
        if time.monotonic() > deadline:
            return report, f"{sink.items:,} of {expected:,} lines arrived before the deadline"
        time.sleep(args.poll)


def _rows(
    args: argparse.Namespace,
    generated: GeneratedRoot,
    proc: ShipperProcess,
    sink: TimedBulkSink,
    deliveries: Deliveries,
    *,
    report: WriterReport,
) -> list[tuple[str, str]]:
    latencies = sorted(latency for _, latency in deliveries.latencies_ns)
    writing_s = (report.finished_ns - report.started_ns) / 1e9
    cpu_writing = proc.cpu_at(report.finished_ns) - proc.cpu_at(report.started_ns)
    timed = [a for a in sink.arrivals if a.received_ns >= report.started_ns]
    delivered_s = (timed[-1].received_ns - timed[0].received_ns) / 1e9 if len(timed) > 1 else 0
    cpu = proc.usage.cpu_s

    def ms(ns: int) -> str:
        return f"{ns / 1e6:,.0f} ms"

    rows = [
        shipper_row(),
        ("machine speed", machine_speed()),
        (
            "input",
            f"{args.containers} containers, {report.lines:,} timed lines "
            f"(+{args.containers} warm-up), {generated.bytes / 1e6:,.1f} MB of json-file logs",
        ),
        ("output", "elasticsearch, gzip off, loopback bulk sink"),
        (
            "written",
            f"{report.lines / writing_s:,.0f} lines/s for {writing_s:.2f} s "
            f"(asked {args.rate:,.0f}); at worst {report.max_behind_s * 1e3:.1f} ms behind "
            f"schedule; writer CPU {report.cpu_s:.2f} s",
        ),
        (
            "delivered",
            f"{sum(a.items for a in timed) / delivered_s:,.0f} docs/s "
            f"(first -> last timed request, {len(timed):,} requests, "
            f"{sum(a.items for a in timed) / max(len(timed), 1):,.0f} docs each)"
            if delivered_s
            else "-",
        ),
        (
            "latency (write -> sink)",
            f"p50 {ms(percentile(latencies, 0.5))}, p90 {ms(percentile(latencies, 0.9))}, "
            f"p99 {ms(percentile(latencies, 0.99))}, p99.9 {ms(percentile(latencies, 0.999))}, "
            f"max {ms(latencies[-1] if latencies else 0)} ({len(latencies):,} lines)",
        ),
        ("p50 / p99 / max per window", _windows(deliveries, report.started_ns)),
        (
            "CPU while writing",
            f"{cpu_writing:.2f} s over {writing_s:.2f} s = {cpu_writing / writing_s:.2f} cores "
            f"({cpu_writing / max(report.lines, 1) * 1e9 / 1e3:.0f} µs per line; /proc samples)",
        ),
        (
            "CPU user + sys",
            f"{proc.usage.user_s:.2f} + {proc.usage.sys_s:.2f} = {cpu:.2f} s "
            "(whole run incl. start-up and shutdown)",
        ),
        ("peak PSS", f"{mib(proc.peak_pss_kib())} ({len(proc.samples)} samples)"),
        ("shutdown (SIGTERM -> exit)", f"{proc.shutdown_s or 0:.2f} s, exit code {proc.exit_code}"),
        ("documents accepted", f"{sink.items:,} of {generated.lines:,}"),
        ("every seq once, _ids unique", "yes" if not deliveries.problems else "NO"),
        ("sink CPU", f"{sink.cpu_s():.2f} s (in this process, not shipper's)"),
    ]
    return rows


def _windows(deliveries: Deliveries, started_ns: int) -> str:
    """p50 / p99 / max latency (ms) of the lines written in each _WINDOW_S seconds."""
    windows: dict[int, list[int]] = {}
    for written_ns, latency in deliveries.latencies_ns:
        windows.setdefault(int((written_ns - started_ns) / 1e9 // _WINDOW_S), []).append(latency)
    parts = []
    for index in sorted(windows):
        ordered = sorted(windows[index])
        parts.append(
            f"{index * _WINDOW_S}s: {percentile(ordered, 0.5) / 1e6:.0f}/"
            f"{percentile(ordered, 0.99) / 1e6:.0f}/{ordered[-1] / 1e6:.0f}"
        )
    return ", ".join(parts) + " ms" if parts else "-"


def main(argv: list[str] | None = None) -> int:
    return _run(_parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
