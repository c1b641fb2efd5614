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
steps inside its own flow run (`tasks.staging.stage.stage_steps`); run alone with
`python -m flows.stage [repo_id]` or as a deployment.
"""

from __future__ import annotations

from prefect import flow

from tasks.staging import DEFAULT_ALLOW_PATTERNS, StageResult
from tasks.staging.stage import stage_steps

__all__ = ["stage_model", "StageResult", "DEFAULT_ALLOW_PATTERNS"]


#: The flow is the staging function itself: its parameters and their docs are `stage_steps`'s, and
#: deploy-qwen calls the same function inside its own flow run (flows never import each other).
stage_model = flow(name="stage-model", flow_run_name="stage {repo_id}@{revision}", log_prints=False)(stage_steps)


if __name__ == "__main__":  # pragma: no cover - operator convenience
    import sys

    result = stage_model(sys.argv[1]) if len(sys.argv) > 1 else stage_model()
    print(result.model_dump_json(indent=2))
