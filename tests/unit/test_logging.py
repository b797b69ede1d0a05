"""Tests for shipper.telemetry.logging: stderr stays one JSON object a line."""

import io
import logging
import warnings

import orjson

from shipper.telemetry.logging import setup_logging


def test_a_library_warning_is_logged_as_json() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    try:
        # pytest turns warnings into errors; shown as a library's would be at run time.
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn_explicit(
                "WatchDescriptor for /x already exists", RuntimeWarning, "inotify.py", 365
            )
        lines = stream.getvalue().splitlines()
        assert len(lines) == 1
        record = orjson.loads(lines[0])
        assert record["level"] == "warning"
        assert "WatchDescriptor for /x already exists" in record["message"]
    finally:
        logging.captureWarnings(False)
