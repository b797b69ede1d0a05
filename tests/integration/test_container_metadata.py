"""What records say about their container, against a real dockerd: the real CLI ships it to a file.

- A container with labels, environment and `--log-opt labels=/env=/tag=`: every record carries
  its id, name, image, dedotted labels, the Kubernetes and Compose fields read from its labels,
  the `attrs` exactly as Docker wrote them, the allow-listed variable only, and the secret in
  its environment appears nowhere (neither in the output nor in shipper's own log).
- A container renamed while it runs: what it wrote before carries the old name, what it wrote
  after the new one (Docker rewrites config.v2.json; shipper sees it at the next chunk), with
  and without `docker_host` (container events).
- A container printing a Java stack trace, its multiline parser chosen by a rule on its name or
  by its `shipper.multiline` label: the trace is one record, every other line one record; the
  same output in a container without a parser stays one record a line.

shipper runs as `python -m shipper run` (its stderr in a file); the test reads only whole lines
of its output (a running shipper may be half-way through one) and knows everything was shipped
when the checkpoint of each container's log reaches the end of the file: a record still waiting
for its next line (multiline) holds the checkpoint back, so nothing can come after that.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from shipper import __version__
from tests.helpers import wait_until_sync
from tests.integration import scripts
from tests.integration.dockerd import IMAGE, Dockerd

TIMEOUT = 20.0  # for anything shipper must do; ~0.1-0.6 s when it is well
HOST_NAME = "node-under-test"
ECS_VERSION = "8.11.0"

RunContainer = Callable[..., str]


# --- shipper, the real command line --------------------------------------------------------------


class Shipper:
    """`python -m shipper run --config …` reading the daemon's containers into `out.ndjson`."""

    def __init__(self, tmp: Path, dockerd: Dockerd, source_options: dict[str, Any]) -> None:
        self.dockerd = dockerd
        self.output = tmp / "out.ndjson"
        self.stderr = tmp / "shipper.stderr"
        self.checkpoints = tmp / "state" / "checkpoints.json"
        self.config = tmp / "shipper.yaml"
        source = {
            "type": "docker_json",
            "root": str(dockerd.containers_root),
            "poll_interval": "20ms",
            "partial_flush_timeout": "500ms",
            "host_name": HOST_NAME,
            **source_options,
        }
        config = {
            "state_dir": str(tmp / "state"),
            "logging": {"level": "debug"},  # the most it ever says: the secret must not be in it
            "sources": {"docker": source},
            "outputs": {
                "archive": {"type": "file", "path": str(self.output), "batch": {"linger": "20ms"}}
            },
            "checkpoints": {"flush_interval": "100ms"},
            "monitoring": {"port": 0},  # any free port: runs of several tests may overlap
        }
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process: subprocess.Popen[bytes] | None = None
        self.documents: dict[str, list[dict[str, Any]]] = {}  # container id -> its records
        self._offset = 0

    # -- lifetime --

    def start(self) -> None:
        with self.stderr.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "shipper", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.wait_for_log("shipper started.")

    def stop(self) -> None:
        """SIGTERM, as a container runtime stops it; it must exit cleanly (code 0)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"shipper ignored SIGTERM for {TIMEOUT}s\n{self.report()}")
        assert code == 0, f"shipper exited with {code} at SIGTERM\n{self.report()}"

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def check_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"shipper exited by itself ({self.process.returncode})\n{self.report()}")

    # -- its log --

    def log_entries(self) -> list[dict[str, Any]]:
        """shipper's own log lines (JSON), whole lines only."""
        data = self.stderr.read_bytes() if self.stderr.exists() else b""
        data = data[: data.rfind(b"\n") + 1]
        return [
            orjson.loads(line) if line.startswith(b"{") else {"level": "?", "message": line}
            for line in data.splitlines()
        ]

    def errors(self) -> list[dict[str, Any]]:
        """What shipper logged at level error (lines that are not JSON, e.g. a library's
        warnings printed on stderr, are in `report()` but not errors of shipper's)."""
        return [entry for entry in self.log_entries() if entry.get("level") == "error"]

    def wait_for_log(self, message: str) -> None:
        def logged() -> bool:
            self.check_running()
            return any(entry.get("message") == message for entry in self.log_entries())

        self.wait(logged, f"{message!r} in shipper's log")

    # -- its output --

    def refresh(self) -> None:
        """Read what shipper appended since the last refresh, up to its last whole line."""
        if not self.output.exists():
            return
        with self.output.open("rb") as file:
            file.seek(self._offset)
            data = file.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            document = orjson.loads(line)
            self.documents.setdefault(document["container"]["id"], []).append(document)

    def of(self, container_id: str) -> list[dict[str, Any]]:
        self.refresh()
        return self.documents.get(container_id, [])

    def messages(self, container_id: str) -> list[str]:
        return [document["message"] for document in self.of(container_id)]

    def settled(self, container_ids: list[str]) -> bool:
        """Whether each container's log is checkpointed at its end: read, shipped, settled,
        no record left waiting for a next line."""
        try:
            files = orjson.loads(self.checkpoints.read_bytes())["files"]
        except FileNotFoundError:
            return False
        offsets = {Path(entry["path"]).name: entry["offset"] for entry in files}
        for container_id in container_ids:
            log = self.dockerd.json_log(container_id)
            if offsets.get(log.name) != log.stat().st_size:
                return False
        return True

    def wait_settled(self, container_ids: list[str]) -> None:
        self.wait(lambda: self.settled(container_ids), "every log checkpointed at its end")
        self.refresh()

    # -- waiting and reporting --

    def wait(self, condition: Callable[[], bool], what: str) -> None:
        """Poll `condition` (failing at once if shipper stopped by itself); on timeout, fail
        with what shipper shipped and logged."""

        def check() -> bool:
            self.check_running()
            return condition()

        try:
            wait_until_sync(check, timeout=TIMEOUT, what=what)
        except pytest.fail.Exception:
            pytest.fail(f"timed out after {TIMEOUT}s waiting for {what}\n{self.report()}")

    def report(self) -> str:
        self.refresh()
        shipped = "\n".join(
            f"  {container_id[:12]}: {[d['message'] for d in documents]!r}"
            for container_id, documents in self.documents.items()
        )
        log = self.stderr.read_text(errors="replace") if self.stderr.exists() else ""
        tail = "\n".join(log.splitlines()[-30:])
        return f"shipped:\n{shipped or '  nothing'}\nshipper's log (last lines):\n{tail}"


