"""The `files` source end to end (sidecar mode): a real App follows globs of plain-text or NDJSON
files on disk, written and rotated by real writers (Python's RotatingFileHandler, logrotate's
moves), into the file output."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import logging
import os
import shutil
import threading
from collections import defaultdict
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import TextIO

import orjson
import pytest

from shipper import __version__
from shipper.app import App
from shipper.config import Config, parse_config
from shipper.processing.metadata import ECS_VERSION, default_host_name
from tests.helpers import wait_until
from tests.scenarios.test_cri_source import SEQ, documents, give_chances, stop_app
from tests.scenarios.test_delivery import delivered, start
from tests.scenarios.test_rotation import gated_sinks

STACKTRACES = Path(__file__).parent.parent / "data" / "stacktraces"


def files_config(
    tmp: Path,
    source: str = "",
    *,
    paths: list[str] | None = None,
    extra: str = "",
    environ: dict[str, str] | None = None,
) -> Config:
    globs = paths if paths is not None else [str(tmp / "logs" / "*.log")]
    text = f"""
state_dir: {tmp / "state"}
sources:
  app:
    type: files
    paths: {orjson.dumps(globs).decode()}
    poll_interval: 20ms
{source}
outputs:
  archive:
    type: file
    path: {tmp / "out.ndjson"}
    batch:
      linger: 20ms
{extra}
"""
    return parse_config(text, origin="<test>", environ=environ)


def rotating_logger(
    path: Path, *, max_bytes: int, backup_count: int
) -> tuple[logging.Logger, RotatingFileHandler]:
    """An application's logger writing `path` through the standard library's rotation."""
    handler = RotatingFileHandler(
        path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.Logger(path.stem)  # not registered in logging's tree: no global state
    logger.addHandler(handler)
    return logger, handler


def seqs_by_name(docs: list[dict]) -> dict[str, list[int]]:
    """Messages are `<writer> seq=<n> ...`: the numbers each writer's lines arrived in."""
    by_name: dict[str, list[int]] = defaultdict(list)
    for doc in docs:
        by_name[doc["message"].split(" ", 1)[0]].append(int(SEQ.search(doc["message"])[1]))
    return dict(by_name)


class Writers:
    """Numbered lines per writer, and what is expected of them."""

    def __init__(self) -> None:
        self.expected: dict[str, list[int]] = defaultdict(list)
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def log(self, logger: logging.Logger, count: int) -> None:
        for _ in range(count):
            with self._lock:
                n = next(self._numbers)
                self.expected[logger.name].append(n)
            logger.info("%s seq=%06d %s", logger.name, n, "p" * (n % 60))

    def write(self, stream: TextIO, name: str, count: int) -> None:
        """The same through a plain file opened for appending (O_APPEND), flushed each line."""
        for _ in range(count):
            n = next(self._numbers)
            self.expected[name].append(n)
            stream.write(f"{name} seq={n:06d} {'q' * (n % 60)}\n")
            stream.flush()

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.expected.values())


def last_shipped(tmp: Path, writers: Writers) -> bool:
    """Whether the last line written so far is in the output."""
    last = f"seq={writers.total - 1:06d}"
    return any(last in d["message"] for d in documents(tmp))


# --- rotation ------------------------------------------------------------------------------------


async def test_rotating_file_handler_paced_rotation_ships_every_line_once(tmp_path: Path) -> None:
    """Two files, each rotated by RotatingFileHandler (4 KiB, 3 backups: the oldest removed)
    about once per slice of lines; reading keeps up between slices."""
    logs = tmp_path / "logs"
    logs.mkdir()
    writers = Writers()
    web, web_handler = rotating_logger(logs / "web.log", max_bytes=4096, backup_count=3)
    writers.log(web, 50)  # history before shipper starts
    app = App(files_config(tmp_path))
    stop, task = await start(app)
    # A file that appears while shipper runs is found by the watch.
    worker, worker_handler = rotating_logger(logs / "worker.log", max_bytes=4096, backup_count=3)
    for _ in range(15):
        writers.log(web, 60)
        writers.log(worker, 60)
        await wait_until(lambda n=writers.total: delivered(app) >= n, what="the slice's lines")
    await give_chances(lambda: delivered(app) > writers.total, 0.3)
    await stop_app(stop, task)
    web_handler.close()
    worker_handler.close()

    assert sorted(p.name for p in logs.iterdir()) == sorted(
        f"{name}.log{suffix}" for name in ("web", "worker") for suffix in ("", ".1", ".2", ".3")
    )  # it rotated, and removed the oldest
    docs = documents(tmp_path)
    assert len(docs) == writers.total
    assert seqs_by_name(docs) == dict(writers.expected)
    assert all(d["log"]["file"]["path"].startswith(str(logs)) for d in docs)
    assert app.telemetry.value("shipper_bytes_lost_total") == 0


