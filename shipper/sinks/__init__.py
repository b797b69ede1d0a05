"""Outputs: the Sink protocol every destination implements and the registry that builds them."""

from __future__ import annotations

from typing import Protocol

from shipper.model import Batch, BatchResult


class Sink(Protocol):
    """A destination. It classifies what happened to each record and never retries or sleeps.

    `send` returns one outcome per record (RETRY for those worth sending again) or raises
    RetryableSinkError when the whole request failed in a way worth retrying; the Sender owns
    the retry policy (DESIGN.md §3). `open` may raise FatalSinkError to refuse to start.
    """

    async def open(self) -> None: ...

    async def send(self, batch: Batch) -> BatchResult: ...

    async def close(self) -> None: ...
