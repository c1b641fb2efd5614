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
    """Start a throwaway Prefect server for the session and point clients at it.

    Flows the tests call in-process send no heartbeats: Prefect 3.9's heartbeat thread (on by default,
    every 180 s) sleeps in 1 s steps and a flow run joins it at its end, so each run took up to 1 s
    longer (0.95 s for a flow of one task, measured with cProfile). Runs that a worker starts still
    beat: the work pool's base job template sets their frequency (deployments/zombies.py;
    tests/integration/test_stuck_runs.py).
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield PREFECT_API_URL.value()
