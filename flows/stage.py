"""stage-model: the runbook's "model download into /opt/hf", resumable and verified.

The runbook lets vLLM download ~32 GB at first start and, when that breaks, says "rm -rf
/opt/hf/models--.../*.incomplete" and start over. This flow instead:

1. resolves the revision to a commit and lists the files with sizes and checksums (token from the
   Prefect Secret block `hf-token`, else HF_TOKEN / HUGGING_FACE_HUB_TOKEN, else `.env`);
2. looks at the cache: complete blobs are reused (a manifest of an earlier verified run vouches for
   them, or they are re-hashed), partial ones resumed — huggingface_hub's orphans included;
3. checks the disk can hold what is still missing, before a byte moves;
4. downloads the rest with Range requests, sha256 as bytes arrive, retries from the current offset;
5. links the snapshot exactly as huggingface_hub does and writes the manifest;
6. reports (progress artifact while it runs, markdown artifact at the end).

Offline (`offline=True` or HF_HUB_OFFLINE=1), or with the Hub unreachable, it succeeds from the
manifest when the cache is complete, and says what is missing otherwise. deploy-qwen runs these
steps inside its own flow run (`tasks.staging.stage.stage_steps`); run alone with `python -m flows.stage [repo_id]` or as a deployment.
"""

from __future__ import annotations

from prefect import flow

from tasks.staging import DEFAULT_ALLOW_PATTERNS, StageResult
from tasks.staging.stage import stage_steps

__all__ = ["stage_model", "StageResult", "DEFAULT_ALLOW_PATTERNS"]


@flow(name="stage-model", flow_run_name="stage {repo_id}@{revision}", log_prints=False)
def stage_model(
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
    return stage_steps(repo_id, revision, cache_dir, allow_patterns, max_workers, token_secret_block, endpoint, verify, offline)


if __name__ == "__main__":  # pragma: no cover - operator convenience
    import sys

    result = stage_model(*sys.argv[1:2])
    print(result.model_dump_json(indent=2))
