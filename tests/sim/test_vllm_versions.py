"""The imitation per vLLM version (sim/vllm/vllm_sim/versions.py): the table, the texts each version's
source writes, and host-process servers speaking 0.10.1.1, 0.11.1 and 0.31.0."""

from __future__ import annotations

import math
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from vllm_fixtures import MODEL, hf_cache, ledger_dir, start_sim  # noqa: F401

from sim.vllm.vllm_sim import memory, versions
from sim.vllm.vllm_sim.failures import StartupFailure
from sim.vllm.vllm_sim.knobs import GIB, Knobs
from sim.vllm.vllm_sim.ledger import Ledger, MemoryView
from sim.vllm.vllm_sim.metrics import VllmMetrics
from sim.vllm.vllm_sim.testing import FakeCache
from sim.vllm.vllm_sim.versions import V0_10_1_1, V0_10_2, V0_11_1, V0_17_1, V0_31_0, behaviour

PER_TOKEN = 256 * 1024  # Qwen3-32B: 0.25 MiB of KV per token
OLD, MID, NEW = "0.10.1.1+381074ae.nv25.09", "0.11.1", "0.31.0"


# --- the table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "row"),
    [
        ("0.10.1.1+381074ae.nv25.09", V0_10_1_1),
        ("0.10.1", V0_10_1_1),  # below the first row: the first row
        ("0.10.2", V0_10_2),
        ("0.11.0", V0_10_2),
        ("0.11.1+nv25.12", V0_11_1),
        ("0.11.1rc2", V0_11_1),
        ("0.13.0", V0_11_1),
        ("0.17.1", V0_17_1),
        ("0.24", V0_17_1),
        ("0.31.0", V0_31_0),
        ("0.33.1", V0_31_0),
    ],
)
def test_any_version_gets_the_row_of_its_range(version: str, row: versions.Behaviour) -> None:
    assert behaviour(version) is row
    assert Knobs.from_env({"VLLM_SIM_VERSION": version}).behaviour is row


def test_default_is_the_runbooks_image_and_a_bad_version_names_the_knob() -> None:
    knobs = Knobs.from_env({})
    assert knobs.version == "0.10.1.1+381074ae.nv25.09" and knobs.behaviour is V0_10_1_1
    assert (knobs.cold_load_charge, knobs.shmem_gib, knobs.fault_profiling_release_gib) == (0.0, 0.5, None)
    with pytest.raises(ValueError, match="VLLM_SIM_VERSION='latest' is not a vLLM version"):
        Knobs.from_env({"VLLM_SIM_VERSION": "latest"})


def test_rows_are_in_version_order_and_differ_where_the_sources_do() -> None:
    releases = [versions.release(row.since) for row in versions.BEHAVIOURS]
    assert releases == sorted(releases) and len(set(releases)) == len(releases)
    assert [row.engine_proc for row in versions.BEHAVIOURS] == [
        "EngineCore_0",
        "EngineCore_DP0",
        "EngineCore_DP0",
        "EngineCore_DP0",
        "EngineCore",
    ]
    assert [row.free_memory_reads for row in versions.BEHAVIOURS] == ["MemFree"] * 2 + ["MemAvailable"] * 3
    assert [row.dead_health for row in versions.BEHAVIOURS] == [500, 500, 503, 503, 503]


# --- texts, from each version's format strings ----------------------------------


def failure(call, *args: object) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(StartupFailure) as exc:
        call(*args)
    return str(exc.value)


def test_free_memory_error_per_version() -> None:
    # 0.10.1.1 gpu_worker.py:178-187: GiB = round(b / GiB_bytes, 2), requested = total x util
    assert failure(memory.check_free_memory, 84.73, 119.7, 0.9, V0_10_1_1) == (
        "ValueError: Free memory on device (84.73/119.7 GiB) on startup is less than desired GPU memory "
        "utilization (0.9, 107.73 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
    )
    # 0.17.1 v1/worker/utils.py:408-421 (0.31.0: :543-556): device cuda:0, requested = ceil(total x util)
    requested = math.ceil(119.7 * GIB * 0.9)
    assert failure(memory.check_free_memory, 84.73, 119.7, 0.9, V0_31_0) == (
        f"ValueError: Free memory on device cuda:0 (84.73/119.7 GiB) on startup is less than desired GPU memory "
        f"utilization (0.9, {round(requested / GIB, 2)} GiB). Decrease GPU memory utilization or reduce GPU memory "
        "used by other processes."
    )


