"""Tests for shipper.runner's pieces that need no running pipeline: the open-files limit and
re-reading the config."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from shipper import runner
from shipper.config import load_config
from shipper.telemetry.counters import Telemetry

RAISE_IN_CHILD = """
import json, logging, resource, sys
from shipper.runner import raise_open_files_limit
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
raise_open_files_limit()
print(json.dumps(resource.getrlimit(resource.RLIMIT_NOFILE)))
"""


def limits_after_raise(soft: int) -> tuple[list[int], str]:
    """Lower the soft limit in a child process, raise it there, read both limits back: this
    process's own limit is left alone."""
    result = subprocess.run(
        [sys.executable, "-c", RAISE_IN_CHILD, str(soft)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout), result.stderr


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves no room to lower the soft one")
    limits, log = limits_after_raise(256)
    target = runner._nr_open() if hard == resource.RLIM_INFINITY else hard
    assert limits == [target, hard]
    assert "Raised the open-files limit." in log


def test_a_soft_limit_already_at_the_hard_one_is_left_alone() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("an unlimited hard limit cannot be the soft limit on Linux")
    limits, log = limits_after_raise(hard)
    assert limits == [hard, hard]
    assert "open-files limit" not in log


def test_an_unlimited_hard_limit_raises_the_soft_one_to_what_the_kernel_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # setrlimit(RLIM_INFINITY) fails with EPERM on Linux (fs.nr_open caps it): shown with
    # stand-ins, as no process here has an unlimited hard limit to test with.
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(
        resource, "getrlimit", lambda _: (1024, resource.RLIM_INFINITY), raising=True
    )
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: calls.append(limits))
    runner.raise_open_files_limit()
    assert calls == [(runner._nr_open(), resource.RLIM_INFINITY)]
    assert runner._nr_open() > 1024


def test_a_refused_raise_is_a_warning_not_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_: int, __: tuple[int, int]) -> None:
        raise ValueError("not allowed to raise maximum limit")

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("shipper.runner")
    logger.addHandler(handler)
    try:
        runner.raise_open_files_limit()
    finally:
        logger.removeHandler(handler)
    [warning] = records
    assert warning.getMessage() == "Cannot raise the open-files limit."
    assert warning.levelno == logging.WARNING


def reread(path: Path | None, running_path: Path | None) -> tuple[bool, Telemetry]:
    telemetry = Telemetry()
    state = runner._Runner(path, telemetry, asyncio.Event(), asyncio.Event(), None)
    return state._reread(load_config(running_path)) is not None, telemetry


def test_reloading_the_embedded_default_changes_nothing() -> None:
    # `shipper run` without --config: SIGHUP reads the packaged default again, which is what
    # runs, so there is nothing to restart.
    changed, telemetry = reread(None, None)
    assert not changed
    assert telemetry.value("shipper_reloads_total", result="unchanged") == 1


def test_a_reread_file_is_new_only_when_it_says_something_new(tmp_path: Path) -> None:
    path = tmp_path / "shipper.yaml"
    source = "sources: {d: {type: docker_json, root: /nonexistent}}\n"
    path.write_text(source + "outputs: {out: {type: console}}\n")
    changed, telemetry = reread(path, path)
    assert not changed  # the same content, read again
    assert telemetry.value("shipper_reloads_total", result="unchanged") == 1
    running = tmp_path / "running.yaml"
    running.write_text(source + "outputs: {out: {type: console, stream: stderr}}\n")
    changed, telemetry = reread(path, running)
    assert changed
    assert telemetry.value("shipper_reloads_total") == 0  # counted once the new one runs
