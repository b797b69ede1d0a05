"""Benchmark: start-up and throughput of `shipper run` on a Docker root of 1,000 containers.

shipper (the real CLI, defaults but for the paths) starts on a generated root of many small
containers with `start_at: beginning`, shipping to es_output.py's loopback bulk sink. It is
started with a soft open-files limit of 1,024 (--open-files-soft), as many hosts give a service,
so the run also shows that shipper raises the limit itself. The report gives the time from the
process start to the first document at the sink and to every container's first document, the
throughput, CPU, peak memory (summed PSS of the process tree) and open files (/proc/<pid>/fd,
and process_open_fds / process_max_fds from shipper's /metrics once all documents are in).

    .venv/bin/python bench/many_containers.py            # 1,000 containers x 200 lines
    .venv/bin/python bench/many_containers.py --quick    # 50 x 20: does it work?
"""

from __future__ import annotations

import argparse
import resource
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
    open_files_soft_limit,
    run_failures,
    scrape_metrics,
    shipper_row,
    write_config,
)

_FD_METRICS = ("process_open_fds", "process_max_fds")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ship a root of many small containers; measure start-up and throughput."
    )
    parser.add_argument("--containers", type=int, default=1000, help="default: %(default)s")
    parser.add_argument(
        "--lines", type=int, default=200, help="lines per container (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=1, help="input generator seed")
    parser.add_argument(
        "--open-files-soft",
        type=int,
        default=1024,
        help="soft RLIMIT_NOFILE shipper starts with; 0: this shell's (default: %(default)s)",
    )
    parser.add_argument(
        "--max-buffered",
        metavar="SIZE",
        help="pipeline.max_buffered_bytes, e.g. 16MiB (default: shipper's, 16MiB)",
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=10,
        help="seconds to keep shipper running once every line is in, to measure what following "
        "that many idle files costs (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="50 containers x 20 lines, idle 2 s")
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds to wait for every line (%(default)s)"
    )
    add_run_arguments(parser, poll=0.1)
    args = parser.parse_args(argv)
    if args.quick:
        args.containers, args.lines, args.idle = 50, 20, 2
    return args


def _run(args: argparse.Namespace) -> int:
    # The generator keeps one log open per container: more than a 1,024 soft limit allows.
    with open_files_soft_limit(None):
        out, root, generated = prepare_input(args)
    spool, state, config, log_path = RunPaths.fresh(out, "many")

    sink = TimedBulkSink(generated.lines, spool)
    write_config(
        config,
        root=root,
        url=sink.url,
        state=state,
        max_buffered=args.max_buffered,
        workers=args.workers,
    )
    soft = args.open_files_soft or None
    print(
        f"running: {sys.executable} -m shipper run --config {config}  "
        f"(soft open-files limit {soft or resource.getrlimit(resource.RLIMIT_NOFILE)[0]})",
        flush=True,
    )
    try:
        proc = ShipperProcess(config, log_path, open_files_soft=soft, profile=args.profile)
        try:
            timed_out, metrics = _measure(args, proc, sink, generated.lines)
        finally:
            proc.stop()
    finally:
        sink.stop()

    print("reading back every accepted document ...", flush=True)
    deliveries = analyse(spool, sink.arrivals, generated)
    rows = _rows(args, generated, proc, sink, deliveries, metrics=metrics)
    rows.append(("shipper log levels", f"{_count_levels(log_path)} ({log_path})"))
    if not args.keep:
        shutil.rmtree(state, ignore_errors=True)
        spool.unlink(missing_ok=True)
    failures = run_failures(proc, sink, deliveries, generated.lines)
    if timed_out:
        failures.append(f"timed out after {args.timeout:g}s with {sink.items:,} documents")
    missing = len(generated.containers) - len(deliveries.first_arrival_ns)
    if missing:
        failures.append(f"{missing} containers without a document")
    return conclude(rows, failures, log_path)


def _measure(
    args: argparse.Namespace, proc: ShipperProcess, sink: TimedBulkSink, expected: int
) -> tuple[bool, dict[str, float]]:
    """Sample until every line was accepted (or shipper exited), then --idle seconds more;
    whether the deadline passed first, and the fd metrics scraped at the end."""
    deadline = time.monotonic() + args.timeout
    while sink.items < expected and proc.running:
        proc.sample()
        if time.monotonic() > deadline:
            return True, {}
        time.sleep(args.poll)
    proc.sample()
    idle_until = time.monotonic() + args.idle
    while proc.running and time.monotonic() < idle_until:
        time.sleep(min(args.poll, max(idle_until - time.monotonic(), 0)))
        proc.sample()
    return False, scrape_metrics(proc.monitoring_url(), _FD_METRICS)


def _rows(
    args: argparse.Namespace,
    generated: GeneratedRoot,
    proc: ShipperProcess,
    sink: TimedBulkSink,
    deliveries: Deliveries,
    *,
    metrics: dict[str, float],
) -> list[tuple[str, str]]:
    started = proc.started_ns
    firsts = sorted(deliveries.first_arrival_ns.values())
    containers = len(generated.containers)
    last = sink.last_answer_ns
    wall = (last - started) / 1e9 if last else float("nan")
    ready = proc.log_times_ns("shipper started.")
    cpu = proc.usage.cpu_s
    fds = max((s.open_fds for s in proc.samples), default=0)
    first_doc = (firsts[0] - started) / 1e9 if firsts else float("nan")
    every = (firsts[-1] - started) / 1e9 if len(firsts) == containers else float("nan")
    return [
        shipper_row(),
        ("machine speed", machine_speed()),
        (
            "input",
            f"{containers:,} containers x {args.lines:,} lines = {generated.lines:,} lines, "
            f"{generated.bytes / 1e6:,.1f} MB of json-file logs",
        ),
        (
            "output",
            "elasticsearch, gzip off, loopback bulk sink; max_buffered_bytes "
            + (args.max_buffered or "16MiB (the default)"),
        ),
        (
            "start -> 'shipper started.'",
            f"{(ready[0] - started) / 1e9:.2f} s (log time, ms)" if ready else "-",
        ),
        ("start -> first document", f"{first_doc:.2f} s (arrival at the sink)"),
        (
            "start -> every container's first",
            f"{every:.2f} s ({len(firsts):,} of {containers:,} containers; "
            f"half of them by {_nth(firsts, started, 0.5)}, 90 % by {_nth(firsts, started, 0.9)})",
        ),
        ("wall (start -> last document)", f"{wall:.2f} s"),
        (
            "docs/s",
            f"{generated.lines / wall:,.0f} over the wall; "
            + (
                f"{generated.lines / ((last - firsts[0]) / 1e9):,.0f} first -> last document"
                if last and firsts and last > firsts[0]
                else "-"
            ),
        ),
        (
            "_bulk requests",
            f"{sink.requests:,}, {sink.items / max(sink.requests, 1):,.0f} docs each",
        ),
        (
            "CPU user + sys",
            f"{proc.usage.user_s:.2f} + {proc.usage.sys_s:.2f} = {cpu:.2f} s "
            f"(whole run incl. shutdown)",
        ),
        ("idle afterwards", _idle(proc, last, args.idle)),
        ("peak PSS", f"{mib(proc.peak_pss_kib())} ({len(proc.samples)} samples)"),
        ("ru_maxrss", mib(proc.usage.maxrss_kib)),
        (
            "open files",
            f"peak {fds:,} (/proc/<pid>/fd); at the end process_open_fds "
            f"{_metric(metrics, 'process_open_fds')}, process_max_fds "
            f"{_metric(metrics, 'process_max_fds')} (started with soft limit "
            f"{args.open_files_soft or 'inherited'})",
        ),
        ("shutdown (SIGTERM -> exit)", f"{proc.shutdown_s or 0:.2f} s, exit code {proc.exit_code}"),
        ("documents accepted", f"{sink.items:,} of {generated.lines:,}"),
        ("every seq once, _ids unique", "yes" if not deliveries.problems else "NO"),
        ("sink CPU", f"{sink.cpu_s():.2f} s (in this process, not shipper's)"),
    ]


def _idle(proc: ShipperProcess, last_ns: int | None, idle_s: float) -> str:
    """CPU and PSS over the --idle seconds after the last document (from the /proc samples)."""
    if last_ns is None or idle_s <= 0:
        return "-"
    after = [s for s in proc.samples if s.at_ns > last_ns]
    if len(after) < 2:
        return "-"
    seconds = (after[-1].at_ns - after[0].at_ns) / 1e9
    cpu = after[-1].cpu_s - after[0].cpu_s
    return (
        f"{cpu:.2f} CPU s over {seconds:.1f} s = {cpu / seconds:.2f} cores "
        f"(following every file, nothing to read); PSS {mib(after[-1].pss_kib)}"
    )


def _nth(firsts: list[int], started: int, fraction: float) -> str:
    if not firsts:
        return "-"
    return f"{(firsts[int(fraction * (len(firsts) - 1))] - started) / 1e9:.2f} s"


def _metric(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:,.0f}" if name in metrics else "-"


def main(argv: list[str] | None = None) -> int:
    return _run(_parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
