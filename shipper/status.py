"""`shipper status`: how far each log file is shipped, read from the checkpoint file."""

from __future__ import annotations

from pathlib import Path


def show_status(path: Path | None, *, as_json: bool) -> int:
    raise NotImplementedError
