"""The imitation's startup phases: the loaders and their rates, the page cache, the compile cache.

Pure parts first (rates, keys, the command line per version), then host processes of
`python -m sim.vllm serve` timed at a small VLLM_SIM_TIME_SCALE, then one docker test: a compile cache
written by one container and read by a second through a shared host directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sim.vllm.vllm_sim import compile_cache as cc
from sim.vllm.vllm_sim import loaders
from sim.vllm.vllm_sim.knobs import Knobs
from sim.vllm.vllm_sim.testing import FakeCache
from sim.vllm.vllm_sim.versions import V0_10_1_1, V0_10_2, V0_31_0, behaviour
from tests.sim.vllm_fixtures import REPO_ROOT, hf_cache, ledger_dir, runbook_args, start_sim  # noqa: F401

REAL_TOTAL = 34_322_434_048  # the real checkpoint's metadata.total_size (docs/imitations.md)
SHARD = REAL_TOTAL // 7
KNOBS = Knobs()


def _load_s(out: str) -> float:
    match = re.search(r"Loading weights took (\d+\.\d+) seconds", out)
    assert match, out[-3000:]
    return float(match[1])


# --- pure: loaders, rates, keys -----------------------------------------------------------


def test_each_loader_reads_the_runbook_checkpoint_at_its_modelled_rate() -> None:
    mmap = loaders.resolve_loader("auto", None, V0_10_1_1, KNOBS)
    eager = loaders.resolve_loader("auto", "eager", V0_10_2, KNOBS)
    fast = loaders.resolve_loader("fastsafetensors", "eager", V0_31_0, KNOBS)  # the format wins
    assert (mmap.name, eager.name, fast.name) == ("mmap", "eager", "fastsafetensors")
    assert 7 * mmap.shard_seconds(SHARD, warm=False) == pytest.approx(204.3, abs=0.5)  # the runbook's 3.4 min
    assert 7 * eager.shard_seconds(SHARD, warm=False) == pytest.approx(37.7, abs=0.2)
    assert 7 * fast.shard_seconds(SHARD, warm=False) == pytest.approx(31.2, abs=0.2)
    assert 7 * mmap.shard_seconds(SHARD, warm=True) == pytest.approx(50.5, abs=0.2)  # page cache, mmap
    assert 7 * eager.shard_seconds(SHARD, warm=True) == pytest.approx(12.3, abs=0.1)  # page cache, read()
    assert (mmap.buffer_files, eager.buffer_files, fast.buffer_files) == (0, 1, 1)
    assert eager.desc == "Loading safetensors checkpoint shards (eager)"
    assert fast.desc == "Loading fastsafetensors checkpoint shards"
    assert loaders.resolve_loader("fastsafetensors", None, V0_10_1_1, KNOBS).desc == (
        "Loading safetensors using Fastsafetensor loader"
    )


def test_every_rate_is_a_knob_and_warm_is_never_slower_than_cold() -> None:
    knobs = Knobs.from_env(
        {
            "VLLM_SIM_LOAD_GBPS": "0.145",
            "VLLM_SIM_EAGER_GBPS": "0.36",
            "VLLM_SIM_FASTSAFETENSORS_GBPS": "2.0",
            "VLLM_SIM_PAGE_CACHE_GBPS": "1.5",
            "VLLM_SIM_MMAP_WARM_GBPS": "0.1",
            "VLLM_SIM_COMPILE_CACHE_LOAD_S": "7.5",
            "VLLM_SIM_NO_FASTSAFETENSORS": "1",
        }
    )
    mmap = loaders.resolve_loader("auto", "lazy", V0_10_2, knobs)
    assert (mmap.cold_gbps, mmap.warm_gbps) == (0.145, 0.145)
    assert loaders.resolve_loader("auto", "eager", V0_10_2, knobs).warm_gbps == 1.5
    assert loaders.resolve_loader("fastsafetensors", None, V0_10_2, knobs).warm_gbps == 2.0
    assert knobs.compile_cache_load_s == 7.5 and knobs.no_fastsafetensors


def test_warm_shards_follow_the_page_cache_of_the_snapshot() -> None:
    assert loaders.warm_shards(7, 31.97, 0.0) == [False] * 7
    assert loaders.warm_shards(7, 31.97, 31.97) == [True] * 7
    assert loaders.warm_shards(7, 7.0, 3.5) == [True, True, True, False, False, False, False]


def test_missing_fastsafetensors_is_each_versions_error() -> None:
    old = loaders.missing_package(V0_10_1_1)
    assert str(old) == "ImportError: Please install vllm[fastsafetensors] for fastsafetensors support"
    assert old.cause_line == "ModuleNotFoundError: No module named 'fastsafetensors'" and old.in_engine
    assert str(loaders.missing_package(V0_31_0)) == "ModuleNotFoundError: No module named 'fastsafetensors'"


def test_compile_cache_key_and_root(tmp_path: Path) -> None:
    fields = {"model": "Qwen/Qwen3-32B-FP8", "dtype": "auto", "max_model_len": 32000, "max_num_batched_tokens": 16384}
    env = {"VLLM_CACHE_ROOT": str(tmp_path / "c")}
    same = cc.compile_cache(env, V0_10_1_1, "0.10.1.1", fields).local_dir
    assert same == cc.compile_cache(env, V0_10_1_1, "0.10.1.1", dict(fields)).local_dir
    assert re.fullmatch(r"[0-9a-f]{10}", same.parts[-3]) and same.parts[-4:-2][0] == "torch_compile_cache"
    assert same.parts[-2:] == ("rank_0_0", "backbone")
    longer = cc.compile_cache(env, V0_10_1_1, "0.10.1.1", {**fields, "max_model_len": 16000}).local_dir
    assert longer != same
    batched = {**fields, "max_num_batched_tokens": 8192}  # hashed from 0.17.1 (the compile range), not in 0.10.1.1
    assert cc.compile_cache(env, V0_10_1_1, "0.10.1.1", batched).local_dir == same
    new = cc.compile_cache(env, V0_31_0, "0.31.0", fields)
    assert cc.compile_cache(env, V0_31_0, "0.31.0", batched).aot_path != new.aot_path
    assert cc.compile_cache(env, V0_10_1_1, "0.10.2", fields).local_dir != same  # another vLLM
    assert cc.cache_root({}) == Path(os.path.expanduser("~/.cache/vllm"))
    assert cc.cache_root({"XDG_CACHE_HOME": "/x"}) == Path("/x/vllm")
    assert cc.cache_root({"VLLM_CACHE_ROOT": "~/v", "XDG_CACHE_HOME": "/x"}) == Path(os.path.expanduser("~/v"))
    assert cc.disabled({"VLLM_DISABLE_COMPILE_CACHE": "1"}) and not cc.disabled({})


def test_an_entry_is_a_hit_only_with_the_same_factors(tmp_path: Path) -> None:
    env = {"VLLM_CACHE_ROOT": str(tmp_path)}
    for b, version in ((V0_10_1_1, "0.10.1.1"), (V0_31_0, "0.31.0")):
        entry = cc.compile_cache(env, b, version, {"model": "m", "max_model_len": 1})
        assert not entry.hit()
        entry.write()
        assert entry.hit()
        (entry.aot_path if b.aot_compile else entry.local_dir / cc.ARTIFACT / "sim-artifact.json").write_text("{}")
        assert not entry.hit()  # a damaged entry is compiled again


def _parse(version: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VLLM_SIM_VERSION": version}
    code = "import sys; from sim.vllm.vllm_sim.cli import parse; ns = parse(sys.argv[1:]); print(ns.non_default)"
    return subprocess.run([sys.executable, "-c", code, "serve", "m", *argv], cwd=REPO_ROOT, env=env, text=True,
                          capture_output=True, timeout=30)  # fmt: skip


def test_the_load_strategy_flag_exists_from_0_10_2_with_each_versions_choices() -> None:
    refused = _parse("0.10.1.1", "--safetensors-load-strategy", "eager")
    assert refused.returncode == 2
    assert "vllm: error: unrecognized arguments: --safetensors-load-strategy eager" in refused.stderr
    assert "'safetensors_load_strategy': 'eager'" in _parse("0.10.2", "--safetensors-load-strategy", "eager").stdout
    assert _parse("0.10.2", "--safetensors-load-strategy", "anything").returncode == 0  # `str` in 0.10.2
    bad = _parse("0.31.0", "--safetensors-load-strategy", "anything")
    assert bad.returncode == 2 and "invalid choice: 'anything'" in bad.stderr
    assert "'load_format': 'fastsafetensors'" in _parse("0.10.1.1", "--load-format", "fastsafetensors").stdout
    assert behaviour("0.20.1").load_strategy_default == "lazy" and V0_31_0.load_strategy_default is None


# --- host processes: the phases, time-scaled ----------------------------------------------


def test_each_loader_takes_its_time_and_a_warm_page_cache_is_faster(hf_cache: FakeCache, ledger_dir: Path) -> None:
    scale = 0.01
    env = {"VLLM_SIM_TIME_SCALE": str(scale), "VLLM_SIM_VERSION": "0.31.0"}
    times = {}
    for name, extra in (("cold mmap", []), ("warm mmap", []), ("warm eager", ["--safetensors-load-strategy", "eager"])):
        server = start_sim(hf_cache, ledger_dir, extra, env)
        server.wait_ready(30)
        assert server.stop() == 0
        times[name] = _load_s(server.output)
    assert times["cold mmap"] == pytest.approx(204.3 * scale, abs=0.4)
    assert times["warm mmap"] == pytest.approx(50.5 * scale, abs=0.3)
    assert times["warm eager"] == pytest.approx(12.3 * scale, abs=0.3)
    (ledger_dir / "drop_caches").write_text("3")
    time.sleep(0.05)
    server = start_sim(hf_cache, ledger_dir, ["--load-format", "fastsafetensors"], env)
    server.wait_ready(30)
    server.stop()
    assert _load_s(server.output) == pytest.approx(31.2 * scale, abs=0.3)
    assert "Loading fastsafetensors checkpoint shards: 100% Completed | 7/7" in server.output


@pytest.mark.parametrize(
    ("version", "last_line"),
    [
        ("0.10.1.1", "ImportError: Please install vllm[fastsafetensors] for fastsafetensors support"),
        ("0.31.0", "ModuleNotFoundError: No module named 'fastsafetensors'"),
    ],
)
def test_fastsafetensors_hidden_fails_with_the_versions_error(
    hf_cache: FakeCache, ledger_dir: Path, version: str, last_line: str
) -> None:
    env = {"VLLM_SIM_VERSION": version, "VLLM_SIM_NO_FASTSAFETENSORS": "1"}
    server = start_sim(hf_cache, ledger_dir, ["--load-format", "fastsafetensors"], env)
    assert server.wait_exit(30) == 1
    out = server.output
    assert re.search(rf"^(?:\(EngineCore\w* pid=\d+\) )?{re.escape(last_line)}$", out, re.M), out[-3000:]
    assert "RuntimeError: Engine core initialization failed. See root cause above." in out
    assert not list((ledger_dir / "held").glob("*.json"))  # released


def test_eager_holds_one_file_in_memory_while_loading(hf_cache: FakeCache, ledger_dir: Path) -> None:
    env = {"VLLM_SIM_TIME_SCALE": "0.05", "VLLM_SIM_VERSION": "0.10.2", "VLLM_SIM_INSTANCE_ID": "eager"}
    server = start_sim(hf_cache, ledger_dir, ["--safetensors-load-strategy", "eager"], env)
    seen: list[tuple[str, float]] = []
    deadline = time.monotonic() + 30
    while "Application startup complete." not in server.output and time.monotonic() < deadline:
        try:
            entry = json.loads((ledger_dir / "held" / "eager.json").read_text())
            seen.append((entry["state"], entry["gib"]))
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    server.stop()
    per_file = REAL_TOTAL / 7 / 1024**3  # 4.567 GiB
    loading = [gib for state, gib in seen if state == "loading"]
    assert any(gib == pytest.approx(0.5 + per_file, abs=0.01) for gib in loading), loading  # first file read
    assert max(loading) == pytest.approx(0.5 + 7 * per_file, abs=0.01)  # weights; the last buffer released
    assert all(gib <= 0.5 + 7 * per_file + 0.01 for gib in loading)


def test_the_compile_cache_is_read_on_the_same_config_and_missed_on_another(
    hf_cache: FakeCache, ledger_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "vllm-cache"
    env = {"VLLM_SIM_VERSION": "0.31.0", "VLLM_CACHE_ROOT": str(root)}
    outputs = []
    for args in (runbook_args(hf_cache.root), runbook_args(hf_cache.root), _with(hf_cache, "--max-model-len", "16000")):
        server = start_sim(hf_cache, ledger_dir, env_extra=env, args=args)
        server.wait_ready(30)
        server.stop()
        outputs.append(server.output)
    first, second, changed = outputs
    assert f"Using cache directory: {root}/torch_compile_cache/" in first and "saved AOT compiled function" in first
    assert re.search(rf"Directly load AOT compilation from path {root}/torch_compile_cache/torch_aot_compile/", second)
    assert "Dynamo bytecode transform time" not in second and "torch.compile took" in second
    assert "Directly load" not in changed and "saved AOT compiled function" in changed
    assert len(list((root / "torch_compile_cache" / "torch_aot_compile").iterdir())) == 2


def test_the_0_10_1_1_cache_hit_still_runs_dynamo_and_disabled_writes_nothing(
    hf_cache: FakeCache, ledger_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "vllm-cache"
    env = {"VLLM_CACHE_ROOT": str(root), "VLLM_SIM_TIME_SCALE": "0.01"}
    outputs = []
    for _ in range(2):
        server = start_sim(hf_cache, ledger_dir, [], env)
        server.wait_ready(30)
        server.stop()
        outputs.append(server.output)
        (ledger_dir / "drop_caches").write_text("3")  # 0.10.1.1 counts the page cache as used
        time.sleep(0.05)
    assert "Compiling a graph for dynamic shape takes" in outputs[0]
    hit = re.search(
        r"Directly load the compiled graph\(s\) for dynamic shape from the cache, took (\d+\.\d+) s", outputs[1]
    )
    assert hit and float(hit[1]) == pytest.approx(1.8 * 0.01, abs=0.05)
    assert "Dynamo bytecode transform time" in outputs[1]
    off = tmp_path / "off"
    server = start_sim(hf_cache, ledger_dir, [], {"VLLM_CACHE_ROOT": str(off), "VLLM_DISABLE_COMPILE_CACHE": "1"})
    server.wait_ready(30)
    server.stop()
    assert "vLLM's torch.compile cache is disabled." in server.output and not off.exists()


def _with(cache: FakeCache, flag: str, value: str) -> list[str]:
    """The runbook's command line with one flag's value changed."""
    args = runbook_args(cache.root)
    args[args.index(flag) + 1] = value
    return args


# --- docker: the mount works ----------------------------------------------------------------


@pytest.mark.integration
def test_a_compile_cache_written_by_one_container_is_read_by_the_next(tmp_path: Path) -> None:
    """Two containers of the default image (0.10.1.1) with one host directory at /root/.cache/vllm, as the
    deploy mounts the target's vllm_cache_dir; the second loads the first's compiled graphs. Also the image's
    `fastsafetensors` package, present and hidden."""
    import docker

    from sim.image import ensure_sim_image
    from sim.vllm.vllm_sim.testing import build_hf_cache

    client = docker.from_env()
    image = ensure_sim_image(client)
    cache = build_hf_cache(tmp_path / "hf")
    host_cache = tmp_path / "vllm-cache"
    host_cache.mkdir()
    label = {"org.spark-vllm.test-case": uuid.uuid4().hex}
    common = {
        "volumes": {
            str(cache.root): {"bind": "/root/.cache/huggingface", "mode": "ro"},
            str(host_cache): {"bind": "/root/.cache/vllm", "mode": "rw"},
        },
        "environment": {
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": "/root/.cache/huggingface",
            "VLLM_SIM_TIME_SCALE": "0.001",
        },
        "labels": label,
        "network_mode": "none",
    }
    command = ["vllm", "serve", "Qwen/Qwen3-32B-FP8", "--download-dir", "/root/.cache/huggingface"]
    probe = ["python3", "-c", "import fastsafetensors"]
    try:
        logs = []
        for _ in range(2):  # no ledger mount: each container is an empty machine (no page cache to drop)
            container = client.containers.run(image, command, detach=True, **common)
            deadline = time.monotonic() + 60
            while b"Application startup complete." not in container.logs() and time.monotonic() < deadline:
                time.sleep(0.1)
            container.stop(timeout=10)
            logs.append(container.logs().decode())
            container.remove()
        assert "Using cache directory: /root/.cache/vllm/torch_compile_cache/" in logs[0]
        assert "Compiling a graph for dynamic shape takes" in logs[0]
        assert "Directly load the compiled graph(s) for dynamic shape from the cache, took" in logs[1], logs[1][-3000:]
        assert list(host_cache.glob("torch_compile_cache/*/rank_0_0/backbone/vllm_compile_cache.py"))
        client.containers.run(image, probe, remove=True, entrypoint=[], network_mode="none")  # importable
        with pytest.raises(docker.errors.ContainerError) as hidden:
            client.containers.run(
                image, probe, remove=True, entrypoint=[], network_mode="none",
                environment={"VLLM_SIM_NO_FASTSAFETENSORS": "1"},
            )  # fmt: skip
        assert b"ModuleNotFoundError: No module named 'fastsafetensors'" in (hidden.value.stderr or b"")
    finally:
        case = label["org.spark-vllm.test-case"]
        for left in client.containers.list(all=True, filters={"label": f"org.spark-vllm.test-case={case}"}):
            left.remove(force=True)
        client.containers.run(  # root wrote the entries: remove them as root
            image, ["sh", "-c", "rm -rf /c/*"], remove=True, entrypoint=[], network_mode="none",
            volumes={str(host_cache): {"bind": "/c", "mode": "rw"}},
        )  # fmt: skip
        client.close()
