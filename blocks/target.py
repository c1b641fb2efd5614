"""The machine that runs the server: its docker daemon, cache, GPUs, address and secrets.

A Prefect block an operator edits in the UI (Blocks -> vLLM Target Machine). One block per
machine: `spark` (the DGX Spark of the runbook) and `sim` (the imitation on machines without a
GPU) are the two the project sets up. Secrets are referenced by Secret block name, never stored here.

Imports run one way: this module uses `blocks.engine` (the spec it applies its overrides to) and
`blocks.shared`; `blocks.engine` never imports this module.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit

from prefect.blocks.core import Block
from pydantic import Field, ValidationError, field_validator

from blocks.engine import EngineSpec
from blocks.shared import (
    API_KEY_BLOCK,
    ENV_NAME,
    RUNBOOK_CONTAINER_NAME,
    SECRET_ENV_KEYS,
    WORK_POOL,
    check_container_name,
    http_base,
)

if TYPE_CHECKING:  # pragma: no cover
    from prefect_docker.host import DockerHost

#: How a container on a Spark reads the host's memory (containers see the host's /proc/meminfo).
SPARK_MEMINFO_COMMAND: tuple[str, ...] = ("cat", "/proc/meminfo")

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_BLOCK_NAME = re.compile(r"^[a-z0-9-]+$")
DOCKER_URL_SCHEMES = ("unix://", "ssh://", "tcp://", "npipe://", "http://", "https://")


def gpu_limit_name(target_name: str) -> str:
    """`gpu:<target>`: the global concurrency limit (1 slot) every GPU-touching flow holds.

    The one definition: `TargetMachine.concurrency_limit` and `tasks.locks` both use it, so the
    limit the setup creates is the one the flows take.
    """
    return f"gpu:{target_name}"


def service_resource_id(target_name: str) -> str:
    """`vllm.service.<target>`: the Prefect event resource every event about that server names.

    The one definition: `TargetMachine.event_resource_id` and `tasks.events` both use it, so
    automations that match on the resource see every event.
    """
    return f"vllm.service.{target_name}"


def split_volume_target(value: str) -> tuple[str, str]:
    """`"/ledger"` -> ("/ledger", "rw"); `"/ledger:ro"` -> ("/ledger", "ro")."""
    if value.endswith((":ro", ":rw")):
        return value[:-3], value[-2:]
    return value, "rw"


def _error_text(error: Any) -> str:
    """One pydantic error as `field: message`, without pydantic's prefix and links."""
    field = ".".join(map(str, error["loc"])) or "spec"
    message = str(error["msg"]).removeprefix("Value error, ")
    return message if message.startswith(field) else f"{field}: {message}"


