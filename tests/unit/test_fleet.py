"""The fleet's pure parts: the targets file, the per-target deployments rendered from prefect.yaml,
the worker commands, and a fleet table row."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from blocks.engine import EngineSpec
from deployments.fleet import FLEET_QUEUE, FleetFile, load_fleet_file, render, spark_templates, worker_commands
from tasks.fleet import DeployOutcome, TargetRun, fleet_row, spec_summary
from tasks.state import HealthState, HealthyRecord

ROOT = Path(__file__).resolve().parents[2]
FLEET = FleetFile(
    fleet="sparks",
    targets={
        "spark-a": {"cache_dir": "/opt/hf"},
        "spark-b": {"cache_dir": "/srv/hf", "host_port": 8001, "hub_endpoint": "http://hub.lan:8080"},
    },
)


def test_every_spark_deployment_is_rendered_per_target_on_its_own_queue():
    rendered = render(FLEET)["deployments"]
    templates = spark_templates()
    assert {t["entrypoint"] for t in templates} >= {
        "flows/deploy.py:deploy_qwen",
        "flows/health.py:health_check",
        "flows/recover.py:recover_vllm",
        "flows/stop.py:stop_qwen",
        "flows/stage.py:stage_model",
        "flows/bench.py:bench_qwen",
    }
    for target in ("spark-a", "spark-b"):
        mine = [d for d in rendered if d["name"] == target]
        assert sorted(d["entrypoint"] for d in mine) == sorted(t["entrypoint"] for t in templates)
        assert all(d["work_pool"] == {"name": "spark-vllm", "work_queue_name": target} for d in mine)
        by_entry = {d["entrypoint"]: d for d in mine}
        assert by_entry["flows/deploy.py:deploy_qwen"]["parameters"] == {"target": target}
        assert by_entry["flows/bench.py:bench_qwen"]["parameters"]["deploy_deployment"] == f"deploy-qwen/{target}"
        [trigger] = by_entry["flows/recover.py:recover_vllm"]["triggers"]
        assert trigger["match"] == {"prefect.resource.id": f"vllm.service.{target}"}  # exactly: not spark-a*
        assert trigger["name"] == f"recover-{target}-on-unhealthy"
        assert by_entry["flows/health.py:health_check"]["schedules"][0]["interval"] == 300
    stage_b = next(d for d in rendered if d["name"] == "spark-b" and d["entrypoint"].startswith("flows/stage.py"))
    assert (
        stage_b["parameters"]["cache_dir"] == "/srv/hf" and stage_b["parameters"]["endpoint"] == "http://hub.lan:8080"
    )


def test_prefect_yaml_names_the_pool_events_and_payload_key_of_the_code():
    """prefect.yaml cannot import: its copies of the pool name, the event names and the payload key
    the triggers read are checked against their one definition in the code."""
    from blocks.shared import WORK_POOL
    from blocks.target import service_resource_id
    from tasks.events import TARGET_KEY, ServiceEvent

    document = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert {d["work_pool"]["name"] for d in document["deployments"]} == {WORK_POOL}
    template = "{{ event.payload." + TARGET_KEY + " }}"
    triggers = [(d, t) for d in document["deployments"] for t in d.get("triggers") or []]
    assert triggers
    for deployment, trigger in triggers:  # a deployment's trigger matches its own target's events
        resource = service_resource_id(deployment["parameters"]["target"])
        assert trigger["match"]["prefect.resource.id"] in (resource, resource + "*")
        assert set(trigger["expect"]) <= {e.event for e in ServiceEvent}
        assert trigger["parameters"]["target"] == template
    for deployment in render(FLEET)["deployments"]:
        for trigger in deployment.get("triggers") or []:
            assert trigger["parameters"]["target"] == template


def test_the_templates_are_not_changed_by_rendering():
    before = spark_templates()
    render(FLEET)
    assert spark_templates() == before
    deploy = next(t for t in before if t["entrypoint"] == "flows/deploy.py:deploy_qwen")
    assert deploy["parameters"] == {"target": "spark"} and deploy["work_pool"]["work_queue_name"] == "default"


def test_the_fleet_flows_run_from_the_fleet_queue_with_every_target():
    fleet_flows = [d for d in render(FLEET)["deployments"] if d["name"] == "sparks"]
    assert [d["entrypoint"] for d in fleet_flows] == [
        "flows/fleet.py:deploy_fleet",
        "flows/fleet.py:health_check_fleet",
        "flows/fleet.py:rolling_update",
    ]
    assert all(d["work_pool"]["work_queue_name"] == FLEET_QUEUE for d in fleet_flows)
    assert all(d["parameters"] == {"targets": ["spark-a", "spark-b"], "fleet": "sparks"} for d in fleet_flows)
    assert [bool(d.get("schedules")) for d in fleet_flows] == [False, True, False]


def test_worker_commands_poll_each_machines_queue_and_the_first_runs_the_fleet_flows():
    first, second = worker_commands(FLEET)
    assert first.startswith("on spark-a:") and "--work-queue spark-a --work-queue fleet" in first
    assert second.startswith("on spark-b:") and "--work-queue spark-b " in second and "fleet" not in second


def test_a_bad_targets_file_names_every_bad_target(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(
        yaml.safe_dump({"fleet": "sparks", "targets": {"a": {"host_port": 0}, "b": {"cache_dir": "rel"}, "c": {}}})
    )
    with pytest.raises(ValueError) as info:
        load_fleet_file(path)
    assert "target 'a'" in str(info.value) and "target 'b'" in str(info.value) and "target 'c'" not in str(info.value)
    path.write_text("targets: [a, b]")
    with pytest.raises(ValueError, match="needs `fleet: <name>`"):
        load_fleet_file(path)
    with pytest.raises(ValueError, match="fleet flows' work queue"):
        FleetFile(fleet="x", targets={"fleet": {}})


def test_a_fleet_row_says_the_verdict_what_serves_and_the_last_check():
    record = HealthyRecord.model_validate(
        {"spec": {"model": "Qwen/Qwen3-32B-FP8", "max_num_seqs": 32}, "spec_hash": "abc", "kv_cache_tokens": 250_000}
    )
    deployed = DeployOutcome(target="spark-a", verdict="deployed")
    run = TargetRun(target="spark-a", deployment="deploy-qwen/spark-a", state="COMPLETED", outcome=deployed)
    health = HealthState(verdict="healthy", checked_at=1000.0)
    row = fleet_row("spark-a", "http://a:8000", run, record, health, now=1090.0)
    assert row["verdict"] == "deployed" and row["model"] == "Qwen/Qwen3-32B-FP8" and row["kv_cache_tokens"] == 250_000
    assert row["last_health_check"] == "healthy (90 s ago)" and "seqs 32" in row["spec"]
    failed = TargetRun(target="spark-b", deployment="deploy-qwen/spark-b", state="FAILED", message="rolled back: ...")
    assert (
        fleet_row("spark-b", "", failed, HealthyRecord(), HealthState(), now=0)["verdict"] == "FAILED: rolled back: ..."
    )
    assert fleet_row("spark-b", "", None, HealthyRecord(), HealthState(), now=0)["last_health_check"] == "never"


def test_a_failed_runs_reason_is_its_own_outcome_not_prefects_message():
    outcome = DeployOutcome(target="b", verdict="failed", message="rolled back: a serves b")
    run = TargetRun(
        target="b",
        deployment="deploy-qwen/b",
        state="FAILED",
        message="Flow run encountered an exception: DeployFailed: rolled back: a serves b",
        outcome=outcome,
    )
    assert run.why == "rolled back: a serves b"
    assert (
        fleet_row("b", "", run, HealthyRecord(), HealthState(), now=0)["verdict"] == "FAILED: rolled back: a serves b"
    )
    crashed = TargetRun(target="b", deployment="deploy-qwen/b", state="CRASHED", message="killed")
    assert crashed.why == "killed"  # no outcome published: Prefect's words


def test_a_deploys_outcome_says_degraded_and_reads_back_from_its_json():
    outcome = DeployOutcome(target="a", verdict="unchanged", degraded="requested x, running y", kv_cache_tokens=5)
    assert outcome.summary == "unchanged (DEGRADED)"
    assert DeployOutcome.model_validate_json(outcome.model_dump_json()) == outcome


def test_the_spec_summary_is_the_same_for_the_same_spec_on_any_target():
    a = spec_summary(EngineSpec(max_num_seqs=32))
    assert a == spec_summary(EngineSpec(max_num_seqs=32)) != spec_summary(EngineSpec(max_num_seqs=16))
    assert spec_summary(None) == ""
    # each machine names its container: still the same spec
    assert spec_summary(EngineSpec(max_num_seqs=32, container_name="vllm-a")) == a


def test_a_record_whose_spec_no_longer_validates_has_no_spec_to_roll_back_to():
    assert HealthyRecord.model_validate({"spec": {"max_num_seqs": "many"}, "spec_hash": "abc"}).spec is None
