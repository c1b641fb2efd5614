"""Session-wide test rig: a real Prefect server (SQLite) shared by every test that runs a flow.

Tests that run flows request the ``prefect_server`` fixture; pure unit tests do not and stay
fast. One harness per session: Prefect's harness must not be nested.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """Start a throwaway Prefect server for the session and point clients at it."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()
