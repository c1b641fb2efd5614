"""clean-up-run: remove the container a stuck run was starting, once the zombie automation marked it Crashed.

A run marked Crashed by ``crash-zombie-flow-runs`` (deployments/zombies.py) has no process left to run its
``on_crashed`` hook: frozen, or gone with its worker or its machine. The automation's third action runs
this flow's deployment ``clean-up-run/zombie`` with the crashed run's ``target`` and ``flow_run_id``; it
does what the hook would have done (tasks/cleanup.py): the containers labelled with that run which never
passed its readiness gate go, the one that passed stays (it is the target's server), one log line each.
It writes nothing else: no state, no event, no artifact; what serves is the next health check's to judge.

One deployment for every target: the target is a parameter, and every run the automation judges names
its own. A run without a ``target`` parameter (stage-model) started no container: nothing to look for.
Its own runs are not judged by the automation (deployments/zombies.py leaves its deployment out), so a
clean-up never starts another.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.target import TargetMachine
from tasks.cleanup import remove_run_containers


@flow(name="clean-up-run", flow_run_name="clean-up-{target}")
def clean_up_run(target: str, flow_run_id: str) -> list[str]:
    """Remove the containers the run ``flow_run_id`` started on ``target`` and that never served; the
    names removed. An empty ``target`` (the run had no such parameter) is one log line and nothing else."""
    logger = get_run_logger()
    if not target:
        logger.info("flow run %s had no target parameter: it started no container, nothing to remove", flow_run_id)
        return []
    return remove_run_containers(TargetMachine.named(target), flow_run_id)