def test_kv_too_small_leaves_out_a_zero_estimate() -> None:
    """kv_cache_utils.py:693-706 in 0.10.1.1: f"{estimated_msg} " is empty when the estimate is 0."""
    tiny = 1024 * 1024  # less than one 16-token block
    assert failure(memory.check_kv_fits, tiny, PER_TOKEN, 32000, V0_10_1_1) == (
        "ValueError: To serve at least one request with the models's max seq len (32000), (7.81 GiB KV cache is "
        "needed, which is larger than the available KV cache memory (0.00 GiB).  Try increasing "
        "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
    )
    assert "estimated maximum model length is 12688. Try" in failure(
        memory.check_kv_fits, int(3.10 * GIB), PER_TOKEN, 32000, V0_11_1
    )


def test_kv_texts_of_031() -> None:
    """kv_cache_utils.py:904-935 in 0.31.0: "model's", format_gib, the estimate's trailing space, the link."""
    assert failure(memory.check_kv_fits, int(3.10 * GIB), PER_TOKEN, 32000, V0_31_0) == (
        "ValueError: To serve at least one request with the model's max seq len (32000), (7.81 GiB KV cache is "
        "needed, which is larger than the available KV cache memory (3.1 GiB). Based on the available memory, the "
        "estimated maximum model length is 12688. Try increasing `gpu_memory_utilization` (which also controls CPU "
        "memory on the CPU backend) or decreasing `max_model_len` when initializing the engine. See "
        "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
    )
    assert failure(memory.check_kv_fits, 0, PER_TOKEN, 32000, V0_31_0).startswith(
        "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
        "initializing the engine (this flag also controls CPU memory reservation on the CPU backend"
    )


def test_profiling_assertion_per_version() -> None:
    init, after = int(76.7 * GIB), int(77.79 * GIB)
    text = failure(memory.check_profiling, init, after, V0_10_1_1)
    # gpu_worker.py:248-255 in 0.10.1.1: GiB = lambda b: b / GiB_bytes, unrounded
    assert text == (
        f"AssertionError: Error in memory profiling. Initial free memory {init / GIB} GiB, current free memory "
        f"{after / GIB} GiB. This happens when other processes sharing the same container release GPU memory while "
        "vLLM is profiling during initialization. To fix this, ensure consistent GPU memory allocation or isolate "
        "vLLM in its own container."
    )
    # gpu_worker.py:652-660 in 0.31.0: format_gib
    assert "Initial free memory 76.7 GiB, current free memory 77.79 GiB." in failure(
        memory.check_profiling, init, after, V0_31_0
    )
    # equal free memory fails `init > after` (0.10-0.11) but passes `init >= after` (0.17+)
    failure(memory.check_profiling, init, init, V0_11_1)
    memory.check_profiling(init, init, V0_17_1)
    memory.check_profiling(after, init, V0_10_1_1)


def metric_names(**flags: bool) -> set[str]:
    text = VllmMetrics(MODEL, {"block_size": "16"}, **flags).render()
    return {fam.name for fam in text_string_to_metric_families(text)}


GPU, TPOT, ITL, REQ_TPOT = (
    "vllm:gpu_cache_usage_perc",
    "vllm:time_per_output_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_time_per_output_token_seconds",
)


