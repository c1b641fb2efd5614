"""Faults on demand, armed once the server is ready.

Why: the project's health gates, recovery flows and alerts must be exercised
against the failure modes seen on real deployments — an EngineCore that dies
(/health 500 in 0.10.x, 503 from 0.11.1, then the process exits), one that deadlocks while the
port stays open (the "health that lies" case with scope=engine), empty
completions.  Load-time faults (CUDA OOM, slow start) are applied by the
startup sequence itself; see knobs.py for the variables.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .engine import Engine
from .knobs import Knobs
from .logs import VllmLog
from .server import ServerState
from .tracebacks import engine_dead_lines

DEAD_EXIT_DELAY_S = 1.0


def arm(knobs: Knobs, state: ServerState, engine: Engine, log: VllmLog, exit_with: Callable[[int], None]) -> None:
    """Start the timers of the runtime faults the knobs ask for."""
    if knobs.fault_die_after_s is not None:
        _timer(knobs.fault_die_after_s, lambda: _die(state, engine, log, exit_with, knobs))
    if knobs.fault_hang_after_s is not None:
        _timer(knobs.fault_hang_after_s, lambda: _hang(knobs.fault_hang_scope, state, engine))


def _timer(delay: float, action: Callable[[], None]) -> None:
    t = threading.Timer(max(0.0, delay), action)
    t.daemon = True
    t.start()


def _die(state: ServerState, engine: Engine, log: VllmLog, exit_with: Callable[[int], None], knobs: Knobs) -> None:
    """EngineCore fatal error: traceback, EngineDeadError, the version's monitor line, /health 500
    (0.10.x) or 503 (0.11.1+), exit 1 about a second later (launcher.py terminate_if_errored)."""
    engine_dead_lines(log, knobs.behaviour.dead_monitor)
    state.dead = True
    engine.kill("EngineCore encountered an issue. See stack trace (above) for the root cause.")
    _timer(DEAD_EXIT_DELAY_S, lambda: exit_with(1))


def _hang(scope: str, state: ServerState, engine: Engine) -> None:
    """Deadlock.  scope=all: no HTTP answer at all; scope=engine: /health and /v1/models still 200."""
    engine.hang()
    if scope != "engine":
        state.hung = True
