"""A private, throw-away Docker daemon for tests (Debian's `docker.io`), isolated from any other.

Everything the daemon owns lives under one folder of the test session:

    <base>/<storage driver>/
        daemon.json      an empty config, so the host's /etc/docker/daemon.json is not read
        data/            --data-root   (data/containers/<id>/<id>-json.log is what shipper reads)
        exec/            --exec-root   (also holds the containerd that dockerd starts for itself)
        docker.pid       --pidfile
        docker.sock      -H unix://…
        dockerd.log      dockerd's stdout and stderr
        client/          DOCKER_CONFIG of the /usr/bin/docker client

so several daemons (other test files, parallel sessions, the host's own) never share a socket,
a data root or a pidfile. `start_dockerd` tries overlay2, then vfs; `Dockerd.stop` removes the
containers, sends SIGTERM to dockerd by its PID, waits with a deadline (SIGKILL after it) and
unmounts whatever is left mounted under the folder, so that it can be deleted.

The client is always `/usr/bin/docker` (the one from `docker.io`, the same version as the
daemon) with `-H unix://<socket>`: another, newer `docker` may come first on PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import IO, Any

import httpx

DOCKER_CLIENT = Path("/usr/bin/docker")
BUSYBOX = Path("/bin/busybox")
IMAGE = "shipper-test-busybox:latest"
STORAGE_DRIVERS = ("overlay2", "vfs")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

# No networking of its own (no bridge, no iptables): containers run with --network none.
DAEMON_FLAGS = (
    "--iptables=false",
    "--ip6tables=false",
    "--ip-forward=false",
    "--ip-masq=false",
    "--bridge=none",
    "--exec-opt",
    "native.cgroupdriver=cgroupfs",
)

# The longest unix socket dockerd's containerd makes is
# <exec-root>/containerd/containerd.sock.ttrpc, and sun_path holds 107 bytes.
MAX_EXEC_ROOT_LENGTH = 107 - len("/containerd/containerd.sock.ttrpc")

_CLIENT_ENV_DROPPED = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")


class DockerdUnavailable(Exception):
    """dockerd could not be found, started or made ready; the message says why."""


class DockerCommandError(subprocess.CalledProcessError):
    """A `docker` command failed; unlike CalledProcessError, its message shows the stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}"