@pytest.mark.parametrize(
    ("row", "present", "absent"),
    [
        (V0_10_1_1, {GPU, TPOT}, {ITL, REQ_TPOT}),  # loggers.py:212, :381 in 0.10.1.1
        (V0_10_2, {GPU, TPOT, ITL}, {REQ_TPOT}),  # loggers.py:396 in 0.10.2
        (V0_11_1, {TPOT, ITL, REQ_TPOT}, {GPU}),  # loggers.py:448 (hidden), :740, :773, :803 in 0.11.1
        (V0_17_1, {ITL, REQ_TPOT}, {GPU, TPOT}),  # loggers.py:760, :790 in 0.17.1
        (V0_31_0, {ITL, REQ_TPOT}, {GPU, TPOT}),  # loggers.py:832, :842 in 0.31.0
    ],
)
def test_metric_families_per_version(row: versions.Behaviour, present: set[str], absent: set[str]) -> None:
    names = metric_names(
        gpu_cache=row.gpu_cache_metric, tpot=row.tpot_metric, itl=row.itl_metric, request_tpot=row.request_tpot_metric
    )
    assert present <= names and not (absent & names)
    assert "vllm:kv_cache_usage_perc" in names


# --- memory: shmem and what each version reads -----------------------------------


def test_shmem_is_cached_but_never_available_nor_dropped(tmp_path: Path) -> None:
    view = MemoryView(119.7, 3.0, held_gib=0.0, page_cache_gib=31.97, shmem_gib=0.5)
    assert (view.free_gib, view.cached_gib, view.available_gib) == pytest.approx((84.73, 32.47, 116.7))
    assert (view.reads("MemFree"), view.reads("MemAvailable")) == pytest.approx((84.73, 116.7))
    assert "Shmem:            524288 kB" in view.meminfo_text()
    led = Ledger(tmp_path, "x", total_gib=119.7, baseline_gib=3.0, shmem_gib=0.5)
    led.record_load("m@c", 31.97)
    (tmp_path / "drop_caches").write_text("3\n")
    assert led.view().cached_gib == pytest.approx(0.5)  # what a drop leaves in Cached
    assert Knobs.from_env({"VLLM_SIM_SHMEM_GIB": "1.25"}).shmem_gib == 1.25


# --- servers --------------------------------------------------------------------

EXPECTED_LINES = {
    OLD: [
        "(APIServer pid={api}) INFO {ts} [api_server.py:1805] vLLM API server version 0.10.1.1+381074ae.nv25.09",
        "(EngineCore_0 pid={eng}) INFO {ts} [monitor.py:34] torch.compile takes {s} s in total",
        "(EngineCore_0 pid={eng}) INFO {ts} [kv_cache_utils.py:849] GPU KV cache size: 271,360 tokens",
        "(EngineCore_0 pid={eng}) INFO {ts} [kv_cache_utils.py:853] Maximum concurrency for 32,000 tokens per "
        "request: 8.48x",
        "(EngineCore_0 pid={eng}) INFO {ts} [core.py:214] init engine (profile, create kv cache, warmup model) took "
        "{s} seconds",
        "(APIServer pid={api}) INFO {ts} [api_server.py:1880] Starting vLLM API server 0 on http://127.0.0.1:{port}",
        "(APIServer pid={api}) INFO:     Application startup complete.",
    ],
    MID: [
        "(APIServer pid={api}) INFO {ts} [api_server.py:1977] vLLM API server version 0.11.1",
        "(EngineCore_DP0 pid={eng}) INFO {ts} [gpu_worker.py:359] Available KV cache memory: 66.25 GiB",
        "(EngineCore_DP0 pid={eng}) INFO {ts} [kv_cache_utils.py:1229] GPU KV cache size: 271,360 tokens",
        "(APIServer pid={api}) INFO {ts} [api_server.py:2052] Starting vLLM API server 0 on http://127.0.0.1:{port}",
    ],
    NEW: [
        "(APIServer pid={api}) INFO {ts} [api_utils.py:347] ",
        "(APIServer pid={api}) INFO {ts} [api_utils.py:347]  ▄▄ ▄█ █     █     █ ▀▄▀ █  version 0.31.0",
        "(APIServer pid={api}) INFO {ts} [api_utils.py:347]   █▄█▀ █     █     █     █  model   Qwen/Qwen3-32B-FP8",
        "(EngineCore pid={eng}) INFO {ts} [monitor.py:53] torch.compile took {s} s in total",
        "(EngineCore pid={eng}) INFO {ts} [gpu_worker.py:692] Available KV cache memory: 66.25 GiB",
        "(EngineCore pid={eng}) INFO {ts} [kv_cache_utils.py:2464] GPU KV cache size: 271,360 tokens, Maximum "
        "concurrency for 32,000 tokens per request: 8.48x",
        "(EngineCore pid={eng}) INFO {ts} [core.py:373] init engine (profile, create kv cache, warmup model) took "
        "{s} s (compilation: {s} s)",
        "(APIServer pid={api}) INFO {ts} [entry.py:136] Starting vLLM server on http://127.0.0.1:{port}",
        "INFO:     Application startup complete.",  # 0.31 does not wrap stdout: uvicorn's lines have no prefix
    ],
}
DEAD = {
    OLD: (
        500,
        "(APIServer pid={api}) ERROR {ts} [core_client.py:562] Engine core proc EngineCore_0 died unexpectedly, "
        "shutting down client.",
    ),
    MID: (
        503,
        "(APIServer pid={api}) ERROR {ts} [core_client.py:598] Engine core proc EngineCore_DP0 died "
        "unexpectedly, shutting down client.",
    ),
    NEW: (
        503,
        "(APIServer pid={api}) WARNING {ts} [core_client.py:809] [shutdown] MPClient: engine core exited "
        "unexpectedly; starting cleanup",
    ),
}


