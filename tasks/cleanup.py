"""A deploy or a recovery that is cancelled or crashes removes the container it was starting.

deploy-qwen and recover-vllm have `remove_unserved_container` as their ``on_cancellation`` and
``on_crashed`` hook. It finds the run's container by the label that carries the flow run's id
(`blocks.shared.LABEL_FLOW_RUN`, set where the container is created) and removes it, unless it
already passed the run's readiness gate: the gate arms the runbook's restart policy once ``/health``
and ``/v1/models`` answer (tasks/container.py `arm_restart_policy`), so a container whose restart
policy is armed is the target's server, and it is kept. The decision is the pure `to_remove`.

Who runs the hook (Prefect 3.9.1, a process worker; docs/operator.md "Stuck, cancelled and crashed runs"):

- **Cancelled** from the UI or the API: the worker kills the flow-run process (SIGTERM, SIGKILL after
  30 s) and then runs the ``on_cancellation`` hooks itself, in a new process that loads the flow from
  its entrypoint (prefect/runner/_cancellation_manager.py ``CancellationManager.cancel``,
  prefect/runner/_workspace_runtime_bootstrap.py); then it sets Cancelled. The flow-run process,
  told it is a cancellation, does not run them (prefect/flow_engine.py
  ``_engine_owns_cancellation_handling``), but the SIGTERM ends its readiness gate, whose own cleanup
  (tasks/serve.py ``start_once``) usually removes the server first: the hook removes what is left.
- **The flow-run process killed** (SIGKILL, the OOM killer): the worker sees it exit with no final
  state, sets Crashed and runs the ``on_crashed`` hooks the same way
  (prefect/runner/_flow_run_executor.py ``FlowRunExecutor.submit``).
- **SIGTERM from anyone else**: the flow-run process sets Crashed and runs the hook itself.
- **Marked Crashed by the zombie automation** (deployments/zombies.py: the process is frozen, or gone
  with its worker or its machine): no process is left to run a hook; the automation runs clean-up-run
  (flows/cleanup.py), which removes the same containers through `remove_run_containers`.

The GPU lock (tasks/locks.py): in the first three cases the run's process is known gone (the worker saw
it exit, or stopped it; a process that ran the hook itself left its ``gpu_lock`` block before), so the
hook frees the run's own GPU slot at once (`release_gpu_of_run`: only if the slot's recorded holder is
this run) instead of leaving it to its lease. clean-up-run does not: a frozen process is not known gone
and may still hold the GPU, so its slot frees when the lease expires (300 s without renewal).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from docker.models.containers import Container
from prefect import get_run_logger, task
from prefect.logging.loggers import flow_run_logger

from blocks.render import label_filters
from blocks.shared import LABEL_FLOW_RUN
from blocks.target import TargetMachine
from tasks.container import docker_client, remove_managed
from tasks.locks import gpu_limit_name, release_gpu_of_run

#: docker's restart policy of a container created without one: the server has not passed the gate.
UNARMED_POLICIES = frozenset({"", "no"})


@dataclass(frozen=True)
class RunContainer:
    """A container a flow run created, as the hook decides on it.

    Attributes:
        name: docker's name.
        restart_policy: docker's ``HostConfig.RestartPolicy.Name``: "no" until the readiness gate armed it.
    """

    name: str
    restart_policy: str

    @property
    def passed_gate(self) -> bool:
        """The readiness gate armed its restart policy: it served, it is the target's server."""
        return self.restart_policy not in UNARMED_POLICIES


def to_remove(containers: Iterable[RunContainer]) -> list[RunContainer]:
    """The containers of a cancelled or crashed run that go: those that never passed its gate (pure)."""
    return [c for c in containers if not c.passed_gate]


def _run_container(container: Container) -> RunContainer:
    policy = (container.attrs.get("HostConfig", {}).get("RestartPolicy") or {}).get("Name") or ""
    return RunContainer(name=container.name or container.id or "?", restart_policy=policy)


def remove_containers_of_run(machine: TargetMachine, flow_run_id: str) -> tuple[list[str], list[str]]:
    """Remove (kill: it never served, its log is in the run's) the containers of ``flow_run_id`` on the
    target that never passed the gate. Returns the names removed and the names kept."""
    filters = label_filters(machine.name)
    filters["label"].append(f"{LABEL_FLOW_RUN}={flow_run_id}")
    removed, kept = [], []
    with docker_client(machine.docker_host()) as client:
        containers = client.containers.list(all=True, filters=filters, ignore_removed=True)
        going = {c.name for c in to_remove(_run_container(c) for c in containers)}
        for container in containers:
            if container.name in going:
                remove_managed(container, stop_timeout=None)
                removed.append(container.name)
            else:
                kept.append(container.name)
    return removed, kept


def report_removal(logger: Any, why: str, target: str, removed: list[str], kept: list[str]) -> None:
    """One log line per action on the run's containers (``why``: the run's state, or "zombie")."""
    if removed:
        logger.info("%s: removed %s, which this run started and which never served", why, ", ".join(removed))
    if kept:
        logger.info("%s: kept %s: it passed the readiness gate and serves %s", why, ", ".join(kept), target)
    if not removed and not kept:
        logger.info("%s: this run had started no container on %s", why, target)


@task(name="remove-containers-of-run")
def remove_run_containers(machine: TargetMachine, flow_run_id: str) -> list[str]:
    """clean-up-run's one side effect (flows/cleanup.py): remove what the run ``flow_run_id`` started on
    the target and never served, keep what passed the gate, one log line each; the names removed."""
    removed, kept = remove_containers_of_run(machine, flow_run_id)
    report_removal(get_run_logger(), f"flow run {flow_run_id}", machine.name, removed, kept)
    return removed


def remove_unserved_container(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_cancellation`` / ``on_crashed`` hook: remove the container the run was starting, and free the
    GPU slot the run held (see the module docstring for who runs it, and when nothing can). The run's
    ``target`` parameter names the target block; a hook never raises (Prefect would only log it), so a
    failure is one log line."""
    logger = flow_run_logger(flow_run, flow)
    target = (flow_run.parameters or {}).get("target")
    if not target:
        logger.warning("%s: no target parameter, no container to look for", state.name)
        return
    try:
        machine = TargetMachine.named(target)
        removed, kept = remove_containers_of_run(machine, str(flow_run.id))
    except Exception as exc:  # noqa: BLE001 - a hook reports, it cannot fail the run again
        logger.error(
            "%s: could not remove the container this run was starting on %s: %s; the next health check of"
            " %s judges what is left (docs/operator.md)",
            state.name,
            target,
            exc,
            target,
        )
    else:
        report_removal(logger, state.name, target, removed, kept)
    _free_gpu_of_run(logger, state.name, target, str(flow_run.id))


def _free_gpu_of_run(logger: Any, why: str, target: str, flow_run_id: str) -> None:
    """The hook's second action: the run's GPU slot, freed now that its process is gone (one line)."""
    try:
        freed = release_gpu_of_run(target, flow_run_id)
    except Exception as exc:  # noqa: BLE001 - a hook reports, it cannot fail the run again
        logger.warning("%s: could not free %s: %s; it frees when its lease expires", why, gpu_limit_name(target), exc)
        return
    if freed:
        logger.info("%s: freed %s, which this run held (its process is gone)", why, gpu_limit_name(target))
