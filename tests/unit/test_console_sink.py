"""The console output writes the same NDJSON documents as the file output."""

from __future__ import annotations

import io

import orjson

from shipper.model import Batch, LogFile, Outcome, RecordGroup
from shipper.sinks.console import ConsoleSink


async def test_console_writes_one_document_a_line_and_delivers() -> None:
    group = RecordGroup(
        file=LogFile(source="docker", container_id="c1", path="/x/c1-json.log", handle="h"),
        start=0,
        end=20,
        timestamps=["2024-05-01T12:00:00.000000001Z"] * 2,
        messages=["hello", "world"],
        streams=["stdout", "stderr"],
        offsets=[0, 10],
    )
    out = io.BytesIO()
    sink = ConsoleSink("stdout", out=out)
    result = await sink.send(Batch.of([group]))
    assert result.outcomes == [Outcome.DELIVERED, Outcome.DELIVERED]
    documents = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(d["message"], d["stream"], d["log"]["offset"]) for d in documents] == [
        ("hello", "stdout", 0),
        ("world", "stderr", 10),
    ]
