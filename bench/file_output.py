"""Benchmark: a Docker root of json-file logs shipped by `shipper run` to a `file` output.

Generates (or reuses) the input with bench/generate.py, runs the real CLI in a subprocess with
default settings apart from the paths, waits until the output holds as many lines as the input,
stops shipper with SIGTERM, and reports throughput, CPU and memory. Then checks that every input
line is in the output exactly once. See bench/README.md.

    .venv/bin/python bench/file_output.py            # 20 containers x 100,000 lines
    .venv/bin/python bench/file_output.py --quick    # 4 x 10,000: does it work?
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import orjson
from generate import GeneratedRoot, generate_root

import shipper
from shipper.docker_writer import SEQ_PATTERN, encode_entry, realistic_lines

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "out"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PSS = re.compile(rb"^Pss:\s+(\d+) kB", re.MULTILINE)
_READ_SIZE = 8 << 20


@dataclass
class Samples:
    """What polling the running shipper saw."""

    peak_pss_kib: int = 0
    peak_processes: int = 0
    first_line_s: float | None = None
    cpu_at_last_line_s: float | None = None
    polls: int = 0


@dataclass
class RunResult:
    exit_code: int | None
    wall_s: float  # process start -> last output line written (the output file's mtime)
    shutdown_s: float  # SIGTERM -> exit
    output_lines: int
    output_bytes: int
    cpu_user_s: float
    cpu_sys_s: float
    maxrss_kib: int
    bench_cpu_s: float  # this script's own CPU while shipper ran (it shares the machine)
    samples: Samples = field(default_factory=Samples)
    timed_out: bool = False


# --- /proc ------------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, read from /proc/<pid>/task/<tid>/children."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children", "rb") as f:
                    todo.extend(int(child) for child in f.read().split())
            except OSError:
                continue
    return pids


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            match = _PSS.search(f.read())
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


def _cpu_s(pid: int) -> float:
    """utime + stime of `pid` and of the children it has already waited for."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2 :].split()  # the name in (...) may hold spaces
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / _CLOCK_TICKS


# --- the run ----------------------------------------------------------------------------------


def write_config(path: Path, *, root: Path, output: Path, state: Path) -> None:
    # Defaults everywhere else: the figures are those of an unchanged configuration.
    path.write_text(
        "# Written by bench/file_output.py for one benchmark run.\n"
        f"state_dir: {orjson.dumps(str(state)).decode()}\n"
        "sources:\n"
        "  docker:\n"
        "    type: docker_json\n"
        f"    root: {orjson.dumps(str(root)).decode()}\n"
        "    start_at: beginning\n"
        "outputs:\n"
        "  bench:\n"
        "    type: file\n"
        f"    path: {orjson.dumps(str(output)).decode()}\n"
        "logging:\n"
        "  level: info\n"
        "  format: json\n"
    )


