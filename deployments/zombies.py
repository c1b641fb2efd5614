"""Stuck runs: the flow runs' heartbeat, and the automation that marks a silent run Crashed.

    python -m deployments.setup        # creates (replaces) both, after `prefect deploy --all`

Prefect's recipe for zombie flow runs (docs.prefect.io, "How to detect and respond to zombie flows")
on the self-hosted server: every flow-run process sends ``prefect.flow-run.heartbeat`` every
`HEARTBEAT_S` seconds while its flow runs (a daemon thread: prefect/flow_engine.py ``_send_heartbeats``);
a Proactive trigger per flow run fires when, after a heartbeat, neither another heartbeat nor a final
state came within `zombie_window_s` (`MISSED_BEATS` beats); its actions mark the run Crashed and, when
the ``vllm-alerts`` notification block exists (``python -m deployments.setup --notify``,
deployments/notify.py), say so. Setup runs this after ``--notify``: the automation refers to the block
by id, so a later ``--notify`` (a new block) or ``--notify off`` is followed by a new automation here.

Where the frequency is set: the work pool's base job template (`with_heartbeats`), as the default of its
``env`` job variable, which the process worker puts in every flow run's environment. Not prefect.yaml's
``job_variables``: `prefect deploy --all` only writes deployments, so both survive it, but the fleet's
rendered deployments replace each deployment's ``work_pool`` (deployments/fleet.py ``for_target``) and
would lose them, and a deployment added later would need them copied. The pool reaches every run on it.

Which runs: the heartbeat event names the run's flow, deployment and tags, not its work pool
(prefect/flow_engine.py ``_build_heartbeat_event_template``), so the trigger matches the runs of the
deployments on this project's pool (`pool_deployment_ids`, read when setup runs): exactly the runs that
beat every `HEARTBEAT_S`. A run of another pool keeps Prefect's default (180 s) and is never judged by a
window made for 30 s. A deployment added to the pool later is covered once setup runs again (the
fleet's ``register`` runs it too).

The container: a run marked Crashed here has no process left to run its ``on_crashed`` hook, so the
automation's third action runs `CLEAN_UP_DEPLOYMENT` (flows/cleanup.py) with the run's ``target`` and id,
which removes what the run started and never served (tasks/cleanup.py). Its parameters are Prefect's
``jinja`` kind, rendered to strings: a bare ``{{ flow_run.id }}`` is upgraded to a JSON template
(``| tojson``), which fails on a UUID and on a missing ``target`` (prefect/server/events/actions.py
``RunDeployment._upgrade_v1_templates``). ``flow_run`` resolves for a Proactive trigger: the triggering
event is the run's last heartbeat, which names the run. That deployment's own runs are left out of the
watched list: a clean-up is never judged, so it never starts another.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.automations import EventTrigger, Posture, RunDeployment, SendNotification
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_UI_URL
from prefect.workers.process import ProcessWorker

from blocks.shared import WORK_POOL
from deployments.notify import ALERTS_BLOCK, alerts_block_id

#: The setting behind the flow runs' heartbeat (prefect/settings/models/flows.py ``heartbeat_frequency``).
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
#: Seconds between heartbeats: Prefect's minimum (the setting is ``ge=30`` and the engine's
#: ``MINIMUM_HEARTBEAT_INTERVAL`` is 30, prefect/flow_engine.py), so a stuck run is found well within one
#: 300 s health-check interval.
HEARTBEAT_S = 30
#: Heartbeats missed before a run is a zombie: one late beat on a busy machine is not a crash.
MISSED_BEATS = 3
#: The automation's name (replaced, never duplicated, by each setup).
ZOMBIE_AUTOMATION = "crash-zombie-flow-runs"
#: The deployment the automation runs to remove a stuck run's container (prefect.yaml, flows/cleanup.py).
CLEAN_UP_DEPLOYMENT = "clean-up-run/zombie"
#: clean-up-run's parameters, rendered from the crashed run (strings: Prefect's ``jinja`` kind).
CLEAN_UP_PARAMETERS = {
    "target": {"__prefect_kind": "jinja", "template": "{{ flow_run.parameters.target }}"},
    "flow_run_id": {"__prefect_kind": "jinja", "template": "{{ flow_run.id }}"},
}
#: A heartbeat, or one of these final states, keeps a run alive in the trigger's eyes (the recipe's list).
ALIVE_EVENTS = frozenset(
    {
        "prefect.flow-run.heartbeat",
        "prefect.flow-run.Completed",
        "prefect.flow-run.Failed",
        "prefect.flow-run.Cancelled",
        "prefect.flow-run.Crashed",
    }
)


def zombie_window_s(heartbeat_s: int = HEARTBEAT_S, missed: int = MISSED_BEATS) -> int:
    """Seconds of silence after which a run is a zombie: ``missed`` beats (a Proactive trigger's
    ``within`` must be 10 s at least: prefect/events/schemas/automations.py)."""
    return max(10, heartbeat_s * missed)


def with_heartbeats(template: dict[str, Any], heartbeat_s: int = HEARTBEAT_S) -> dict[str, Any]:
    """The pool's base job template with ``HEARTBEAT_ENV`` in its ``env`` default (pure). An empty
    template (a pool no worker has joined yet) starts from the process worker's own default."""
    updated = copy.deepcopy(template) if template else ProcessWorker.get_default_base_job_template()
    env = updated["variables"]["properties"].setdefault("env", {"type": "object"})
    env["default"] = {**(env.get("default") or {}), HEARTBEAT_ENV: str(heartbeat_s)}
    return updated


