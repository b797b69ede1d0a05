"""`shipper run --once`: ships the backlog up to the files' current ends, then exits."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shipper.app import App


async def run_backfill(app: App, stop: asyncio.Event) -> int:
    raise NotImplementedError
