"""Reloading the config on SIGHUP: the real `shipper run` under load, and the runner in-process
where its counters are read."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper import app as app_module
from shipper.config import FileOutputConfig, OutputConfig, load_config
from shipper.docker_writer import SEQ_PATTERN
from shipper.model import Batch, BatchResult
from shipper.runner import _serve
from shipper.sinks import Sink
from shipper.sinks.file import FileSink
from shipper.telemetry.counters import Telemetry
from tests.helpers import start_shipper, wait_started, wait_until, wait_until_sync
from tests.scenarios.test_restart import LiveWriter

SECRET = "hunter2-never-in-a-log"

Key = tuple[str, int]  # (container id, seq): one line written


def config_text(
    tmp: Path,
    *,
    outputs: dict[str, str],
    phase: int,
    multiline: str = "none",
    extra_source: str = "",
    extra: str = "",
    checkpoints_path: Path | None = None,
) -> str:
    """A config reading tmp/containers into file outputs (name: file name under tmp) whose
    records carry `reload_phase: phase`, so each record tells which config read it."""
    outs = "".join(
        f"  {name}:\n    type: file\n    path: {tmp / file}\n"
        "    batch:\n      max_records: 300\n      linger: 20ms\n"
        for name, file in outputs.items()
    )
    return f"""
state_dir: {tmp / "state"}
sources:
  docker:
    type: docker_json
    root: {tmp / "containers"}
    poll_interval: 20ms
    rescan_interval: 200ms
    multiline:
      default: {multiline}
      flush_timeout: 200ms
    processors:
      - add_fields:
          fields:
            reload_phase: {phase}
{extra_source}
outputs:
{outs}
checkpoints:
  flush_interval: 100ms
  {f"path: {checkpoints_path}" if checkpoints_path else ""}
pipeline:
  shutdown_timeout: 30s
monitoring:
  port: 0
{extra}
"""


class Outputs:
    """The file outputs' records, read incrementally while shipper writes them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.documents: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._offsets: dict[str, int] = defaultdict(int)

    def poll(self) -> None:
        for path in sorted(self.tmp.glob("*.ndjson")):
            with path.open("rb") as file:
                file.seek(self._offsets[path.name])
                data = file.read()
            whole = data[: data.rfind(b"\n") + 1]  # the last line may be half written
            self._offsets[path.name] += len(whole)
            self.documents[path.name].extend(orjson.loads(line) for line in whole.splitlines())

    def count(self, name: str, phase: int | None = None) -> int:
        self.poll()
        return sum(
            1
            for document in self.documents[name]
            if phase is None or document["reload_phase"] == phase
        )

    def keys(self) -> set[Key]:
        self.poll()
        return {key for docs in self.documents.values() for d in docs for key in keys_of(d)}


def keys_of(document: dict[str, Any]) -> list[Key]:
    # A multiline record carries the seq of each of its lines.
    container = document["container"]["id"]
    return [(container, int(seq)) for seq in SEQ_PATTERN.findall(document["message"])]


def log_events(stderr: Path) -> list[dict[str, Any]]:
    """The child's log lines; every one must be a JSON object."""
    return [orjson.loads(line) for line in stderr.read_bytes().splitlines()]


def count_messages(stderr: Path, message: str) -> int:
    return sum(1 for event in log_events(stderr) if event["message"] == message)


def reload_and_wait(
    process: subprocess.Popen[bytes], stderr: Path, message: str, *, timeout: float = 60
) -> dict[str, Any]:
    """SIGHUP, then the log line `message` that answers it (one more than before)."""
    before = count_messages(stderr, message)
    process.send_signal(signal.SIGHUP)

    def answered() -> bool:
        if process.poll() is not None:
            pytest.fail(f"shipper exited with {process.returncode}:\n{stderr.read_text()}")
        return count_messages(stderr, message) > before

    wait_until_sync(answered, timeout=timeout, what=f"{message!r} after SIGHUP")
    return [event for event in log_events(stderr) if event["message"] == message][-1]


def snapshot(writer: LiveWriter) -> set[Key]:
    with writer.lock:
        return set(writer.expected)


