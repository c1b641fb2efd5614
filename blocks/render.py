"""Pure rendering of (EngineSpec, TargetMachine) into docker-py arguments and a compose file.

`container_kwargs(...)` is exactly what `docker.DockerClient().containers.create(**kw)` (and
prefect-docker's `create_docker_container(**kw)`) takes. `compose_yaml(...)` is the runbook's
compose service as this spec would write it; the unit tests compare it with the runbook's.

Secrets: the values passed in `secret_env` are wrapped in `SecretValue`, a `str` whose repr is
`'***'`, so printing or logging the returned dict never shows them while docker-py (which
formats `f"{key}={value}"`) still sends the real value. For artifacts and JSON use `redacted(kw)`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import docker.types
import yaml
from packaging.version import Version

from blocks.engine import EngineSpec
from blocks.shared import (
    API_KEY_ENV,
    HF_TOKEN_ENV_KEYS,
    LABEL_FLOW_RUN,
    LABEL_MANAGED_BY,
    LABEL_SERVED_MODEL,
    LABEL_SPEC_HASH,
    LABEL_TARGET,
    MANAGED_BY,
    SECRET_ENV_KEYS,
    SECRET_FLAGS,
)
from blocks.target import TargetMachine, split_volume_target
from tasks.vllm.versions import Variant, select

__all__ = [
    "CACHE_MOUNTS",
    "CacheMount",
    "cache_volumes",
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

# ---------------------------------------------------------------------------- labels

REDACTED = "***"


def container_labels(spec: EngineSpec, target: TargetMachine, flow_run_id: str | None = None) -> dict[str, str]:
    """The labels every container we create carries; how we find (only) our own containers.

    ``flow_run_id``: the Prefect flow run that starts the server (`LABEL_FLOW_RUN`), so that run's
    cancellation or crash hook can remove the container it was starting (tasks/cleanup.py).
    """
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_TARGET: target.name,
        LABEL_SPEC_HASH: spec.spec_hash(target),
        LABEL_SERVED_MODEL: spec.served_name,
    }
    if flow_run_id:
        labels[LABEL_FLOW_RUN] = flow_run_id
    return labels


def label_filters(target_name: str | None = None) -> dict[str, list[str]]:
    """`filters=` for `client.containers.list(all=True, filters=...)`: ours (on one target)."""
    labels = [f"{LABEL_MANAGED_BY}={MANAGED_BY}"]
    if target_name is not None:
        labels.append(f"{LABEL_TARGET}={target_name}")
    return {"label": labels}


# ---------------------------------------------------------------------------- secrets


class SecretValue(str):
    """A `str` that never shows itself in a repr (dicts, lists, f"{kw}" and logs print `'***'`).

    `str(value)` and `f"{value}"` still give the real text: that is what docker-py sends.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(REDACTED)


def _reveal(value: Any) -> str:
    getter = getattr(value, "get_secret_value", None)  # pydantic SecretStr
    return str(getter() if callable(getter) else value)


def secret_environment(hf_token: Any = None, api_key: Any = None) -> dict[str, SecretValue]:
    """Container env for the secrets: the HF token under both names the runbook sets, the API key
    as `VLLM_API_KEY` (vLLM reads it like `--api-key`, without it being on the command line)."""
    env: dict[str, SecretValue] = {}
    if hf_token is not None and _reveal(hf_token):
        env.update(dict.fromkeys(HF_TOKEN_ENV_KEYS, SecretValue(_reveal(hf_token))))
    if api_key is not None and _reveal(api_key):
        env[API_KEY_ENV] = SecretValue(_reveal(api_key))
    return env


# ---------------------------------------------------------------------------- docker-py


def device_requests(target: TargetMachine) -> list[docker.types.DeviceRequest]:
    """`--gpus all` (compose: driver nvidia, count all, capabilities [gpu]); none for imitations."""
    if target.gpus == "all":
        return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return []


@dataclass(frozen=True)
class CacheMount:
    """One cache a server keeps across containers: a subdirectory of the target's ``vllm_cache_dir``
    mounted where the server's processes (root, HOME=/root in the NVIDIA image and the imitation)
    keep it, by vLLM version.

    Attributes:
        subdir: the host subdirectory under ``vllm_cache_dir``.
        path: where the container keeps the cache, per vLLM version (a `Variant` each, with its source).
        what: what it holds, for the docs and the report.
    """

    subdir: str
    path: tuple[Variant[str], ...]
    what: str


