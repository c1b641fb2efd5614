"""Configuration an operator edits in the Prefect UI: the served engine, the target machine and the
health check's limits.

`prefect block register -m blocks` registers the block types. Rendering to docker-py arguments
and to a compose file lives in `blocks.render` (pure functions).
"""

from blocks.engine import PRESETS, EngineSpec, format_utilization, load_engine_spec
from blocks.health_limits import HealthLimits
from blocks.render import (
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

# The label keys and secret names live in blocks.shared; import them from there.
__all__ = [
    "EngineSpec",
    "TargetMachine",
    "HealthLimits",
    "PRESETS",
    "format_utilization",
    "load_engine_spec",
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
