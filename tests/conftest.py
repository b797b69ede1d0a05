"""Suite-wide pytest settings: the `slow` marker, skipped only inside the README test's own run."""

from __future__ import annotations

import os

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
