"""Suite-wide pytest settings: the `slow` marker (skipped only inside the README test's own run),
and a fixture that puts shipper's process-wide logging back after a test set it up."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

# tests/scenarios/test_readme.py runs `./dev test` in a fresh clone. That run proves the setup,
# the checks and the runner work from scratch; the slow tests already ran in the outer suite,
# so running them twice would only double the time CI takes.
NESTED = "SHIPPER_README_TEST_NESTED"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get(NESTED):
        return
    skip = pytest.mark.skip(reason="slow: already run by the suite that runs the README test")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging changes process-wide loggers: put them back for the tests that follow."""
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate)
        for name in ("shipper", "py.warnings")
        for logger in [logging.getLogger(name)]
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers[:]:
            logger.removeHandler(handler)
            if handler not in handlers:
                handler.close()
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    logging.captureWarnings(False)
