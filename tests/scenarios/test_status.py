"""`shipper status` as an operator runs it: the real command in a child process, reading the
checkpoint file a real shipper wrote (after it stopped, and while it runs)."""

from __future__ import annotations

import gzip
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from shipper.backfill import human_bytes
from shipper.checkpoints import CheckpointStore
from shipper.docker_writer import ContainerLog, DockerRootWriter, realistic_lines
from tests.helpers import start_shipper, wait_started, wait_until_sync

SECRET = "s3cret-es-password-do-not-print"


def write_config(tmp: Path, *, secret: bool = False) -> Path:
    """docker_json + files sources into the file output. With `secret`, the config `status`
    reads, which also has an Elasticsearch output whose password only the environment knows
    (status must never print a config value)."""
    es = (
        "  es:\n    type: elasticsearch\n    hosts: ['http://127.0.0.1:9']\n"
        "    username: elastic\n    password: ${ES_PASSWORD}\n"
    )
    config = tmp / ("status.yaml" if secret else "shipper.yaml")
    config.write_text(
        f"state_dir: {tmp / 'state'}\n"
        "sources:\n"
        f"  docker:\n    type: docker_json\n    root: {tmp / 'containers'}\n"
        "    poll_interval: 20ms\n"
        f"  app:\n    type: files\n    paths: ['{tmp / 'logs'}/*.log']\n"
        "    poll_interval: 20ms\n"
        "outputs:\n"
        f"  archive:\n    type: file\n    path: {tmp / 'out.ndjson'}\n"
        "    batch:\n      linger: 20ms\n"
        f"{es if secret else ''}"
        "monitoring:\n  port: 0\n"
        "checkpoints:\n  flush_interval: 50ms\n"
    )
    return config


