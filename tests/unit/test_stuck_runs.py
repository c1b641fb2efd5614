"""Stuck, cancelled and crashed runs, and the host's OOM guard: the pure parts (tasks/cleanup.py,
deployments/zombies.py, tasks/preflight.py)."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, SendNotification
from prefect.workers.process import ProcessWorker

from blocks.engine import EngineSpec
from blocks.render import container_kwargs, container_labels
from blocks.shared import LABEL_FLOW_RUN
from blocks.target import TargetMachine
from deployments.zombies import (
    ALIVE_EVENTS,
    HEARTBEAT_ENV,
    HEARTBEAT_S,
    ZOMBIE_AUTOMATION,
    with_heartbeats,
    zombie_automation,
    zombie_window_s,
)
from flows.deploy import deploy_qwen
from flows.recover import recover_vllm
from tasks.cleanup import RunContainer, remove_unserved_container, to_remove
from tasks.container import restart_policy_after_ready
from tasks.preflight import OOM_GUARDS, oom_guard_warning, running_oom_guard

# ------------------------------------------------------------------------------ the hook's decision


def test_the_run_label_names_the_flow_run_and_is_absent_without_one():
    spec, target = EngineSpec(), TargetMachine(name="spark")
    assert LABEL_FLOW_RUN not in container_labels(spec, target)
    run = str(uuid.uuid4())
    assert container_labels(spec, target, run)[LABEL_FLOW_RUN] == run
    assert container_kwargs(spec, target, flow_run_id=run)["labels"][LABEL_FLOW_RUN] == run


def test_a_container_that_never_passed_the_gate_goes_and_the_served_one_stays():
    # created with restart policy "no" (tasks/container.py), armed with the spec's once ready
    created, armed = restart_policy_after_ready({"restart_policy": {"Name": "unless-stopped"}})
    loading = RunContainer("vllm-a", created["restart_policy"]["Name"])
    serving = RunContainer("vllm-b", armed["Name"])
    assert not loading.passed_gate and serving.passed_gate
    assert to_remove([loading, serving]) == [loading]
    assert to_remove([RunContainer("vllm-c", "")]) == [RunContainer("vllm-c", "")]  # docker's unset policy
    assert to_remove([]) == []


def test_deploy_and_recover_carry_the_hook_for_cancellation_and_crash():
    for flow in (deploy_qwen, recover_vllm):
        assert flow.on_cancellation_hooks == [remove_unserved_container]
        assert flow.on_crashed_hooks == [remove_unserved_container]


# ------------------------------------------------------------------------------ heartbeats and the automation


def test_the_zombie_window_is_three_missed_beats_and_fits_a_check_interval():
    assert HEARTBEAT_S == 30  # Prefect's minimum (the setting is ge=30)
    assert zombie_window_s() == 90 < 300  # the health check's schedule in prefect.yaml
    assert zombie_window_s(2, 3) == 10  # a Proactive trigger's `within` is 10 s at least


def test_the_pool_template_gets_the_heartbeat_and_keeps_its_env():
    default = ProcessWorker.get_default_base_job_template()
    template = with_heartbeats(default)
    assert template["variables"]["properties"]["env"]["default"] == {HEARTBEAT_ENV: "30"}
    assert "default" not in default["variables"]["properties"]["env"]  # the input is not changed
    assert with_heartbeats({}) == template  # an empty template (no worker joined yet) starts from the default
    mine = {**default}
    mine["variables"] = {**default["variables"], "properties": {**default["variables"]["properties"]}}
    mine["variables"]["properties"]["env"] = {"type": "object", "default": {"HF_HOME": "/opt/hf"}}
    assert with_heartbeats(mine, 45)["variables"]["properties"]["env"]["default"] == {
        "HF_HOME": "/opt/hf",
        HEARTBEAT_ENV: "45",
    }
    assert with_heartbeats(template) == template  # idempotent: setup changes nothing the second time


def test_the_automation_is_the_recipe_per_run_of_our_deployments():
    deployments = [uuid.uuid4(), uuid.uuid4()]
    automation = zombie_automation(deployments, 90)
    trigger = automation.trigger
    assert automation.name == ZOMBIE_AUTOMATION
    assert trigger.posture == "Proactive" and trigger.threshold == 1 and trigger.within.total_seconds() == 90
    assert trigger.after == {"prefect.flow-run.heartbeat"} and trigger.expect == ALIVE_EVENTS
    assert trigger.for_each == {"prefect.resource.id"}
    assert trigger.match.root == {"prefect.resource.id": "prefect.flow-run.*"}
    assert trigger.match_related.root == {
        "prefect.resource.role": "deployment",
        "prefect.resource.id": [f"prefect.deployment.{d}" for d in deployments],
    }
    [crash] = automation.actions
    assert isinstance(crash, ChangeFlowRunState) and crash.state is StateType.CRASHED and not crash.force
    assert "no heartbeat for 90 s" in (crash.message or "")


def test_the_automation_notifies_only_through_an_existing_block():
    block = uuid.uuid4()
    crash, notify = zombie_automation([uuid.uuid4()], 90, block).actions
    assert isinstance(crash, ChangeFlowRunState) and isinstance(notify, SendNotification)
    assert notify.block_document_id == block
    assert "{{ flow_run.name }}" in notify.subject and "{{ deployment.name }}" in notify.subject
    assert "{{ flow_run.parameters.target }}" in notify.body and "{{ flow_run|ui_url }}" in notify.body
    _, linked = zombie_automation([uuid.uuid4()], 90, block, "http://spark:4200/").actions
    assert isinstance(linked, SendNotification)
    assert linked.body.endswith("Flow run: http://spark:4200/runs/flow-run/{{ flow_run.id }}")


def test_a_proactive_window_below_ten_seconds_is_refused():
    with pytest.raises(ValueError, match="10 seconds"):
        zombie_automation([uuid.uuid4()], 5)


# ------------------------------------------------------------------------------ the host's OOM guard


@pytest.mark.parametrize("guard", OOM_GUARDS)
def test_an_oom_guard_among_the_host_processes_is_found(guard):
    names = ["systemd", "dockerd", "containerd-shim", f"{guard}\n", "python3"]
    assert running_oom_guard(names) == guard
    assert oom_guard_warning("spark", names) is None


def test_no_oom_guard_is_a_warning_with_the_fix():
    names = ["systemd", "dockerd", "earlyoom-helper", "oomd-like"]  # names must match whole
    assert running_oom_guard(names) is None
    warning = oom_guard_warning("spark", names)
    assert warning is not None and "docker host of spark" in warning and "vllm issue 46307" in warning
    assert "sudo apt-get install earlyoom && sudo systemctl enable --now earlyoom" in warning
    assert "sudo systemctl enable --now systemd-oomd" in warning
