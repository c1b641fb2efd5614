"""Configuration an operator edits in the Prefect UI: the served engine and the target machine.

`prefect block register -m blocks` registers both block types. Rendering to docker-py arguments
and to a compose file lives in `blocks.render` (pure functions).
"""

from blocks.engine import PRESETS, SECRET_ENV_KEYS, EngineSpec, format_utilization
from blocks.render import (
    LABEL_MANAGED_BY,
    LABEL_PREFIX,
    LABEL_SERVED_MODEL,
    LABEL_SPEC_HASH,
    LABEL_TARGET,
    MANAGED_BY,
    REDACTED,
    SecretValue,
    compose_service,
    compose_yaml,
    container_environment,
    container_kwargs,
    container_labels,
    device_requests,
    label_filters,
    redacted,
    secret_environment,
)
from blocks.target import TargetMachine

__all__ = [
    "EngineSpec",
    "TargetMachine",
    "PRESETS",
    "SECRET_ENV_KEYS",
    "format_utilization",
    "LABEL_PREFIX",
    "LABEL_MANAGED_BY",
    "LABEL_TARGET",
    "LABEL_SPEC_HASH",
    "LABEL_SERVED_MODEL",
    "MANAGED_BY",
    "REDACTED",
    "SecretValue",
    "compose_service",
    "compose_yaml",
    "container_environment",
    "container_kwargs",
    "container_labels",
    "device_requests",
    "label_filters",
    "redacted",
    "secret_environment",
]