class TargetMachine(Block):
    """Where and how the container runs: docker host, model cache, GPUs, network, secrets."""

    _block_type_name = "vLLM Target Machine"
    _block_type_slug = "vllm-target-machine"
    _description = (
        "A machine that runs the vLLM container: its docker daemon (the worker's own; a daemon "
        "on another machine is refused until remote targets are supported), the host model cache "
        "mounted into the container, GPU request, published address and port, and the names of the "
        "Secret blocks holding the HF token and API key."
    )

    name: str = Field(
        title="Target name",
        description=(
            "Short slug (e.g. spark, sim). Used in container labels, the event resource "
            "vllm.service.<name> and the concurrency limit gpu:<name>."
        ),
        examples=["spark", "sim"],
    )
    image: str | None = Field(
        default=None,
        title="Image override",
        description=(
            "Run this image instead of the engine spec's on this machine (e.g. the vLLM imitation "
            "on a rig without GPUs). Empty: the spec's image (the runbook's NVIDIA image)."
        ),
    )
    container_name: str | None = Field(
        default=None,
        title="Container name override",
        description=(
            "Name the container differently on this machine. Several targets that share one docker "
            f"daemon (the imitations, tests) need distinct names. Empty: the spec's ({RUNBOOK_CONTAINER_NAME})."
        ),
    )
    docker_base_url: str | None = Field(
        default=None,
        title="Docker base URL",
        description=(
            "Empty: the local daemon from the environment (DOCKER_HOST or /var/run/docker.sock). "
            "Or unix:///path/docker.sock, tcp://127.0.0.1:2375. A daemon on another machine "
            "(ssh://, tcp://<other host>) is refused in preflight for now: staging and the memory "
            "checks run on the worker, so run a worker on that machine instead."
        ),
    )
    cache_dir: str = Field(
        default="/opt/hf",
        title="Model cache dir (host)",
        description="Host path mounted at the engine spec's download dir (runbook: /opt/hf).",
    )
    vllm_cache_dir: str = Field(
        default="/opt/vllm-cache",
        title="vLLM compile and kernel caches (host)",
        description=(
            "Host directory for vLLM's compile cache and the Triton and FlashInfer kernel caches, mounted "
            "into every server whose engine spec keeps persistent_caches on (subdirectories vllm, triton, "
            "flashinfer): a restart of the same spec skips torch.compile. Next to the model cache (/opt/hf). "
            "Targets on one machine may share it: vLLM keys each entry by its config. Never removed by a "
            "stop or a prune; deploy-qwen clear_caches=true empties it."
        ),
    )
    vllm_cache_max_gib: float = Field(
        default=20.0,
        title="Cache bound (GiB)",
        description=(
            "Before a start, the oldest compile and kernel cache entries beyond this size are removed (the "
            "next start of their config compiles again). 20 GiB: room for the compile caches of many specs "
            "and vLLM versions (Inductor's code and Triton kernels per config) while staying small beside "
            "the ~32 GB model; the deploy report shows the real size, to set it from. 0: no bound."
        ),
    )
    gpus: Literal["all", "none"] = Field(
        default="all",
        title="GPUs",
        description="all = `--gpus all` (needs the NVIDIA Container Toolkit); none for imitations.",
    )
    publish_host: str = Field(
        default="0.0.0.0",
        title="Published host address",
        description="Host IP the port is published on (runbook `8000:8000` = 0.0.0.0).",
    )
    host_port: int = Field(default=8000, title="Published host port")
    client_host: str = Field(
        default="127.0.0.1",
        title="Client host",
        description="Where the flow reaches the server (the Spark's address for a remote target).",
    )
    hf_token_secret: str | None = Field(
        default="hf-token",
        title="HF token Secret block",
        description="Name of the Secret block with the Hugging Face token. Empty: no token.",
    )
    api_key_secret: str | None = Field(
        default=None,
        title="vLLM API key Secret block",
        description="Name of the Secret block with the server's API key. Empty: open server.",
    )
    hub_endpoint: str | None = Field(
        default=None,
        title="Hub endpoint",
        description="Hugging Face Hub URL for staging. Empty: https://huggingface.co.",
    )
    drop_caches_path: str = Field(
        default="/proc/sys/vm/drop_caches",
        title="drop_caches path (host)",
        description="Written with 3 to free the page cache that GB10 counts as used memory.",
    )
    meminfo_command: list[str] = Field(
        default_factory=lambda: list(SPARK_MEMINFO_COMMAND),
        title="meminfo command",
        description=(
            "Prints the docker host's /proc/meminfo (MemTotal, MemFree, MemAvailable, Cached): the "
            "GB10's GPU memory is the host's memory. It runs on the target's docker host, in a "
            "throwaway container of the server image (or in the running server), so the numbers are "
            "that machine's. A container sees the host's /proc/meminfo: `cat /proc/meminfo`. The "
            "imitation renders its memory ledger instead."
        ),
    )
    prune_scope: Literal["system", "project"] = Field(
        default="system",
        title="Prune scope (memory recovery)",
        description=(
            "What recovery prunes when other processes hold memory: system = the runbook's "
            "`docker system prune -f` (stopped containers, unused networks, dangling images, build "
            "cache; never volumes or running containers); project = only what this project labelled."
        ),
    )
    host_memory_floor_gib: float = Field(
        default=4.0,
        title="Host memory floor (GiB)",
        description=(
            "The least MemAvailable the docker host should keep: on GB10 GPU and CPU share memory and a "
            "host out of memory can hang (vllm issue 46307). While vLLM starts, a MemAvailable below this "
            "stops the start at once (the utilization is not a hard cap while vLLM profiles); while it "
            "serves, the health check's host layer is degraded below it (low_headroom). 0 turns both off."
        ),
    )
    extra_volumes: dict[str, str] = Field(
        default_factory=dict,
        title="Extra volumes",
        description="Host path -> container path (append :ro for read-only).",
    )
    extra_env: dict[str, str] = Field(
        default_factory=dict,
        title="Extra container environment (not secret)",
    )
    image_pull: bool = Field(
        default=True,
        title="Pull the image when missing",
        description="Off: the image must already be on the machine (offline machines).",
    )

    # ---------------------------------------------------------------- validation

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise ValueError(
                f"name must be a short slug of lowercase letters, digits and '-' (got {value!r}), "
                "e.g. 'spark' or 'sim': it becomes a docker label, the event resource "
                "vllm.service.<name> and the concurrency limit gpu:<name>"
            )
        return value

    @field_validator(
        "image",
        "container_name",
        "docker_base_url",
        "hub_endpoint",
        "hf_token_secret",
        "api_key_secret",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    @field_validator("docker_base_url")
    @classmethod
    def _docker_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(DOCKER_URL_SCHEMES):
            raise ValueError(
                f"docker_base_url {value!r} must start with one of {', '.join(DOCKER_URL_SCHEMES)} "
                "(e.g. unix:///var/run/docker.sock), or be empty for the local daemon"
            )
        return value

    @field_validator("meminfo_command")
    @classmethod
    def _meminfo_command(cls, value: list[str]) -> list[str]:
        if not value or not all(isinstance(part, str) and part for part in value):
            raise ValueError(
                f"meminfo_command must be a non-empty command (list of words), got {value!r}; "
                f"on a Spark: {SPARK_MEMINFO_COMMAND!r}"
            )
        return value

    @field_validator("host_memory_floor_gib")
    @classmethod
    def _floor(cls, value: float) -> float:
        if value < 0:
            raise ValueError(
                f"host_memory_floor_gib must be >= 0 GiB (got {value}); 4 is the default, 0 turns the guard off"
            )
        return value

    @field_validator("vllm_cache_max_gib")
    @classmethod
    def _cache_bound(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"vllm_cache_max_gib must be >= 0 GiB (got {value}); 20 is the default, 0 means no bound")
        return value

    @field_validator("cache_dir", "vllm_cache_dir", "drop_caches_path")
    @classmethod
    def _absolute(cls, value: str, info) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{info.field_name} must be an absolute host path (got {value!r})")
        return value.rstrip("/") or "/"

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and any(ch.isspace() for ch in value):
            raise ValueError(f"image must be an image reference without spaces (got {value!r})")
        return value

    @field_validator("container_name")
    @classmethod
    def _container_name(cls, value: str | None) -> str | None:
        # The engine spec's rule, so an override can never give docker a name the spec refuses.
        if value is None:
            return value
        return check_container_name(value, hint="; or leave it empty to use the engine spec's container name")

    @field_validator("publish_host")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                f"publish_host must be an IP address of the host (got {value!r}): 0.0.0.0 publishes "
                "on every interface as the runbook does, 127.0.0.1 only on loopback"
            ) from None
        return value

    @field_validator("client_host")
    @classmethod
    def _client_host(cls, value: str) -> str:
        value = value.strip()
        if not value or any(ch.isspace() or ch == "/" for ch in value):
            raise ValueError(f"client_host must be a host name or IP address (got {value!r})")
        return value

    @field_validator("host_port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not (1 <= value <= 65535):
            raise ValueError(f"host_port must be a TCP port in 1-65535 (got {value}); the runbook uses 8000")
        return value

    @field_validator("hf_token_secret", "api_key_secret")
    @classmethod
    def _secret_name(cls, value: str | None, info) -> str | None:
        if value is not None and not _BLOCK_NAME.match(value):
            raise ValueError(
                f"{info.field_name} must be a Prefect block name (lowercase letters, digits, '-'), got {value!r}"
            )
        return value

    @field_validator("hub_endpoint")
    @classmethod
    def _hub(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"hub_endpoint must be an http(s) URL (got {value!r})")
        return value.rstrip("/") if value else value

    @field_validator("extra_volumes")
    @classmethod
    def _volumes(cls, value: dict[str, str]) -> dict[str, str]:
        for host, container in value.items():
            path, _mode = split_volume_target(container)
            if not host or not path.startswith("/"):
                raise ValueError(
                    f"extra_volumes entry {host!r}: {container!r} must map a host path (or volume "
                    "name) to an absolute container path, optionally ending in :ro"
                )
        return value

    @field_validator("extra_env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not ENV_NAME.match(key):
                raise ValueError(f"extra_env has an invalid variable name {key!r}")
            if key in SECRET_ENV_KEYS:
                raise ValueError(
                    f"extra_env must not set {key}: put the secret in a Prefect Secret block and "
                    "name it in hf_token_secret / api_key_secret"
                )
        return value

    @classmethod
    def named(cls, name: str) -> TargetMachine:
        """The saved block ``name``, typed: Prefect's ``Block.load`` is typed for sync and async
        callers at once, and every caller here is a sync flow or task, which gets the block itself."""
        return cast(TargetMachine, cls.load(name))

    # ---------------------------------------------------------------- derived values (pure)

    @property
    def event_resource_id(self) -> str:
        """`vllm.service.<name>`: the resource every event of this target is about."""
        return service_resource_id(self.name)

    @property
    def concurrency_limit(self) -> str:
        """`gpu:<name>`: the global concurrency limit serialising GPU-touching flows."""
        return gpu_limit_name(self.name)

    @property
    def endpoint(self) -> str:
        """Base URL where the flow reaches the server, e.g. http://127.0.0.1:8000."""
        return http_base(self.client_host, self.host_port)

    def container_identity(self) -> dict[str, Any]:
        """The target's fields that shape the container (input of the spec-hash label)."""
        return {
            "image": self.image,
            "container_name": self.container_name,
            "cache_dir": self.cache_dir,
            "vllm_cache_dir": self.vllm_cache_dir,
            "gpus": self.gpus,
            "publish_host": self.publish_host,
            "host_port": self.host_port,
            "extra_volumes": dict(self.extra_volumes),
            "extra_env": dict(self.extra_env),
            "hf_token_secret": self.hf_token_secret,
            "api_key_secret": self.api_key_secret,
        }

    def apply_to(self, spec: EngineSpec) -> EngineSpec:
        """The spec as it runs on this machine: its image and container name overrides, when set.

        The one place the machine's overrides are applied (rendering and flows alike). The result
        is built anew through the spec's validators, not `model_copy(update=...)` (which skips
        them), so an override obeys every rule the spec's own field does. The new spec is not
        bound to the block document `spec` came from: saving it cannot overwrite that block with
        this machine's overrides.

        Raises:
            ValueError: the overrides make an invalid spec (the message names the target).
        """
        overrides = {k: v for k, v in (("image", self.image), ("container_name", self.container_name)) if v}
        if not overrides:
            return spec
        fields = spec.model_dump(include=set(type(spec).model_fields))
        try:
            return type(spec).model_validate({**fields, **overrides})
        except ValidationError as exc:
            problems = "; ".join(_error_text(error) for error in exc.errors())
            raise ValueError(
                f"target {self.name!r}: its overrides ({', '.join(sorted(overrides))}) make an invalid "
                f"engine spec: {problems}. Fix them in the target block, or leave them empty to use "
                "the engine spec's values"
            ) from exc

    # ---------------------------------------------------------------- checks preflight reports (pure)

    def open_to_network(self) -> bool:
        """True when anyone on the network can use the server: published beyond loopback, no key.

        The runbook publishes `8000:8000` (0.0.0.0) and sets no key; the project keeps that
        reachability, so this is a warning for preflight and the deploy report, not a refusal.
        """
        return not ipaddress.ip_address(self.publish_host).is_loopback and not self.api_key_secret

    def open_to_network_warning(self) -> str | None:
        """The warning, with the fixes, when `open_to_network()`; None otherwise."""
        if not self.open_to_network():
            return None
        where = (
            f'every interface ({self.publish_host}, as the runbook\'s "8000:8000" does)'
            if ipaddress.ip_address(self.publish_host).is_unspecified
            else f"{self.publish_host}, a non-loopback address"
        )
        return (
            f"target {self.name!r} publishes port {self.host_port} on {where} and has no API key "
            "(api_key_secret is empty): anyone who can reach this machine can use the server. "
            f"Fix: `python -m deployments.setup --targets spark --api-key` generates a key into the "
            f"Secret block {API_KEY_BLOCK!r} and sets it as the spark target's api_key_secret (or "
            "name any Secret block holding a key in api_key_secret); clients then send "
            "`Authorization: Bearer <key>`. Or set publish_host to 127.0.0.1 to serve this machine only."
        )

    def docker_is_remote(self) -> bool:
        """True when the docker daemon is on another machine than the worker running the flow.

        Empty, `unix://` and `npipe://` are local; `ssh://` is remote; `tcp://` (and `http(s)://`)
        are local only on a loopback address or `localhost`. Pure: no name is resolved, so a
        `tcp://` URL naming this machine by another name counts as remote (use 127.0.0.1).
        """
        url = self.docker_base_url
        if url is None or url.startswith(("unix://", "npipe://")):
            return False
        if url.startswith("ssh://"):
            return True
        host = urlsplit(url).hostname
        if not host or host == "localhost" or host.endswith(".localhost"):
            return False
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:  # a host name other than localhost
            return True

    def remote_docker_problem(self) -> str | None:
        """Why a remote docker host is refused, with the fix, when `docker_is_remote()`; else None.

        The container, the memory reads and the drop-caches helper go through the docker host, but
        staging writes `cache_dir` on the worker's own disk: the server would start on that machine
        without its model.
        """
        if not self.docker_is_remote():
            return None
        return (
            f"target {self.name!r}: docker_base_url {self.docker_base_url!r} is a docker daemon on "
            "another machine, which the flows do not support yet: the container and the memory checks "
            f"would run there, while staging writes cache_dir ({self.cache_dir}) on this worker's "
            "disk, so the server would start without its model. Fix: run a Prefect worker on that machine "
            f"(`prefect worker start --pool {WORK_POOL}`) with docker_base_url empty (its local "
            "daemon); if the daemon is on this machine, use unix:///var/run/docker.sock or "
            "tcp://127.0.0.1:<port>"
        )

    def docker_host(self, **kwargs: Any) -> DockerHost:
        """A prefect-docker `DockerHost` for this machine (local daemon when no base URL).

        `kwargs` go to `DockerHost` (timeout=, max_pool_size=, client_kwargs=).
        """
        from prefect_docker.host import DockerHost  # imported here: it pulls in all of prefect

        return DockerHost(base_url=self.docker_base_url, **kwargs)
