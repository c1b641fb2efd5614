"""The fleet router's pure parts: who is in it, its metrics, its command line, its targets-file section."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from blocks.router import FleetRouter
from deployments.fleet import load_fleet_file, render
from tasks.events import ServiceEvent
from tasks.health.verdict import Verdict
from tasks.router.api import parse_router_metrics
from tasks.router.membership import MemberEvidence, deploy_evidence, plan, wanted
from tasks.router.report import router_column
from tasks.router.sync import Membership

A, B = "http://127.0.0.1:18001", "http://127.0.0.1:18002"


@pytest.mark.parametrize(
    ("evidence", "keep", "why"),
    [
        (MemberEvidence("a", A, deploy="passed", deploy_at=10), True, "deploy passed the gate"),
        (MemberEvidence("a", A, Verdict.UNHEALTHY, 5, "rolled-back", 10), True, "rolled back to its last healthy spec"),
        (MemberEvidence("a", A, Verdict.HEALTHY, 5, "failed", 10), False, "deploy failed"),
        (
            MemberEvidence("a", A, Verdict.HEALTHY, 20, "failed", 10),
            True,
            "health check: healthy",
        ),  # the check is newer
        (MemberEvidence("a", A, Verdict.UNHEALTHY, 20, "passed", 10), False, "health check: unhealthy"),
        (MemberEvidence("a", A, Verdict.HEALTHY, 5), True, "health check: healthy"),
        (MemberEvidence("a", A, Verdict.DEGRADED, 5), True, "health check: degraded"),
        (MemberEvidence("a", A, Verdict.STARTING, 5), False, "health check: starting"),
        (MemberEvidence("a", A, Verdict.STOPPED, 5), False, "health check: stopped"),
        (MemberEvidence("a", A), False, "no deploy or health verdict yet"),
        (MemberEvidence("a", A, Verdict.HEALTHY, 5, "passed", 10, draining=True), False, "draining"),
    ],
)
def test_a_target_is_in_the_router_only_while_its_newest_evidence_says_it_passed_its_gate(evidence, keep, why):
    assert wanted(evidence)[0] is keep
    assert why in wanted(evidence)[1]


def test_a_failed_deploy_that_names_what_serves_was_rolled_back():
    assert deploy_evidence(True, "abc") == "passed"
    assert deploy_evidence(False, "abc") == "rolled-back"
    assert deploy_evidence(False, None) == "failed"


def test_the_plan_adds_the_missing_removes_the_unwanted_and_leaves_strangers_alone():
    change = plan(
        [MemberEvidence("a", A, Verdict.HEALTHY, 1), MemberEvidence("b", B + "/", Verdict.UNHEALTHY, 1)],
        [B, "http://10.0.0.9:8000/"],
    )
    assert [e.target for e in change.add] == ["a"] and [e.target for e in change.remove] == ["b"]
    assert change.members == ("a",) and change.strangers == ("http://10.0.0.9:8000",)
    assert change.reasons == {"a": "health check: healthy", "b": "health check: unhealthy"}


def test_a_router_that_already_lists_what_is_wanted_is_not_touched():
    change = plan([MemberEvidence("a", A, Verdict.HEALTHY, 1), MemberEvidence("b", B, Verdict.STOPPED, 1)], [A])
    assert change.add == () and change.remove == () and change.members == ("a",)


def test_a_restarted_router_gets_every_serving_target_back():
    change = plan(
        [MemberEvidence("a", A, Verdict.HEALTHY, 1), MemberEvidence("b", B, deploy="passed", deploy_at=1)], []
    )
    assert [e.url for e in change.add] == [A, B]


ROUTER_METRICS = """\
# HELP vllm_router_requests_total Total requests
# TYPE vllm_router_requests_total counter
vllm_router_requests_total{route="/v1/chat/completions",method="POST"} 7
vllm_router_requests_total{route="/v1/models",method="GET"} 1
# TYPE vllm_router_processed_requests_total counter
vllm_router_processed_requests_total{worker="http://127.0.0.1:18001"} 4
vllm_router_processed_requests_total{worker="http://127.0.0.1:18002"} 3
# TYPE vllm_router_active_workers gauge
vllm_router_active_workers 2
"""


def test_the_routers_metrics_give_its_requests_and_each_workers():
    assert parse_router_metrics(ROUTER_METRICS) == (8, {A: 4, B: 3})
    assert parse_router_metrics("") == (None, {})


def test_the_router_command_line_never_holds_the_key():
    router = FleetRouter(fleet="f", targets=["a"], port=31000, metrics_port=31001, api_key_secret="fleet-key")
    args = router.router_args()
    assert args[args.index("--port") + 1] == "31000" and args[args.index("--policy") + 1] == "cache_aware"
    assert args[args.index("--health-check-interval-secs") + 1] == "5"
    assert "--api-key" not in args and "fleet-key" not in args
    assert router.url == "http://127.0.0.1:31000" and router.metrics_url.endswith(":31001/metrics")


def test_the_router_column_says_in_out_and_why():
    reasons = {"a": "health check: healthy", "b": "no deploy or health verdict yet"}
    membership = Membership(router="u", members=["a"], reasons=reasons)
    assert router_column(membership, "a") == "in"
    assert router_column(membership, "b") == "out: no deploy or health verdict yet"
    assert router_column(None, "a") == ""
    assert router_column(Membership(router="u", error="connection refused"), "a").startswith("unknown: connection")


def _fleet_file(tmp_path: Path, router: dict | None, keys: tuple[str | None, str | None]) -> Path:
    document = {
        "fleet": "sparks",
        "targets": {"spark-a": {"api_key_secret": keys[0]}, "spark-b": {"api_key_secret": keys[1]}},
    }
    if router is not None:
        document["router"] = router
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_targets_file_with_a_router_gets_a_block_of_its_targets_and_a_trigger(tmp_path):
    fleet = load_fleet_file(_fleet_file(tmp_path, {"port": 30001, "api_key_secret": "k"}, ("k", "k")))
    router = fleet.fleet_router()
    assert router is not None and router.targets == ["spark-a", "spark-b"] and router.fleet == "sparks"
    [check] = [d for d in render(fleet)["deployments"] if d["entrypoint"].endswith(":health_check_fleet")]
    [trigger] = check["triggers"]
    assert trigger["expect"] == [ServiceEvent.UNHEALTHY.event]
    assert trigger["match"] == {"prefect.resource.id": ["vllm.service.spark-a", "vllm.service.spark-b"]}


def test_a_router_whose_key_differs_from_a_targets_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="give the router and every target the same Secret block"):
        load_fleet_file(_fleet_file(tmp_path, {"api_key_secret": "k"}, ("k", None)))
    with pytest.raises(ValueError, match="policy"):
        load_fleet_file(_fleet_file(tmp_path, {"policy": "fastest"}, (None, None)))


def test_a_fleet_without_a_router_has_no_router_trigger(tmp_path):
    fleet = load_fleet_file(_fleet_file(tmp_path, None, (None, None)))
    assert fleet.fleet_router() is None
    assert not any(d.get("triggers") for d in render(fleet)["deployments"] if "fleet" in d["entrypoint"])