def shipper(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "shipper", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ES_PASSWORD": SECRET},
        check=False,
    )
    assert SECRET not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def status_json(config: Path) -> list[dict]:
    result = shipper("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def content_size(path: str) -> int:
    """Bytes of content: a .gz file's decompressed size (what offsets count)."""
    data = Path(path).read_bytes()
    return len(gzip.decompress(data)) if path.endswith(".gz") else len(data)


def write(log: ContainerLog, count: int, seed: int) -> None:
    for stream, message in realistic_lines(random.Random(seed), count, container=log.name):
        log.write(message, stream=stream)


def prepare(tmp: Path) -> tuple[DockerRootWriter, Path]:
    writer = DockerRootWriter(tmp / "containers", compression="sync")
    write(writer.add_container("web", max_size=32 * 1024, max_file=5), 300, seed=1)
    write(writer.add_container("db"), 100, seed=2)
    write(
        writer.add_container("zipped", max_size=32 * 1024, max_file=5, compress=True), 300, seed=3
    )
    (tmp / "logs").mkdir()
    (tmp / "logs" / "app.log").write_text("".join(f"app line {n}\n" for n in range(50)))
    config = write_config(tmp)
    result = shipper("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    return writer, write_config(tmp, secret=True)


def test_status_names_each_file_with_its_offset_size_and_lag(tmp_path: Path) -> None:
    writer, config = prepare(tmp_path)  # config: the one with a secret in it
    web, db = writer.containers["web"], writer.containers["db"]
    # Unread bytes after shipper stopped: some in db's log, more in the sidecar file.
    db_size = db.log_path.stat().st_size
    write(db, 20, seed=4)
    db_lag = db.log_path.stat().st_size - db_size
    app = tmp_path / "logs" / "app.log"
    app_size = app.stat().st_size
    with app.open("a") as file:
        file.write("x" * (db_lag + 1000) + "\n")
    app_lag = app.stat().st_size - app_size
    store = CheckpointStore(tmp_path / "state" / "checkpoints.json", on_corrupt="fail")
    store.load()

    files = status_json(config)

    assert len(files) == len(store) > 8
    by_path = {file["path"]: file for file in files}
    assert set(by_path) == {entry.path for entry in store.entries()}
    for entry in store.entries():
        file = by_path[entry.path]
        assert file["offset"] == entry.offset
        assert file["size"] == content_size(entry.path)
        assert file["lag_bytes"] == file["size"] - file["offset"]
        assert file["state"] == "current"
        assert file["current_path"] == entry.path
        assert file["age_seconds"] >= 0
    assert [file["path"] for file in files[:2]] == [str(app), str(db.log_path)]  # most behind
    assert files[0]["lag_bytes"] == app_lag
    assert files[0]["container"] == "app.log"
    assert files[0]["source"] == "app"
    assert files[0]["type"] == "files"
    assert files[1]["lag_bytes"] == db_lag
    assert files[1]["container"] == "db"
    assert files[1]["container_id"] == db.id
    assert files[1]["type"] == "docker_json"
    assert all(file["lag_bytes"] == 0 for file in files[2:])
    web_files = [file for file in files if file["container_id"] == web.id]
    assert {file["container"] for file in web_files} == {"web"}
    assert len(web_files) == len(web.generations()) > 2

    check_table(config, files, app, db_lag)


def check_table(config: Path, files: list[dict], app: Path, db_lag: int) -> None:
    """The table for people agrees with the JSON: most behind first, aligned, a totals line."""
    table = shipper("status", "--config", str(config))

    assert table.returncode == 0, table.stderr
    header, *rows, total = table.stdout.splitlines()
    assert header.split() == ["CONTAINER", "SOURCE", "OFFSET", "SIZE", "LAG", "PROGRESS", "PATH"]
    assert len(rows) == len(files)
    assert rows[0].split()[:2] == ["app.log", "app"]
    assert rows[0].endswith(str(app))
    assert rows[1].split()[:2] == ["db", "docker"]
    assert f" {human_bytes(db_lag)} " in rows[1]
    assert human_bytes(db_lag) == f"{db_lag / 1000:.1f} kB"
    assert all(len(row) >= header.index("PATH") for row in rows)  # aligned columns
    assert {row.index("/") for row in rows} == {header.index("PATH")}
    assert total.startswith(f"total: {len(files)} files")
    assert total.endswith("2 behind")
    assert "kB" in total  # the lag sum, human-readable


def test_status_finds_rotated_and_compressed_generations(tmp_path: Path) -> None:
    writer, config = prepare(tmp_path)
    web, zipped = writer.containers["web"], writer.containers["zipped"]
    # Lines nobody read yet in the live files, then rotations: the checkpointed live files are
    # now `.1` (a rename: same inode) and `.1.gz` (compressed: a new file, same content).
    unread = {}
    for log in (web, zipped):
        size = log.log_path.stat().st_size
        live_inode = log.log_path.stat().st_ino
        while log.log_path.stat().st_ino == live_inode:
            log.write("more " * 40)
        unread[log.id] = size

    files = status_json(config)

    def old_live(log: ContainerLog) -> dict:
        [file] = [f for f in files if f["path"] == str(log.log_path)]
        return file

    web_file = old_live(web)
    assert web_file["state"] == "rotated"
    assert web_file["current_path"] == f"{web.log_path}.1"
    assert web_file["size"] == Path(f"{web.log_path}.1").stat().st_size
    assert web_file["lag_bytes"] == web_file["size"] - unread[web.id] > 0
    zipped_file = old_live(zipped)
    assert zipped_file["state"] == "rotated"
    assert zipped_file["current_path"] == f"{zipped.log_path}.1.gz"
    assert zipped_file["lag_bytes"] == zipped_file["size"] - unread[zipped.id] > 0

    # A generation deleted by max-file: gone, with the lag the checkpoint last knew.
    for path in zipped.log_files()[:-1]:
        path.unlink()
    files = status_json(config)
    zipped_file = old_live(zipped)
    assert zipped_file["state"] == "gone"
    assert zipped_file["size"] is None
    assert zipped_file["current_path"] is None
    table = shipper("status", "--config", str(config)).stdout
    assert f"{zipped.log_path} (gone)" in table


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_status_is_readable_while_shipper_runs(tmp_path: Path) -> None:
    writer, config = prepare(tmp_path)
    web = writer.containers["web"]
    process, stderr = start_shipper(tmp_path, tmp_path / "shipper.yaml", "run")
    stop = threading.Event()

    def keep_logging() -> None:
        n = 0
        while not stop.is_set() and n < 20_000:
            web.write(f"busy {n}")
            n += 1
            if n % 50 == 0:
                stop.wait(0.005)

    logging = threading.Thread(target=keep_logging)
    try:
        wait_started(process, stderr)
        logging.start()
        # The checkpoint file is replaced many times a second meanwhile.
        for _ in range(10):
            files = status_json(config)
            assert files
            assert all(file["offset"] <= file["recorded_size"] for file in files)
        stop.set()
        logging.join()
        final = web.log_path.stat().st_size

        def caught_up() -> bool:
            # The file now at the live path (older entries may still name that path: their
            # files were rotated since, which status says).
            live = [f for f in status_json(config) if f["current_path"] == str(web.log_path)]
            return bool(live) and live[0]["offset"] == final

        wait_until_sync(caught_up, timeout=60, what="status showing the live file delivered")
        assert all(file["lag_bytes"] == 0 for file in status_json(config))
    finally:
        stop.set()
        if logging.is_alive():
            logging.join()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0, stderr.read_text()[-3000:]


def test_status_without_a_checkpoint_file_says_nothing_was_shipped(tmp_path: Path) -> None:
    config = write_config(tmp_path, secret=True)

    result = shipper("status", "--config", str(config))
    as_json = shipper("status", "--config", str(config), "--json")

    assert result.returncode == 0
    assert result.stdout.strip() == "no checkpoints yet (nothing shipped)"
    assert as_json.returncode == 0
    assert as_json.stdout == ""  # stdout stays parseable
    assert "no checkpoints yet" in as_json.stderr


def test_status_of_a_corrupt_checkpoint_file_fails_naming_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, secret=True)
    path = tmp_path / "state" / "checkpoints.json"
    path.parent.mkdir()
    path.write_text('{"version": 1, "files": [oops')

    result = shipper("status", "--config", str(config))

    assert result.returncode == 1
    assert str(path) in result.stderr
    assert "corrupt" in result.stderr
    assert "refusing to start" not in result.stderr  # that is `run`'s concern
    assert path.read_text() == '{"version": 1, "files": [oops'  # status never moves it


def test_status_with_an_invalid_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("sources: {}\noutputs: {}\nstate_dir: [\n")

    result = shipper("status", "--config", str(config))

    assert result.returncode == 2
    assert "bad.yaml" in result.stderr
