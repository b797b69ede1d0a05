"""shipper without privileges: log files, state and config it may not read or write.

CI runs as root, and root ignores file modes. So these tests run the real CLI as `nobody` (uid
65534) in a child process, against files the test (root) owns and locks with ordinary modes;
everything shipper needs is in a temporary directory nobody can reach. When the tests do not run
as root they run shipper as the current user, and a mode of 0 does the locking.

The child must import shipper: the interpreter and site-packages of this run when nobody can
read them, else a system interpreter of the same version with this run's site-packages, else one
with a world-readable copy of shipper and the packages it imports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import site
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

import shipper
import shipper.app
import shipper.cli
from shipper.docker_writer import SEQ_PATTERN, ContainerLog, DockerRootWriter
from tests.helpers import wait_until_sync

NOBODY = 65534  # nobody / nogroup on Debian
AS_ROOT = os.geteuid() == 0
# What locks a file or directory away from shipper: as root, root's own private modes; as anyone
# else (shipper then runs as that same user), no permission at all.
LOCKED_FILE = 0o600 if AS_ROOT else 0o000
LOCKED_DIR = 0o700 if AS_ROOT else 0o000
REPO = Path(shipper.__file__).resolve().parents[1]


# -- a child process that cannot read what it should not ------------------------------------------


@dataclass(frozen=True)
class Unprivileged:
    """How to run `python -m shipper` as nobody (or, not as root, as ourselves)."""

    python: str
    pythonpath: tuple[str, ...]

    def env(self, home: Path) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join(self.pythonpath),
            "PYTHONDONTWRITEBYTECODE": "1",  # nobody cannot write __pycache__ here anyway
        }

    def kwargs(self, cwd: Path) -> dict[str, Any]:
        identity: dict[str, Any] = (
            {"user": NOBODY, "group": NOBODY, "extra_groups": []} if AS_ROOT else {}
        )
        return {"cwd": cwd, "env": self.env(cwd), **identity}

    def run(self, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.python, "-m", "shipper", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **self.kwargs(cwd),
        )

    def start(self, cwd: Path, stderr: Path, *args: str) -> subprocess.Popen[bytes]:
        with stderr.open("wb") as log:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(
                [self.python, "-m", "shipper", *args],
                stdout=subprocess.DEVNULL,
                stderr=log,
                **self.kwargs(cwd),
            )


def world_dir(prefix: str) -> Path:
    """A new directory under the system temp dir that nobody can enter and list."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    for parent in path.parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            shutil.rmtree(path)
            pytest.skip(f"{parent} is not traversable by others: no place for nobody to work in")
    return path


