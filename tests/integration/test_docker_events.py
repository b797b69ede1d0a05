"""DockerEvents follows a real dockerd's container events: create, start, rename, die, destroy."""

from __future__ import annotations

import asyncio
import contextlib

from shipper.sources.docker_events import ContainerEvent, DockerEvents
from tests.helpers import wait_until
from tests.integration import scripts
from tests.integration.dockerd import Dockerd


async def test_a_container_lifetime_arrives_as_events(dockerd: Dockerd) -> None:
    received: list[ContainerEvent] = []
    events = DockerEvents(f"unix://{dockerd.socket}", received.append)
    task = asyncio.create_task(events.run())
    try:
        await asyncio.wait_for(events.connected.wait(), 30)
        # The docker client blocks; in a thread, so the events keep being read meanwhile.
        container_id = await asyncio.to_thread(
            dockerd.run_container, "events-before", scripts.wait_for_signal("go")
        )
        await asyncio.to_thread(dockerd.docker, "rename", "events-before", "events-after")
        await asyncio.to_thread(dockerd.exec, container_id, "touch", scripts.signal_path("go"))
        await asyncio.to_thread(dockerd.wait_exited, container_id)
        await asyncio.to_thread(dockerd.docker, "rm", container_id)

        def mine() -> list[ContainerEvent]:
            return [event for event in received if event.container_id == container_id]

        await wait_until(
            lambda: any(event.action == "destroy" for event in mine()),
            timeout=30,
            what="the destroy event",
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert [(event.action, event.name) for event in mine()] == [
        ("create", "events-before"),
        ("start", "events-before"),
        ("rename", "events-after"),
        ("die", "events-after"),
        ("destroy", "events-after"),
    ]
    times = [event.time_nano for event in mine()]
    assert times == sorted(times)
