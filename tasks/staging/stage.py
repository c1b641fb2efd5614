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
    repo_id: str,
    revision: str,
    cache_dir: str,
    allow_patterns: list[str] | None = None,
    max_workers: int = 8,
    token_secret_block: str | None = "hf-token",
    endpoint: str | None = None,
    verify: bool = False,
    offline: bool | None = None,
) -> StageResult:
    """Resolve, inspect, plan, check disk, transfer, link, record, report. See flows/stage.py for
    what each argument means; it must be called inside a flow run."""
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
