"""What the engine spec and the target machine both need: label keys, secret names, name rules.

It lives apart so that `blocks.engine` never imports `blocks.target` (not even for type checking):
the dependency runs one way, `blocks.shared` <- `blocks.engine` <- `blocks.target` <- `blocks.render`.
Nothing here imports Prefect, docker or pydantic.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

#: Container labels: how the flows find (only) their own containers. One place for the keys.
LABEL_PREFIX = "org.spark-vllm"
LABEL_MANAGED_BY = f"{LABEL_PREFIX}.managed-by"
LABEL_TARGET = f"{LABEL_PREFIX}.target"
LABEL_SPEC_HASH = f"{LABEL_PREFIX}.spec-hash"
LABEL_SERVED_MODEL = f"{LABEL_PREFIX}.served-model"
#: The Prefect flow run that created the server: its on_cancellation / on_crashed hook (tasks/cleanup.py)
#: finds by it the container that run was starting. Not part of the spec hash: which run started a
#: server never changes what runs.
LABEL_FLOW_RUN = f"{LABEL_PREFIX}.flow-run"
MANAGED_BY = "spark-vllm"
#: What a container of ours is for, when it is not the server: "helper" (memory reads, drop caches).
LABEL_ROLE = f"{LABEL_PREFIX}.role"
HELPER_LABELS: dict[str, str] = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_ROLE: "helper"}

#: The Hugging Face token's environment variables: the runbook's compose file sets both names.
HF_TOKEN_ENV_KEYS: tuple[str, ...] = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
#: vLLM reads its API key from this variable when `--api-key` is not given
#: (vllm/entrypoints/openai/api_server.py:1530-1532 in vLLM 0.10.1.1).
API_KEY_ENV = "VLLM_API_KEY"
#: Environment variables that carry secrets. They only ever come from Secret blocks (see
#: `blocks.render.secret_environment`), never from the plain `env` / `extra_env` fields.
SECRET_ENV_KEYS: frozenset[str] = frozenset({*HF_TOKEN_ENV_KEYS, API_KEY_ENV})
#: `vllm serve` flags whose value is a secret (vLLM 0.10.1.1: `--api-key` is FrontendArgs.api_key,
#: vllm/entrypoints/openai/cli_args.py:92; `--hf-token`, vllm/engine/arg_utils.py:532). The spec
#: refuses the API key flag in `extra_args`; redaction masks both.
API_KEY_FLAG = "--api-key"
SECRET_FLAGS: tuple[str, ...] = (API_KEY_FLAG, "--hf-token")

#: The runbook's container name (`container_name:` of its compose service).
RUNBOOK_CONTAINER_NAME = "vllm-qwen3-32b-fp8"

#: The Secret block `python -m deployments.setup --api-key` creates for the server's API key.
API_KEY_BLOCK = "vllm-api-key"
#: The Secret block `python -m deployments.setup` saves the Hugging Face token in.
HF_TOKEN_BLOCK = "hf-token"
#: The process work pool `deployments/setup.py` creates and the deployments run on.
WORK_POOL = "spark-vllm"

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: docker's rule for container names: the daemon answers "Invalid container name (a), only
#: [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed" and, as that example shows, wants two characters at least.
CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def check_container_name(value: str, field: str = "container_name", hint: str = "") -> str:
    """Return `value` if docker accepts it as a container name, else raise a message with the fix.

    One rule for the engine spec's `container_name` and the target's override, so a name the spec
    refuses can never reach docker through the target.

    Args:
        value: the name, already stripped.
        field: the field name the message names (e.g. "container_name").
        hint: appended to the message (e.g. how to fall back to the spec's name).

    Raises:
        ValueError: the name is empty, has spaces, or breaks docker's rule.
    """
    if not CONTAINER_NAME.match(value):
        raise ValueError(
            f"{field} {value!r} is not a valid docker container name: use two or more "
            f"letters, digits, '_', '.', '-', starting with a letter or digit (runbook: {RUNBOOK_CONTAINER_NAME}){hint}"
        )
    return value


class ContainerIdentity(Protocol):
    """Anything that can say which of its settings shape the container (a `TargetMachine`).

    `EngineSpec.spec_hash(target)` takes this instead of the class, which keeps `blocks.engine`
    free of any import of `blocks.target`.
    """

    def container_identity(self) -> dict[str, Any]:
        """The settings that shape the container, as JSON-able values (never secret values)."""
        ...


def http_base(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 address in brackets (the target's server, the fleet's router)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"