#: The caches mounted when the spec keeps ``persistent_caches`` (the one table: rendering mounts them,
#: tasks/caches.py creates, measures, bounds and clears them).
CACHE_MOUNTS: tuple[CacheMount, ...] = (
    CacheMount(
        "vllm",
        (
            Variant(
                "",
                "/root/.cache/vllm",
                "VLLM_CACHE_ROOT defaults to $XDG_CACHE_HOME/vllm, ~/.cache/vllm: vllm/envs.py:290-295 and"
                " get_default_cache_root :167-171 (0.10.1.1); :303/:180 (0.10.2), :486/:231 (0.11.1), :534/:250"
                " (0.17.1), :566/:267 (0.20.1), :707/:333 (0.31.0)",
            ),
        ),
        "vLLM's compile cache (torch_compile_cache/<config hash>, vllm/compilation/backends.py:527-530 in"
        " 0.10.1.1, :1063-1065 in 0.31.0), with Inductor's code and its Triton kernels inside"
        " (compiler_interface.py:274-279 in 0.10.1.1)",
    ),
    CacheMount(
        "triton",
        (
            Variant(
                "",
                "/root/.triton/cache",
                "Triton's default cache, ~/.triton/cache when TRITON_CACHE_DIR is unset, as"
                " vllm/snapshot/runtime.py:91 (0.31.0) lists the caches an engine keeps",
            ),
        ),
        "Triton kernels compiled outside torch.compile (vLLM's own Triton kernels)",
    ),
    CacheMount(
        "flashinfer",
        (
            Variant(
                "",
                "/root/.cache/flashinfer",
                "FlashInfer's JIT cache, ~/.cache/flashinfer, as vllm/snapshot/runtime.py:92 (0.31.0) lists it",
            ),
        ),
        "FlashInfer's JIT-compiled kernels",
    ),
)


def cache_volumes(target: TargetMachine, version: Version | None = None) -> dict[str, dict[str, str]]:
    """The cache mounts (host subdirectory of ``vllm_cache_dir`` -> the path for ``version``)."""
    root = target.vllm_cache_dir.rstrip("/")
    return {f"{root}/{m.subdir}": {"bind": select(m.path, version), "mode": "rw"} for m in CACHE_MOUNTS}


def _volumes(spec: EngineSpec, target: TargetMachine, version: Version | None = None) -> dict[str, dict[str, str]]:
    volumes = {target.cache_dir: {"bind": spec.download_dir, "mode": "rw"}}
    if spec.persistent_caches:
        volumes.update(cache_volumes(target, version))
    for host, container in target.extra_volumes.items():
        path, mode = split_volume_target(container)
        if host in volumes or path in {mount["bind"] for mount in volumes.values()}:
            raise ValueError(
                f"target {target.name!r}: extra_volumes entry {host!r} -> {container!r} collides with the model"
                f" cache mount {target.cache_dir} -> {spec.download_dir} or a cache mount of vllm_cache_dir"
                f" ({target.vllm_cache_dir})"
            )
        volumes[host] = {"bind": path, "mode": mode}
    return volumes


def container_environment(
    spec: EngineSpec, target: TargetMachine, secret_env: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Offline hub settings, then the spec's env, the target's env, the secrets (masked).

    The offline settings are added to the runbook's: config/tokenizer lookups and weights both hit
    the staged cache, and nothing is downloaded at start (see docs/configuration.md and design.md).
    """
    env: dict[str, str] = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": spec.download_dir}
    env.update(spec.env)
    env.update(target.extra_env)
    for key, value in (secret_env or {}).items():
        env[key] = value if isinstance(value, SecretValue) else SecretValue(_reveal(value))
    return env


def container_kwargs(
    spec: EngineSpec,
    target: TargetMachine,
    *,
    secret_env: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    version: Version | None = None,
    flow_run_id: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for docker-py `client.containers.create(**kw)` / `.run(**kw)`.

    `secret_env` comes from `secret_environment(...)`; `labels` default to
    `container_labels(spec, target, flow_run_id)`; `version` is the vLLM of the image (the command has the
    flags as it spells them; `FlagUnavailable` when a field needs one it lacks; None: the
    runbook's). The runbook implies no ipc/shm settings, so none are set.
    """
    spec = target.apply_to(spec)
    kw: dict[str, Any] = {
        "image": spec.image,
        "command": spec.vllm_command(version),
        "name": spec.container_name,
        "detach": True,
        "ports": {f"{spec.container_port}/tcp": (target.publish_host, target.host_port)},
        "volumes": _volumes(spec, target, version),
        "environment": container_environment(spec, target, secret_env),
        "restart_policy": {"Name": spec.restart_policy},
        "labels": dict(labels) if labels is not None else container_labels(spec, target, flow_run_id),
    }
    requests = device_requests(target)
    if requests:
        kw["device_requests"] = requests
    return kw


def _mask_command(command: Any) -> Any:
    if not isinstance(command, list):
        return command
    out: list[str] = []
    hide_next = False
    for arg in command:
        text = str(arg)
        if hide_next:
            out.append(REDACTED)
            hide_next = False
        elif text in SECRET_FLAGS:
            out.append(text)
            hide_next = True
        elif text.startswith(tuple(f"{flag}=" for flag in SECRET_FLAGS)):
            out.append(text.split("=", 1)[0] + "=" + REDACTED)
        else:
            out.append(text)
    return out


def _is_secret(key: str, value: Any) -> bool:
    return isinstance(value, SecretValue) or key in SECRET_ENV_KEYS


def redacted(kw: Mapping[str, Any]) -> dict[str, Any]:
    """A plain, JSON-able copy of `container_kwargs(...)` with every secret value replaced by
    `***`: for logs, artifacts and event payloads."""
    out: dict[str, Any] = {}
    for key, value in kw.items():
        if key == "environment" and isinstance(value, Mapping):
            out[key] = {k: (REDACTED if _is_secret(k, v) else str(v)) for k, v in value.items()}
        elif key == "environment" and isinstance(value, list):
            masked = []
            for item in value:
                name, sep, val = str(item).partition("=")
                secret = isinstance(item, SecretValue) or (bool(sep) and _is_secret(name, val))
                masked.append(f"{name}={REDACTED}" if secret else str(item))
            out[key] = masked
        elif key == "command":
            out[key] = _mask_command(value)
        elif key == "device_requests":
            out[key] = [dict(request) for request in value]
        elif key == "ports" and isinstance(value, Mapping):
            out[key] = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------- compose


class _Quoted(str):
    """Rendered double-quoted, as the runbook quotes ports, numbers and env values."""


class _Flow(list):
    """Rendered in flow style, as the runbook writes `capabilities: [gpu]`."""


class _ComposeDumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False):  # noqa: D401
        return super().increase_indent(flow, False)  # indent sequences under their key


