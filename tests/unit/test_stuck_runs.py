"""Stuck, cancelled and crashed runs, and the host's OOM guard: the pure parts (tasks/cleanup.py,
deployments/zombies.py, tasks/preflight.py)."""

from __future__ import annotations

import uuid

import pytest
import yaml
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, RunDeployment, SendNotification
from prefect.server.schemas.responses import FlowRunResponse
from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate
from prefect.workers.process import ProcessWorker

from blocks.engine import EngineSpec
from blocks.render import container_kwargs, container_labels
from blocks.shared import LABEL_FLOW_RUN, WORK_POOL
from blocks.target import TargetMachine
from deployments.zombies import (
    ALIVE_EVENTS,
    CLEAN_UP_DEPLOYMENT,
    CLEAN_UP_PARAMETERS,
    HEARTBEAT_ENV,
    HEARTBEAT_S,
    ZOMBIE_AUTOMATION,
    with_heartbeats,
    zombie_automation,
    zombie_window_s,
)
from flows.cleanup import clean_up_run
from flows.deploy import deploy_qwen
from flows.recover import recover_vllm
from tasks.cleanup import RunContainer, remove_unserved_container, to_remove
from tasks.container import restart_policy_after_ready
from tasks.preflight import OOM_GUARDS, oom_guard_warning, running_oom_guard
from tasks.state import GpuLease

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


def test_the_automation_runs_the_clean_up_deployment_with_the_crashed_runs_target_and_id():
    clean_up = uuid.uuid4()
    crash, run = zombie_automation([uuid.uuid4()], 90, None, None, clean_up).actions
    assert isinstance(crash, ChangeFlowRunState) and isinstance(run, RunDeployment)
    assert run.source == "selected" and run.deployment_id == clean_up and run.parameters == CLEAN_UP_PARAMETERS
    assert len(zombie_automation([uuid.uuid4()], 90, uuid.uuid4(), None, clean_up).actions) == 3
    assert len(zombie_automation([uuid.uuid4()], 90).actions) == 1  # not deployed yet: no clean-up


@pytest.mark.parametrize(("parameters", "target"), [({"target": "sim"}, "sim"), ({"cache_dir": "/opt/hf"}, "")])
def test_the_clean_up_parameters_render_to_strings_as_the_server_renders_them(parameters, target):
    # the server renders RunDeployment's parameters with hydrate() and the flow run in the context
    # (prefect/server/events/actions.py RunDeployment.render_parameters); a run without a target gives ""
    run = FlowRunResponse(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="stuck", parameters=parameters)
    context = HydrationContext(render_jinja=True, raise_on_error=True, jinja_context={"flow_run": run})
    assert hydrate(CLEAN_UP_PARAMETERS, context) == {"target": target, "flow_run_id": str(run.id)}


def test_the_clean_up_deployment_is_in_prefect_yaml_once_for_every_target():
    from deployments.fleet import PREFECT_YAML, spark_templates

    flow_name, name = CLEAN_UP_DEPLOYMENT.split("/")
    document = yaml.safe_load(PREFECT_YAML.read_text())
    [deployment] = [d for d in document["deployments"] if d["entrypoint"] == "flows/cleanup.py:clean_up_run"]
    assert deployment["name"] == name and clean_up_run.name == flow_name
    assert "parameters" not in deployment and "schedules" not in deployment  # run by the automation only
    assert deployment["work_pool"]["name"] == WORK_POOL
    assert deployment not in spark_templates()  # a fleet adds no copy of it


def test_the_hook_frees_only_its_own_runs_gpu_slot():
    run = str(uuid.uuid4())
    lease = GpuLease(flow_run_id=run, lease_id=uuid.uuid4())
    assert lease.held_by(run)
    assert not lease.held_by(str(uuid.uuid4()))  # another run's slot is never freed
    assert not GpuLease(flow_run_id="", lease_id=uuid.uuid4()).held_by("")  # a lock taken outside a run


def test_fleet_register_covers_its_deployments_with_the_zombie_automation(monkeypatch, tmp_path):
    import subprocess

    import deployments.fleet as fleet
    import deployments.setup
    import deployments.zombies
    import tasks.locks

    calls: list[str] = []
    monkeypatch.setattr(deployments.setup, "ensure_work_pool", lambda: calls.append("pool"))
    monkeypatch.setattr(TargetMachine, "save", lambda self, name, overwrite: calls.append(f"block {name}"))
    monkeypatch.setattr(tasks.locks, "ensure_gpu_limit", lambda name: calls.append(f"limit {name}"))
    monkeypatch.setattr(fleet, "write_rendered", lambda f: tmp_path / "fleet.prefect.yaml")
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **kw: calls.append("deploy") or subprocess.CompletedProcess(a, 0, "", "")
    )
    monkeypatch.setattr(deployments.zombies, "ensure_zombie_detection", lambda: calls.append("zombies"))
    fleet.register(fleet.FleetFile(fleet="sparks", targets={"spark-a": {}}))
    assert calls == ["pool", "block spark-a", "limit spark-a", "deploy", "zombies"]


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
