"""The `console` output: every record as one NDJSON line on stdout or stderr."""

from __future__ import annotations

import sys
from typing import BinaryIO, Literal

from shipper.model import Batch, BatchResult, Outcome
from shipper.sinks.ecs import encode_batch


class ConsoleSink:
    """NDJSON on a terminal or pipe; for trying shipper out and for debugging a config."""

    def __init__(self, stream: Literal["stdout", "stderr"], out: BinaryIO | None = None) -> None:
        self._out = out or (sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer)

    async def open(self) -> None:
        return None

    async def send(self, batch: Batch) -> BatchResult:
        self._out.write(encode_batch(batch))
        self._out.flush()
        return BatchResult.uniform(Outcome.DELIVERED, len(batch))

    async def close(self) -> None:
        self._out.flush()
