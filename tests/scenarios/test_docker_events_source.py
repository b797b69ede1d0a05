"""The docker_json source with Docker's event stream: a stopped container's waiting records ship
at once (renames with events: tests/integration/test_container_metadata.py, on a real dockerd)."""

from __future__ import annotations

from pathlib import Path

from shipper.app import App
from shipper.docker_writer import DockerRootWriter
from tests.engine_api import EngineApi
from tests.helpers import make_config, wait_until
from tests.scenarios.test_delivery import delivered, shipped, start

TRACE = [
    "2024-05-01 12:00:00.000 ERROR [main] c.e.Orders - order failed",
    "java.lang.IllegalStateException: order rejected",
    "\tat com.example.orders.Step.run(Step.java:12)",
    "\tat com.example.orders.Main.main(Main.java:5)",
]


async def test_die_ships_the_waiting_partial_line_and_multiline_record_at_once(
    tmp_path: Path,
) -> None:
    """Flush timeouts of a minute: only the `die` event can make these records ship within the
    test's deadline."""
    writer = DockerRootWriter(tmp_path / "containers")
    log = writer.add_container("java-app")
    async with EngineApi(tmp_path / "docker.sock") as daemon:
        app = App(
            make_config(
                tmp_path,
                extra_source=(
                    f"    docker_host: unix://{tmp_path / 'docker.sock'}\n"
                    "    partial_flush_timeout: 60s\n"
                    "    multiline: {default: java, flush_timeout: 60s}"
                ),
            )
        )
        stop, task = await start(app)
        await wait_until(lambda: daemon.subscribers == 1, what="shipper following the events")
        for line in TRACE:
            log.write(line, stream="stderr")
        log.write("last words without a newline", stream="stdout", newline=False)
        # Read, but waiting: the trace for its next line, the stdout line for its newline.
        size = sum(path.stat().st_size for path in log.log_files())
        await wait_until(
            lambda: app.telemetry.value("shipper_bytes_read_total") >= size,
            what="every byte read",
        )
        assert delivered(app) == 0
        daemon.event("die", log.id, name="java-app")
        await wait_until(lambda: delivered(app) == 2, timeout=10, what="both records")
        stop.set()
        await task
    writer.close()
    _, documents = shipped(tmp_path / "out.ndjson")
    assert sorted(d["message"] for d in documents) == sorted(
        ["\n".join(TRACE), "last words without a newline"]
    )
    flushed = {
        kind: app.telemetry.value(
            "shipper_pending_flushed_total", source="docker", kind=kind, reason="stop"
        )
        for kind in ("partial", "multiline")
    }
    # The unfinished line left the partial joiner, then (like every line) went through the
    # multiline joiner, where it waited with the trace.
    assert flushed == {"partial": 1, "multiline": 2}