def ensure_heartbeats(pool: str = WORK_POOL, heartbeat_s: int = HEARTBEAT_S) -> bool:
    """Set the heartbeat in the pool's base job template; True when it changed (runs started from now on)."""
    with get_client(sync_client=True) as client:
        current = client.read_work_pool(pool).base_job_template
        wanted = with_heartbeats(current, heartbeat_s)
        if wanted == current:
            return False
        client.update_work_pool(pool, WorkPoolUpdate(base_job_template=wanted))
    return True


def pool_deployment_ids(pool: str = WORK_POOL, leave_out: UUID | None = None) -> list[UUID]:
    """The deployments whose runs the pool starts (and so beat every `HEARTBEAT_S`), but ``leave_out``."""
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])))
    return sorted(d.id for d in deployments if d.id != leave_out)


def clean_up_deployment_id() -> UUID | None:
    """`CLEAN_UP_DEPLOYMENT`'s id; None before `prefect deploy --all` made it."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(CLEAN_UP_DEPLOYMENT).id
        except ObjectNotFound:
            return None


def run_link(ui_url: str | None) -> str:
    """The message's link to the run: under ``ui_url`` (the setup's ``PREFECT_UI_URL``, as the flows'
    links), else Prefect's ``ui_url`` filter, which renders "None" on a server started without
    ``PREFECT_UI_URL`` or ``PREFECT_API_URL`` in its environment (prefect/server/events/jinja_filters.py)."""
    if ui_url:
        return ui_url.rstrip("/") + "/runs/flow-run/{{ flow_run.id }}"
    return "{{ flow_run|ui_url }}"


def zombie_automation(
    deployment_ids: Iterable[UUID],
    within_s: int,
    alerts_block_id: UUID | None = None,
    ui_url: str | None = None,
    clean_up_id: UUID | None = None,
) -> AutomationCore:
    """The automation (pure): after a heartbeat of a run of these deployments, nothing alive for
    ``within_s`` -> Crashed, with a message; a notification through the alerts block when given, its link
    under ``ui_url`` (`run_link`); and a run of the clean-up deployment ``clean_up_id`` when given."""
    message = (
        f"no heartbeat for {within_s} s: the flow-run process is frozen or gone (automation"
        f" {ZOMBIE_AUTOMATION}; what happens to its container: docs/operator.md)"
    )
    actions: list[Any] = [ChangeFlowRunState(state=StateType.CRASHED, message=message)]
    container_fate = (
        f"is removed by a run of {CLEAN_UP_DEPLOYMENT}" if clean_up_id else "is left to the target's next health check"
    )
    if alerts_block_id is not None:
        actions.append(
            SendNotification(
                block_document_id=alerts_block_id,
                subject="{{ flow.name }}/{{ deployment.name }} ({{ flow_run.name }}) is stuck: marked Crashed",
                body=(
                    "The flow run {{ flow_run.name }} of {{ flow.name }}/{{ deployment.name }} (target "
                    "{{ flow_run.parameters.target }}) sent no heartbeat for "
                    f"{within_s} s since {{{{ event.occurred }}}}: its process is frozen or gone, and it was "
                    f"marked Crashed. A container it was starting and that never served {container_fate} "
                    "(docs/operator.md, 'Stuck, cancelled and crashed runs').\n"
                    f"Flow run: {run_link(ui_url)}"
                ),
            )
        )
    if clean_up_id is not None:
        actions.append(RunDeployment(source="selected", deployment_id=clean_up_id, parameters=CLEAN_UP_PARAMETERS))
    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=f"Mark Crashed a run of the {WORK_POOL} pool's deployments silent for {within_s} s",
        enabled=True,
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={
                "prefect.resource.role": "deployment",
                "prefect.resource.id": [f"prefect.deployment.{i}" for i in deployment_ids],
            },
            after={"prefect.flow-run.heartbeat"},
            expect=set(ALIVE_EVENTS),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=within_s,
        ),
        actions=actions,
    )


def ensure_zombie_automation(pool: str = WORK_POOL, within_s: int | None = None) -> UUID | None:
    """Create (replace) `ZOMBIE_AUTOMATION` for the pool's deployments (`CLEAN_UP_DEPLOYMENT` left out,
    and run by it when it exists); None when the pool has none."""
    clean_up = clean_up_deployment_id()
    ids = pool_deployment_ids(pool, leave_out=clean_up)
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(ZOMBIE_AUTOMATION):
            client.delete_automation(old.id)
        if not ids:
            return None
        window = within_s or zombie_window_s()
        automation = zombie_automation(ids, window, alerts_block_id(), PREFECT_UI_URL.value(), clean_up)
        return client.create_automation(automation)


def ensure_zombie_detection(pool: str = WORK_POOL) -> None:
    """What setup runs: the heartbeat on the pool, then the automation (after the deployments exist)."""
    changed = ensure_heartbeats(pool)
    print(f"work pool {pool}: flow runs send a heartbeat every {HEARTBEAT_S} s" + (" (set now)" if changed else ""))
    automation = ensure_zombie_automation(pool)
    if automation is None:
        print(f"automation {ZOMBIE_AUTOMATION}: not created (no deployment on {pool} yet)")
    else:
        notify = (
            f"and notifies through {ALERTS_BLOCK}" if alerts_block_id() else f"(no {ALERTS_BLOCK} block: no message)"
        )
        print(f"automation {ZOMBIE_AUTOMATION}: a run silent for {zombie_window_s()} s is marked Crashed {notify}")
        if clean_up_deployment_id() is None:
            print(
                f"  {CLEAN_UP_DEPLOYMENT} is not deployed: its container is left to the health checks"
                " (run `prefect deploy --all`, then setup again)"
            )
        else:
            print(f"  and its container is removed by a run of {CLEAN_UP_DEPLOYMENT}")
