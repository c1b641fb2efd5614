"""tasks/health/verdict.py and the modules it judges with (observation, layers): the health rules one by
one, their priority, the layers, and the report's JSON and markdown."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

import tasks.health.verdict
from blocks.target import TargetMachine
from tasks.health.layers import LAYERS, Layer, LayerVerdict
from tasks.health.observation import Observation, Thresholds
from tasks.health.verdict import RULES, Condition, HealthReport, HealthRule, Verdict, evaluate
from tasks.memory import MemInfo
from tasks.vllm.metrics import MetricsSnapshot

NOW = 1_750_000_000.0
OPERATOR_DOC = Path(__file__).resolve().parents[2] / "docs" / "operator.md"
#: The host layer's floor is the target machine's (one definition: blocks/target.py).
FLOOR_GIB = TargetMachine.model_fields["host_memory_floor_gib"].default


# ------------------------------------------------------------------------------ builders


def snap(taken_at: float = NOW, **fields) -> MetricsSnapshot:
    base = dict(
        requests_running=0,
        requests_waiting=0,
        kv_cache_usage=0.10,
        generation_tokens_total=1_000,
        prompt_tokens_total=5_000,
        preemptions_total=0,
    )
    base.update(fields)
    return MetricsSnapshot(taken_at=taken_at, **base)


def healthy(**changes) -> Observation:
    """A server that is fine in every layer; tests change one thing (or a few)."""
    obs = Observation(
        desired="running",
        now=NOW,
        exists=True,
        status="running",
        restart_count_since_deploy=0,
        exit_code=0,
        started_at=NOW - 3600,
        previous_restart_count=0,
        health_status=200,
        health_latency_s=0.004,
        models_listed=True,
        answer_ok=True,
        answer_latency_s=1.4,
        metrics=snap(NOW, requests_running=1, generation_tokens_total=2_000),
        previous=snap(NOW - 300, requests_running=1, generation_tokens_total=1_000),
        service=snap(NOW - 1, requests_running=1, generation_tokens_total=1_990),
        memory=MemInfo(total_gib=119.7, free_gib=8.0, available_gib=20.0, cached_gib=12.0),
        memory_floor_gib=FLOOR_GIB,
        degraded=None,
    )
    return dataclasses.replace(obs, **changes)


def loading(age_s: float, **changes) -> Observation:
    """A container that started `age_s` ago and does not accept connections yet (vLLM loading)."""
    fields = dict(
        started_at=NOW - age_s,
        health_status=None,
        health_latency_s=None,
        models_listed=None,
        answer_ok=None,
        answer_latency_s=None,
        metrics=None,
    )
    return healthy(**{**fields, **changes})


def wedged(**changes) -> Observation:
    """Requests in flight at both checks 75 s apart, generation_tokens_total stuck at 1,234, /health 200."""
    fields = dict(
        metrics=snap(NOW, requests_running=3, requests_waiting=5, generation_tokens_total=1_234),
        previous=snap(NOW - 75, requests_running=3, requests_waiting=4, generation_tokens_total=1_234),
    )
    return healthy(**{**fields, **changes})


def layer(report: HealthReport, name: Layer):
    return next(r for r in report.layers if r.name is name)


# ------------------------------------------------------------------------------ healthy


def test_healthy_server():
    report = evaluate(healthy())
    assert (report.verdict, report.condition) == (Verdict.HEALTHY, Condition.HEALTHY)
    assert [r.name for r in report.layers] == [spec.layer for spec in LAYERS]
    assert {r.verdict for r in report.layers} == {LayerVerdict.OK}
    assert "12*17 -> 204 in 1.4 s" in report.reason and "MemAvailable 20.0 GiB" in report.reason
    assert report.also == []
    assert layer(report, Layer.PROGRESS).numbers["generation_tokens_delta"] == 1000


def test_healthy_with_only_liveness_observed():
    report = evaluate(
        healthy(
            models_listed=None,
            answer_ok=None,
            answer_latency_s=None,
            metrics=None,
            previous=None,
            service=None,
            memory=None,
        )
    )
    assert report.verdict is Verdict.HEALTHY
    assert "not observed: readiness, function, progress, host" in report.reason
    skipped = {r.name for r in report.layers if r.verdict is LayerVerdict.SKIPPED}
    assert skipped == {Layer.READINESS, Layer.FUNCTION, Layer.PROGRESS, Layer.SERVICE, Layer.HOST}


# ------------------------------------------------------------------------------ desired stopped


@pytest.mark.parametrize(
    "obs",
    [
        healthy(exists=False, status=None),
        healthy(status="exited", exit_code=137, oom_killed=True, health_status=None),
        healthy(status="restarting", restart_count_since_deploy=9),
        healthy(health_status=500),
        loading(age_s=5000),
        wedged(),
        healthy(answer_ok=False),
        healthy(memory=MemInfo(119.7, 0.5, 1.0, 0.5), degraded="requested a, running b"),
        healthy(),
    ],
    ids=["no-container", "oom-killed", "crash-loop", "health-500", "no-answer", "wedged", "wrong", "degraded", "fine"],
)
def test_stopped_wins_over_everything(obs):
    report = evaluate(dataclasses.replace(obs, desired="stopped"))
    assert (report.verdict, report.layer, report.condition) == (
        Verdict.STOPPED,
        Layer.DESIRED,
        Condition.DESIRED_STOPPED,
    )
    assert "never recovered" in report.reason
    assert layer(report, Layer.DESIRED).verdict is LayerVerdict.OK
    assert all(r.verdict is LayerVerdict.SKIPPED for r in report.layers if r.name is not Layer.DESIRED)


@pytest.mark.parametrize("obs", [healthy(exists=False, status=None), healthy(health_status=None, models_listed=None)])
def test_a_target_never_deployed_is_never_unhealthy(obs):
    """No deploy or recovery ever served on it (no desired state): nothing is wanted, so nothing is missing,
    the verdict is stopped (its event triggers no recovery), and the reason says why."""
    report = evaluate(dataclasses.replace(obs, desired="never-deployed"))
    assert (report.verdict, report.layer, report.condition) == (
        Verdict.STOPPED,
        Layer.DESIRED,
        Condition.NEVER_DEPLOYED,
    )
    assert report.reason.startswith("never deployed")
    assert layer(report, Layer.DESIRED).detail == "never deployed (no desired state)"
    assert all(r.verdict is LayerVerdict.SKIPPED for r in report.layers if r.name is not Layer.DESIRED)


def test_stopped_says_a_container_still_runs():
    report = evaluate(healthy(desired="stopped"))
    assert "a container of ours still runs" in report.reason
    assert "running" in layer(report, Layer.CONTAINER).detail


def test_desired_must_be_running_or_stopped():
    with pytest.raises(ValueError, match="desired"):
        healthy(desired="paused")


# ------------------------------------------------------------------------------ container


def test_no_container():
    report = evaluate(healthy(exists=False, status=None, started_at=None, health_status=None))
    assert (report.verdict, report.layer, report.condition) == (
        Verdict.UNHEALTHY,
        Layer.CONTAINER,
        Condition.NO_CONTAINER,
    )
    assert layer(report, Layer.CONTAINER).verdict is LayerVerdict.FAIL


def test_exited_with_oom_killed():
    report = evaluate(healthy(status="exited", exit_code=137, oom_killed=True, health_status=None))
    assert (report.verdict, report.condition) == (Verdict.UNHEALTHY, Condition.NOT_RUNNING)
    assert "exited" in report.reason and "exit code 137" in report.reason and "OOMKilled" in report.reason
    assert layer(report, Layer.CONTAINER).numbers["exit_code"] == 137


@pytest.mark.parametrize("status", ["dead", "paused", "created", "removing"])
def test_not_running_states(status):
    report = evaluate(healthy(status=status, health_status=None))
    assert (report.verdict, report.layer, report.condition) == (
        Verdict.UNHEALTHY,
        Layer.CONTAINER,
        Condition.NOT_RUNNING,
    )
    assert status in report.reason


def test_crash_loop_while_docker_restarts_it():
    report = evaluate(healthy(status="restarting", restart_count_since_deploy=4, exit_code=1, health_status=None))
    assert (report.verdict, report.layer, report.condition) == (
        Verdict.UNHEALTHY,
        Layer.CONTAINER,
        Condition.CRASH_LOOP,
    )
    assert "restarted 4 times since the deploy" in report.reason and "exit code 1" in report.reason


def test_crash_loop_from_fast_growth_even_while_loading():
    obs = loading(age_s=30, restart_count_since_deploy=2, previous_restart_count=0)
    report = evaluate(obs)
    assert (report.verdict, report.condition) == (Verdict.UNHEALTHY, Condition.CRASH_LOOP)
    assert "restarted 2 times since the previous check (2 since the deploy)" in report.reason


def test_crash_loop_from_restarts_since_deploy_when_not_serving():
    report = evaluate(
        loading(age_s=30, restart_count_since_deploy=3, previous_restart_count=2), Thresholds(crash_loop_restarts=3)
    )
    assert (report.verdict, report.condition) == (Verdict.UNHEALTHY, Condition.CRASH_LOOP)
    assert "restarted 3 times since the deploy (limit 3)" in report.reason


def test_by_default_one_restart_without_serving_is_a_crash_loop():
    """The restart policy is armed only once the server served: a docker restart means it died after
    serving, and on GB10 its restart fails on the page cache; waiting out the load would hide that."""
    report = evaluate(loading(age_s=1, restart_count_since_deploy=1, previous_restart_count=None))
    assert (report.verdict, report.condition) == (Verdict.UNHEALTHY, Condition.CRASH_LOOP)
    assert "(limit 1)" in report.reason


def test_one_restart_then_loading_is_starting_not_a_loop():
    report = evaluate(
        loading(age_s=30, restart_count_since_deploy=1, previous_restart_count=0), Thresholds(crash_loop_restarts=2)
    )
    assert report.verdict is Verdict.STARTING
    assert layer(report, Layer.CONTAINER).verdict is LayerVerdict.WARN  # the restart still shows


def test_many_restarts_but_serving_is_degraded_not_a_loop():
    report = evaluate(healthy(restart_count_since_deploy=3, previous_restart_count=3))
    assert (report.verdict, report.layer, report.condition) == (Verdict.DEGRADED, Layer.CONTAINER, Condition.RESTARTED)
    assert "restarted 3 times since the deploy" in report.reason


# ------------------------------------------------------------------------------ liveness


@pytest.mark.parametrize("code", [500, 503])
def test_engine_dead(code):
    report = evaluate(healthy(health_status=code))
    assert (report.verdict, report.layer, report.condition) == (
        Verdict.UNHEALTHY,
        Layer.LIVENESS,
        Condition.HEALTH_ERROR,
    )
    assert f"/health answered {code}" in report.reason and "engine core is dead" in report.reason
    assert layer(report, Layer.LIVENESS).numbers["health_status"] == code


def test_other_health_status():
    report = evaluate(healthy(health_status=404))
    assert report.condition is Condition.HEALTH_ERROR and "HTTP 404" in report.reason


@pytest.mark.parametrize("age_s", [0, 5, 125, 599, 600])
def test_loading_within_budget_is_starting_never_unhealthy(age_s):
    report = evaluate(loading(age_s))
    assert (report.verdict, report.layer, report.condition) == (Verdict.STARTING, Layer.LIVENESS, Condition.LOADING)
    assert "within the startup budget of 600 s" in report.reason
    assert not any(r.verdict is LayerVerdict.FAIL for r in report.layers)


def test_loading_is_starting_even_if_the_flow_marked_later_layers_failed():
    # a flow that tried /v1/models and the smoke question against a loading server anyway
    report = evaluate(loading(125, models_listed=False, answer_ok=False))
    assert report.verdict is Verdict.STARTING
    assert "125 s after the container started" in report.reason


def test_clock_skew_counts_as_just_started():
    assert evaluate(loading(age_s=-20)).verdict is Verdict.STARTING


@pytest.mark.parametrize("age_s", [601, 725, 86_400])
def test_no_answer_past_the_budget_is_unhealthy(age_s):
    report = evaluate(loading(age_s))
    assert (report.verdict, report.layer, report.condition) == (Verdict.UNHEALTHY, Layer.LIVENESS, Condition.NO_ANSWER)
    assert f"{age_s} s after the container started" in report.reason and "budget of 600 s" in report.reason


def test_the_flow_can_pass_the_deploys_startup_budget():
    limits = Thresholds(startup_budget_s=1200)
    assert evaluate(loading(900), limits).verdict is Verdict.STARTING
    assert evaluate(loading(1201), limits).verdict is Verdict.UNHEALTHY


def test_no_answer_without_a_start_time_cannot_be_shown_loading():
    report = evaluate(loading(10, started_at=None))
    assert report.condition is Condition.NO_ANSWER and "start time is unknown" in report.reason


def test_slow_health_is_degraded():
    report = evaluate(healthy(health_latency_s=7.5))
    assert (report.verdict, report.layer, report.condition) == (Verdict.DEGRADED, Layer.LIVENESS, Condition.SLOW_HEALTH)
    assert "7.5 s" in report.reason and "5.0 s" in report.reason


# ------------------------------------------------------------------------------ readiness, function


def test_models_not_listed():
    report = evaluate(healthy(models_listed=False))
    assert (report.verdict, report.layer, report.condition) == (
        Verdict.UNHEALTHY,
        Layer.READINESS,
        Condition.MODELS_MISSING,
    )
    assert "/health answered 200" in report.reason


def test_wrong_answer():
    report = evaluate(healthy(answer_ok=False, answer_latency_s=2.1, answer_detail="answered '203'"))
    assert (report.verdict, report.layer, report.condition) == (
        Verdict.UNHEALTHY,
        Layer.FUNCTION,
        Condition.WRONG_ANSWER,
    )
    assert "answered '203'" in report.reason and "2.1 s" in report.reason


def test_answer_beyond_the_budget_is_unhealthy():
    report = evaluate(healthy(answer_latency_s=75.0))
    assert (report.verdict, report.layer, report.condition) == (
        Verdict.UNHEALTHY,
        Layer.FUNCTION,
        Condition.ANSWER_TOO_SLOW,
    )
    assert "75 s" in report.reason and "60 s" in report.reason


def test_slow_answer_is_degraded():
    report = evaluate(healthy(answer_latency_s=12.0))
    assert (report.verdict, report.layer, report.condition) == (Verdict.DEGRADED, Layer.FUNCTION, Condition.SLOW_ANSWER)
    assert "12 s" in report.reason and "10 s" in report.reason
    assert layer(report, Layer.FUNCTION).verdict is LayerVerdict.WARN


def test_thresholds_refuse_slow_above_budget():
    with pytest.raises(ValidationError, match="answer_slow_s"):
        Thresholds(answer_slow_s=90, answer_budget_s=60)


# ------------------------------------------------------------------------------ progress


def test_wedged_while_health_says_200():
    report = evaluate(wedged())
    assert (report.verdict, report.layer, report.condition) == (Verdict.UNHEALTHY, Layer.PROGRESS, Condition.WEDGED)
    assert report.reason == (
        "requests running 3, waiting 5, but generation_tokens_total stayed at 1,234 for 75 s: the engine is "
        "wedged while /health says 200 (vllm issue 39863)"
    )
    assert layer(report, Layer.LIVENESS).verdict is LayerVerdict.OK  # the lie, shown as such
    assert layer(report, Layer.PROGRESS).numbers["window_s"] == 75


def test_wedged_outranks_the_failed_smoke_question_it_causes():
    report = evaluate(wedged(answer_ok=False, answer_detail="timed out after 60 s"))
    assert report.condition is Condition.WEDGED
    assert any("timed out after 60 s" in reason for reason in report.also)
    assert layer(report, Layer.FUNCTION).verdict is LayerVerdict.FAIL


def stalled(**changes) -> Observation:
    """The check's own question got no token for 8.2 s; /metrics read then: generation tokens at 1,234, the
    gauges frozen at 0 (vLLM sets them from the engine core's steps), no previous snapshot (a first check)."""
    fields = dict(
        answer_ok=False,
        answer_latency_s=None,
        answer_detail="no token for 8.2 s",
        stalled_s=8.2,
        metrics=snap(NOW, generation_tokens_total=1_234),
        service=snap(NOW - 8.3, generation_tokens_total=1_234),
        previous=None,
    )
    return healthy(**{**fields, **changes})


def test_a_stalled_first_token_is_the_one_wedge_rule_with_its_numbers():
    report = evaluate(stalled())
    assert (report.verdict, report.layer, report.condition) == (Verdict.UNHEALTHY, Layer.PROGRESS, Condition.WEDGED)
    assert report.reason == (
        "no token for 8.2 s, generation_tokens_total unchanged at 1,234 with 1 request(s) in flight (the check's own "
        "12*17 included): the engine is wedged while /health says 200 (vllm issue 39863)"
    )
    assert any("no token for 8.2 s" in reason for reason in report.also)  # the function layer fails too
    assert layer(report, Layer.PROGRESS).numbers["stalled_s"] == 8.2
    busy = stalled(metrics=snap(NOW, requests_running=4, requests_waiting=3, generation_tokens_total=1_234))
    assert "with 7 request(s) in flight" in evaluate(busy).reason


def test_a_slow_first_token_without_a_stall_is_no_wedge():
    # the probe waited on (tokens moved for others) and the answer passed the budget: the function layer says so
    slow = stalled(stalled_s=None, answer_detail="no complete answer within the budget of 60 s")
    report = evaluate(slow)
    assert report.condition is Condition.WRONG_ANSWER and "budget of 60 s" in report.reason


def test_not_wedged_when_idle():
    idle = healthy(
        metrics=snap(NOW, generation_tokens_total=1_234), previous=snap(NOW - 300, generation_tokens_total=1_234)
    )
    assert evaluate(idle).verdict is Verdict.HEALTHY


def test_not_wedged_when_tokens_moved():
    moving = wedged(metrics=snap(NOW, requests_running=3, requests_waiting=5, generation_tokens_total=1_240))
    assert evaluate(moving).verdict is Verdict.HEALTHY


def test_not_wedged_when_the_snapshots_are_too_close():
    close = wedged(previous=snap(NOW - 59, requests_running=3, generation_tokens_total=1_234))
    assert evaluate(close).verdict is Verdict.HEALTHY
    assert evaluate(close, Thresholds(wedge_window_s=30)).condition is Condition.WEDGED


def test_not_wedged_when_the_work_just_arrived():
    # idle at the previous check, requests arrived a moment ago and have no token yet
    arrived = wedged(previous=snap(NOW - 300, generation_tokens_total=1_234))
    assert evaluate(arrived).verdict is Verdict.HEALTHY


def test_not_wedged_without_a_previous_snapshot_or_after_a_reset():
    assert evaluate(wedged(previous=None)).verdict is Verdict.HEALTHY
    reset = wedged(previous=snap(NOW - 300, requests_running=2, generation_tokens_total=99_999))
    assert evaluate(reset).verdict is Verdict.HEALTHY


def test_a_full_kv_cache_alone_is_no_longer_a_progress_finding():
    """A single full sample at the after-read is a busy moment: the service rules judge it, held for 5 min
    (tests/unit/test_health_service.py)."""
    full = healthy(metrics=snap(NOW, requests_running=40, kv_cache_usage=0.99, generation_tokens_total=9_000))
    assert evaluate(full).verdict is Verdict.HEALTHY


# ------------------------------------------------------------------------------ host, desired


def test_low_headroom_is_degraded():
    report = evaluate(healthy(memory=MemInfo(total_gib=119.7, free_gib=1.0, available_gib=3.5, cached_gib=2.5)))
    assert (report.verdict, report.layer, report.condition) == (Verdict.DEGRADED, Layer.HOST, Condition.LOW_HEADROOM)
    assert "3.50 of 119.70 GiB" in report.reason and "4.00 GiB" in report.reason
    assert layer(report, Layer.HOST).numbers["available_gib"] == 3.5


def test_the_host_floor_is_the_targets_and_defined_once():
    """One floor: the target machine's host_memory_floor_gib, which the start's memory guard uses too."""
    assert FLOOR_GIB == 4.0
    assert not [name for name in Thresholds.model_fields if "floor" in name or "headroom" in name]
    short = healthy(memory=MemInfo(total_gib=119.7, free_gib=4.0, available_gib=10.0, cached_gib=6.0))
    assert evaluate(short).verdict is Verdict.HEALTHY
    report = evaluate(dataclasses.replace(short, memory_floor_gib=12.0))
    assert report.condition is Condition.LOW_HEADROOM and "12.00 GiB" in report.reason
    assert layer(report, Layer.HOST).numbers["floor_gib"] == 12.0
    assert evaluate(dataclasses.replace(short, memory_floor_gib=0.0)).verdict is Verdict.HEALTHY  # 0: no floor
    with pytest.raises(ValueError, match="memory_floor_gib"):
        healthy(memory_floor_gib=-1.0)


def test_restarted_since_the_deploy_is_degraded():
    report = evaluate(healthy(restart_count_since_deploy=1, previous_restart_count=1))
    assert (report.verdict, report.layer, report.condition) == (Verdict.DEGRADED, Layer.CONTAINER, Condition.RESTARTED)
    assert "restarted once since the deploy" in report.reason


def test_running_a_recovered_spec_is_degraded():
    why = (
        "requested gpu_memory_utilization 0.90, running gpu_memory_utilization 0.69, because other processes hold "
        "30 GiB"
    )
    report = evaluate(healthy(degraded=why))
    assert (report.verdict, report.layer, report.condition) == (
        Verdict.DEGRADED,
        Layer.DESIRED,
        Condition.RECOVERED_SPEC,
    )
    assert why in report.reason
    assert layer(report, Layer.DESIRED).verdict is LayerVerdict.WARN


def test_every_degraded_condition_is_reported_the_first_decides():
    obs = healthy(
        answer_latency_s=12.0,
        health_latency_s=6.0,
        service=snap(NOW - 1, requests_running=1, kv_cache_usage=0.99, preemptions_total=400),
        held_since={"kv_cache_full": NOW - 400},
        memory=MemInfo(119.7, 1.0, 2.0, 1.0),
        restart_count_since_deploy=1,
        degraded="requested a, running b",
    )
    report = evaluate(obs)
    # a service level first (measured on the users' own requests), then the smoke answer's one sample
    assert report.condition is Condition.KV_CACHE_FULL
    assert len(report.also) == 6
    warned = {r.name for r in report.layers if r.verdict is LayerVerdict.WARN}
    assert warned == {Layer.FUNCTION, Layer.LIVENESS, Layer.SERVICE, Layer.HOST, Layer.CONTAINER, Layer.DESIRED}
    assert layer(report, Layer.READINESS).verdict is LayerVerdict.OK


# ------------------------------------------------------------------------------ the table


def test_table_order():
    assert [rule.condition for rule in RULES] == [
        Condition.DESIRED_STOPPED,
        Condition.NEVER_DEPLOYED,
        Condition.NO_CONTAINER,
        Condition.CRASH_LOOP,
        Condition.NOT_RUNNING,
        Condition.HEALTH_ERROR,
        Condition.LOADING,
        Condition.NO_ANSWER,
        Condition.MODELS_MISSING,
        Condition.WEDGED,
        Condition.WRONG_ANSWER,
        Condition.ANSWER_TOO_SLOW,
        Condition.TTFT_P99,
        Condition.ITL_P99,
        Condition.ERROR_RATIO,
        Condition.QUEUE_LONG,
        Condition.KV_CACHE_FULL,
        Condition.PREEMPTION_RATE,
        Condition.SLOW_ANSWER,
        Condition.SLOW_HEALTH,
        Condition.LOW_HEADROOM,
        Condition.RESTARTED,
        Condition.RECOVERED_SPEC,
        Condition.HEALTHY,
    ]


def test_every_rule_says_why_it_stands_where_it_does():
    assert all(len(rule.why) > 20 for rule in RULES)
    # the order lives in the table alone: the module's docstring does not repeat it
    doc = tasks.health.verdict.__doc__ or ""
    assert not [rule.condition.value for rule in RULES[1:-1] if f"`{rule.condition.value}`" in doc]


def test_the_operators_table_lists_the_observed_layers_in_order():
    """docs/operator.md's health-check table has a row per observed layer, in `LAYERS`' order."""
    observed = [spec.layer.value for spec in LAYERS if spec.layer is not Layer.DESIRED]
    rows = [line.split("|")[1].strip() for line in OPERATOR_DOC.read_text().splitlines() if line.startswith("| ")]
    documented = [row for row in rows if row in {layer.value for layer in Layer}]
    assert documented == observed


def test_every_unhealthy_rule_comes_before_every_degraded_rule():
    verdicts = [rule.verdict for rule in RULES[1:-1]]
    last_bad = max(i for i, v in enumerate(verdicts) if v in (Verdict.UNHEALTHY, Verdict.STARTING))
    first_degraded = min(i for i, v in enumerate(verdicts) if v is Verdict.DEGRADED)
    assert last_bad < first_degraded


def test_the_table_is_checked():
    check = tasks.health.verdict._check_rules
    with pytest.raises(ValueError, match="exactly once"):
        check(RULES[:-2] + RULES[-1:])
    with pytest.raises(ValueError, match="first"):
        check((RULES[1], RULES[0], *RULES[2:]))
    with pytest.raises(ValueError, match="last"):
        check((*RULES[:-2], RULES[-1], RULES[-2]))
    bogus = HealthRule(Condition.HEALTHY, Verdict.DEGRADED, Layer.HOST, lambda c: True, lambda c: "", why="")
    with pytest.raises(ValueError, match="last"):
        check((*RULES[:-1], bogus))


# ------------------------------------------------------------------------------ JSON, markdown


def test_report_and_observation_are_json_able():
    report = evaluate(wedged())
    again = HealthReport.model_validate_json(report.model_dump_json())
    assert again == report
    # Prefect validates task parameters with pydantic: an Observation must round-trip too.
    adapter = TypeAdapter(Observation)
    obs = wedged()
    assert adapter.validate_json(adapter.dump_json(obs)) == obs
    assert "| progress | fail |" in report.markdown()