@contextlib.contextmanager
def running_shipper(
    tmp: Path, dockerd: Dockerd, source_options: dict[str, Any] | None = None
) -> Iterator[Shipper]:
    shipper = Shipper(tmp, dockerd, source_options or {})
    try:
        shipper.start()
        yield shipper
        shipper.stop()
    finally:
        shipper.kill()


@pytest.fixture
def run_container(dockerd: Dockerd) -> Iterator[RunContainer]:
    """`dockerd.run_container`, and `docker rm -f` of those containers at the end of the test."""
    ids: list[str] = []

    def run(name: str, script: str, **options: Any) -> str:
        container_id = dockerd.run_container(name, script, **options)
        ids.append(container_id)
        return container_id

    yield run
    if ids:
        dockerd.docker("rm", "-f", *ids)


def entries_with_offsets(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The json-file entries of one (plain) log file, each with the byte offset of its line."""
    found = []
    offset = 0
    for line in path.read_bytes().splitlines(keepends=True):
        found.append((offset, orjson.loads(line)))
        offset += len(line)
    return found


def lines_script(lines: list[tuple[scripts.Stream, str]]) -> str:
    return scripts.chain(*(scripts.text_line(text, stream=stream) for stream, text in lines))


# --- a labelled container: its metadata on every record ------------------------------------------

LABELS = {
    "app": "web",
    "app.kubernetes.io/name": "web-ui",
    "io.kubernetes.pod.name": "web-0",
    "io.kubernetes.pod.namespace": "shop",
    "io.kubernetes.container.name": "web",
    "com.docker.compose.project": "shop",
    "com.docker.compose.service": "web",
}
SECRET = "hunter2"


def test_records_carry_the_containers_metadata(
    dockerd: Dockerd, tmp_path: Path, run_container: RunContainer
) -> None:
    """Name without its slash, image as given, labels dedotted (`app` beside
    `app_kubernetes_io/name`), kubernetes.* and docker.compose.* from the labels, docker.attrs
    as in the json-file, docker.container.env with the allow-listed REGION only; SECRET_TOKEN's
    value nowhere in the output nor in shipper's log (at debug level)."""
    lines: list[tuple[scripts.Stream, str]] = [
        ("stdout", "GET /healthz 200"),
        ("stdout", "listening on :8080"),
        ("stderr", "cache is cold"),
        ("stdout", "ready"),
    ]
    extra_args = [arg for key, value in LABELS.items() for arg in ("--label", f"{key}={value}")]
    extra_args += ["-e", f"SECRET_TOKEN={SECRET}", "-e", "REGION=eu-west-1"]
    log_opts = {"labels": "app", "env": "REGION", "tag": "{{.Name}}/{{.ID}}"}
    with running_shipper(tmp_path, dockerd, {"env_allowlist": ["REGION"]}) as shipper:
        container_id = run_container(
            "meta-a", lines_script(lines), log_opts=log_opts, extra_args=extra_args
        )
        assert dockerd.wait_exited(container_id) == 0
        shipper.wait_settled([container_id])
    documents = shipper.of(container_id)
    inspected = dockerd.inspect(container_id)

    # What Docker wrote (a precondition, not shipper's business): the attrs of every entry.
    raw = [entry for _, entry in entries_with_offsets(dockerd.json_log(container_id))]
    expected_attrs = {"app": "web", "REGION": "eu-west-1", "tag": f"meta-a/{container_id[:12]}"}
    assert [entry["attrs"] for entry in raw] == [expected_attrs] * len(lines)

    # The two streams are copied by two goroutines: their order in the file is Docker's.
    assert sorted((entry["stream"], entry["log"]) for entry in raw) == sorted(
        (stream, text + "\n") for stream, text in lines
    )
    shipped = [(d.get("stream"), d["message"]) for d in documents]
    assert shipped == [(entry["stream"], entry["log"][:-1]) for entry in raw]
    dedotted = {key.replace(".", "_"): value for key, value in LABELS.items()}
    assert "app" in dedotted
    assert "app_kubernetes_io/name" in dedotted
    for document, entry in zip(documents, raw, strict=True):
        assert set(document) == {
            "@timestamp",
            "message",
            "stream",
            "container",
            "kubernetes",
            "docker",
            "host",
            "agent",
            "ecs",
            "log",
        }, document
        assert document["container"] == {
            "id": container_id,
            "name": "meta-a",
            "image": {"name": IMAGE},
            "labels": dedotted,
        }
        assert document["kubernetes"] == {
            "pod": {"name": "web-0"},
            "namespace": "shop",
            "container": {"name": "web"},
        }
        # Docker writes config.v2.json at create (StartedAt is Go's zero time then,
        # 0001-01-01T00:00:00Z) and again just after the start, while the container may
        # already be writing: a line read in between has no known start time, never year 1.
        times = dict(document["docker"]["container"])
        started = times.pop("started", None)
        assert started in (None, inspected["State"]["StartedAt"]), (
            f"{document['message']!r}: docker.container.started is {started!r}"
        )
        assert document["docker"] == {
            "container": {
                "created": inspected["Created"],
                **({"started": started} if started is not None else {}),
                "env": {"REGION": "eu-west-1"},
            },
            "compose": {"project": "shop", "service": "web"},
            "attrs": entry["attrs"],
        }
        assert document["host"] == {"name": HOST_NAME}
        assert document["agent"] == {"type": "shipper", "version": __version__}
        assert document["ecs"] == {"version": ECS_VERSION}
        assert Path(document["log"]["file"]["path"]).name == f"{container_id}-json.log"

    for what, path in (("the output", shipper.output), ("shipper's log", shipper.stderr)):
        text = path.read_bytes()
        assert SECRET.encode() not in text, f"the secret environment value is in {what}"
        assert b"SECRET_TOKEN" not in text, f"the secret's variable name is in {what}"
    assert shipper.errors() == []


# --- a container renamed while it runs -----------------------------------------------------------

BEFORE_RENAME = [f"before {n}" for n in range(1, 21)]
AFTER_RENAME = [f"after {n}" for n in range(1, 21)]


@pytest.mark.parametrize("events", [False, True], ids=["files-only", "docker-host-events"])
def test_records_read_after_a_rename_carry_the_new_name(
    dockerd: Dockerd, tmp_path: Path, run_container: RunContainer, events: bool
) -> None:
    """The container writes, waits until shipper has shipped all of it, is renamed, then writes
    again: the first lines carry the old name, the later ones the new name. With `docker_host`,
    shipper also follows the daemon's container events (a rename makes it read the metadata
    again); without, it notices the rewritten config.v2.json at the next chunk."""
    variant = "events" if events else "files"
    old, new = f"b-old-{variant}", f"b-new-{variant}"
    options = {"docker_host": f"unix://{dockerd.socket}"} if events else {}
    script = scripts.chain(
        *(scripts.text_line(text) for text in BEFORE_RENAME),
        scripts.wait_for_signal("renamed"),
        *(scripts.text_line(text) for text in AFTER_RENAME),
    )
    with running_shipper(tmp_path, dockerd, options) as shipper:
        if events:
            shipper.wait_for_log("Following Docker container events.")
        container_id = run_container(old, script)
        shipper.wait(
            lambda: len(shipper.of(container_id)) >= len(BEFORE_RENAME),
            "every line written before the rename shipped",
        )
        dockerd.docker("rename", old, new)
        config = orjson.loads((dockerd.container_dir(container_id) / "config.v2.json").read_bytes())
        assert config["Name"] == f"/{new}"  # Docker rewrote it before `docker rename` returned
        dockerd.exec(container_id, "touch", scripts.signal_path("renamed"))
        assert dockerd.wait_exited(container_id) == 0
        shipper.wait_settled([container_id])
    named = [(d["message"], d["container"].get("name")) for d in shipper.of(container_id)]
    assert named == [(text, old) for text in BEFORE_RENAME] + [(text, new) for text in AFTER_RENAME]
    assert shipper.errors() == []


# --- a Java stack trace: one record ---------------------------------------------------------------

TRACE = [
    'Exception in thread "main" java.lang.IllegalStateException: boom',
    "\tat com.example.App.run(App.java:27)",
    "\tat com.example.App.main(App.java:12)",
    "Caused by: java.lang.NullPointerException: null",
    "\tat com.example.Repo.load(Repo.java:41)",
    "\tat com.example.App.run(App.java:25)",
    "\t... 3 more",
]
BEFORE_TRACE = [
    "2024-05-01 12:00:00.001 INFO  [main] com.example.App - starting",
    "2024-05-01 12:00:00.250 INFO  [main] com.example.Repo - connected",
]
AFTER_TRACE = [
    "2024-05-01 12:00:00.300 WARN  [main] com.example.App - retrying in 5s",
    "2024-05-01 12:00:05.301 INFO  [main] com.example.App - recovered",
]
MULTILINE = {
    "default": "none",
    "flush_timeout": "500ms",  # the last line waits this long for a next one
    "rules": [{"match": {"names": ["c-java*"]}, "parser": "java"}],
}


def test_a_java_stack_trace_is_one_record(
    dockerd: Dockerd, tmp_path: Path, run_container: RunContainer
) -> None:
    """The java parser, chosen by a rule on the name (`c-java*`) or by the label
    `shipper.multiline=java`: the trace is one record (its lines joined with "\\n", at the
    offset of its first line), the lines around it one record each. The same output in a
    container no rule or label gives a parser (`default: none`): one record a line."""
    lines = [*BEFORE_TRACE, *TRACE, *AFTER_TRACE]
    script = lines_script([("stdout", line) for line in lines])
    joined = [*BEFORE_TRACE, "\n".join(TRACE), *AFTER_TRACE]
    with running_shipper(tmp_path, dockerd, {"multiline": MULTILINE}) as shipper:
        ids = {
            "c-java-by-rule": run_container("c-java-by-rule", script),
            "java-by-label": run_container(
                "java-by-label", script, extra_args=("--label", "shipper.multiline=java")
            ),
            "no-parser": run_container("no-parser", script),
        }
        for container_id in ids.values():
            assert dockerd.wait_exited(container_id) == 0
        shipper.wait_settled(list(ids.values()))
    got = {name: shipper.messages(container_id) for name, container_id in ids.items()}
    assert got == {"c-java-by-rule": joined, "java-by-label": joined, "no-parser": lines}

    for name in ("c-java-by-rule", "java-by-label"):
        container_id = ids[name]
        first_line_at = next(
            offset
            for offset, entry in entries_with_offsets(dockerd.json_log(container_id))
            if entry["log"] == TRACE[0] + "\n"
        )
        trace = shipper.of(container_id)[len(BEFORE_TRACE)]
        assert trace["stream"] == "stdout"
        assert trace["container"]["name"] == name
        assert trace["log"]["offset"] == first_line_at, f"{name}: the trace's offset"
        assert "flags" not in trace["log"], f"{name}: {trace['log']}"
    assert shipper.errors() == []