class LineCounter:
    """Counts the newlines of a growing file, reading only what was appended since last time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self._file = None

    def poll(self) -> int:
        if self._file is None:
            try:
                self._file = self.path.open("rb")
            except FileNotFoundError:
                return 0
        while data := self._file.read(_READ_SIZE):
            self.lines += data.count(b"\n")
        return self.lines

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _wait_for_lines(
    proc: subprocess.Popen[bytes],
    counter: LineCounter,
    expected_lines: int,
    samples: Samples,
    *,
    started: float,
    timeout: float,
    poll: float,
) -> bool:
    """Samples memory and counts output lines until all arrived or shipper exited; True if late."""
    deadline = started + timeout
    while True:
        pids = _tree(proc.pid)
        samples.peak_pss_kib = max(samples.peak_pss_kib, sum(_pss_kib(p) for p in pids))
        samples.peak_processes = max(samples.peak_processes, len(pids))
        samples.polls += 1
        lines = counter.poll()
        if lines and samples.first_line_s is None:
            samples.first_line_s = time.monotonic() - started
        if lines >= expected_lines:
            samples.cpu_at_last_line_s = sum(_cpu_s(p) for p in _tree(proc.pid))
            return False
        if proc.poll() is not None:
            return False  # exited early: the caller reports it
        if time.monotonic() > deadline:
            return True
        time.sleep(poll)


def _stop(proc: subprocess.Popen[bytes], grace: float = 60) -> int | None:
    """SIGTERM, then the exit code; None if it had to be killed after `grace` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def run_shipper(
    config: Path,
    output: Path,
    log_path: Path,
    expected_lines: int,
    *,
    timeout: float,
    poll: float,
) -> RunResult:
    samples = Samples()
    counter = LineCounter(output)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
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
            timed_out = _wait_for_lines(
                proc, counter, expected_lines, samples, started=started, timeout=timeout, poll=poll
            )
            # The file's mtime is when the last batch was written: exact, unlike the poll time.
            try:
                finished_ns = output.stat().st_mtime_ns
            except FileNotFoundError:
                finished_ns = time.time_ns()
            wall_s = max(finished_ns - started_ns, 0) / 1e9
            terminated = time.monotonic()
            exit_code = _stop(proc)
            shutdown_s = time.monotonic() - terminated
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output_lines = counter.poll()  # whatever shipper wrote while stopping counts too
    counter.close()
    output_bytes = output.stat().st_size if output.exists() else 0
    return RunResult(
        exit_code=exit_code,
        wall_s=wall_s,
        shutdown_s=shutdown_s,
        output_lines=output_lines,
        output_bytes=output_bytes,
        cpu_user_s=children_after.ru_utime - children_before.ru_utime,
        cpu_sys_s=children_after.ru_stime - children_before.ru_stime,
        maxrss_kib=children_after.ru_maxrss,
        bench_cpu_s=(self_after.ru_utime + self_after.ru_stime)
        - (self_before.ru_utime + self_before.ru_stime),
        samples=samples,
        timed_out=timed_out,
    )


def verify_seqs(output: Path, generated: GeneratedRoot, limit: int = 10) -> list[str]:
    """Problems found: every input line must be in the output once, by (container id, seq)."""
    expected = {c.id: c for c in generated.containers}
    seen = {c.id: bytearray(c.lines) for c in generated.containers}
    problems: list[str] = []
    with output.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            document = orjson.loads(line)
            cid = document.get("container", {}).get("id")
            match = SEQ_PATTERN.search(document.get("message", ""))
            if cid not in expected or match is None:
                problems.append(f"output line {number}: unknown container or no seq")
                continue
            index = int(match.group(1)) - expected[cid].first_seq
            if not 0 <= index < expected[cid].lines:
                problems.append(f"output line {number}: seq {match.group(1)} was not in the input")
                continue
            seen[cid][index] += 1
            if seen[cid][index] == 2:
                problems.append(f"output line {number}: {expected[cid].name} seq duplicated")
            if len(problems) >= limit:
                return problems
    for cid, counts in seen.items():
        missing = counts.count(0)
        if missing:
            problems.append(f"{expected[cid].name}: {missing} lines missing")
    return problems[:limit]


# --- the report -------------------------------------------------------------------------------


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


class RunPaths(NamedTuple):
    """Where one benchmark run keeps its files in the working directory, named after the run."""

    spool: Path
    state: Path
    config: Path
    log: Path

    @classmethod
    def fresh(cls, out: Path, name: str, spool: str = "bulk.spool") -> RunPaths:
        """The paths of run `name`, with the state an earlier run left wiped."""
        paths = cls(
            out / f"{name}-{spool}",
            out / f"{name}-state",
            out / f"{name}-shipper.yaml",
            out / f"{name}-shipper.log",
        )
        shutil.rmtree(paths.state, ignore_errors=True)
        return paths