def line_pattern(template: str, api: int, port: int) -> re.Pattern[str]:
    text = re.escape(template)
    for name, value in (
        ("api", str(api)),
        ("eng", r"\d+"),
        ("ts", r"\d\d-\d\d \d\d:\d\d:\d\d"),
        ("s", r"\d+\.\d\d"),
        ("port", str(port)),
    ):
        text = text.replace(re.escape("{" + name + "}"), value)
    return re.compile("^" + text + "$", re.M)


@pytest.mark.parametrize("version", [OLD, MID, NEW])
def test_each_version_logs_answers_and_dies_as_its_source(version: str, hf_cache: FakeCache, ledger_dir: Path) -> None:
    env = {"VLLM_SIM_VERSION": version, "VLLM_SIM_FAULT_DIE_AFTER_S": "1.0"}
    if version != OLD:  # warm: the weights already in page cache (0.11.1+ reads MemAvailable: no refusal)
        Ledger(ledger_dir, "earlier-load").record_load(f"{MODEL}@{hf_cache.commit}", 34_322_434_048 / GIB)
    server = start_sim(hf_cache, ledger_dir, env_extra=env)
    server.wait_ready()
    api = server.proc.pid
    for template in EXPECTED_LINES[version]:
        assert line_pattern(template, api, server.port).search(server.output), template
    assert httpx.get(server.base_url + "/version").json() == {"version": version}
    names = {f.name for f in text_string_to_metric_families(httpx.get(server.base_url + "/metrics").text)}
    assert (GPU in names) == (version == OLD)
    assert (TPOT in names) == (version != NEW)
    assert (ITL in names) == (version != OLD)
    status, monitor = DEAD[version]
    assert server.wait_for("EngineCore encountered a fatal error.", 5)
    assert server.wait_for("unexpectedly", 5)
    assert httpx.get(server.base_url + "/health").status_code == status
    assert server.wait_exit(5) == 1
    assert line_pattern(monitor, api, server.port).search(server.output), server.output[-2000:]


def kv_tokens(output: str) -> int:
    return int(re.search(r"GPU KV cache size: ([\d,]+) tokens", output)[1].replace(",", ""))  # type: ignore[index]


def test_page_cache_refuses_010_and_not_011(hf_cache: FakeCache, ledger_dir: Path) -> None:
    """After one load: 0.10.1.1 reads MemFree (84.73 GiB < 0.9 x 119.7), 0.11.1 MemAvailable (116.7)."""
    first = start_sim(hf_cache, ledger_dir)
    first.wait_ready()
    assert first.stop() == 0
    refused = start_sim(hf_cache, ledger_dir)
    assert refused.wait_exit(20) == 1
    assert "ValueError: Free memory on device (84.73/119.7 GiB) on startup" in refused.output
    accepted = start_sim(hf_cache, ledger_dir, env_extra={"VLLM_SIM_VERSION": MID})
    accepted.wait_ready()
    assert accepted.stop() == 0
    assert kv_tokens(accepted.output) == 271_360  # warm or cold, the page cache is not charged on 0.11.1


