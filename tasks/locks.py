"""One GPU-touching flow at a time per target machine, through a Prefect global concurrency limit;
and one writer at a time of a target's incident (``incident:<target>``, held for milliseconds).

The limit ``gpu:<target>`` (limit 1) is created by ``deployments/setup.py``; the flow also creates it
when missing, because a non-strict ``concurrency()`` on a missing limit silently does not limit,
and two deploys at once on one machine would start two servers that fight for its memory.

The limit's name is defined once, in ``blocks.target.gpu_limit_name`` (also behind
``TargetMachine.concurrency_limit``); it is re-exported here for callers of this module.

The GPU slot is taken through the client's lease calls (``increment_concurrency_slots_with_lease``,
``renew_concurrency_lease``, ``release_concurrency_slots_with_lease``: the REST API behind Prefect's
``concurrency()``), not through ``concurrency()`` itself, because that keeps the lease id to itself and
no API finds a lease by its holder. The lease is recorded with the flow run that holds it
(tasks/state.py `GpuLease`): when the run's process is known gone (the worker saw it killed, or stopped it
for a cancellation), its cleanup hook frees the slot at once (`release_gpu_of_run`, tasks/cleanup.py)
instead of leaving it to the lease (`GPU_LEASE_S` without renewal). A frozen process is not known gone:
its slot is left to the lease (docs/operator.md "Stuck, cancelled and crashed runs").

The incident slot is taken the same way (`_slot`), under the server's shortest lease. Every call that
takes, renews or frees a slot retries a busy SQLite server in milliseconds (tasks/api_retry.py), not
in the client's 2 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import httpx
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_logger
from prefect.runtime import flow_run

from blocks.target import gpu_limit_name
from tasks.api_retry import prefect_client
from tasks.state import GpuLease, forget_gpu_lease, gpu_lease, record_gpu_lease

__all__ = ["ensure_gpu_limit", "gpu_limit_name", "gpu_lock", "incident_lock", "release_gpu_of_run"]

#: The GPU slot's lease (s), ``concurrency()``'s default: the holder renews it every third of it, so a
#: holder that died unseen frees the slot at most this long after its last renewal (plus the server's
#: 15 s sweep).
GPU_LEASE_S = 300
#: The incident slot's lease (s), the server's minimum: held for milliseconds, never renewed.
INCIDENT_LEASE_S = 60
#: HTTP 423 Locked: the limit's slot is taken (the server says when to ask again in Retry-After).
_LOCKED = 423


def ensure_gpu_limit(target_name: str) -> str:
    """Create the target's limit (1 slot) unless it exists; return its name."""
    return _ensure_limit(gpu_limit_name(target_name))


def _ensure_limit(name: str) -> str:
    with prefect_client() as client:
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
    """Hold the target's single GPU slot for the duration of the block, its lease renewed meanwhile and
    recorded under the flow run (see the module docstring), released at the end."""
    name = ensure_gpu_limit(target_name)
    run_id = str(flow_run.id or "")
    with _slot(name, run_id, GPU_LEASE_S, timeout_s) as lease_id:
        record_gpu_lease(target_name, GpuLease(flow_run_id=run_id, lease_id=lease_id))
        stop = threading.Event()
        renewer = threading.Thread(target=_renew, args=(name, lease_id, stop), name=f"lease-{name}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join(timeout=5)
            forget_gpu_lease(target_name, run_id)  # first: once released, the next holder records its own


@contextmanager
def _slot(name: str, run_id: str, lease_s: float, timeout_s: float | None) -> Iterator[UUID]:
    """Hold the limit's slot under a lease of ``lease_s`` (its id yielded), released at the end."""
    lease_id = _take_slot(name, run_id, lease_s, timeout_s)
    try:
        yield lease_id
    finally:
        with prefect_client() as client:
            client.release_concurrency_slots_with_lease(lease_id)


def _take_slot(name: str, run_id: str, lease_s: float, timeout_s: float | None) -> UUID:
    """Wait for the limit's slot (asking again when the server's Retry-After says); its lease id."""
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(run_id)) if run_id else None
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with prefect_client() as client:
        while True:
            try:
                response = client.increment_concurrency_slots_with_lease(
                    names=[name], slots=1, mode="concurrency", lease_duration=lease_s, holder=holder
                )
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != _LOCKED:
                    raise
                wait = float(exc.response.headers.get("Retry-After", 1))
                if deadline is not None and time.monotonic() + wait > deadline:
                    raise TimeoutError(
                        f"{name} stayed taken for {timeout_s:.0f} s: another flow run holds it"
                        " (Prefect UI: Concurrency); wait for it, or cancel that run"
                    ) from exc
                time.sleep(wait)
                continue
            body = response.json()
            if not body.get("limits"):  # a missing limit limits nothing: never run unguarded
                raise RuntimeError(f"the concurrency limit {name} does not exist: run `python -m deployments.setup`")
            return UUID(body["lease_id"])


def _renew(name: str, lease_id: UUID, stop: threading.Event) -> None:
    """Renew the lease every third of `GPU_LEASE_S` until ``stop`` (a thread of the holder's process)."""
    while not stop.wait(GPU_LEASE_S / 3):
        try:
            with prefect_client() as client:
                client.renew_concurrency_lease(lease_id, lease_duration=GPU_LEASE_S)
        except Exception as exc:  # noqa: BLE001 - the next renewal tries again; the lease lasts GPU_LEASE_S
            get_logger("tasks.locks").warning("could not renew the lease of %s: %s", name, exc)


def release_gpu_of_run(target_name: str, flow_run_id: str) -> bool:
    """Free the target's GPU slot if the run ``flow_run_id`` holds it; True when it did. Only for a run
    whose process is known gone (its cleanup hook, tasks/cleanup.py): another run's slot is never freed."""
    lease = gpu_lease(target_name)
    if lease is None or not lease.held_by(flow_run_id):
        return False
    forget_gpu_lease(target_name, flow_run_id)
    with prefect_client() as client:
        client.release_concurrency_slots_with_lease(lease.lease_id)
    return True


@contextmanager
def incident_lock(target_name: str, timeout_s: float = 30) -> Iterator[None]:
    """Hold the target's incident slot: a health check and a recovery reporting at once must not
    both read the incident, change it and write it back (tasks/incidents/track.py)."""
    with _slot(_ensure_limit(f"incident:{target_name}"), str(flow_run.id or ""), INCIDENT_LEASE_S, timeout_s):
        yield
