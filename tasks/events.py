"""Prefect events about the served model: ``vllm.service.<what>`` on resource ``vllm.service.<target>``.

Automations match on them (unhealthy -> recovery) and the UI's event feed shows them.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event


def service_resource(target_name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"vllm.service.{target_name}", "prefect.resource.name": f"vLLM on {target_name}"}


def emit_service_event(target_name: str, what: str, payload: dict[str, Any] | None = None) -> None:
    """Emit ``vllm.service.<what>``; never put secrets in ``payload``."""
    emit_event(event=f"vllm.service.{what}", resource=service_resource(target_name), payload=payload or {})
