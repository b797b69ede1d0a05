"""Fixtures for tests against a real dockerd (see tests/integration/README.md).

`dockerd` (session scope) is one private daemon for the whole session, with the busybox image
`shipper-test-busybox:latest` imported. Where dockerd cannot run, the tests that use it are
skipped, except in CI (CI=true), where they fail with dockerd's output: DESIGN.md §5 wants these
tests never skipped there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.dockerd import (
    MAX_EXEC_ROOT_LENGTH,
    Dockerd,
    DockerdUnavailable,
    describe,
    start_dockerd,
)

_DESCRIPTION = pytest.StashKey[str]()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def dockerd(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Dockerd]:
    """A running, isolated dockerd; see `tests.integration.dockerd.Dockerd` for its API:
    `socket`, `data_root`, `containers_root`, `docker(*args)`, `run_container(name, script, *,
    log_opts)`, `wait_exited(id, timeout)`, `exec(id, *cmd)`, `json_log(id)`, `server_version`.
    """
    base = tmp_path_factory.mktemp("dockerd")
    own_base = None
    if len(str(base / "overlay2" / "exec")) > MAX_EXEC_ROOT_LENGTH:
        # A long --basetemp: containerd's sockets would not fit in sun_path. Use a short folder.
        own_base = base = Path(tempfile.mkdtemp(prefix="dockerd-"))
    try:
        daemon = start_dockerd(base)
    except DockerdUnavailable as error:
        message = f"no real dockerd: {error}"
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    pytestconfig.stash[_DESCRIPTION] = describe(daemon)
    try:
        yield daemon
    finally:
        daemon.stop()
        if own_base is not None:
            shutil.rmtree(own_base, ignore_errors=True)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Say which Docker the integration tests ran against."""
    description = config.stash.get(_DESCRIPTION, None)
    if description is not None:
        terminalreporter.write_sep("-", "tests/integration")
        terminalreporter.write_line(description)
