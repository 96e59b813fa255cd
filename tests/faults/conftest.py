"""Fault tests: each starts by clearing the rows it wrote to tests/artifacts/faults.json."""

from __future__ import annotations

import pytest

from tests.faults.harness import clear_rows


@pytest.fixture(autouse=True)
def _fresh_fault_rows(request: pytest.FixtureRequest) -> None:
    """A test's old row must not outlive a run of it that crashed before `record`."""
    clear_rows(request.node.nodeid)