@dataclass
class Occurrence:
    output: str
    phase: int
    path: str
    offset: int
    stream: str


@dataclass
class Shipped:
    """Where every line went: by key, each record that carried it."""

    by_key: dict[Key, list[Occurrence]] = field(default_factory=lambda: defaultdict(list))
    # (file path, phase) -> the lowest offset that phase read in that file: where the App of
    # that phase started reading, i.e. the checkpoint the previous App left.
    starts: dict[tuple[str, int], int] = field(default_factory=dict)
    # (file path, phase) -> the keys of the first record that phase read in that file.
    first_keys: dict[tuple[str, int], list[Key]] = field(default_factory=dict)


def gather(outputs: Outputs) -> Shipped:
    outputs.poll()
    shipped = Shipped()
    for name, documents in outputs.documents.items():
        for document in documents:
            path, offset = document["log"]["file"]["path"], document["log"]["offset"]
            phase = document["reload_phase"]
            for key in keys_of(document):
                shipped.by_key[key].append(
                    Occurrence(
                        name.removesuffix(".ndjson"), phase, path, offset, document["stream"]
                    )
                )
            start = shipped.starts.get((path, phase))
            if start is None or offset < start:
                shipped.starts[(path, phase)] = offset
                shipped.first_keys[(path, phase)] = keys_of(document)
    return shipped


def check_delivery(
    shipped: Shipped,
    written: set[Key],
    phase_outputs: dict[int, list[str]],
    multiline_phases: set[int],
) -> int:
    """Every line in the outputs of the config that read it, once each; a line read by two
    consecutive configs only as the ack rules allow. The number of such repeated lines."""
    assert set(shipped.by_key) == written  # nothing lost, nothing invented
    repeated = 0
    for key, occurrences in shipped.by_key.items():
        phases = sorted({o.phase for o in occurrences})
        for phase in phases:
            outputs = sorted(o.output for o in occurrences if o.phase == phase)
            # In every output its config had, exactly once.
            assert outputs == sorted(phase_outputs[phase]), (key, occurrences)
        if len(phases) == 1:
            continue
        # Read again by the next config: only lines at or after the checkpoint the previous
        # App flushed at the reload, which stopped short of them because a record before them
        # had no final outcome yet: a multiline record waiting for its next line, which
        # shipper does not flush at a reload (the next config reads it whole again).
        repeated += 1
        old, new = phases
        assert new == old + 1, (key, occurrences)
        assert old in multiline_phases, (key, occurrences)
        first = next(o for o in occurrences if o.phase == old)
        start = shipped.starts[(first.path, new)]
        assert first.offset >= start, (key, occurrences, start)
        held = shipped.first_keys[(first.path, new)]
        delivered_before = {k for k in held if any(o.phase == old for o in shipped.by_key[k])}
        assert not delivered_before, ("the checkpoint stopped at a settled record", key, held)
    return repeated


def check_phases_in_order(shipped: Shipped) -> None:
    """Per container stream, later lines were read by the same or a later config. (Not across
    streams: a multiline record held at a reload is read by the next config, while the other
    stream's lines after it were delivered by the previous one.)"""
    by_stream: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for (container, seq), occurrences in shipped.by_key.items():
        stream = occurrences[0].stream
        by_stream[(container, stream)].append((seq, min(o.phase for o in occurrences)))
    for container, seqs in by_stream.items():
        phases = [phase for _, phase in sorted(seqs)]
        assert phases == sorted(phases), container


