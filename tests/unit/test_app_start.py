"""App start-up: every configured type can be built, and an output that refuses to open
leaves no other output's client open."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import get_args

import pytest

from shipper.app import SINKS, SOURCES, App, SinkFactory
from shipper.config import OutputConfig, SourceConfig, parse_config
from shipper.errors import FatalSinkError
from shipper.model import Batch, BatchResult, Outcome
from shipper.sinks import Sink
from shipper.telemetry.counters import Telemetry


class RecordingSink:
    """Remembers whether it was opened and closed; refuses to open when told to."""

    def __init__(self, *, refuse: bool) -> None:
        self.refuse = refuse
        self.opened = self.closed = False

    async def open(self) -> None:
        if self.refuse:
            raise FatalSinkError("refused to open")
        self.opened = True

    async def send(self, batch: Batch) -> BatchResult:
        return BatchResult.uniform(Outcome.DELIVERED, len(batch))

    async def close(self) -> None:
        self.closed = True


async def test_a_refused_open_closes_the_outputs_already_open(tmp_path: Path) -> None:
    config = parse_config(
        f"""
state_dir: {tmp_path / "state"}
sources:
  docker:
    type: docker_json
    root: {tmp_path / "containers"}
outputs:
  first:
    type: file
    path: {tmp_path / "first.ndjson"}
  second:
    type: console
""",
        origin="<test>",
    )
    sinks: dict[str, RecordingSink] = {}

    def build(refuse: bool) -> SinkFactory:
        def factory(name: str, output: OutputConfig, telemetry: Telemetry) -> Sink:
            sinks[name] = RecordingSink(refuse=refuse)
            return sinks[name]

        return factory

    app = App(config, sinks={"file": build(False), "console": build(True)})
    with pytest.raises(FatalSinkError):
        await asyncio.wait_for(app.run(asyncio.Event()), 10)
    assert sinks["first"].opened
    assert sinks["first"].closed
    assert not sinks["second"].opened


def test_every_source_and_output_type_of_the_config_can_be_built() -> None:
    # Annotated[A | B | C, Field(discriminator="type")]: the union is the first argument.
    source_configs = get_args(get_args(SourceConfig)[0])
    assert set(source_configs) == set(SOURCES)
    output_configs = get_args(get_args(OutputConfig)[0])
    output_types = {get_args(cls.model_fields["type"].annotation)[0] for cls in output_configs}
    assert output_types == set(SINKS)
