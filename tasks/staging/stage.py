"""The staging steps in order, as one plain function: what `stage-model` runs, and what deploy-qwen
runs inside its own flow run (flows never import each other; both call this).

Each step is a task of the calling flow run (see tasks/staging/steps.py), so the UI shows them
under whichever flow staged the model.
"""

from __future__ import annotations

import os
import time

from tasks.secrets import DOTENV, HF_TOKEN_ENV_VARS, describe_sources, load_secret

from . import (
    DEFAULT_ALLOW_PATTERNS,
    StageResult,
    check_disk_space,
    inspect_cache,
    link_snapshot,
    plan_staging,
    report_staging,
    resolve_endpoint,
    resolve_repo,
    transfer_files,
    write_manifest,
)


def offline_from_env() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value, as huggingface_hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def stage_steps(
    repo_id: str = "Qwen/Qwen3-32B-FP8",
    revision: str = "main",
    cache_dir: str = "/opt/hf",
    allow_patterns: list[str] | None = None,
    max_workers: int = 8,
    token_secret_block: str | None = "hf-token",
    endpoint: str | None = None,
    verify: bool = False,
    offline: bool | None = None,
) -> StageResult:
    """Stage a Hub model into a Hugging Face cache so vLLM starts offline from it.

    Resolve, inspect, plan, check disk, transfer, link, record, report; each step a task of the
    calling flow run (this function is the body of the `stage-model` flow, and deploy-qwen calls it
    inside its own run).

    Args:
        repo_id: the model on the Hub.
        revision: branch, tag or commit; recorded as refs/<revision> in the cache.
        cache_dir: the Hugging Face cache (mounted into the vLLM container).
        allow_patterns: files to stage; default DEFAULT_ALLOW_PATTERNS (configs, tokenizer files,
            safetensors index and shards, chat template, remote code, README/LICENSE).
        max_workers: files transferred in parallel.
        token_secret_block: Prefect Secret block holding the Hub token (a missing block is fine).
        endpoint: the Hub; default HF_ENDPOINT or https://huggingface.co.
        verify: re-hash every blob against the Hub listing (or the manifest offline) and re-fetch
            only the wrong ones.
        offline: never contact the Hub; None reads HF_HUB_OFFLINE.
    """
    started = time.monotonic()
    offline = offline_from_env() if offline is None else offline
    endpoint = resolve_endpoint(endpoint)
    patterns = list(allow_patterns) if allow_patterns is not None else list(DEFAULT_ALLOW_PATTERNS)
    token_help = "set one in " + describe_sources(token_secret_block, HF_TOKEN_ENV_VARS, DOTENV)
    token = None if offline else load_secret(token_secret_block, HF_TOKEN_ENV_VARS, DOTENV)

    # 1. Which commit, which files.
    listing = resolve_repo(repo_id, revision, cache_dir, patterns, endpoint, token, offline, token_help)
    # 2. What the cache already has: reuse, resume, download.
    state = inspect_cache(listing, cache_dir, verify, workers=min(max_workers, os.cpu_count() or 1))
    plan = plan_staging(listing, state)
    # 3. Enough disk for the rest, before a byte moves.
    check_disk_space(plan, cache_dir)
    # 4. The bytes.
    report = transfer_files(listing, plan, cache_dir, token, max_workers, token_help)
    # 5. The snapshot vLLM reads, and the manifest later runs verify against.
    snapshot = link_snapshot(listing, cache_dir)
    manifest = write_manifest(listing, state, report, cache_dir)
    # 6. What happened.
    return report_staging(listing, plan, state, report, snapshot, manifest, cache_dir, started, verify)
