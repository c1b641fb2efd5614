"""Service-level breaches end to end: the imitation's outside load (POST /_sim/pressure) drives each breach for
real through its /metrics, real health checks (the flow called in-process, a real Prefect server) judge it with
time windows scaled down through the run's ``limits``, the event carries the condition, and the breach clears at
the first check where the rule holds again."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from flows.deploy import deploy_qwen
from flows.health import health_check
from tasks.health.verdict import SERVICE_LEVEL_CONDITIONS, Condition, Verdict
from tasks.state import health_state
from tests.integration.conftest import messages_about

pytestmark = pytest.mark.integration

#: Scaled down: a p99 of 3 requests, a 1 s TTFT line, a KV cache held 1 s, a queue of 3.
LIMITS = {"ttft_p99_s": 1.0, "min_window_requests": 3, "kv_cache_full_for_s": 1.0}
LIMITS |= {"waiting_requests": 3, "waiting_requests_for_s": 0.0}


def pressure(endpoint: str, **fields: float) -> None:
    """Set the imitation's outside load (all zero when nothing is given)."""
    answer = (
        httpx.post(f"{endpoint}/_sim/pressure", json=fields) if fields else httpx.delete(f"{endpoint}/_sim/pressure")
    )
    answer.raise_for_status()


def requests_in_parallel(endpoint: str, n: int) -> list[threading.Thread]:
    """``n`` short completions sent at once (their threads, started)."""
    body = {"model": "Qwen/Qwen3-32B-FP8", "prompt": "Say hello.", "max_tokens": 4}
    threads = [
        threading.Thread(target=httpx.post, args=(f"{endpoint}/v1/completions",), kwargs={"json": body, "timeout": 30})
        for _ in range(n)
    ]
    for thread in threads:
        thread.start()
    return threads


def stored_events(api: str, target: str, names: list[str], count: int) -> list[dict]:
    """The target's events of those names, once at least ``count`` are stored (the server writes in batches)."""
    deadline = time.monotonic() + 20
    while True:
        answer = httpx.post(
            f"{api}/events/filter",
            json={"filter": {"resource": {"id": [f"vllm.service.{target}"]}, "event": {"name": names}}, "limit": 50},
            timeout=10,
        )
        answer.raise_for_status()
        found = answer.json()["events"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_slow_first_tokens_a_full_kv_cache_and_a_long_queue_breach_and_clear(make_sim_target, prefect_server, alerts):
    target = make_sim_target()
    deploy_qwen(target=target.name)
    endpoint = target.endpoint
    assert health_check(target=target.name, limits=LIMITS).verdict is Verdict.HEALTHY  # the window starts here

    # slow first tokens: 4 requests wait 1.3 s each before their prefill -> p99 TTFT in the 1-2.5 s bucket
    pressure(endpoint, first_token_delay_s=1.3)
    for thread in requests_in_parallel(endpoint, 4):
        thread.join()
    slow = health_check(target=target.name, limits=LIMITS)
    assert (slow.verdict, slow.layer.value, slow.condition) == (Verdict.DEGRADED, "service", Condition.TTFT_P99), (
        slow.reason
    )
    assert "over the 4 requests" in slow.reason and "above 1.0 s" in slow.reason
    degraded = stored_events(prefect_server, target.name, ["vllm.service.degraded"], 1)
    assert [e["payload"]["condition"] for e in degraded] == ["ttft_p99"], degraded
    assert Condition.TTFT_P99 in SERVICE_LEVEL_CONDITIONS
    # the check's own question (delayed too) is not in the next window: the rule holds again at once
    pressure(endpoint)
    assert health_check(target=target.name, limits=LIMITS).verdict is Verdict.HEALTHY
    incident = stored_events(prefect_server, target.name, ["vllm.incident.opened", "vllm.incident.closed"], 2)
    assert sorted(e["event"] for e in incident) == ["vllm.incident.closed", "vllm.incident.opened"], incident
    # the operator hears it once when it opens and once when it clears, through the notify automation
    alerts.wait_for(lambda m: "RESOLVED" in ((m["json"] or {}).get("subject") or ""), 30)
    told = messages_about(alerts, target.name)
    assert [m["subject"].split(":")[0].split(" after")[0] for m in told] == [
        f"[{target.name}] OPENED",
        f"[{target.name}] RESOLVED",
    ], told
    opened = f"[{target.name}] OPENED: service level breached: service: p99 time to first token"
    assert told[0]["subject"].startswith(opened), told[0]["subject"]

    # a KV cache held full: first seen, held 1 s at every check, then a breach; cleared at the first calm check
    pressure(endpoint, kv_reserved=0.99)
    first = health_check(target=target.name, limits=LIMITS)
    assert first.verdict is Verdict.HEALTHY and "kv_cache_full" in health_state(target.name).streaks
    time.sleep(1.1)
    full = health_check(target=target.name, limits=LIMITS)
    assert (full.verdict, full.condition) == (Verdict.DEGRADED, Condition.KV_CACHE_FULL), full.reason
    pressure(endpoint)
    calm = health_check(target=target.name, limits=LIMITS)
    assert calm.verdict is Verdict.HEALTHY and health_state(target.name).streaks == {}

    # a long queue: 5 requests held 1.5 s before their prefill are waiting when the check reads /metrics
    pressure(endpoint, first_token_delay_s=1.5)
    threads = requests_in_parallel(endpoint, 5)
    time.sleep(0.3)
    queue = health_check(target=target.name, limits={**LIMITS, "ttft_p99_s": 60.0})
    assert (queue.verdict, queue.condition) == (Verdict.DEGRADED, Condition.QUEUE_LONG), queue.reason
    assert queue.reason.startswith("5 requests waiting, above 3")
    pressure(endpoint)
    for thread in threads:
        thread.join()


def test_the_limits_block_is_saved_once_read_by_every_check_and_overridden_per_run(make_sim_target):
    from blocks.health_limits import HEALTH_LIMITS_BLOCK, HealthLimits, ensure_health_limits, load_health_limits
    from tasks.health.limits import Thresholds

    target = make_sim_target()  # never deployed: nothing is judged, but the limits show in the layers' numbers

    def budget(**kw) -> float:
        report = health_check(target=target.name, **kw)
        return next(r for r in report.layers if r.name.value == "liveness").numbers["startup_budget_s"]

    try:
        ensure_health_limits()
        assert load_health_limits() == Thresholds()
        HealthLimits(limits=Thresholds(startup_budget_s=1234)).save(HEALTH_LIMITS_BLOCK, overwrite=True)
        ensure_health_limits()  # an operator's edit is kept
        assert budget() == 1234
        assert budget(limits={"startup_budget_s": 7}) == 7  # this run only
        assert budget() == 1234
        with pytest.raises(ValueError, match="unknown health limit.s. startup_budget: the limits are"):
            health_check(target=target.name, limits={"startup_budget": 7})
    finally:
        HealthLimits().save(HEALTH_LIMITS_BLOCK, overwrite=True)  # the defaults, for the other tests
