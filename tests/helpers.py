"""Shared test helpers: waiting on a condition with a deadline, building configs, and running the
real CLI in a child process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from shipper.config import Config, parse_config


async def wait_until(
    condition: Callable[[], bool], *, timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def wait_until_sync(
    condition: Callable[[], bool], *, timeout: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def make_config(tmp: Path, extra_source: str = "", extra: str = "", output: str = "") -> Config:
    """A config reading `tmp/containers` into `tmp/out.ndjson`, state in `tmp/state`."""
    text = f"""
state_dir: {tmp / "state"}
sources:
  docker:
    type: docker_json
    root: {tmp / "containers"}
    poll_interval: 20ms
{extra_source}
outputs:
  archive:
    type: file
    path: {tmp / "out.ndjson"}
    batch:
      linger: 20ms
{output}
{extra}
"""
    return parse_config(text, origin="<test>")


def start_shipper(tmp: Path, config: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`shipper run --config CONFIG` in a child process, its stderr in tmp/logs/NAME.stderr."""
    stderr = tmp / "logs" / f"{name}.stderr"
    stderr.parent.mkdir(exist_ok=True)
    with stderr.open("wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "shipper", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return process, stderr


def wait_started(process: subprocess.Popen[bytes], stderr: Path) -> None:
    """Until the child logged "shipper started."; fail with its log if it exited first."""

    def started() -> bool:
        if process.poll() is not None:
            pytest.fail(f"shipper exited with {process.returncode}:\n{stderr.read_text()}")
        return any(
            line.startswith(b"{") and orjson.loads(line).get("message") == "shipper started."
            for line in stderr.read_bytes().splitlines()
        )

    wait_until_sync(started, timeout=30, what=f"'shipper started.' in {stderr.name}")
