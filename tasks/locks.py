"""One GPU-touching flow at a time per target machine, through a Prefect global concurrency limit;
and one writer at a time of a target's incident (``incident:<target>``, held for milliseconds).

The limit ``gpu:<target>`` (limit 1) is created by ``deployments/setup.py``; the flow also creates it
when missing, because a non-strict ``concurrency()`` on a missing limit silently does not limit,
and two deploys at once on one machine would start two servers that fight for its memory.

The limit's name is defined once, in ``blocks.target.gpu_limit_name`` (also behind
``TargetMachine.concurrency_limit``); it is re-exported here for callers of this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from blocks.target import gpu_limit_name

__all__ = ["ensure_gpu_limit", "gpu_limit_name", "gpu_lock", "incident_lock"]


def ensure_gpu_limit(target_name: str) -> str:
    """Create the target's limit (1 slot) unless it exists; return its name."""
    return _ensure_limit(gpu_limit_name(target_name))


def _ensure_limit(name: str) -> str:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # a concurrent run created it first
                pass
    return name


@contextmanager
def gpu_lock(target_name: str, timeout_s: float | None = 3600) -> Iterator[None]:
    """Hold the target's single GPU slot for the duration of the block."""
    with concurrency(ensure_gpu_limit(target_name), occupy=1, timeout_seconds=timeout_s, strict=True):
        yield


@contextmanager
def incident_lock(target_name: str, timeout_s: float = 30) -> Iterator[None]:
    """Hold the target's incident slot: a health check and a recovery reporting at once must not
    both read the incident, change it and write it back (tasks/incidents/track.py)."""
    with concurrency(_ensure_limit(f"incident:{target_name}"), occupy=1, timeout_seconds=timeout_s, strict=True):
        yield
