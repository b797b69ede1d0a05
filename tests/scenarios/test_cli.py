"""The `shipper` command as an operator uses it: exit codes, messages, logs, start positions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from shipper import __version__
from shipper.app import App
from shipper.docker_writer import DockerRootWriter
from shipper.errors import CheckpointCorruptError
from tests.helpers import make_config, wait_until
from tests.scenarios.test_delivery import Seqs, delivered, shipped, start, write_lines

SECRET = "hunter2-do-not-print"


def shipper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shipper", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_version() -> None:
    result = shipper("version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"shipper {__version__}"


def test_check_config_accepts_the_documented_config() -> None:
    result = shipper("check-config", "--config", "config/shipper.yaml")
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_check_config_rejects_with_file_and_key_path_and_no_secret(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "sources:\n  docker:\n    type: docker_json\n    poll_interval: ${TOKEN}\n"
        "outputs:\n  out:\n    type: file\n    path: /tmp/x\n    colour: blue\n"
    )
    result = shipper("check-config", "--config", str(config), env={"TOKEN": SECRET, "PATH": ""})
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr
    assert "sources.docker.poll_interval" in result.stderr
    assert "outputs.out.colour" in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert not (tmp_path / "state").exists()  # no side effects


def test_run_with_invalid_config_exits_2_with_a_json_log_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("sources: {}\noutputs: {}\nstate_dir: [\n")
    result = shipper("run", "--config", str(config))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    event = orjson.loads(line)
    assert event["level"] == "error"
    assert "bad.yaml" in event["error"]


def test_run_refuses_a_corrupt_checkpoint_file_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "checkpoints.json").write_text('{"version": 1, "files": [oops')
    config = tmp_path / "shipper.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "monitoring:\n  port: 0\n"
        f"sources:\n  docker:\n    type: docker_json\n    root: {tmp_path / 'containers'}\n"
        f"outputs:\n  out:\n    type: file\n    path: {tmp_path / 'out.ndjson'}\n"
    )
    result = shipper("run", "--config", str(config))
    assert result.returncode == 1
    errors = [orjson.loads(line) for line in result.stderr.splitlines()]
    assert any("checkpoints.json" in event.get("error", "") for event in errors)
    assert (tmp_path / "state" / "checkpoints.json").read_text().endswith("oops")  # untouched


async def test_corrupt_checkpoint_reset_policy_sets_it_aside_and_ships(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "checkpoints.json").write_text("garbage")
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    write_lines(writer, "app", 50, expected, seed=1)
    app = App(make_config(tmp_path, extra="checkpoints:\n  on_corrupt: reset"))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 50, what="delivery after reset")
    stop.set()
    await task
    assert list((tmp_path / "state").glob("checkpoints.json.corrupt-*"))
    assert app.store.entries()  # a fresh, valid checkpoint file


async def test_corrupt_checkpoint_fail_policy_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "checkpoints.json").write_text("garbage")
    app = App(make_config(tmp_path))
    with pytest.raises(CheckpointCorruptError, match=r"checkpoints\.json"):
        await app.run(asyncio.Event())


async def test_start_at_end_skips_history_only_at_the_very_first_start(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path / "containers")
    history: Seqs = defaultdict(list)
    write_lines(writer, "old", 100, history, seed=1)
    app = App(make_config(tmp_path, extra_source="    start_at: end"))
    stop, task = await start(app)
    new: Seqs = defaultdict(list)
    write_lines(writer, "old", 20, new, seed=2)  # written after start: shipped
    write_lines(writer, "new", 30, new, seed=3)  # a container found later: from its beginning
    await wait_until(lambda: delivered(app) >= 50, what="the new lines")
    stop.set()
    await task
    by_stream, documents = shipped(tmp_path / "out.ndjson")
    assert len(documents) == 50
    assert dict(by_stream) == dict(new)

    # A restart is not a first start: lines written while down are shipped, not skipped.
    more: Seqs = defaultdict(list)
    write_lines(writer, "old", 10, more, seed=4)
    app = App(make_config(tmp_path, extra_source="    start_at: end"))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 10, what="lines written while down")
    stop.set()
    await task
    _, documents = shipped(tmp_path / "out.ndjson")
    assert len(documents) == 60


async def test_a_line_that_is_not_json_is_shipped_flagged_and_counted(tmp_path: Path) -> None:
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("mixed")
    log.write("before")
    with log.log_path.open("ab") as raw:
        raw.write(b"this is not json\n")
    log.write("after")
    app = App(make_config(tmp_path))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 3, what="three records")
    stop.set()
    await task
    documents = [orjson.loads(line) for line in (tmp_path / "out.ndjson").read_bytes().splitlines()]
    assert [d["message"] for d in documents] == ["before", "this is not json", "after"]
    assert documents[1]["log"]["flags"] == ["invalid_json"]
    assert "flags" not in documents[0]["log"]
    assert app.telemetry.value("shipper_invalid_lines_total", source="docker") == 1


async def test_file_output_cuts_a_torn_last_line_at_start(tmp_path: Path) -> None:
    (tmp_path / "out.ndjson").write_bytes(b'{"complete":1}\n{"torn":')
    writer = DockerRootWriter(tmp_path / "containers")
    expected: Seqs = defaultdict(list)
    write_lines(writer, "app", 5, expected, seed=1)
    app = App(make_config(tmp_path))
    stop, task = await start(app)
    await wait_until(lambda: delivered(app) >= 5, what="delivery")
    stop.set()
    await task
    lines = (tmp_path / "out.ndjson").read_bytes().splitlines()
    assert lines[0] == b'{"complete":1}'
    assert all(orjson.loads(line) for line in lines)  # every line whole
    assert len(lines) == 6