async def test_rotating_file_handler_rotating_fast_ships_every_line_once(tmp_path: Path) -> None:
    """Two threads log flat out with a small maxBytes while shipper reads: every rotation
    renames every generation (`.1` to `.2`, ...) under shipper's feet. Enough backups that
    nothing is removed: every line must arrive, once, in order."""
    logs = tmp_path / "logs"
    logs.mkdir()
    writers = Writers()
    loggers = [
        rotating_logger(logs / f"{name}.log", max_bytes=8192, backup_count=500)
        for name in ("web", "worker")
    ]
    app = App(files_config(tmp_path))
    stop, task = await start(app)
    threads = [threading.Thread(target=writers.log, args=(logger, 3000)) for logger, _ in loggers]
    for thread in threads:
        thread.start()
    await asyncio.to_thread(lambda: [thread.join() for thread in threads])
    rotated = [p for p in logs.iterdir() if not p.name.endswith(".log")]
    assert len(rotated) > 20  # it did rotate, a lot
    await wait_until(lambda: delivered(app) >= writers.total, timeout=30, what="every line")
    await give_chances(lambda: delivered(app) > writers.total, 0.3)
    await stop_app(stop, task)
    for _, handler in loggers:
        handler.close()

    docs = documents(tmp_path)
    assert len(docs) == writers.total
    assert seqs_by_name(docs) == dict(writers.expected)
    assert app.telemetry.value("shipper_bytes_lost_total") == 0


