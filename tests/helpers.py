"""Shared test helpers: waiting on a condition with a deadline, and building configs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

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