def machine_speed(rounds: int = 5) -> str:
    """How fast this machine runs issue 8's reference loop now: `orjson.loads` of a json-file
    line and one `%` format of its `_bulk` document from pre-serialised bytes, per core (best
    of `rounds` over the same 20,000 realistic lines).

    This VM's speed drifts by a third between hours with nothing else running (bench/README.md):
    figures taken at different reference speeds are not comparable, so every report says it.
    Measured after shipper exited, so the two do not share the cores.
    """
    rng = random.Random(1)
    lines = [
        encode_entry(message.encode() + b"\n", stream, 1_714_557_600_000_000_000 + n)
        for n, (stream, message) in enumerate(realistic_lines(rng, 20_000, container="speed"))
    ]
    shared = b',"container":{"id":"speed"},"log":{"file":{"path":"/speed-json.log"},"offset":'
    line = b'{"create":{}}\n{"@timestamp":"%b","message":%b,"stream":"%b"' + shared + b"%d}}\n"
    loads, dumps = orjson.loads, orjson.dumps
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for offset, raw in enumerate(lines):
            entry = loads(raw)
            line % (entry["time"].encode(), dumps(entry["log"]), entry["stream"].encode(), offset)
        best = min(best, time.perf_counter() - started)
    return f"{len(lines) / best:,.0f} lines/s a core (issue 8's reference loop: decode + splice)"


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def report(generated: GeneratedRoot, result: RunResult, verified: str) -> str:
    wall = result.wall_s or float("nan")
    cpu = result.cpu_user_s + result.cpu_sys_s
    samples = result.samples
    first = f"{samples.first_line_s:.2f} s" if samples.first_line_s is not None else "-"
    at_last = (
        f"{samples.cpu_at_last_line_s:.2f} s" if samples.cpu_at_last_line_s is not None else "-"
    )
    rows = [
        ("shipper", f"{shipper.__version__}, {_machine()}"),
        ("machine speed", machine_speed()),
        (
            "input",
            f"{len(generated.containers)} containers, {generated.lines:,} lines, "
            f"{generated.bytes / 1e6:,.1f} MB of json-file logs",
        ),
        ("wall (start -> last line)", f"{result.wall_s:.2f} s"),
        ("first line seen after", f"{first} (poll resolution)"),
        ("lines/s", f"{generated.lines / wall:,.0f}"),
        ("MB/s (input bytes)", f"{generated.bytes / 1e6 / wall:,.1f}"),
        (
            "CPU user + sys",
            f"{result.cpu_user_s:.2f} + {result.cpu_sys_s:.2f} = {cpu:.2f} s "
            f"({cpu / wall:.2f} cores over the wall time; whole run incl. shutdown)",
        ),
        ("CPU at last line", f"{at_last} (sampled from /proc)"),
        ("CPU per 1M lines", f"{cpu / generated.lines * 1e6:.2f} s"),
        (
            "peak PSS",
            f"{samples.peak_pss_kib / 1024:,.1f} MiB "
            f"(process tree, {samples.polls} samples, up to {samples.peak_processes} processes)",
        ),
        ("ru_maxrss", f"{result.maxrss_kib / 1024:,.1f} MiB (largest single process)"),
        ("shutdown (SIGTERM -> exit)", f"{result.shutdown_s:.2f} s, exit code {result.exit_code}"),
        (
            "output",
            f"{result.output_lines:,} lines of {generated.lines:,} expected, "
            f"{result.output_bytes / 1e6:,.1f} MB",
        ),
        ("every seq once", verified),
        ("bench script CPU", f"{result.bench_cpu_s:.2f} s (counting output lines, polling)"),
    ]
    return _table(rows)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _count_levels(log_path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    try:
        with log_path.open("rb") as f:
            for line in f:
                try:
                    level = orjson.loads(line).get("level", "?")
                except (orjson.JSONDecodeError, AttributeError):
                    level = "unparsed"
                counts[str(level)] = counts.get(str(level), 0) + 1
    except OSError:
        pass
    return counts


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """`--workers N`: the config's `pipeline.workers` (processes sharing the containers)."""
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="pipeline.workers: processes that each ship a share of the containers "
        "(default: %(default)s)",
    )


