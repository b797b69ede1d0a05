"""The README's two commands, run as a newcomer would: from a clean clone, exactly as written."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from shipper.docker_writer import DockerRootWriter
from tests.conftest import NESTED
from tests.helpers import wait_until_sync

REPO = Path(__file__).resolve().parents[2]


def quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "the README's quick start has no sh block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_quick_start_has_a_demo_and_a_test_command() -> None:
    assert quick_start_commands() == ["./dev start", "./dev test"]


@pytest.mark.skipif(bool(os.environ.get(NESTED)), reason="already inside the README's test run")
@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout"
)
@pytest.mark.timeout(900)
def test_readme_commands_work_from_a_clean_clone(tmp_path: Path) -> None:
    clone = tmp_path / "shipper"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTEST"))}
    env[NESTED] = "1"  # the clone's own suite must not clone again
    start, test = quick_start_commands()

    # A machine with no Docker logs: the first command runs the demo.
    no_docker = dict(env, SHIPPER_DOCKER_ROOT=str(tmp_path / "no-docker-here"))
    result = run(start, clone, no_docker)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "running the built-in demo" in result.stderr
    assert "shipper demo: OK" in result.stdout
    assert (clone / "demo-output" / "shipped.ndjson").stat().st_size > 0

    # A machine with Docker logs: the same command ships them until stopped.
    writer = DockerRootWriter(tmp_path / "docker")
    writer.add_container("web").write("hello from a container")
    state = tmp_path / "state"
    with_docker = dict(
        env, SHIPPER_DOCKER_ROOT=str(tmp_path / "docker"), SHIPPER_STATE_DIR=str(state)
    )
    log = tmp_path / "start.log"
    with log.open("wb") as stderr:  # `./dev` execs shipper: a signal reaches it directly
        process = subprocess.Popen(shlex.split(start), cwd=clone, env=with_docker, stderr=stderr)
    try:
        output = state / "logs.ndjson"
        wait_until_sync(
            lambda: output.exists() and b"hello" in output.read_bytes(), what="shipped logs"
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        process.kill()
        process.wait()

    result = run(test, clone, env)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert re.search(r"\d+ passed", result.stdout), result.stdout[-2000:]


def run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        shell=True,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