def _probe(python: str, pythonpath: tuple[str, ...], cwd: Path) -> str | None:
    """None if `python` run unprivileged imports shipper from pythonpath[0], else why not."""
    script = (
        "import sys, shipper, shipper.app, shipper.cli; "
        "print(sys.version_info[:2] == tuple(map(int, sys.argv[1].split('.'))), shipper.__file__)"
    )
    try:
        result = subprocess.run(
            [python, "-c", script, f"{sys.version_info[0]}.{sys.version_info[1]}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **Unprivileged(python, pythonpath).kwargs(cwd),
        )
    except OSError as exc:
        return f"{python}: {exc}"
    if result.returncode != 0:
        return f"{python}: {(result.stderr.strip().splitlines() or ['exit status'])[-1]}"
    same_version, _, imported = result.stdout.strip().partition(" ")
    if same_version != "True":
        return f"{python}: another Python version"
    if Path(imported).resolve().parents[1] != Path(pythonpath[0]).resolve():
        return f"{python}: imported another shipper ({imported})"
    return None


def _interpreters() -> list[str]:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    found = [sys.executable, os.path.realpath(sys.executable)]
    for name in (f"python{version}", "python3"):
        path = shutil.which(name)
        if path:
            found.append(path)
    found.append(f"/usr/bin/python{version}")
    return list(dict.fromkeys(path for path in found if os.path.exists(path)))


def _copy_imports(destination: Path) -> None:
    """Copy shipper and every top-level package it imported from site-packages there."""
    sites = sorted(
        (p for p in (*site.getsitepackages(), site.getusersitepackages()) if p),
        key=len,
        reverse=True,  # the innermost first: a venv may live inside the repository
    )
    tops = {REPO / "shipper"}
    for module in list(sys.modules.values()):
        origin = getattr(module, "__file__", None)
        root = next((r for r in sites if origin and origin.startswith(r + os.sep)), None)
        if origin and root:
            tops.add(Path(root) / Path(origin).relative_to(root).parts[0])
    for top in tops:
        if top.is_dir():
            shutil.copytree(top, destination / top.name, ignore=shutil.ignore_patterns("*.pyc"))
        else:
            shutil.copy2(top, destination / top.name)
    for path in destination.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture(scope="module")
def unprivileged() -> Iterator[Unprivileged]:
    cwd = world_dir("shipper-probe-")
    copy: Path | None = None
    reasons: list[str] = []
    try:
        sites = tuple(p for p in (*site.getsitepackages(), site.getusersitepackages()) if p)
        pythonpath = (str(REPO), *sites)
        for python in _interpreters():
            reason = _probe(python, pythonpath, cwd)
            if reason is None:
                yield Unprivileged(python, pythonpath)
                return
            reasons.append(reason)
        # Nobody cannot read the repository or site-packages (say, under /root): a copy.
        copy = world_dir("shipper-copy-")
        _copy_imports(copy)
        for python in _interpreters():
            reason = _probe(python, (str(copy),), cwd)
            if reason is None:
                yield Unprivileged(python, (str(copy),))
                return
            reasons.append(reason)
        pytest.skip("no interpreter can import shipper as nobody: " + "; ".join(reasons))
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)


# -- a place nobody can work in ------------------------------------------------------------------


def give_to_shipper(path: Path) -> Path:
    """A directory shipper's user owns (nobody, as root)."""
    path.mkdir(parents=True, exist_ok=True)
    if AS_ROOT:
        os.chown(path, NOBODY, NOBODY)
    return path


@pytest.fixture
def work() -> Iterator[Path]:
    path = world_dir("shipper-perm-")
    try:
        yield path
    finally:
        for entry in path.rglob("*"):  # unlock what a test locked, so that it can be removed
            with contextlib.suppress(OSError):
                entry.chmod(0o755 if entry.is_dir() else 0o644)
        shutil.rmtree(path, ignore_errors=True)


def write_config(work: Path, *, state_dir: Path | None = None, extra: str = "") -> Path:
    config = work / "shipper.yaml"
    config.write_text(
        f"""
state_dir: {state_dir or work / "state"}
# Any free port: shipper processes of several tests may overlap.
monitoring:
  port: 0
sources:
  docker:
    type: docker_json
    root: {work / "containers"}
    poll_interval: 20ms
    rescan_interval: 200ms
outputs:
  archive:
    type: file
    path: {work / "out" / "out.ndjson"}
    batch:
      linger: 20ms
checkpoints:
  flush_interval: 100ms
{extra}
"""
    )
    config.chmod(0o644)
    return config


def events(stderr: Path) -> list[dict[str, Any]]:
    """shipper's JSON log lines (a line being written is left out)."""
    data = stderr.read_bytes()
    return [
        orjson.loads(line) if line.startswith(b"{") else {"level": "raw", "message": line.decode()}
        for line in data[: data.rfind(b"\n") + 1].splitlines()
    ]


def mentions(event: dict[str, Any], text: str) -> bool:
    return text in orjson.dumps(event).decode()


def shipped(work: Path) -> list[tuple[str, int]]:
    path = work / "out" / "out.ndjson"
    if not path.exists():
        return []
    data = path.read_bytes()
    return [
        (document["container"]["id"], int(seq))
        for document in map(orjson.loads, data[: data.rfind(b"\n") + 1].splitlines())
        for seq in SEQ_PATTERN.findall(document["message"])
    ]


