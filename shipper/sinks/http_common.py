"""What the HTTP outputs (Elasticsearch, Splunk HEC) share: Retry-After, JSON answers, and
cutting a batch into requests within a size limit."""

from __future__ import annotations

import email.utils
from bisect import bisect_right
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def json_object(body: Any) -> dict[str, Any]:
    """An answer's body as a JSON object (raw bytes are parsed); {} if it is not one."""
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            return {}
    return body if isinstance(body, dict) else {}


def size_ranges(ends: list[int], limit: int) -> Iterator[tuple[int, int]]:
    """Consecutive ranges [start, end) of records whose bytes stay within `limit`; `ends[k]` is
    where record k ends in the batch. A record larger than the limit on its own still goes,
    alone: the limit is ours, the destination's may be higher, and its 413 dead-letters it."""
    start = 0
    while start < len(ends):
        base = ends[start - 1] if start else 0
        end = max(bisect_right(ends, base + limit, lo=start), start + 1)
        yield start, end
        start = end