@pytest.mark.timeout(300)
def test_reload_under_load_changes_outputs_and_filters_without_losing_a_line(
    tmp_path: Path,
) -> None:
    # Each phase: outputs, multiline parser, and a source option that changes.
    phases: list[tuple[dict[str, str], str, str]] = [
        ({"a": "a.ndjson"}, "none", ""),
        ({"a": "a.ndjson", "b": "b.ndjson"}, "java", ""),  # an output added
        ({"b": "b.ndjson"}, "python", "    read_chunk_size: 64KiB"),  # one removed
        ({"c": "c.ndjson"}, "none", "    read_chunk_size: 16KiB"),  # replaced
    ]
    phase_outputs = {
        n: [f.removesuffix(".ndjson") for f in o.values()] for n, (o, _, _) in enumerate(phases)
    }
    multiline_phases = {n for n, (_, parser, _) in enumerate(phases) if parser != "none"}
    config = tmp_path / "shipper.yaml"

    def write_config(phase: int) -> None:
        outputs, multiline, extra_source = phases[phase]
        config.write_text(
            config_text(
                tmp_path,
                outputs=outputs,
                phase=phase,
                multiline=multiline,
                extra_source=extra_source,
            )
        )

    write_config(0)
    writer = LiveWriter(tmp_path / "containers", containers=4)
    writer.start()
    process, stderr = start_shipper(tmp_path, config, "reload")
    outputs = Outputs(tmp_path)
    written_before: dict[int, set[Key]] = {}
    try:
        wait_started(process, stderr)
        wait_until_sync(lambda: outputs.count("a.ndjson", 0) >= 3000, what="phase 0 shipping")
        for phase in range(1, len(phases)):
            write_config(phase)
            reloaded = reload_and_wait(process, stderr, "Config reloaded.")
            assert reloaded["restarted"] is True
            # Every line written from now on is read by this config (or a later one).
            written_before[phase] = snapshot(writer)
            first = phase_outputs[phase][0] + ".ndjson"
            wait_until_sync(
                lambda p=phase, f=first: outputs.count(f, p) >= 3000,
                timeout=60,
                what=f"phase {phase} shipping",
            )
        writer.halt.set()
        writer.join()
        written = snapshot(writer)
        wait_until_sync(
            lambda: outputs.keys() >= written, timeout=120, what="every written line shipped"
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, stderr.read_text()
    finally:
        writer.halt.set()
        process.kill()

    shipped = gather(outputs)
    repeated = check_delivery(shipped, written, phase_outputs, multiline_phases)
    check_phases_in_order(shipped)
    for phase, before in written_before.items():
        late = [k for k in written - before if min(o.phase for o in shipped.by_key[k]) < phase]
        assert late == [], f"lines written after reload {phase} was done, read by an older config"
    # Each reload stopped the running App in order, and nothing was refused or lost.
    events = log_events(stderr)
    assert sum(e["message"] == "shipper started." for e in events) == len(phases)
    assert not [e for e in events if e["level"] in ("error", "critical")]
    assert not [e for e in events if e["message"].startswith("Outputs did not finish")]
    # Reported, not asserted: how many lines a multiline record held back at a reload made the
    # next config read again (at-least-once across a reload, as across a restart).
    print(f"{len(written)} lines, {repeated} read again after a reload")


@pytest.mark.timeout(180)
def test_an_invalid_config_is_refused_and_the_running_one_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPPER_TEST_TOKEN", SECRET)  # the child inherits it
    config = tmp_path / "shipper.yaml"
    good = config_text(tmp_path, outputs={"a": "a.ndjson"}, phase=0)
    config.write_text(good)
    writer = LiveWriter(tmp_path / "containers", containers=2)
    writer.start()
    process, stderr = start_shipper(tmp_path, config, "invalid")
    outputs = Outputs(tmp_path)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where a directory should be\n")
    refusals = [
        # (the file's text, what the error must name)
        (good + "state_dir: [\n", "line "),  # YAML syntax
        (
            good.replace("    type: file\n", "    type: file\n    colour: blue\n"),
            "outputs.a.colour",
        ),
        (
            good.replace("poll_interval: 20ms", "poll_interval: ${SHIPPER_TEST_TOKEN}"),
            "sources.docker.poll_interval",
        ),
    ]
    try:
        wait_started(process, stderr)
        wait_until_sync(lambda: outputs.count("a.ndjson") >= 1000, what="shipping to a")
        for text, problem in refusals:
            config.write_text(text)
            shipped_before = outputs.count("a.ndjson")
            refused = reload_and_wait(
                process, stderr, "Config reload refused; the running config goes on."
            )
            assert refused["level"] == "error"
            assert refused["config"] == str(config)
            assert str(config) in refused["error"]
            assert problem in refused["error"]
            # The old config keeps shipping.
            wait_until_sync(
                lambda n=shipped_before: outputs.count("a.ndjson") >= n + 1000,
                what="lines still shipped to a after the refusal",
            )
        # Valid, but it cannot start (its checkpoint file cannot be written): back to a.
        config.write_text(
            config_text(
                tmp_path,
                outputs={"b": "b.ndjson"},
                phase=1,
                checkpoints_path=blocker / "checkpoints.json",
            )
        )
        shipped_before = outputs.count("a.ndjson")
        failed = reload_and_wait(
            process, stderr, "The reloaded config could not start; going back to the previous one."
        )
        assert str(blocker) in failed["error"]
        wait_until_sync(
            lambda: outputs.count("a.ndjson") >= shipped_before + 1000,
            what="lines shipped to a again after the failed start",
        )
        # A valid reload still works afterwards.
        config.write_text(config_text(tmp_path, outputs={"b": "b.ndjson"}, phase=1))
        reload_and_wait(process, stderr, "Config reloaded.")
        wait_until_sync(lambda: outputs.count("b.ndjson") >= 1000, what="shipping to b")
        writer.halt.set()
        writer.join()
        written = snapshot(writer)
        wait_until_sync(lambda: outputs.keys() >= written, timeout=60, what="every line shipped")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, stderr.read_text()
    finally:
        writer.halt.set()
        process.kill()

    shipped = gather(outputs)
    # No multiline here: every line exactly once, in a (phase 0) or b (phase 1).
    assert check_delivery(shipped, written, {0: ["a"], 1: ["b"]}, set()) == 0
    check_phases_in_order(shipped)
    log = stderr.read_text()
    assert SECRET not in log
    errors = [e for e in log_events(stderr) if e["level"] == "error"]
    assert len(errors) == len(refusals) + 1  # one line per refusal, one for the failed start


# -- the runner in-process: its counters, and signals at awkward moments -------------------------


class InProcess:
    """`_serve` (what `shipper run` runs) as a task of the test's event loop, its log in memory,
    its Telemetry readable; signals are real, sent to this process."""

    def __init__(self, tmp: Path, text: str) -> None:
        self.tmp = tmp
        self.config = tmp / "shipper.yaml"
        self.config.write_text(text)
        self.telemetry = Telemetry()
        self.log = io.StringIO()
        self.task: asyncio.Task[int] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(
            _serve(
                load_config(self.config),
                self.config,
                once=False,
                telemetry=self.telemetry,
                log_stream=self.log,
            )
        )

    def events(self) -> list[dict[str, Any]]:
        # JSON lines only: a test may switch the log to text.
        lines = self.log.getvalue().splitlines()
        return [orjson.loads(line) for line in lines if line.startswith("{")]

    def count(self, message: str) -> int:
        return sum(1 for event in self.events() if event["message"] == message)

    def reloads(self, result: str) -> float:
        return self.telemetry.value("shipper_reloads_total", result=result)

    async def reload(self, text: str | None, result: str) -> None:
        if text is not None:
            self.config.write_text(text)
        before = self.reloads(result)
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(lambda: self.reloads(result) > before, what=f"a reload counted {result}")

    async def stop(self) -> int:
        assert self.task is not None
        if self.task.done():  # it failed: its handler may be gone, and SIGTERM end pytest
            return self.task.result()
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(self.task, 60)


@pytest.mark.usefixtures("restore_logging")
async def test_each_reload_result_is_counted_and_logging_follows_the_config(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    first = config_text(tmp_path, outputs={"a": "a.ndjson"}, phase=0)
    shipper = InProcess(tmp_path, first)
    shipper.start()
    await wait_until(lambda: shipper.count("shipper started.") == 1, what="the first start")
    try:
        await shipper.reload(None, "unchanged")
        await shipper.reload(first + "outputs: [\n", "invalid")
        cannot_start = config_text(
            tmp_path,
            outputs={"b": "b.ndjson"},
            phase=1,
            checkpoints_path=blocker / "checkpoints.json",
        )
        await shipper.reload(cannot_start, "failed")
        await wait_until(lambda: shipper.count("shipper started.") == 2, what="the old one again")
        assert shipper.reloads("ok") == 0
        second = config_text(tmp_path, outputs={"b": "b.ndjson"}, phase=1)
        await shipper.reload(second, "ok")
        assert shipper.count("shipper started.") == 3
        # Only logging changed: applied without restarting the pipeline. The rate limit is
        # the new config's, and what it holds back is counted in the runner's Telemetry.
        limited = second + "logging:\n  rate_limit:\n    messages: 3\n    interval: 1h\n"
        await shipper.reload(limited, "ok")
        assert shipper.count("shipper started.") == 3
        for _ in range(20):
            logging.getLogger("shipper.test").warning("The same warning again.")
        assert shipper.count("The same warning again.") == 3
        suppressed = shipper.telemetry.value(
            "shipper_log_messages_suppressed_total", level="warning"
        )
        assert suppressed == 17
        # Text format from the next reload on: the log is no longer JSON.
        await shipper.reload(limited + "  format: text\n", "ok")
        assert shipper.count("shipper started.") == 3
        assert "Suppressed 17 similar log lines." in shipper.log.getvalue()  # at reconfiguring
        lines = shipper.log.getvalue().splitlines()
        [text] = [line for line in lines if not line.startswith("{") and "reloaded." in line]
        assert text.endswith("restarted=False")
        assert " INFO  Config reloaded." in text
    finally:
        code = await shipper.stop()
    assert code == 0


@pytest.mark.usefixtures("restore_logging")
async def test_sighups_in_a_row_coalesce_into_one_restart(tmp_path: Path) -> None:
    shipper = InProcess(tmp_path, config_text(tmp_path, outputs={"a": "a.ndjson"}, phase=0))
    shipper.start()
    await wait_until(lambda: shipper.count("shipper started.") == 1, what="the first start")
    shipper.config.write_text(config_text(tmp_path, outputs={"b": "b.ndjson"}, phase=1))
    for _ in range(5):
        os.kill(os.getpid(), signal.SIGHUP)
    await wait_until(lambda: shipper.reloads("ok") == 1, what="the reload")
    assert await shipper.stop() == 0
    assert shipper.count("shipper started.") == 2
    assert shipper.reloads("ok") == 1
    # A SIGHUP handled after the reload had begun reads the file once more: nothing new.
    assert shipper.reloads("unchanged") <= 1


@pytest.mark.usefixtures("restore_logging")
async def test_a_sighup_during_startup_reloads_once_the_app_runs(tmp_path: Path) -> None:
    shipper = InProcess(tmp_path, config_text(tmp_path, outputs={"a": "a.ndjson"}, phase=0))
    shipper.start()
    await asyncio.sleep(0)  # _serve has installed its handlers; the App is still starting
    assert shipper.count("shipper started.") == 0
    shipper.config.write_text(config_text(tmp_path, outputs={"b": "b.ndjson"}, phase=1))
    os.kill(os.getpid(), signal.SIGHUP)
    await wait_until(lambda: shipper.reloads("ok") == 1, what="the reload")
    assert await shipper.stop() == 0
    starts = [e for e in shipper.events() if e["message"] == "shipper started."]
    assert [s["outputs"] for s in starts] == [["a"], ["b"]]


class GatedFileSink:
    """The file output behind a gate the test opens: the reload's in-order stop waits on it."""

    gate: asyncio.Event
    sending: asyncio.Event

    def __init__(self, inner: FileSink) -> None:
        self._inner = inner

    async def open(self) -> None:
        await self._inner.open()

    async def send(self, batch: Batch) -> BatchResult:
        GatedFileSink.sending.set()
        await GatedFileSink.gate.wait()
        return await self._inner.send(batch)

    async def close(self) -> None:
        await self._inner.close()


def gated_file_sink(name: str, config: OutputConfig, telemetry: Telemetry) -> Sink:
    assert isinstance(config, FileOutputConfig)
    return GatedFileSink(FileSink(config.path, fsync=False))


@pytest.mark.usefixtures("restore_logging")
async def test_sigterm_during_a_reload_stops_instead_of_starting_the_new_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    GatedFileSink.gate = asyncio.Event()
    GatedFileSink.sending = asyncio.Event()
    monkeypatch.setitem(app_module.SINKS, "file", gated_file_sink)
    writer = LiveWriter(tmp_path / "containers", containers=1)
    writer.start()
    shipper = InProcess(tmp_path, config_text(tmp_path, outputs={"a": "a.ndjson"}, phase=0))
    try:
        shipper.start()
        await wait_until(GatedFileSink.sending.is_set, what="a batch in flight")
        shipper.config.write_text(config_text(tmp_path, outputs={"b": "b.ndjson"}, phase=1))
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(
            lambda: shipper.count("Stopping: no more reading; finishing what is in flight.") == 1,
            what="the in-order stop of the reload",
        )
        writer.halt.set()
        writer.join()
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_until(lambda: shipper.count("Asked to stop.") == 1, what="the SIGTERM seen")
        GatedFileSink.gate.set()
        assert await asyncio.wait_for(shipper.task, 60) == 0  # type: ignore[arg-type]
    finally:
        writer.halt.set()
        GatedFileSink.gate.set()
    assert shipper.count("shipper started.") == 1  # the new config never started
    assert shipper.reloads("ok") == 0
    assert not (tmp_path / "b.ndjson").exists()
    # What was read before the stop was delivered to a, each line once.
    outputs = Outputs(tmp_path)
    outputs.poll()
    seen = Counter(k for d in outputs.documents["a.ndjson"] for k in keys_of(d))
    assert seen
    assert max(seen.values()) == 1


def json_file_lines(prefix: str, count: int) -> bytes:
    return b"".join(
        orjson.dumps(
            {"log": f"{prefix} {n}\n", "stream": "stdout", "time": "2026-11-28T10:00:00.5Z"}
        )
        + b"\n"
        for n in range(count)
    )


@pytest.mark.usefixtures("restore_logging")
async def test_a_deleted_file_still_being_read_is_handed_to_the_reloaded_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A closed descriptor of a deleted file can never be opened again: if the reload closed it,
    # its lines that no output had confirmed would be lost.
    GatedFileSink.gate = asyncio.Event()
    GatedFileSink.sending = asyncio.Event()
    monkeypatch.setitem(app_module.SINKS, "file", gated_file_sink)
    container = "c0ffee" * 10 + "c0de"
    directory = tmp_path / "containers" / container
    directory.mkdir(parents=True)
    live = directory / f"{container}-json.log"
    live.write_bytes(json_file_lines("old", 500))

    def text(output: str, phase: int) -> str:
        # A short shutdown: the reload's in-order stop gives up on the held batch quickly.
        return config_text(tmp_path, outputs={output: f"{output}.ndjson"}, phase=phase).replace(
            "shutdown_timeout: 30s", "shutdown_timeout: 200ms"
        )

    shipper = InProcess(tmp_path, text("a", 0))
    try:
        shipper.start()
        await wait_until(GatedFileSink.sending.is_set, what="the old lines read and held")
        # Docker rotates, then (past max-file) deletes the rotated file: shipper holds it open.
        rotated = directory / f"{container}-json.log.1"
        os.rename(live, rotated)
        live.write_bytes(json_file_lines("new", 100))
        os.unlink(rotated)
        await wait_until(
            lambda: shipper.count("Following log file.") == 2, what="the new live file followed"
        )
        await shipper.reload(text("b", 1), "ok")
        assert (
            shipper.count(
                "Outputs did not finish in time; their records are read again at the next start."
            )
            == 1
        )
        GatedFileSink.gate.set()

        def delivered() -> Counter[str]:
            path = tmp_path / "b.ndjson"
            data = path.read_bytes() if path.exists() else b""
            # Complete lines only: the output may be half way through a write.
            lines = data[: data.rfind(b"\n") + 1].splitlines()
            return Counter(orjson.loads(line)["message"] for line in lines)

        expected = Counter([f"old {n}" for n in range(500)] + [f"new {n}" for n in range(100)])
        await wait_until(lambda: delivered() == expected, what="every line once, old ones too")
        assert shipper.telemetry.value("shipper_bytes_lost_total") == 0
        assert await shipper.stop() == 0
    finally:
        GatedFileSink.gate.set()
