"""`shipper replay-dead-letters`: sends dead-lettered records again once their cause is fixed."""

from __future__ import annotations

from pathlib import Path


def replay_dead_letters(
    path: Path | None, *, file: Path | None, output: str | None, dry_run: bool
) -> int:
    raise NotImplementedError
