"""stop-qwen: the runbook's `docker compose down`, then proof that the memory came back.

Stale processes holding GPU memory after a stop are a known pain on these servers; a stop that
does not check leaves the next start to fail with "Free memory on device". This flow stops and
removes only our containers for the target (never the model cache or the compile/kernel caches
of ``vllm_cache_dir``: the next start reuses them), then reads the target's meminfo until a start at the
spec's utilization would fit again, and says what still holds memory when it would not.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel

from blocks.engine import load_engine_spec
from blocks.target import TargetMachine
from tasks.container import remove_managed_containers
from tasks.events import ServiceEvent
from tasks.incidents.track import report_service_event
from tasks.locks import gpu_lock
from tasks.memory import read_memory, wait_for_release
from tasks.report import artifact_key, publish_report
from tasks.state import last_healthy_record, set_desired
from tasks.vllm_version import recorded_version


class StopResult(BaseModel):
    target: str
    removed: list[str]
    free_before_gib: float | None
    free_after_gib: float | None
    page_cache_gib: float | None
    memory_released: bool | None  # None: the target's memory could not be read


@flow(name="stop-qwen", flow_run_name="stop-{target}")
def stop_qwen(
    target: str = "spark", engine: str | None = None, stop_timeout_s: int = 30, memory_timeout_s: float = 60
) -> StopResult:
    """Stop and remove the target's vLLM container(s); confirm the memory they held came back.

    "Came back" means a start at the spec's utilization would pass vLLM's free-memory check: on
    0.10.x once the page cache is dropped (deploy-qwen drops it before a start: that vLLM counts it as
    used on GB10), from 0.11.1 as MemAvailable reads it (docs/versions.md). Which vLLM is the last
    healthy server's word (tasks/state.py); none recorded: the runbook's.
    """
    logger = get_run_logger()
    machine = TargetMachine.named(target)
    spec = machine.apply_to(load_engine_spec(engine, None, None))
    util = spec.gpu_memory_utilization
    vllm = recorded_version(spec.image, last_healthy_record(machine.name).vllm_version_of(spec.image))
    with gpu_lock(machine.name):
        set_desired(machine.name, "stopped")  # on purpose: health checks report it stopped, never recover it
        before = read_memory(machine, spec.image, unreadable_ok=True)
        removed = remove_managed_containers(machine.docker_host(), machine.name, stop_timeout_s)
        # containers only: the model cache and the compile/kernel caches stay for the next start
        logger.info("the vLLM caches at %s stay (deploy-qwen clear_caches=true empties them)", machine.vllm_cache_dir)
        released, after = (
            (None, None)
            if before is None
            else wait_for_release(
                machine, spec.image, util, timeout_s=memory_timeout_s, version=vllm.parsed if vllm else None
            )
        )
    if after is None:
        logger.warning(
            "the memory of %s could not be read: whether the containers released theirs is unknown", machine.name
        )
    elif released:
        logger.info(
            "memory released: %.1f GiB free and %.1f GiB page cache of %.1f GiB; a start at %.2f needs %.1f GiB",
            after.free_gib,
            after.cached_gib,
            after.total_gib,
            util,
            util * after.total_gib,
        )
    else:
        logger.warning(
            "memory NOT released after %.0f s: %.1f of %.1f GiB free, %.1f GiB page cache; something else holds"
            " the rest (a stale process: `docker ps -a`, `nvidia-smi` on the host), and a start at %.2f would fail",
            memory_timeout_s,
            after.free_gib,
            after.total_gib,
            after.cached_gib,
            util,
        )
    result = StopResult(
        target=machine.name,
        removed=removed,
        free_before_gib=before.free_gib if before else None,
        free_after_gib=after.free_gib if after else None,
        page_cache_gib=after.cached_gib if after else None,
        memory_released=released,
    )
    publish_report(artifact_key("stop", machine.name), f"stop-qwen on {machine.name}", result.model_dump())
    report_service_event(
        machine.name, ServiceEvent.STOPPED, result.model_dump(), vllm_version=vllm.version if vllm else None
    )
    return result
