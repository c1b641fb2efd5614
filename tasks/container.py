"""The vLLM container on a target's docker daemon: find ours, replace or keep, create and start.

docker-py is reached through prefect-docker's ``DockerHost`` block (``TargetMachine.docker_host()``)
rather than prefect-docker's container tasks: those are ``async`` tasks without label queries,
restart-policy inspection or log following, all of which the deploy needs, and calling them from a
sync flow without awaiting silently does nothing (prefect.md). Only containers that carry our
``managed-by`` label are ever stopped or removed.
"""

from __future__ import annotations

from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.engine import LABEL_MANAGED_BY, LABEL_SPEC_HASH, MANAGED_BY
from blocks.render import label_filters

GPU_DRIVER_ERROR = 'could not select device driver "nvidia"'


class ContainerStartError(RuntimeError):
    """The container could not be created or started; nothing was left behind."""


def docker_client(docker_host: Any) -> docker.DockerClient:
    """A docker-py client for a prefect-docker ``DockerHost`` with a clear error when unreachable."""
    try:
        client = docker_host.get_client()
        client.ping()
    except DockerException as exc:
        where = docker_host.base_url or "the local socket (DOCKER_HOST)"
        raise ConnectionError(
            f"Docker is not reachable at {where}: {exc}. Start the daemon (`systemctl start docker`"
            " or `dockerd &`), or fix the target's docker_base_url."
        ) from None
    return client


def managed_containers(client: docker.DockerClient, target_name: str) -> list[Container]:
    """Every container (running or not) that this project created for ``target_name``."""
    return client.containers.list(all=True, filters=label_filters(target_name))


def is_managed(container: Container) -> bool:
    return (container.labels or {}).get(LABEL_MANAGED_BY) == MANAGED_BY


def remove_managed(container: Container, stop_timeout: int | None = 30) -> None:
    """Stop (SIGTERM, then SIGKILL after ``stop_timeout``) and remove one of our containers.

    ``stop_timeout=None`` kills at once: for a server that failed to start, nothing is lost.
    """
    if not is_managed(container):
        raise PermissionError(f"refusing to remove container {container.name}: not managed by {MANAGED_BY}")
    try:
        if stop_timeout is not None:
            container.stop(timeout=stop_timeout)
        container.remove(force=True)
    except NotFound:
        pass


def container_exited(container: Container, restarts_before: int = 0) -> bool:
    """True once the container stopped, or restarted, since we started it."""
    try:
        container.reload()
    except NotFound:
        return True
    state = container.attrs.get("State", {})
    return (
        not state.get("Running", False)
        or state.get("Restarting", False)
        or container.attrs.get("RestartCount", 0) > restarts_before
    )


def exit_summary(container: Container) -> str:
    """``exited with code 1`` or ``restarting (restart 2)``, from the state docker last reported.

    No reload here: right after an exit, docker is restarting the container (restart policy) and an
    inspect waits for that restart, which would delay the failure by the container's start time.
    """
    state = container.attrs.get("State", {})
    if state.get("Restarting"):
        return f"restarting after exit code {state.get('ExitCode')} (restart {container.attrs.get('RestartCount', 0)})"
    if state.get("Running"):
        return f"running again after a restart (restart {container.attrs.get('RestartCount', 0)})"
    return f"exited with code {state.get('ExitCode')}"


def restart_policy_after_ready(create_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Split the restart policy off: the container is created with none and gets it once ready.

    A start that fails fails the same way again with the same arguments; docker restarting it in
    a loop (the CrashLoopBackOff pattern) only hides the first failure's log and, on the Spark,
    pushes memory again. The runbook's `unless-stopped` is armed once the server has served.
    """
    policy = create_kwargs.get("restart_policy")
    return {**create_kwargs, "restart_policy": {"Name": "no"}}, policy


def arm_restart_policy(container: Container, policy: dict[str, Any] | None) -> None:
    """Give a ready container its restart policy (`docker update --restart ...`)."""
    if policy and policy.get("Name", "no") != "no":
        container.update(restart_policy=policy)


def image_present(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
    except ImageNotFound:
        return False
    return True


@task(name="replace-or-keep", cache_policy=NO_CACHE)
def replace_or_keep(
    client: docker.DockerClient, target_name: str, container_name: str, spec_hash: str, healthy: bool
) -> Container | None:
    """Keep our running container when its spec is unchanged and it is healthy; else remove ours.

    Returns the kept container, or None when a new one must be started. A container holding the
    name that is not ours is never touched: the flow fails with the name to free instead.
    """
    logger = get_run_logger()
    kept: Container | None = None
    for container in managed_containers(client, target_name):
        same = container.labels.get(LABEL_SPEC_HASH) == spec_hash and container.status == "running"
        if same and healthy and kept is None:
            logger.info("container %s runs spec %s and is healthy: unchanged", container.name, spec_hash)
            kept = container
            continue
        reason = "spec changed" if container.labels.get(LABEL_SPEC_HASH) != spec_hash else f"status {container.status}, healthy={healthy}"
        logger.info("removing our container %s (%s)", container.name, reason)
        remove_managed(container)
    if kept is None:
        try:
            other = client.containers.get(container_name)
        except NotFound:
            other = None
        if other is not None and not is_managed(other):
            raise ContainerStartError(
                f"a container named {container_name!r} exists and was not created by this project;"
                f" remove or rename it (`docker rm -f {container_name}`), or set another container_name"
                " in the engine spec."
            )
    return kept


@task(name="start-vllm-container", cache_policy=NO_CACHE)
def start_vllm_container(client: docker.DockerClient, create_kwargs: dict[str, Any], redacted: dict[str, Any]) -> Container:
    """Create and start the server; on any failure remove what was created, and say why.

    ``redacted`` is the same configuration with secrets masked: only it is ever logged.
    """
    logger = get_run_logger()
    logger.info("docker run %s", " ".join(redacted.get("command", [])))
    try:
        container = client.containers.create(**create_kwargs)
    except ImageNotFound:
        raise ContainerStartError(
            f"image {create_kwargs['image']} is not on the docker host: `docker pull {create_kwargs['image']}`"
        ) from None
    except APIError as exc:
        raise ContainerStartError(f"docker could not create the container: {exc.explanation or exc}") from None
    try:
        container.start()
    except APIError as exc:
        container.remove(force=True)
        text = str(exc.explanation or exc)
        if GPU_DRIVER_ERROR in text:
            raise ContainerStartError(
                f"docker says: {text}. The NVIDIA Container Toolkit is missing on the docker host:"
                " install nvidia-container-toolkit and run `nvidia-ctk runtime configure --runtime=docker`"
                " then restart docker; or set the target's gpus to 'none' for a CPU-only imitation."
            ) from None
        raise ContainerStartError(f"docker could not start the container: {text}") from None
    container.reload()
    logger.info("started container %s (%s)", container.name, container.short_id)
    return container
