"""stage-model through the real Hub imitation and a real Prefect server, real files on disk.

Happy path, the cache huggingface_hub expects, re-run, offline, verify/repair, in-run faults
(connection cut, 5xx/429, Range ignored), access errors and the disk preflight.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from staging_rig import GATED, REPO, TOKEN, blobs_dir, file_info, repo_bytes, shard_names, stage

from sim.hub import Faults
from tasks.staging import (
    DiskSpaceError,
    GatedRepoError,
    HubAuthError,
    OfflineCacheError,
    RepoNotFoundError,
    RevisionNotFoundError,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def staged(prefect_server, hub_server, tmp_path_factory) -> Path:
    """A cache staged once for the module; tests get a copy (symlinks and mtimes kept)."""
    import os as _os

    root = tmp_path_factory.mktemp("staged") / "hf"
    old = _os.environ.get("HF_TOKEN")
    _os.environ["HF_TOKEN"] = TOKEN
    try:
        stage(hub_server, root)
    finally:
        if old is None:
            _os.environ.pop("HF_TOKEN", None)
        else:
            _os.environ["HF_TOKEN"] = old
    return root


@pytest.fixture
def complete_cache(staged: Path, cache: Path) -> Path:
    shutil.copytree(staged, cache, symlinks=True)
    return cache


def run_artifacts_and_logs(flow_run_id) -> tuple[list, list]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        logs = []
        for _ in range(20):
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            if any("staged " in log.message for log in logs):
                break
            time.sleep(0.25)
    return arts, logs


def assert_cache_is_what_hf_expects(hub, cache: Path, repo: str = REPO) -> None:
    from huggingface_hub import HfApi, scan_cache_dir, snapshot_download

    commit = hub.commit(repo)
    snap = snapshot_download(repo, cache_dir=str(cache), local_files_only=True)
    assert Path(snap).name == commit
    for path, _size, _etag, _lfs in hub.files(repo):
        served = hub.local_path(repo, path).read_bytes()
        assert (Path(snap) / path).read_bytes() == served, path
        assert os.path.islink(Path(snap) / path) and not os.path.isabs(os.readlink(Path(snap) / path))
    info = scan_cache_dir(str(cache))
    assert info.warnings == [] and not info.incomplete_files
    (cached,) = [r for r in info.repos if r.repo_id == repo]
    (rev,) = cached.revisions
    assert rev.commit_hash == commit and "main" in rev.refs
    check = HfApi(endpoint=hub.url, token=TOKEN).verify_repo_checksums(repo, cache_dir=str(cache))
    assert check.mismatches == [] and check.missing_paths == [] and check.extra_paths == []
    assert check.checked_count == len(hub.files(repo))


def test_fresh_stage_builds_the_cache_huggingface_hub_expects(prefect_server, hub, cache, logs) -> None:
    state = stage(hub, cache, return_state=True)
    result = state.result()
    total = repo_bytes(hub)
    assert result.source == "hub" and result.commit == hub.commit(REPO)
    assert result.bytes_downloaded == total == result.bytes_total and hub.stats()["bytes_total"] == total
    assert result.files_downloaded == result.files_total == len(hub.files(REPO))
    assert Path(result.manifest_path) == cache / "models--Qwen--Qwen3-32B-FP8" / "staging" / f"{result.commit}.json"
    assert_cache_is_what_hf_expects(hub, cache)

    arts, run_logs = run_artifacts_and_logs(state.state_details.flow_run_id)
    kinds = {a.type for a in arts}
    assert {"progress", "markdown"} <= kinds
    (progress,) = [a for a in arts if a.type == "progress"]
    assert progress.data == 100.0
    (md,) = [a for a in arts if a.type == "markdown"]
    assert result.commit in md.data and "model-00001-of-00004.safetensors" in md.data
    per_file = [log.message for log in run_logs if "sha256 ok" in log.message]
    assert len(per_file) == result.files_total  # one line per file
    # The token is in no log line, artifact or result.
    everything = (
        logs.text
        + "".join(str(a.data) + str(a.description) for a in arts)
        + "".join(log.message for log in run_logs)
        + result.model_dump_json()
    )
    assert TOKEN not in everything


def test_rerun_over_complete_cache_moves_no_bytes_in_under_2s(prefect_server, hub, complete_cache) -> None:
    cache = complete_cache
    manifest = next((cache / "models--Qwen--Qwen3-32B-FP8" / "staging").iterdir())
    before = manifest.stat().st_mtime_ns
    t0 = time.monotonic()
    result = stage(hub, cache)
    elapsed = time.monotonic() - t0
    assert result.bytes_downloaded == 0 and result.bytes_hashed == 0
    assert result.files_reused == result.files_total
    assert hub.stats()["bytes_total"] == 0
    assert manifest.stat().st_mtime_ns == before  # nothing rewritten
    assert elapsed < 2.0, f"re-run took {elapsed:.2f}s"


def test_offline_and_hub_down_succeed_from_the_manifest(prefect_server, hub, complete_cache, monkeypatch) -> None:
    cache = complete_cache
    commit = hub.commit(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = stage(hub, cache)
    assert offline.source == "manifest" and offline.commit == commit and offline.bytes_downloaded == 0
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:  # a port nobody listens on: the Hub is down
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = stage(hub, cache, endpoint=dead)
    assert down.source == "manifest" and down.snapshot_path == offline.snapshot_path
    assert hub.stats()["bytes_total"] == 0


def test_offline_errors_name_what_is_missing(hub, complete_cache, tmp_path) -> None:
    """Offline with a blob missing, or on a cache never staged: a clear error, no network."""
    from tasks.staging import inspect_cache, plan_staging, resolve_repo

    cache = str(complete_cache)
    listing = resolve_repo.fn(REPO, "main", cache, None, hub.url, None, True)
    assert listing.source == "manifest" and listing.commit == hub.commit(REPO)
    shard = shard_names()[0]
    (blobs_dir(complete_cache) / file_info(hub, shard)[2]).unlink()
    state = inspect_cache.fn(listing, cache, False)
    with pytest.raises(OfflineCacheError, match=shard):
        plan_staging.fn(listing, state)
    with pytest.raises(OfflineCacheError, match="never staged"):
        resolve_repo.fn(REPO, "main", str(tmp_path / "empty"), None, hub.url, None, True)
    assert hub.stats()["bytes_total"] == 0 and not hub.stats()["requests"]


def test_verify_detects_same_size_corruption_and_refetches_only_that_file(prefect_server, hub, complete_cache) -> None:
    cache = complete_cache
    shard = shard_names()[2]
    _, size, etag, _ = file_info(hub, shard)
    blob = blobs_dir(cache) / etag
    st = blob.stat()
    with open(blob, "r+b") as f:  # flip bytes in the middle, same size, same mtime: invisible without a hash
        f.seek(size // 2)
        chunk = f.read(16)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    # Offline, verify finds it but cannot repair: it says which file and what to do.
    with pytest.raises(OfflineCacheError, match=shard):
        stage(hub, cache, verify=True, offline=True)
    result = stage(hub, cache, verify=True)
    assert result.verified and result.files_repaired == 1 and result.bytes_hashed == repo_bytes(hub)
    assert result.bytes_downloaded == size
    assert hub.stats()["bytes_served"] == {f"{REPO}/{shard}": size}  # only that file came again
    assert_cache_is_what_hf_expects(hub, cache)


def test_blobs_from_elsewhere_are_hashed_once_then_trusted(prefect_server, hub, complete_cache) -> None:
    """A cache filled by `hf download` (no manifest) is checked by hash, not downloaded again."""
    cache = complete_cache
    staging_dir = cache / "models--Qwen--Qwen3-32B-FP8" / "staging"
    shutil.rmtree(staging_dir)
    result = stage(hub, cache)
    assert result.bytes_downloaded == 0 and result.bytes_hashed == repo_bytes(hub)
    assert hub.stats()["bytes_total"] == 0
    from tasks.staging import inspect_cache, resolve_repo

    listing = resolve_repo.fn(REPO, "main", str(cache), None, hub.url, None, True)  # from the new manifest
    assert inspect_cache.fn(listing, str(cache), False).hashed_files == 0  # now trusted without hashing


def test_connection_cut_mid_shard_is_resumed_in_the_same_run(prefect_server, hub, cache) -> None:
    shard = shard_names()[0]
    size = file_info(hub, shard)[1]
    hub.set_faults(Faults(cut_after_bytes=size // 2, path_glob=shard, times=1))
    result = stage(hub, cache)
    stats = hub.stats()
    assert stats["cut_connections"] == 1 and result.retries == 1 and result.restarts == 0
    assert stats["range_requests"] == {f"{REPO}/{shard}": 1}
    assert result.bytes_downloaded == repo_bytes(hub) == stats["bytes_total"]  # no byte fetched twice
    assert_cache_is_what_hf_expects(hub, cache)


def test_5xx_and_429_are_retried_then_succeed(prefect_server, hub, cache) -> None:
    first, second = shard_names()[:2]
    hub.set_faults(
        [
            Faults(status_5xx=503, path_glob=first, methods=["GET"], times=2),
            Faults(status_5xx=429, retry_after=1, path_glob=second, methods=["GET"], times=1),
            Faults(status_5xx=502, path_glob=f"/api/models/{REPO}/revision/*", times=1),
        ]
    )
    t0 = time.monotonic()
    result = stage(hub, cache)
    status = hub.stats()["status"]
    assert status.get("502") == 1  # the metadata request was retried too
    assert result.retries == 3 and status.get("503") == 2 and status.get("429") == 1
    assert time.monotonic() - t0 >= 1.0  # Retry-After honoured
    assert result.bytes_downloaded == repo_bytes(hub)
    assert_cache_is_what_hf_expects(hub, cache)


def test_range_ignored_restarts_the_file_cleanly(prefect_server, hub, cache) -> None:
    shard = shard_names()[1]
    size = file_info(hub, shard)[1]
    hub.set_faults(
        [
            Faults(cut_after_bytes=size // 3, path_glob=shard, times=1),
            Faults(ignore_range=True, path_glob=shard, times=1),
        ]
    )
    result = stage(hub, cache)
    assert result.restarts == 1 and result.retries == 1
    assert hub.stats()["faults_fired"].get("ignore_range") == 1
    assert result.bytes_downloaded == repo_bytes(hub) + size // 3  # the dropped third came again, once
    assert_cache_is_what_hf_expects(hub, cache)


def _no_partials(cache: Path) -> bool:
    return not cache.exists() or not any(p.name.endswith(".incomplete") for p in cache.rglob("*"))


def test_missing_or_rejected_token_is_a_clear_error_without_retry_or_partial(
    prefect_server, hub, cache, monkeypatch, logs
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubAuthError) as exc:
        stage(hub, cache)
    msg = str(exc.value)
    assert "no token was found" in msg and "hf-token" in msg and "HF_TOKEN" in msg
    assert hub.stats()["status"] == {"401": 1}  # one request, no retry
    wrong = "hf_wrong_" + uuid.uuid4().hex
    monkeypatch.setenv("HF_TOKEN", wrong)
    with pytest.raises(HubAuthError, match="rejected the token"):
        stage(hub, cache)
    assert hub.stats()["status"] == {"401": 2}
    assert _no_partials(cache) and not blobs_dir(cache).exists()
    assert wrong not in logs.text and TOKEN not in logs.text


def test_gated_repo_says_accept_the_license_and_leaves_nothing(prefect_server, hub, cache, logs) -> None:
    hub.revoke_gate(GATED)
    with pytest.raises(GatedRepoError) as exc:
        stage(hub, cache, repo_id=GATED)
    msg = str(exc.value)
    assert f"{hub.url}/{GATED}" in msg and "Accept the license" in msg and TOKEN not in msg
    resolves = {k: v for k, v in hub.stats()["requests_by_file"].items()}
    assert all(sum(c.values()) <= 1 for c in resolves.values())  # no retry of any file
    assert _no_partials(cache)
    assert TOKEN not in logs.text
    hub.accept_gate(GATED)
    try:
        result = stage(hub, cache, repo_id=GATED)
        assert result.files_downloaded == result.files_total
    finally:
        hub.revoke_gate(GATED)


def test_unknown_repo_and_revision_say_check_the_id(prefect_server, hub, cache) -> None:
    with pytest.raises(RepoNotFoundError, match="Check the repo id"):
        stage(hub, cache, repo_id="Qwen/Qwen3-32B-FP9")
    with pytest.raises(RevisionNotFoundError, match="'v9.9'"):
        stage(hub, cache, revision="v9.9")
    assert hub.stats()["status"] == {"404": 2} and not cache.exists()


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_not_enough_disk_fails_before_a_byte_moves(prefect_server, hub, small_fs) -> None:
    cache = small_fs / "hf"
    with pytest.raises(DiskSpaceError) as exc:
        stage(hub, cache)
    err = exc.value
    assert str(err.needed) in str(err) and str(err.free) in str(err)
    assert err.needed > repo_bytes(hub) and err.free <= 8 * 1024 * 1024
    assert hub.stats()["bytes_total"] == 0
    assert not cache.exists() and list(small_fs.iterdir()) == []  # nothing written at all


def test_secret_block_wins_and_a_missing_block_is_fine(prefect_server, monkeypatch, tmp_path) -> None:
    from prefect.blocks.system import Secret

    from tasks.secrets import load_secret

    name = "hf-token-" + uuid.uuid4().hex[:8]
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert load_secret(name, ("HF_TOKEN",), None).get_secret_value() == "hf_from_env"  # block absent
    Secret(value="hf_from_block").save(name)
    got = load_secret(name, ("HF_TOKEN",), tmp_path / ".env")
    assert got.get_secret_value() == "hf_from_block"


def test_digest_of_served_files_matches_listing(hub) -> None:
    """Guard on the rig itself: the imitation serves the bytes its listing describes."""
    for path, size, etag, lfs in hub.files(REPO):
        data = hub.local_path(REPO, path).read_bytes()
        assert len(data) == size
        if lfs:
            assert hashlib.sha256(data).hexdigest() == etag


def test_vllm_imitation_starts_offline_on_the_staged_cache(hub, complete_cache, tmp_path) -> None:
    """The runbook's command line, HF_HUB_OFFLINE=1, config/tokenizer and weights from the staged cache."""
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "ledger").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "HF_"))}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": str(complete_cache),
            "VLLM_SIM_LEDGER_DIR": str(tmp_path / "ledger"),
            "VLLM_SIM_TIME_SCALE": "0.002",
        }
    )
    cmd = [
        sys.executable,
        "-m",
        "sim.vllm",
        "serve",
        REPO,
        "--download-dir",
        str(complete_cache),
        "--max-model-len",
        "32000",
        "--gpu-memory-utilization",
        "0.90",
        "--max-num-batched-tokens",
        "16384",
        "--max-num-seqs",
        "64",
        "--enable-prefix-caching",
        "--trust-remote-code",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = tmp_path / "vllm.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=Path(__file__).resolve().parents[2], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(0.1)
        assert ready, log.read_text(errors="replace")[-3000:]
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
        assert models["data"][0]["id"] == REPO
    finally:
        proc.terminate()
        proc.wait(10)
    assert hub.stats()["requests"] == {}  # nothing asked of the Hub
