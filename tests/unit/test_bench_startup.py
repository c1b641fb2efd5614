"""bench/startup.py: the phases read from a start's log, put back at Spark speed, and the sensitivity."""

from pathlib import Path

import pytest

from bench.startup import (
    PARAMETERS,
    drop_stamp,
    phase_spans,
    read_rate_knob,
    restart_at,
    spark_phases,
)

# one start's log as the imitation of 0.31.0 writes it (sim/vllm/vllm_sim/versions.py), docker's timestamps
LINES = [
    (100.5, "INFO 12-05 20:00:00 [__init__.py:241] Automatically detected platform cuda."),
    (100.72, "(EngineCore_DP0 pid=1) INFO [gpu_model_runner.py:1953] Starting to load model Qwen/Qwen3-32B-FP8..."),
    (101.0, "Loading fastsafetensors checkpoint shards: 100% Completed | 7/7 [00:00<00:00]"),
    (
        101.1,
        "(EngineCore_DP0 pid=1) INFO [gpu_model_runner.py:5354] Model loading took 32.0 GiB memory and 0.38 seconds",
    ),
    (101.14, "(EngineCore_DP0 pid=1) INFO [monitor.py:53] torch.compile took 0.04 s in total"),
    (
        101.26,
        "(EngineCore_DP0 pid=1) INFO [core.py:377] init engine (profile, create kv cache, warmup model) took 0.16 s",
    ),
    (101.28, "(APIServer pid=1) INFO:     Application startup complete."),
]


def test_each_phase_runs_to_the_line_that_closes_it() -> None:
    spans = phase_spans(LINES, started=100.0)
    assert spans is not None
    assert spans["python"] == pytest.approx(0.5)
    assert spans["init"] == pytest.approx(0.22)
    assert spans["loading"] == pytest.approx(0.38)
    assert spans["compiling"] == pytest.approx(0.04)
    assert spans["kv_graphs"] == pytest.approx(0.12)
    assert spans["serving"] == pytest.approx(0.02)


def test_the_0_10_compile_line_closes_compiling_too() -> None:
    lines = [(t, line.replace("torch.compile took", "torch.compile takes")) for t, line in LINES]
    spans = phase_spans(lines, started=100.0)
    assert spans is not None and spans["compiling"] == pytest.approx(0.04)


def test_a_start_that_never_served_has_no_phases() -> None:
    assert phase_spans(LINES[:-1], started=100.0) is None
    assert phase_spans([], started=100.0) is None


def test_only_the_imitations_phases_are_scaled_back() -> None:
    spans = phase_spans(LINES, started=100.0)
    assert spans is not None
    spark = spark_phases(spans, 0.02)
    assert spark["python"] == pytest.approx(0.5)  # the container's own Python start-up: real time
    assert spark["loading"] == pytest.approx(19.0)
    with pytest.raises(ValueError):
        spark_phases(spans, 0)


def test_the_read_rate_is_named_by_the_nearest_default() -> None:
    size = 34_300_000_000
    assert read_rate_knob(size, size / 0.168e9) == "load_gbps"  # mmap from disk
    assert read_rate_knob(size, size / 1.05e9) == "fastsafetensors_gbps"
    assert read_rate_knob(size, size / 2.6e9) == "page_cache_gbps"
    assert read_rate_knob(size, size / 0.7e9) == "mmap_warm_gbps"
    with pytest.raises(ValueError):
        read_rate_knob(size, 0)


def test_a_parameter_moves_only_the_phase_it_sets() -> None:
    phases = {"python": 1.0, "init": 11.0, "loading": 12.0, "compiling": 1.8, "kv_graphs": 5.5, "serving": 0.5}
    total = sum(phases.values())
    # the page-cache rate at 4.1 instead of 2.8 shortens a warm fastsafetensors load by that ratio
    at = restart_at(phases, "page_cache_gbps", 4.1, "page_cache_gbps", cache_hit=True)
    assert at == pytest.approx(total - 12.0 + 12.0 * 2.8 / 4.1)
    # a rate the load did not run at leaves it alone
    assert restart_at(phases, "load_gbps", 0.145, "page_cache_gbps", cache_hit=True) == total
    # the compile-cache load time moves a cache hit by its difference, never a miss
    hi = PARAMETERS["compile_cache_load_s"][3]
    assert restart_at(phases, "compile_cache_load_s", hi, "page_cache_gbps", cache_hit=True) == pytest.approx(
        total + hi - 1.8
    )
    assert restart_at(phases, "compile_cache_load_s", hi, "page_cache_gbps", cache_hit=False) == total


def test_a_drop_is_a_write_of_1_or_3(tmp_path: Path) -> None:
    path = tmp_path / "drop_caches"
    assert drop_stamp(path) is None
    path.write_text("")
    assert drop_stamp(path) is None
    path.write_text("3\n")
    assert drop_stamp(path) == path.stat().st_mtime
