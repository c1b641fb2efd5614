"""The machine that runs the server: its docker daemon, cache, GPUs, address and secrets.

A Prefect block an operator edits in the UI (Blocks -> vLLM Target Machine). One block per
machine: `spark` (the DGX Spark of the runbook) and `sim` (this rig's imitation) are the two the
project sets up. Secrets are referenced by Secret block name, never stored here.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from blocks.engine import SECRET_ENV_KEYS, EngineSpec

if TYPE_CHECKING:  # pragma: no cover
    from prefect_docker.host import DockerHost

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_BLOCK_NAME = re.compile(r"^[a-z0-9-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DOCKER_URL_SCHEMES = ("unix://", "ssh://", "tcp://", "npipe://", "http://", "https://")


def split_volume_target(value: str) -> tuple[str, str]:
    """`"/ledger"` -> ("/ledger", "rw"); `"/ledger:ro"` -> ("/ledger", "ro")."""
    if value.endswith((":ro", ":rw")):
        return value[:-3], value[-2:]
    return value, "rw"


class TargetMachine(Block):
    """Where and how the container runs: docker host, model cache, GPUs, network, secrets."""

    _block_type_name = "vLLM Target Machine"
    _block_type_slug = "vllm-target-machine"
    _description = (
        "A machine that runs the vLLM container: its docker daemon (local socket, ssh:// or "
        "tcp://), the host model cache mounted into the container, GPU request, published "
        "address and port, and the names of the Secret blocks holding the HF token and API key."
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
            "daemon (the imitations, tests) need distinct names. Empty: the spec's (vllm-qwen3-32b-fp8)."
        ),
    )
    docker_base_url: str | None = Field(
        default=None,
        title="Docker base URL",
        description=(
            "Empty: the local daemon from the environment (DOCKER_HOST or /var/run/docker.sock). "
            "Or unix:///path/docker.sock, ssh://user@host, tcp://host:2376."
        ),
    )
    cache_dir: str = Field(
        default="/opt/hf",
        title="Model cache dir (host)",
        description="Host path mounted at the engine spec's download dir (runbook: /opt/hf).",
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
    meminfo_path: str = Field(
        default="/proc/meminfo",
        title="meminfo path (host)",
        description=(
            "Where the flows read MemTotal/MemAvailable/Cached: the GB10's GPU memory is the host's "
            "memory. The imitation exposes its own ledger file here."
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
        "image", "docker_base_url", "hub_endpoint", "hf_token_secret", "api_key_secret", mode="before"
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
                "(e.g. ssh://user@spark or unix:///var/run/docker.sock), or be empty for the local daemon"
            )
        return value

    @field_validator("cache_dir", "drop_caches_path", "meminfo_path")
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
                f"{info.field_name} must be a Prefect block name (lowercase letters, digits, '-'), "
                f"got {value!r}"
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
            if not _ENV_NAME.match(key):
                raise ValueError(f"extra_env has an invalid variable name {key!r}")
            if key in SECRET_ENV_KEYS:
                raise ValueError(
                    f"extra_env must not set {key}: put the secret in a Prefect Secret block and "
                    "name it in hf_token_secret / api_key_secret"
                )
        return value

    # ---------------------------------------------------------------- derived values (pure)

    @property
    def event_resource_id(self) -> str:
        """`vllm.service.<name>`: the resource every event of this target is about."""
        return f"vllm.service.{self.name}"

    @property
    def concurrency_limit(self) -> str:
        """`gpu:<name>`: the global concurrency limit serialising GPU-touching flows."""
        return f"gpu:{self.name}"

    @property
    def endpoint(self) -> str:
        """Base URL where the flow reaches the server, e.g. http://127.0.0.1:8000."""
        host = self.client_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.host_port}"

    def container_identity(self) -> dict[str, Any]:
        """The target's fields that shape the container (input of the spec-hash label)."""
        return {
            "image": self.image,
            "container_name": self.container_name,
            "cache_dir": self.cache_dir,
            "gpus": self.gpus,
            "publish_host": self.publish_host,
            "host_port": self.host_port,
            "extra_volumes": dict(self.extra_volumes),
            "extra_env": dict(self.extra_env),
            "hf_token_secret": self.hf_token_secret,
            "api_key_secret": self.api_key_secret,
        }

    def apply_to(self, spec: "EngineSpec") -> "EngineSpec":
        """The spec as it runs on this machine (its image and container name overrides, when set):
        the one place the machine's overrides are applied."""
        overrides = {k: v for k, v in (("image", self.image), ("container_name", self.container_name)) if v}
        return spec.model_copy(update=overrides) if overrides else spec

    def docker_host(self, **kwargs: Any) -> DockerHost:
        """A prefect-docker `DockerHost` for this machine (local daemon when no base URL).

        `kwargs` go to `DockerHost` (timeout=, max_pool_size=, client_kwargs=).
        """
        from prefect_docker.host import DockerHost  # imported here: it pulls in all of prefect

        return DockerHost(base_url=self.docker_base_url, **kwargs)
