"""Benchmark: a large json-file backlog behind a stalled, then released, loopback `_bulk` sink.

shipper (the real CLI, defaults but for the paths) starts on a generated Docker root with
`start_at: beginning` while the sink refuses every `_bulk` with 429 (or, with --stall-mode hold,
holds it unanswered). --stall seconds after the first `_bulk` attempt the sink is released and
accepts everything. The report gives the peak memory (summed PSS of shipper's process tree,
sampled from /proc) while stalled and after the release, the throughput after the release, CPU,
and whether every line arrived exactly once. Memory should not depend on the backlog's size:
compare --lines 1000000 with the default 5,000,000.

    .venv/bin/python bench/backlog.py                    # 10 containers, 5,000,000 lines
    .venv/bin/python bench/backlog.py --lines 1000000    # the same with a fifth of the backlog
    .venv/bin/python bench/backlog.py --quick            # 4 containers, 20,000 lines, 3 s stall
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from file_output import RunPaths, _count_levels, machine_speed, prepare_input
from generate import GeneratedRoot
from scenario import (
    Deliveries,
    ShipperProcess,
    TimedBulkSink,
    add_run_arguments,
    analyse,
    conclude,
    mib,
    run_failures,
    scrape_metrics,
    shipper_row,
    write_config,
)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ship a large backlog to a stalled, then released, bulk sink; measure memory."
    )
    parser.add_argument("--containers", type=int, default=10, help="default: %(default)s")
    parser.add_argument(
        "--lines",
        type=int,
        default=5_000_000,
        help="backlog lines in all, split evenly over the containers (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="input generator seed")
    parser.add_argument(
        "--stall",
        type=float,
        default=30.0,
        help="seconds from the first _bulk attempt to the release (default: %(default)s)",
    )
    parser.add_argument(
        "--stall-mode",
        choices=("429", "hold"),
        default="429",
        help="429: refuse each _bulk as a busy cluster does; hold: leave it unanswered "
        "(keep --stall under shipper's 30 s request timeout) (default: %(default)s)",
    )
    parser.add_argument(
        "--max-buffered",
        metavar="SIZE",
        help="pipeline.max_buffered_bytes, e.g. 32MiB (default: shipper's, 16MiB)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="4 containers, 20,000 lines, 3 s stall: does it work?"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="seconds from start to the last document (default: %(default)s)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not read the accepted documents back (every seq once, _ids unique)",
    )
    add_run_arguments(parser, poll=0.2)
    args = parser.parse_args(argv)
    if args.quick:
        args.containers, args.lines, args.stall = 4, 20_000, 3.0
    if args.stall_mode == "hold" and args.stall >= 30:
        parser.error("--stall-mode hold needs --stall under 30 s: shipper would time out")
    if args.lines < args.containers:
        parser.error("--lines must be at least --containers")
    return args


def _run(args: argparse.Namespace) -> int:
    per_container = args.lines // args.containers
    out, root, generated = prepare_input(
        argparse.Namespace(
            out=args.out, containers=args.containers, lines=per_container, seed=args.seed
        )
    )
    spool, state, config, log_path = RunPaths.fresh(out, "backlog")

    sink = TimedBulkSink(generated.lines, None if args.no_verify else spool, stall=args.stall_mode)
    write_config(
        config,
        root=root,
        url=sink.url,
        state=state,
        max_buffered=args.max_buffered,
        workers=args.workers,
    )
    print(
        f"running: {sys.executable} -m shipper run --config {config}  "
        f"(sink stalled with {args.stall_mode} for {args.stall:g} s after the first _bulk)",
        flush=True,
    )
    try:
        proc = ShipperProcess(config, log_path, profile=args.profile)
        try:
            timed_out, buffered = _measure(args, proc, sink, generated.lines)
        finally:
            proc.stop()
    finally:
        sink.stop()

    if not args.no_verify:
        print("reading back every accepted document ...", flush=True)
    deliveries = analyse(spool, sink.arrivals, generated, check=not args.no_verify)
    rows = _rows(args, generated, proc, sink, deliveries, buffered=buffered)
    rows.append(("shipper log levels", f"{_count_levels(log_path)} ({log_path})"))
    if not args.keep:
        shutil.rmtree(state, ignore_errors=True)
        spool.unlink(missing_ok=True)
    failures = run_failures(proc, sink, deliveries, generated.lines)
    if timed_out:
        failures.append(f"timed out after {args.timeout:g}s with {sink.items:,} documents")
    return conclude(rows, failures, log_path)


def _measure(
    args: argparse.Namespace, proc: ShipperProcess, sink: TimedBulkSink, expected: int
) -> tuple[bool, float | None]:
    """Sample until every line was accepted (or shipper exited), releasing the sink --stall
    seconds after the first `_bulk` attempt; whether the deadline passed first, and
    shipper_buffered_bytes (from /metrics) just before the release."""
    deadline = time.monotonic() + args.timeout
    buffered: float | None = None
    while True:
        proc.sample()
        first = sink.first_attempt_ns
        due = first is not None and time.time_ns() - first >= args.stall * 1e9
        if due and not sink.released.is_set():
            proc.sample()  # the state at the release: the end of the stall phase
            metrics = scrape_metrics(proc.monitoring_url(), ("shipper_buffered_bytes",))
            buffered = metrics.get("shipper_buffered_bytes")
            sink.release()
            print(f"released after {args.stall:g} s of stall", flush=True)
        if sink.items >= expected or not proc.running:
            proc.sample()
            return False, buffered
        if time.monotonic() > deadline:
            return True, buffered
        time.sleep(args.poll)


def _rows(
    args: argparse.Namespace,
    generated: GeneratedRoot,
    proc: ShipperProcess,
    sink: TimedBulkSink,
    deliveries: Deliveries,
    *,
    buffered: float | None,
) -> list[tuple[str, str]]:
    started = proc.started_ns
    released = sink.released_ns
    last = sink.last_answer_ns
    first_accepted = sink.first_request_ns
    wall = (last - started) / 1e9 if last else float("nan")
    at_release = [s for s in proc.samples if released is not None and s.at_ns <= released]
    cpu_stall = at_release[-1].cpu_s if at_release else float("nan")
    cpu = proc.usage.cpu_s
    stalled = (
        f"{sink.refused_requests:,} requests refused"
        if args.stall_mode == "429"
        else f"{sink.held_requests:,} requests held"
    )
    if args.no_verify:
        verified = "not checked (--no-verify)"
    else:
        verified = "yes" if not deliveries.problems else "NO"
    return [
        shipper_row(),
        ("machine speed", machine_speed()),
        (
            "input",
            f"{len(generated.containers)} containers, {generated.lines:,} lines, "
            f"{generated.bytes / 1e6:,.1f} MB of json-file logs",
        ),
        ("output", "elasticsearch, gzip off, loopback bulk sink"),
        (
            "stall",
            f"{args.stall_mode} from the first _bulk attempt "
            f"({_since(sink.first_attempt_ns, started)} after start) for {args.stall:g} s: "
            + stalled,
        ),
        ("peak PSS, stalled", f"{mib(proc.peak_pss_kib(end_ns=released))} (start -> release)"),
        (
            "PSS at the release",
            (mib(at_release[-1].pss_kib) if at_release else "-")
            + (
                f"; shipper_buffered_bytes {buffered / 2**20:.1f} MiB "
                f"(max_buffered_bytes {args.max_buffered or '16MiB, the default'})"
                if buffered is not None
                else ""
            ),
        ),
        (
            "peak PSS, after release",
            f"{mib(proc.peak_pss_kib(start_ns=released or 0))} (release -> last document)",
        ),
        ("PSS timeline", _timeline(proc, released)),
        (
            "ru_maxrss",
            f"{mib(proc.usage.maxrss_kib)} (largest single process; "
            f"up to {max((s.processes for s in proc.samples), default=0)} processes)",
        ),
        (
            "release -> first accepted",
            _since(first_accepted, released)
            + (" (shipper's retry backoff)" if args.stall_mode == "429" else " (held answered)"),
        ),
        ("release -> last document", _since(last, released)),
        (
            "docs/s after release",
            _rate(generated.lines, first_accepted, last)
            + " (first accepted -> last document); "
            + _rate(generated.lines, released, last)
            + " (release -> last)",
        ),
        ("wall (start -> last document)", f"{wall:.2f} s"),
        (
            "CPU user + sys",
            f"{proc.usage.user_s:.2f} + {proc.usage.sys_s:.2f} = {cpu:.2f} s "
            f"(whole run incl. shutdown); {cpu_stall:.2f} s by the release",
        ),
        ("CPU per 1M lines", f"{cpu / generated.lines * 1e6:.2f} s"),
        ("shutdown (SIGTERM -> exit)", f"{proc.shutdown_s or 0:.2f} s, exit code {proc.exit_code}"),
        (
            "documents accepted",
            f"{sink.items:,} of {generated.lines:,} in {sink.requests:,} requests",
        ),
        ("every seq once, _ids unique", verified),
        ("sink CPU", f"{sink.cpu_s():.2f} s (in this process, not shipper's)"),
    ]


def _since(at_ns: int | None, since_ns: int | None) -> str:
    if at_ns is None or since_ns is None:
        return "-"
    return f"{(at_ns - since_ns) / 1e9:.2f} s"


def _rate(lines: int, start_ns: int | None, end_ns: int | None) -> str:
    if start_ns is None or end_ns is None or end_ns <= start_ns:
        return "-"
    return f"{lines / ((end_ns - start_ns) / 1e9):,.0f}"


def _timeline(proc: ShipperProcess, released_ns: int | None, points: int = 12) -> str:
    """PSS (MiB) at evenly spaced samples; `|` marks the release."""
    samples = proc.samples
    if not samples:
        return "-"
    step = max(1, len(samples) // points)
    parts: list[str] = []
    marked = False
    for sample in samples[::step]:
        if released_ns is not None and not marked and sample.at_ns > released_ns:
            parts.append("|")
            marked = True
        parts.append(f"{sample.pss_kib / 1024:.0f}")
    return " ".join(parts) + " MiB"


def main(argv: list[str] | None = None) -> int:
    return _run(_parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