def write(log: ContainerLog, start: int, count: int) -> list[tuple[str, int]]:
    for seq in range(start, start + count):
        log.write(f"GET /api/v1/orders/{seq} 200 seq={seq:06d}")
    return [(log.id, seq) for seq in range(start, start + count)]


def wait_started(process: subprocess.Popen[bytes], stderr: Path) -> None:
    def started() -> bool:
        assert process.poll() is None, stderr.read_text()
        return any(event["message"] == "shipper started." for event in events(stderr))

    wait_until_sync(started, timeout=30, what="'shipper started.'")


def stop(process: subprocess.Popen[bytes], stderr: Path) -> int:
    try:
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()


# -- (a) a log file shipper may not read ---------------------------------------------------------


def test_an_unreadable_log_file_is_reported_once_and_shipped_once_readable(
    unprivileged: Unprivileged, work: Path
) -> None:
    docker = DockerRootWriter(work / "containers")  # one clock: the two files differ
    readable = docker.add_container("readable")
    locked = docker.add_container("locked")
    for log in (readable, locked):
        log.directory.chmod(0o755)  # Docker's are 0700; a host agent is given access somehow
    readable.log_path.chmod(0o644)
    locked.log_path.chmod(LOCKED_FILE)
    expected = write(readable, 0, 300) + write(locked, 0, 300)
    give_to_shipper(work / "state")
    give_to_shipper(work / "out")
    config = write_config(work)
    stderr = work / "shipper.stderr"
    process = unprivileged.start(work, stderr, "run", "--config", str(config))
    try:
        wait_started(process, stderr)
        wait_until_sync(
            lambda: {k for k in shipped(work) if k[0] == readable.id} == set(expected[:300]),
            what="the readable container shipped in full",
        )
        expected += write(locked, 300, 100)  # it goes on logging while locked
        # A few seconds is a dozen rescans (rescan_interval 200ms) and a hundred polls: the
        # waiting is the point, to see that the error is not repeated at each of them.
        time.sleep(3)
        assert process.poll() is None, stderr.read_text()
        about = [e for e in events(stderr) if mentions(e, str(locked.log_path))]
        errors = [e for e in about if e["level"] == "error"]
        assert 1 <= len(errors) <= 2, about
        assert all(mentions(e, "ermission denied") for e in errors), errors
        assert {k for k in shipped(work) if k[0] == locked.id} == set()

        locked.log_path.chmod(0o644)  # the operator fixes it
        expected += write(locked, 400, 100)
        wait_until_sync(
            lambda: set(shipped(work)) == set(expected),
            what="the formerly locked container shipped",
        )
        assert stop(process, stderr) == 0, stderr.read_text()
    finally:
        process.kill()
        process.wait()
        docker.close()
    lines = shipped(work)
    assert sorted(lines) == sorted(expected)  # every line, once
    errors = [e for e in events(stderr) if e["level"] == "error"]
    assert all(mentions(e, str(locked.log_path)) for e in errors), errors


def test_an_unlistable_container_directory_is_reported_and_shipped_once_listable(
    unprivileged: Unprivileged, work: Path
) -> None:
    docker = DockerRootWriter(work / "containers")
    readable = docker.add_container("readable")
    hidden = docker.add_container("hidden")
    readable.directory.chmod(0o755)
    readable.log_path.chmod(0o644)
    hidden.directory.chmod(LOCKED_DIR)  # as Docker makes it
    hidden.log_path.chmod(0o644)
    expected = write(readable, 0, 200) + write(hidden, 0, 200)
    give_to_shipper(work / "state")
    give_to_shipper(work / "out")
    config = write_config(work)
    stderr = work / "shipper.stderr"
    process = unprivileged.start(work, stderr, "run", "--config", str(config))
    try:
        wait_started(process, stderr)
        wait_until_sync(
            lambda: {k for k in shipped(work) if k[0] == readable.id} == set(expected[:200]),
            what="the readable container shipped in full",
        )
        time.sleep(3)  # a dozen rescans: the error must be there, and not a dozen times
        assert process.poll() is None, stderr.read_text()
        reported = [
            e
            for e in events(stderr)
            if e["level"] in ("warning", "error") and mentions(e, str(hidden.directory))
        ]
        hidden.directory.chmod(0o755)
        wait_until_sync(
            lambda: set(shipped(work)) == set(expected),
            what="the container shipped once its directory can be listed",
        )
        assert stop(process, stderr) == 0, stderr.read_text()
    finally:
        process.kill()
        process.wait()
        docker.close()
    assert sorted(shipped(work)) == sorted(expected)
    assert 1 <= len(reported) <= 2, reported