def copytruncate(path: Path, rotate: int = 4) -> None:
    """logrotate's copytruncate: shift the numbered copies, copy the live file to `.1`, then
    truncate the live file in place (the application keeps its descriptor, opened O_APPEND)."""
    for n in range(rotate - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.rename(path.with_name(f"{path.name}.{n + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)


async def test_copytruncate_after_shipper_read_everything_ships_every_line_once(
    tmp_path: Path,
) -> None:
    """Three copytruncate rotations, each once shipper has read the file. Lines the application
    writes between logrotate's copy and its truncate are lost by copytruncate itself; here the
    application writes nothing in between, so nothing may be lost, and the copy (content
    already shipped) must not be shipped again."""
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "app.log"
    writers = Writers()
    with path.open("a", encoding="utf-8") as stream:
        writers.write(stream, "app", 100)
        app = App(files_config(tmp_path))
        stop, task = await start(app)
        await wait_until(lambda: delivered(app) >= writers.total, what="the first lines")
        for _ in range(3):
            copytruncate(path)
            writers.write(stream, "app", 50)
            await wait_until(lambda n=writers.total: delivered(app) >= n, what="the new lines")
        await give_chances(lambda: delivered(app) > writers.total, 0.5)
        await stop_app(stop, task)

    assert (logs / "app.log.3").exists()
    docs = documents(tmp_path)
    assert seqs_by_name(docs) == dict(writers.expected)  # each line once, in order
    assert app.telemetry.value("shipper_truncations_total") == 3
    assert app.telemetry.value("shipper_bytes_lost_total") == 0


async def test_copytruncate_while_shipper_is_behind_loses_nothing(tmp_path: Path) -> None:
    """The output is slow, so shipper has read only part of app.log when logrotate copies it to
    app.log.1 and truncates it. The unread lines are still on disk, in app.log.1: they must be
    shipped (lines read before the truncation may be shipped again; that is copytruncate's
    known cost)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "app.log"
    writers = Writers()
    with path.open("a", encoding="utf-8") as stream:
        writers.write(stream, "app", 80_000)  # about 3.5 MiB: three times the memory budget
        gate = asyncio.Event()
        config = files_config(tmp_path, extra="pipeline:\n  max_buffered_bytes: 1MiB")
        app = App(config, sinks=gated_sinks(gate))  # type: ignore[arg-type]
        stop, task = await start(app)
        # Full: within one read (read_chunk_size, 256 KiB) of the limit, the next read waits.
        await wait_until(
            lambda: app.budget.used > app.budget.limit - 256 * 1024, what="the budget to fill"
        )
        read = app.telemetry.value("shipper_bytes_read_total")
        assert read < path.stat().st_size / 2  # shipper is behind
        copytruncate(path)
        writers.write(stream, "app", 100)
        gate.set()
        # app.log.1 is older than app.log: its lines would come before the last one.
        await wait_until(lambda: last_shipped(tmp_path, writers), timeout=30, what="the last line")
        await stop_app(stop, task)

    shipped = [n for seqs in seqs_by_name(documents(tmp_path)).values() for n in seqs]
    missing = sorted(set(writers.expected["app"]) - set(shipped))
    assert missing == [], f"{len(missing)} lines lost, seq {missing[0]}..{missing[-1]}"
    # Lost bytes are counted only if they were really gone.
    assert app.telemetry.value("shipper_bytes_lost_total") == 0


@pytest.mark.parametrize("output", ["keeping_up", "stalled"])
async def test_logrotate_create_keeps_reading_until_the_application_reopens(
    tmp_path: Path, output: str
) -> None:
    """logrotate's default mode: rename app.log to app.log.1, create a new app.log, then
    postrotate signals the application, which reopens. Until it has, its lines go on into
    app.log.1: a follower that sees the new app.log must not give app.log.1 up for good,
    whether or not what it read from it has been delivered yet."""
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "app.log"
    writers = Writers()
    old = path.open("a", encoding="utf-8")
    writers.write(old, "app", 20)
    gate = asyncio.Event()
    if output == "keeping_up":
        gate.set()
    app = App(files_config(tmp_path), sinks=gated_sinks(gate))  # type: ignore[arg-type]
    stop, task = await start(app)
    await wait_until(lambda: app.telemetry.value("shipper_lines_read_total") >= 20, what="reading")
    if output == "keeping_up":
        await wait_until(lambda: delivered(app) >= 20, what="the first lines")
    path.rename(logs / "app.log.1")
    path.touch()  # `create`
    await give_chances(lambda: app.telemetry.value("shipper_files_closed_total") >= 1, 1.0)
    writers.write(old, "app", 5)  # the application has not had the signal yet
    old.close()
    with path.open("a", encoding="utf-8") as new:  # SIGHUP handled: reopened
        writers.write(new, "app", 20)
        # Reading the new lines follows a look at the directory made after the late ones.
        await wait_until(
            lambda: app.telemetry.value("shipper_lines_read_total") >= 40, what="the new lines"
        )
        gate.set()
        await wait_until(lambda: last_shipped(tmp_path, writers), what="the last line")
        await give_chances(lambda: delivered(app) >= writers.total, 0.5)
    await stop_app(stop, task)

    shipped = seqs_by_name(documents(tmp_path))["app"]
    late = writers.expected["app"][20:25]
    assert [n for n in late if n not in shipped] == [], "lines written before the reopen lost"
    assert shipped == writers.expected["app"]
    assert app.telemetry.value("shipper_bytes_lost_total") == 0


async def test_a_young_file_that_grows_is_not_taken_for_a_rotation_overrun(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No rotation at all: a file shorter than its 1 KiB identity gets a line more between two
    looks. That is not "every file rotated away since the last look"."""
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "app.log"
    path.write_text("app seq=000000 first\n")
    app = App(files_config(tmp_path))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 1, what="the first line")
    with path.open("a") as stream:
        stream.write("app seq=000001 second\n")
    await wait_until(lambda: delivered(app) >= 2, what="the second line")
    await stop_app(stop, task)
    assert app.telemetry.value("shipper_rotation_overruns_total") == 0
    assert "rotated away every file" not in caplog.text


# --- globs ---------------------------------------------------------------------------------------


async def test_excluded_files_are_not_read_and_a_star_glob_ships_rotated_files_once(
    tmp_path: Path,
) -> None:
    """`*` matches app.log.1 and app.log.2.gz too: they are app.log's older generations, read
    once, oldest first, by app.log's follower; `exclude` keeps debug.log out."""
    logs = tmp_path / "logs"
    logs.mkdir()
    writers = Writers()
    app_log, handler = rotating_logger(logs / "app.log", max_bytes=2048, backup_count=10)
    writers.log(app_log, 120)  # several generations before shipper starts
    handler.close()
    on_disk = _lines_of_generations(logs, "app.log")  # now as logrotate's delaycompress leaves them
    assert [int(SEQ.search(line)[1]) for line in on_disk] == writers.expected["app"]
    debug = logs / "debug.log"
    debug.write_text("debug seq=900000 never shipped\n")
    config = files_config(tmp_path, "    exclude: ['*/debug.log']", paths=[str(logs / "*")])
    app = App(config)
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= writers.total, what="every generation")
    with (logs / "app.log").open("a", encoding="utf-8") as stream:
        writers.write(stream, "app", 30)
    with debug.open("a") as stream:
        stream.write("debug seq=900001 never shipped either\n")
    await wait_until(lambda: delivered(app) >= writers.total, what="the later lines")
    await give_chances(lambda: delivered(app) > writers.total, 0.5)
    await stop_app(stop, task)

    docs = documents(tmp_path)
    assert seqs_by_name(docs) == {"app": writers.expected["app"]}  # once each, in order
    assert any(d["log"]["file"]["path"].endswith(".gz") for d in docs)
    assert not any(d["log"]["file"]["path"].endswith("debug.log") for d in docs)
    assert not any(e.path.endswith("debug.log") for e in app.store.entries())  # never opened


def _lines_of_generations(directory: Path, base: str) -> list[str]:
    """Gzip every rotated generation but `.1` (logrotate's delaycompress) and return every
    line of every generation, oldest first."""
    numbered = sorted(
        (p for p in directory.iterdir() if p.name.startswith(base + ".")),
        key=lambda p: -int(p.name.removeprefix(base + ".")),
    )
    lines: list[str] = []
    for path in numbered:
        content = path.read_text()
        lines.extend(content.splitlines())
        if not path.name.endswith(".1"):
            with gzip.open(path.with_name(path.name + ".gz"), "wt") as compressed:
                compressed.write(content)
            path.unlink()
    lines.extend((directory / base).read_text().splitlines())
    return lines


def logrotate_nocreate(path: Path, rotate: int = 4) -> None:
    """logrotate without `create`: shift the numbered files, rename the live file to `.1`; the
    live file exists again only once the application reopens it (postrotate)."""
    for n in range(rotate - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.rename(path.with_name(f"{path.name}.{n + 1}"))
    path.rename(path.with_name(f"{path.name}.1"))


@pytest.mark.parametrize("output", ["keeping_up", "stalled"])
async def test_a_star_glob_while_the_live_file_is_missing_ships_nothing_twice(
    tmp_path: Path, output: str
) -> None:
    """logrotate with `nocreate`: app.log is renamed to app.log.1 and exists again only once
    the application reopens. Rescans in between see app.log.1 (matched by `*`) without its
    live file; once app.log is back and rotates again, no line may be shipped twice."""
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "app.log"
    writers = Writers()
    gate = asyncio.Event()
    if output == "keeping_up":
        gate.set()
    config = files_config(tmp_path, "    rescan_interval: 50ms", paths=[str(logs / "*")])
    app = App(config, sinks=gated_sinks(gate))  # type: ignore[arg-type]
    with path.open("a", encoding="utf-8") as stream:
        writers.write(stream, "app", 30)
    stop, task = await start(app)
    for _ in range(2):
        await wait_until(
            lambda n=writers.total: app.telemetry.value("shipper_lines_read_total") >= n,
            what="the lines to be read",
        )
        if output == "keeping_up":
            await wait_until(lambda n=writers.total: delivered(app) >= n, what="the lines")
        logrotate_nocreate(path)
        scans = app.telemetry.value("shipper_discovery_scans_total")
        await wait_until(
            lambda n=scans: app.telemetry.value("shipper_discovery_scans_total") > n,
            what="a rescan while app.log is missing",
        )
        with path.open("a", encoding="utf-8") as stream:  # the application reopens
            writers.write(stream, "app", 30)
    gate.set()
    await wait_until(lambda: delivered(app) >= writers.total, what="every line")
    await give_chances(lambda: delivered(app) > writers.total, 0.5)
    await stop_app(stop, task)

    shipped = seqs_by_name(documents(tmp_path))["app"]
    twice = sorted(n for n in set(shipped) if shipped.count(n) > 1)
    assert twice == [], f"{len(twice)} lines shipped more than once: {twice[:5]}..."
    assert shipped == writers.expected["app"]


# --- checkpoints ---------------------------------------------------------------------------------


async def test_restarting_shipper_ships_every_line_once_across_rotations_while_it_was_down(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    writers = Writers()
    web, handler = rotating_logger(logs / "web.log", max_bytes=4096, backup_count=5)
    writers.log(web, 100)
    app = App(files_config(tmp_path))
    stop, task = await start(app)
    writers.log(web, 50)
    await wait_until(lambda: delivered(app) >= writers.total, what="the first run")
    await stop_app(stop, task)
    first_run = len(documents(tmp_path))
    # While shipper is down, the application logs on through two rotations: the file shipper
    # was reading, with the lines appended since, is web.log.2 by the time it starts again.
    reading = (logs / "web.log").stat().st_ino
    while not (logs / "web.log.2").exists() or (logs / "web.log.2").stat().st_ino != reading:
        writers.log(web, 10)
    writers.log(web, 10)
    app = App(files_config(tmp_path))
    stop, task = await start(app)
    writers.log(web, 30)
    await wait_until(lambda: len(documents(tmp_path)) >= writers.total, what="the rest")
    await give_chances(lambda: len(documents(tmp_path)) > writers.total, 0.3)
    await stop_app(stop, task)
    handler.close()

    assert first_run == 150
    assert seqs_by_name(documents(tmp_path)) == dict(writers.expected)
    assert app.telemetry.value("shipper_bytes_lost_total") == 0


# --- formats and fields --------------------------------------------------------------------------


async def test_ndjson_keys_become_fields_and_other_lines_ship_flagged(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    lines = [
        '{"level":"info","msg":"order placed","order":{"id":4711,"total":12.5}}',
        "plain text, not JSON",
        '["an array", "is not an object"]',
        '{"level":"error","msg":"payment declined","tags":["card","retry"]}',
    ]
    (logs / "app.log").write_text("\n".join(lines) + "\n")
    app = App(files_config(tmp_path, "    format: ndjson"))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 4, what="the lines")
    await stop_app(stop, task)

    first, text, array, last = documents(tmp_path)
    assert first["level"] == "info"
    assert first["msg"] == "order placed"
    assert first["order"] == {"id": 4711, "total": 12.5}
    assert first["message"] == lines[0]  # no message_key: the line stays the message
    assert "flags" not in first["log"]
    assert last["tags"] == ["card", "retry"]
    assert last["level"] == "error"
    for failed, line in ((text, lines[1]), (array, lines[2])):
        assert failed["message"] == line
        assert failed["log"]["flags"] == ["json_decode_failed"]
        assert "level" not in failed


async def test_static_fields_from_config_and_environment_are_on_every_record(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("one\ntwo\n")
    (logs / "audit.log").write_text('{"who":"alice"}\n')
    source = """    fields:
      service.name: checkout
      service.version: "2.4.1"
      kubernetes.pod.name: "${POD_NAME}"
      kubernetes.namespace: "${POD_NAMESPACE:-default}"
"""
    environ = {"POD_NAME": "checkout-7d4b9c-x2x9z"}
    app = App(files_config(tmp_path, source, environ=environ))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 3, what="the lines")
    with (logs / "app.log").open("a") as stream:
        stream.write("three\n")
    await wait_until(lambda: delivered(app) >= 4, what="a later line")
    await stop_app(stop, task)

    docs = documents(tmp_path)
    assert len(docs) == 4
    for doc in docs:
        assert doc["service"] == {"name": "checkout", "version": "2.4.1"}
        assert doc["kubernetes"] == {
            "pod": {"name": "checkout-7d4b9c-x2x9z"},
            "namespace": "default",
        }
        assert doc["host"] == {"name": default_host_name()}
        assert doc["agent"] == {"type": "shipper", "version": __version__}
        assert doc["ecs"] == {"version": ECS_VERSION}
        assert "container" not in doc


async def test_host_name_from_the_environment(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("hello\n")
    source = '    host_name: "${NODE_NAME}"'
    app = App(files_config(tmp_path, source, environ={"NODE_NAME": "node-7"}))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 1, what="the line")
    await stop_app(stop, task)
    [doc] = documents(tmp_path)
    assert doc["host"] == {"name": "node-7"}


async def test_a_java_trace_in_a_file_is_one_record(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    trace = (STACKTRACES / "java_caused_by.txt").read_text().rstrip("\n")
    before = "2024-05-01 12:00:03.100  INFO 1 --- [nio-8080-exec-7] c.e.shop.web.Orders : saving"
    after = "2024-05-01 12:00:03.500  INFO 1 --- [nio-8080-exec-8] c.e.shop.web.Orders : next"
    (logs / "app.log").write_text(f"{before}\n{trace}\n{after}\n")
    source = """    multiline:
      default: java
      flush_timeout: 100ms"""
    app = App(files_config(tmp_path, source))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 3, what="three records")
    await give_chances(lambda: delivered(app) > 3, 0.3)
    await stop_app(stop, task)
    assert [d["message"] for d in documents(tmp_path)] == [before, trace, after]