def find_dockerd() -> Path | None:
    """dockerd from PATH, or from /usr/sbin (Debian's place, often not on a user's PATH)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])
    found = shutil.which("dockerd", path=search)
    return Path(found) if found else None


def missing_prerequisites() -> str | None:
    """Why a dockerd cannot be run here, or None when everything it needs is present."""
    if os.name != "posix" or not Path("/proc/self/mountinfo").exists():
        return "a real dockerd needs Linux"
    if os.geteuid() != 0:
        return "a real dockerd needs root"
    missing = [
        what
        for what, ok in (
            ("dockerd", find_dockerd() is not None),
            (str(DOCKER_CLIENT), DOCKER_CLIENT.exists()),
            (str(BUSYBOX), BUSYBOX.exists()),
        )
        if not ok
    ]
    if missing:
        return (
            f"missing {', '.join(missing)}: `./dev test` installs them "
            "(apt-get install -y docker.io busybox-static)"
        )
    return None


@dataclass
class Dockerd:
    """One running dockerd, its API client and the helpers tests use to run containers."""

    base: Path
    storage_driver: str
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]
    client: httpx.Client
    server_version: str = ""
    notes: list[str] = field(default_factory=list)

    # --- where things are -------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.base / "docker.sock"

    @property
    def data_root(self) -> Path:
        return self.base / "data"

    @property
    def exec_root(self) -> Path:
        return self.base / "exec"

    @property
    def pidfile(self) -> Path:
        return self.base / "docker.pid"

    @property
    def log_path(self) -> Path:
        """dockerd's own output (stdout and stderr)."""
        return self.base / "dockerd.log"

    @property
    def containers_root(self) -> Path:
        """What shipper's docker source reads: `<id>/<id>-json.log`, `<id>/config.v2.json` …"""
        return self.data_root / "containers"

    def container_dir(self, container_id: str) -> Path:
        return self.containers_root / container_id

    def json_log(self, container_id: str) -> Path:
        """The current json-file log of a container (`<id>-json.log`; rotated: `.1`, `.1.gz` …)."""
        return self.container_dir(container_id) / f"{container_id}-json.log"

    # --- the client ---------------------------------------------------------------------------

    def docker(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `/usr/bin/docker -H unix://<socket> ARGS`; raises DockerCommandError on failure."""
        argv = self._client_argv(args)
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, env=self._client_env(), check=False
        )
        if result.returncode != 0:
            raise DockerCommandError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def _client_argv(self, args: Sequence[str]) -> list[str]:
        return [str(DOCKER_CLIENT), "-H", f"unix://{self.socket}", *args]

    def _client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _CLIENT_ENV_DROPPED}
        env["DOCKER_CONFIG"] = str(self.base / "client")
        return env

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to the Engine API on the daemon's socket (unversioned paths)."""
        return self.client.request(method, path, **kwargs)

    # --- containers ---------------------------------------------------------------------------

    def run_container(
        self,
        name: str,
        script: str,
        *,
        log_opts: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> str:
        """`docker run -d --network none --name NAME --log-driver json-file --log-opt k=v …
        shipper-test-busybox:latest sh -c SCRIPT`; returns the full container ID.

        `extra_args` go before the image (e.g. `("--label", "app=web", "-e", "K=V")`).
        """
        opts = [
            arg
            for key, value in (log_opts or {}).items()
            for arg in ("--log-opt", f"{key}={value}")
        ]
        args = ["run", "-d", "--network", "none", "--name", name, "--log-driver", "json-file"]
        result = self.docker(*args, *opts, *extra_args, IMAGE, "sh", "-c", script)
        return result.stdout.strip()

    def inspect(self, container_id: str) -> dict[str, Any]:
        response = self.api("GET", f"/containers/{container_id}/json")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def wait_exited(self, container_id: str, timeout: float = 30.0) -> int:
        """Poll until the container has exited; returns its exit code.

        By then dockerd has closed the container's log: every line is in the json-file (only the
        background gzip of rotated files, with compress=true, may still be running).
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self.inspect(container_id)["State"]
            if state["Status"] in ("exited", "dead"):
                return int(state["ExitCode"])
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"container {container_id[:12]} still {state['Status']} after {timeout}s"
                )
            time.sleep(0.02)

    def exec(self, container_id: str, *command: str) -> subprocess.CompletedProcess[str]:
        """`docker exec ID COMMAND…`: its output goes to the caller, not to the container's log."""
        return self.docker("exec", container_id, *command)

    def remove_all_containers(self) -> None:
        response = self.api("GET", "/containers/json", params={"all": "1"})
        response.raise_for_status()
        for container in response.json():
            self.api("DELETE", f"/containers/{container['Id']}", params={"force": "1", "v": "1"})

    # --- image --------------------------------------------------------------------------------

    def import_busybox_image(self) -> None:
        """`docker import` an image made of Debian's static busybox and its applet symlinks."""
        rootfs = self.base / "busybox-rootfs"
        (rootfs / "bin").mkdir(parents=True)
        (rootfs / "tmp").mkdir(mode=0o1777)
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        applets = subprocess.run(
            [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox" and "/" not in applet:
                (rootfs / "bin" / applet).symlink_to("busybox")
        tar = BytesIO()
        with tarfile.open(fileobj=tar, mode="w") as archive:
            archive.add(rootfs, arcname=".")
        argv = self._client_argv(["import", "-", IMAGE])
        result = subprocess.run(
            argv, input=tar.getvalue(), capture_output=True, env=self._client_env(), check=False
        )
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace")
            raise DockerCommandError(result.returncode, argv, result.stdout, stderr)

    # --- lifetime -----------------------------------------------------------------------------

    def stderr_tail(self, lines: int = 25) -> str:
        """dockerd's last output lines, its errors first: what to show when it misbehaves."""
        self.log_file.flush()
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError as error:
            return f"(no dockerd log: {error})"
        errors = [line for line in text if "level=error" in line or "level=fatal" in line]
        return "\n".join([*errors[-10:], "…", *text[-lines:]])

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Remove containers, SIGTERM dockerd, wait (SIGKILL after `timeout`), unmount leftovers."""
        try:
            if self.process.poll() is None:
                with contextlib.suppress(httpx.HTTPError):
                    self.remove_all_containers()
            self.client.close()
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.notes.append(f"dockerd ignored SIGTERM for {timeout}s: killed")
                    self.process.kill()
                    self.process.wait(timeout=timeout)
            # After a clean stop nothing is left; after a kill, dockerd's containerd and shims
            # are, with the processes and cgroups of the containers still running.
            kill_processes_using(self.exec_root)
            kill_container_cgroups(self.containers_root)
            unmount_under(self.base)
        finally:
            self.log_file.close()


def start_dockerd(
    base: Path,
    *,
    storage_drivers: Sequence[str] = STORAGE_DRIVERS,
    ready_timeout: float = READY_TIMEOUT,
) -> Dockerd:
    """Start a dockerd under `base` with the first storage driver that works, import the busybox
    image, and return it ready. Raises DockerdUnavailable with the reasons otherwise."""
    missing = missing_prerequisites()
    if missing:
        raise DockerdUnavailable(missing)
    failures: list[str] = []
    for driver in storage_drivers:
        try:
            daemon = _start_one(base / driver, driver, ready_timeout)
        except DockerdUnavailable as error:
            failures.append(f"--storage-driver={driver}: {error}")
            continue
        daemon.notes.extend(failures)
        try:
            daemon.import_busybox_image()
        except (OSError, subprocess.SubprocessError, tarfile.TarError) as error:
            tail = daemon.stderr_tail()
            daemon.stop()
            raise DockerdUnavailable(f"importing {IMAGE} failed: {error}\n{tail}") from error
        return daemon
    raise DockerdUnavailable("\n\n".join(failures))


def _start_one(base: Path, driver: str, ready_timeout: float) -> Dockerd:
    dockerd = find_dockerd()
    assert dockerd is not None  # checked by missing_prerequisites
    exec_root = base / "exec"
    if len(str(exec_root)) > MAX_EXEC_ROOT_LENGTH:
        raise DockerdUnavailable(
            f"exec root {exec_root} is too long for containerd's unix sockets "
            f"(at most {MAX_EXEC_ROOT_LENGTH} characters)"
        )
    (base / "client").mkdir(parents=True)
    config = base / "daemon.json"
    config.write_text("{}\n")
    argv = [
        str(dockerd),
        "--config-file",
        str(config),
        "--data-root",
        str(base / "data"),
        "--exec-root",
        str(exec_root),
        "--pidfile",
        str(base / "docker.pid"),
        "-H",
        f"unix://{base / 'docker.sock'}",
        f"--storage-driver={driver}",
        *DAEMON_FLAGS,
    ]
    log_file = (base / "dockerd.log").open("wb")
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
    )
    client = httpx.Client(
        transport=httpx.HTTPTransport(uds=str(base / "docker.sock")),
        base_url="http://docker",
        timeout=10.0,
    )
    daemon = Dockerd(
        base=base, storage_driver=driver, process=process, log_file=log_file, client=client
    )
    try:
        _wait_ready(daemon, ready_timeout)
        info = daemon.api("GET", "/info").json()
        if info.get("Driver") != driver:
            raise DockerdUnavailable(f"dockerd runs storage driver {info.get('Driver')!r}")
        daemon.server_version = str(daemon.api("GET", "/version").json()["Version"])
    except (DockerdUnavailable, httpx.HTTPError, KeyError, ValueError) as error:
        tail = daemon.stderr_tail()
        daemon.stop(timeout=10.0)
        raise DockerdUnavailable(f"{error}\n--- dockerd output ---\n{tail}") from error
    return daemon


def _wait_ready(daemon: Dockerd, timeout: float) -> None:
    """Poll `GET /_ping` on the socket until it answers OK, dockerd exits, or the deadline."""
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while True:
        code = daemon.process.poll()
        if code is not None:
            raise DockerdUnavailable(f"dockerd exited with code {code} before answering /_ping")
        if not _accepts_connections(daemon.socket):
            last_error = f"{daemon.socket} does not accept connections yet"
        else:
            try:
                response = daemon.api("GET", "/_ping")
            except httpx.TransportError as error:
                last_error = repr(error)
            else:
                if response.status_code == 200 and response.text == "OK":
                    return
                last_error = f"HTTP {response.status_code} {response.text[:200]!r}"
        if time.monotonic() > deadline:
            raise DockerdUnavailable(f"/_ping did not answer OK within {timeout}s: {last_error}")
        time.sleep(0.05)


def _accepts_connections(path: Path) -> bool:
    """Whether a unix socket accepts a connection. Probed by hand before httpx is used: httpcore
    (1.0.9) leaves its socket unclosed when connect() fails, a ResourceWarning that this
    suite's `filterwarnings = error` turns into a test error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


# --- cleanup helpers ----------------------------------------------------------------------------


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _mount_points() -> Iterator[Path]:
    """The mount points in /proc/self/mountinfo (field 5, with its octal escapes decoded)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split(" ")[4]
        yield Path(_OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), raw))


def unmount_under(folder: Path) -> list[Path]:
    """Unmount everything mounted at or below `folder`, deepest first (lazily if busy)."""
    folder = folder.resolve()
    inside = sorted(
        {point for point in _mount_points() if point == folder or folder in point.parents},
        key=lambda point: len(point.parts),
        reverse=True,
    )
    for point in inside:
        if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
    return inside


def kill_processes_using(exec_root: Path) -> list[int]:
    """SIGKILL the processes whose command line names `exec_root` (this daemon's containerd and
    shims, left behind only when dockerd itself had to be killed)."""
    needle = f"{exec_root}/".encode()
    killed: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if any(needle in arg or arg == needle[:-1] for arg in cmdline.split(b"\0")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    return killed


def kill_container_cgroups(containers_root: Path) -> list[int]:
    """SIGKILL what runs in the cgroups of the containers under `containers_root` (cgroupfs
    driver, parent /docker, v1 or v2) and remove those cgroups: only needed after a kill."""
    if not containers_root.is_dir():
        return []
    cgroups = Path("/sys/fs/cgroup")
    killed: list[int] = []
    for container in containers_root.iterdir():
        folders = [
            *cgroups.glob(f"*/docker/{container.name}"),
            *cgroups.glob(f"docker/{container.name}"),
        ]
        for folder in folders:
            with contextlib.suppress(OSError):
                for pid in (folder / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                        killed.append(int(pid))
        deadline = time.monotonic() + 5.0
        for folder in folders:
            while folder.exists():  # rmdir fails with EBUSY until its last process is reaped
                try:
                    folder.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
    return killed


def describe(daemon: Dockerd) -> str:
    """One line for reports: version, storage driver and where it runs."""
    notes = f" (notes: {json.dumps(daemon.notes)})" if daemon.notes else ""
    return (
        f"real dockerd {daemon.server_version}, storage driver {daemon.storage_driver}, "
        f"socket {daemon.socket}{notes}"
    )