_ComposeDumper.add_representer(
    _Quoted, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style='"')
)
_ComposeDumper.add_representer(
    _Flow, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def _arg(text: str) -> str:
    """Quote what YAML would otherwise read as a number or bool (the runbook quotes "32000")."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return _Quoted(text)
    return text if isinstance(loaded, str) and loaded == text else _Quoted(text)


def compose_service(spec: EngineSpec, target: TargetMachine, version: Version | None = None) -> dict[str, Any]:
    """The compose service as a plain dict (the structure `compose_yaml` writes), its command for
    the vLLM ``version`` (None: the runbook's)."""
    spec = target.apply_to(spec)
    host_port = f"{target.host_port}:{spec.container_port}"
    if target.publish_host != "0.0.0.0":
        host = target.publish_host
        host_port = f"[{host}]:{host_port}" if ":" in host else f"{host}:{host_port}"
    environment: dict[str, str] = {}
    if target.hf_token_secret:  # both names from the .env file's first one, as the runbook writes them
        environment.update(dict.fromkeys(HF_TOKEN_ENV_KEYS, _Quoted(f"${{{HF_TOKEN_ENV_KEYS[0]}}}")))
    if target.api_key_secret:
        environment[API_KEY_ENV] = _Quoted(f"${{{API_KEY_ENV}}}")
    for key, value in container_environment(spec, target).items():
        environment[key] = _Quoted(value)
    volumes = [
        f"{host}:{mount['bind']}" + (":ro" if mount["mode"] == "ro" else "")
        for host, mount in _volumes(spec, target, version).items()
    ]
    service: dict[str, Any] = {
        "image": spec.image,
        "container_name": spec.container_name,
        "restart": spec.restart_policy,
        "ports": [_Quoted(host_port)],
        "environment": environment,
        "command": [_arg(arg) for arg in spec.vllm_command(version)],
        "volumes": volumes,
    }
    if target.gpus == "all":
        service["deploy"] = {
            "resources": {
                "reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": _Flow(["gpu"])}]}
            }
        }
    return service


def compose_yaml(spec: EngineSpec, target: TargetMachine, version: Version | None = None) -> str:
    """The equivalent docker compose file: the runbook's service plus `HF_HUB_OFFLINE` and
    `HF_HUB_CACHE` (and, with ``persistent_caches``, the cache mounts of `CACHE_MOUNTS`). Secrets stay
    `${VAR}` references to the `.env` file, as in the runbook."""
    document = {"services": {target.apply_to(spec).container_name: compose_service(spec, target, version)}}
    header = (
        f"# Rendered by spark-vllm from the engine spec and target {target.name!r}.\n"
        "# The runbook's compose service plus HF_HUB_OFFLINE/HF_HUB_CACHE (start offline from the\n"
        "# staged cache). Secrets come from .env: HF_TOKEN=...\n"
    )
    body = yaml.dump(document, Dumper=_ComposeDumper, sort_keys=False, default_flow_style=False, width=4096)
    return header + body