def add_input_arguments(parser: argparse.ArgumentParser, *, keep_help: str) -> None:
    """The options every bench of a generated Docker root takes (es_output.py uses them too)."""
    parser.add_argument("--containers", type=int, default=20, help="default: %(default)s")
    parser.add_argument(
        "--lines", type=int, default=100_000, help="lines per container (default: %(default)s)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="4 containers x 10,000 lines, to check that it works"
    )
    parser.add_argument("--seed", type=int, default=1, help="input generator seed")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds to wait for every line (%(default)s)"
    )
    parser.add_argument(
        "--poll", type=float, default=0.2, help="seconds between samples (%(default)s)"
    )
    parser.add_argument("--keep", action="store_true", help=keep_help)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="working directory (default: bench/out)"
    )


def parse_input_arguments(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.quick:
        args.containers, args.lines = 4, 10_000
    return args


def prepare_input(args: argparse.Namespace) -> tuple[Path, Path, GeneratedRoot]:
    """The working directory, the Docker root and what it holds (generated unless reused)."""
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = out / f"docker-{args.containers}x{args.lines}-seed{args.seed}"
    print(f"input: {root}", flush=True)
    generated = generate_root(root, args.containers, args.lines, args.seed)
    how = "reused" if generated.reused else f"generated in {generated.seconds:.1f}s"
    print(f"input: {generated.lines:,} lines, {generated.bytes / 1e6:,.1f} MB ({how})", flush=True)
    return out, root, generated


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ship a generated Docker root to a file output and measure it."
    )
    add_input_arguments(
        parser,
        keep_help="keep the output file and state after the run (the generated input is always "
        "kept)",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the per-line seq check of the output"
    )
    return parse_input_arguments(parser, argv)


def _failures(generated: GeneratedRoot, result: RunResult, timeout: float) -> list[str]:
    failures: list[str] = []
    if result.timed_out:
        failures.append(f"timed out after {timeout:g}s with {result.output_lines:,} lines")
    elif result.output_lines < generated.lines and result.exit_code is not None:
        failures.append(f"shipper exited early with code {result.exit_code}")
    if result.exit_code != 0:
        failures.append(f"exit code {result.exit_code}, expected 0")
    if result.output_lines != generated.lines:
        failures.append(f"output has {result.output_lines:,} lines, input {generated.lines:,}")
    return failures


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    out, root, generated = prepare_input(args)
    output = out / "shipped.ndjson"
    state = out / "state"
    config = out / "shipper.yaml"
    log_path = out / "shipper.log"

    shutil.rmtree(state, ignore_errors=True)
    output.unlink(missing_ok=True)
    write_config(config, root=root, output=output, state=state)
    print(f"running: {sys.executable} -m shipper run --config {config}", flush=True)
    result = run_shipper(
        config, output, log_path, generated.lines, timeout=args.timeout, poll=args.poll
    )

    failures = _failures(generated, result, args.timeout)

    if args.no_verify:
        verified = "not checked (--no-verify)"
    elif not output.exists():
        verified = "no output file"
    else:
        print("verifying every seq ...", flush=True)
        problems = verify_seqs(output, generated)
        verified = "yes" if not problems else "NO"
        failures.extend(problems)

    levels = _count_levels(log_path)
    text = report(generated, result, verified)
    text += f"\n  {'shipper log levels':<26}  {levels} ({log_path})"
    if not args.keep:
        shutil.rmtree(state, ignore_errors=True)
        output.unlink(missing_ok=True)
    return conclude(text, failures, log_path)


def conclude(report: str, failures: list[str], log_path: Path) -> int:
    """Print the report, then OK or the failures with the end of shipper's log; the exit code."""
    print()
    print(report)
    print()
    if failures:
        print("FAILED:")
        for failure in failures:
            print(f"  {failure}")
        if tail := _tail(log_path):
            print(f"last lines of {log_path}:\n{tail}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