# -- (b) state shipper may not write or read -----------------------------------------------------


def _root_owned(path: Path, mode: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("layout", ["state_dir read-only", "state_dir missing, parent read-only"])
def test_an_unwritable_checkpoint_location_stops_shipper_at_start(
    unprivileged: Unprivileged, work: Path, layout: str
) -> None:
    read_only = _root_owned(work / "locked", 0o755)  # root's: nobody may not create anything in it
    state = read_only if layout == "state_dir read-only" else read_only / "state"
    docker = DockerRootWriter(work / "containers")
    log = docker.add_container("app")
    log.directory.chmod(0o755)
    log.log_path.chmod(0o644)
    write(log, 0, 50)
    docker.close()
    give_to_shipper(work / "out")
    config = write_config(work, state_dir=state)
    stderr = work / "shipper.stderr"
    process = unprivileged.start(work, stderr, "run", "--config", str(config))
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        running = process.poll() is None
        code = stop(process, stderr) if running else process.returncode
    finally:
        process.kill()
        process.wait()
    checkpoint = str(state / "checkpoints.json")
    errors = [e for e in events(stderr) if e["level"] == "error"]
    assert not running, (
        f"still running after 5s, {len(errors)} error(s) logged; exit code at SIGTERM {code}; "
        f"first error: {errors[:1]}"
    )
    assert code == 1, stderr.read_text()
    assert any(mentions(e, checkpoint) for e in errors), stderr.read_text()


@pytest.mark.parametrize("locked", ["state_dir", "checkpoint file"])
def test_an_unreadable_checkpoint_stops_shipper_at_start_naming_it(
    unprivileged: Unprivileged, work: Path, locked: str
) -> None:
    state = work / "state"
    if locked == "state_dir":
        _root_owned(state, LOCKED_DIR)
    else:
        give_to_shipper(state)
        (state / "checkpoints.json").write_text('{"version": 1, "files": []}\n')
        (state / "checkpoints.json").chmod(LOCKED_FILE)
    (work / "containers").mkdir()
    give_to_shipper(work / "out")
    config = write_config(work)
    stderr = work / "shipper.stderr"
    process = unprivileged.start(work, stderr, "run", "--config", str(config))
    try:
        code = process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert code == 1, stderr.read_text()
    logged = events(stderr)
    assert not any(e["message"] == "shipper started." for e in logged), logged
    errors = [e for e in logged if e["level"] == "error"]
    assert any(mentions(e, str(state / "checkpoints.json")) for e in errors), logged
    assert any(mentions(e, "ermission denied") for e in errors), logged


# -- (c) a config file shipper may not read ------------------------------------------------------


def test_an_unreadable_config_file_is_a_config_error_naming_it(
    unprivileged: Unprivileged, work: Path
) -> None:
    (work / "containers").mkdir()
    config = write_config(work)
    config.chmod(LOCKED_FILE)
    checked = unprivileged.run(work, "check-config", "--config", str(config))
    assert checked.returncode == 2, checked
    assert str(config) in checked.stderr, checked.stderr
    assert "ermission denied" in checked.stderr, checked.stderr
    assert checked.stdout == ""

    ran = unprivileged.run(work, "run", "--config", str(config))
    assert ran.returncode == 2, ran
    assert str(config) in ran.stderr, ran.stderr
    assert not (work / "state").exists()  # nothing was started