def test_cold_start_gets_less_kv_than_a_warm_one_on_010_only(hf_cache: FakeCache, tmp_path: Path) -> None:
    """With VLLM_SIM_COLD_LOAD_CHARGE=1 (vllm issue 35920). 0.70 fits beside the page cache even on
    MemFree (83.79 <= 84.73 GiB), so 0.10.1.1 starts warm too."""
    args = [MODEL, "--download-dir", str(hf_cache.root), "--max-model-len", "32000", "--gpu-memory-utilization", "0.70"]
    tokens: dict[tuple[str, str], int] = {}
    for version in (OLD, MID):
        ledger = tmp_path / f"ledger-{version}"
        ledger.mkdir()
        for start in ("cold", "warm"):
            env = {"VLLM_SIM_VERSION": version, "VLLM_SIM_COLD_LOAD_CHARGE": "1"}
            server = start_sim(hf_cache, ledger, args=args, env_extra=env)
            server.wait_ready()
            assert server.stop() == 0
            tokens[(version, start)] = kv_tokens(server.output)
    assert tokens[(OLD, "warm")] == tokens[(MID, "cold")] == tokens[(MID, "warm")] == 173_968
    # the 31.97 GiB of page cache the cold load filled, charged as non-torch: 130,928 tokens fewer (8,183 blocks)
    assert tokens[(OLD, "cold")] == 43_040 == 173_968 - 130_928


def test_profiling_release_fault_fails_once(hf_cache: FakeCache, ledger_dir: Path) -> None:
    env = {"VLLM_SIM_VERSION": NEW, "VLLM_SIM_FAULT_PROFILING_RELEASE_GIB": "40"}
    failed = start_sim(hf_cache, ledger_dir, env_extra=env)
    assert failed.wait_exit(20) == 1
    assert (
        "AssertionError: Error in memory profiling. Initial free memory 116.7 GiB, current free memory 117.79 GiB. "
        "This happens when other processes sharing the same container release GPU memory while vLLM is profiling "
        "during initialization."
    ) in failed.output
    assert "Failed core proc(s): {'EngineCore': 1}" in failed.output
    again = start_sim(hf_cache, ledger_dir, env_extra=env)  # memory is steady now: the retry starts
    again.wait_ready()
    assert again.stop() == 0


def test_negative_kv_memory_is_printed_before_the_no_memory_error(hf_cache: FakeCache, ledger_dir: Path) -> None:
    args = [MODEL, "--download-dir", str(hf_cache.root), "--max-model-len", "32000", "--gpu-memory-utilization", "0.33"]
    server = start_sim(hf_cache, ledger_dir, args=args)
    assert server.wait_exit(20) == 1
    out = server.output
    negative = re.search(r"Available KV cache memory: -\d+\.\d\d GiB", out)
    assert negative and out.index(negative[0]) < out.index("ValueError: No available memory for the cache blocks.")


# --- the images -------------------------------------------------------------------


@pytest.mark.integration
def test_each_image_says_its_version_as_an_ngc_image_does() -> None:
    """The product's probe (tasks/vllm/versions.py VERSION_PROBE) in a throwaway container of each tag."""
    import docker

    from deployments.targets import SIM_IMAGE, SIM_IMAGES
    from sim.image import ensure_sim_image
    from tasks.vllm.versions import VERSION_PROBE, version_from_probe

    client = docker.from_env()
    try:
        assert ensure_sim_image(client) == SIM_IMAGE and SIM_IMAGES[versions.DEFAULT_VERSION] == SIM_IMAGE
        for version, tag in SIM_IMAGES.items():
            out = client.containers.run(tag, list(VERSION_PROBE), remove=True, entrypoint=[], network_mode="none")
            assert out.decode().strip() == version
            assert version_from_probe(out.decode()).base_version == version.split("+")[0]
            cli = client.containers.run(tag, ["vllm", "--version"], remove=True, network_mode="none")
            assert cli.decode().strip() == version
    finally:
        client.close()
