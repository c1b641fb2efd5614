"""The vLLM container on a target's docker daemon: find ours, replace or keep, create, start, remove.

Tasks here take values, never live objects: the target's prefect-docker ``DockerHost`` block and a
container id or name. Each opens its docker-py client with ``with docker_client(docker_host) as
client:`` and closes it before it returns, as prefect-docker's own ``containers.py`` does. So task
inputs read well in the UI, no client is left open, and the same task can run in another process
(an automation's flow run, a fleet worker).

docker-py is used through ``DockerHost.get_client()`` rather than prefect-docker's container tasks:
those are ``async`` tasks without label queries, restart-policy updates or log following, all of
which the deploy needs (docs/design.md). Only containers that carry our ``managed-by`` label are ever
stopped or removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_docker.host import DockerHost
from pydantic import BaseModel

from blocks.render import label_filters
from blocks.shared import LABEL_MANAGED_BY, LABEL_SPEC_HASH, MANAGED_BY
from tasks.errors import SparkVllmError
from tasks.secrets import scrub
from tasks.vllm.logs import split_lines

GPU_DRIVER_ERROR = 'could not select device driver "nvidia"'


class ContainerStartError(SparkVllmError):
    """The container could not be created or started; nothing was left behind."""


@contextmanager
def docker_client(docker_host: DockerHost) -> Iterator[docker.DockerClient]:
    """A docker-py client for ``docker_host``, closed when the block ends.

    Raises:
        ConnectionError: the daemon does not answer; the message says how to start it.
    """
    try:
        client = docker_host.get_client()
        client.ping()
    except DockerException as exc:
        where = docker_host.base_url or "the local socket (DOCKER_HOST)"
        raise ConnectionError(
            f"Docker is not reachable at {where}: {exc}. Start the daemon (`systemctl start docker`"
            " or `dockerd &`), or fix the target's docker_base_url."
        ) from None
    with client:
        yield client


def managed_containers(client: docker.DockerClient, target_name: str) -> list[Container]:
    """Every container (running or not) that this project created for ``target_name``.

    ``ignore_removed``: docker-py lists ids, then inspects each; a container another flow removes in
    between (a health check beside a deploy that replaces its server) is skipped, not a NotFound.
    """
    return client.containers.list(all=True, filters=label_filters(target_name), ignore_removed=True)


def is_managed(container: Container) -> bool:
    return (container.labels or {}).get(LABEL_MANAGED_BY) == MANAGED_BY


def remove_managed(container: Container, stop_timeout: int | None = 30) -> None:
    """Stop (SIGTERM, then SIGKILL after ``stop_timeout``; None kills at once) and remove ours."""
    if not is_managed(container):
        raise PermissionError(f"refusing to remove container {container.name}: not managed by {MANAGED_BY}")
    try:
        if stop_timeout is not None:
            container.stop(timeout=stop_timeout)
        container.remove(force=True)
    except NotFound:
        pass


def restart_policy_after_ready(create_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Split the restart policy off: the container is created with none and gets it once ready.

    A start that fails fails the same way again with the same arguments; docker restarting it in
    a loop (the CrashLoopBackOff pattern) only hides the first failure's log and, on the Spark,
    pushes memory again. The runbook's `unless-stopped` is armed once the server has served.
    """
    policy = create_kwargs.get("restart_policy")
    return {**create_kwargs, "restart_policy": {"Name": "no"}}, policy


def image_present(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
    except ImageNotFound:
        return False
    return True


@task(name="replace-or-keep", cache_policy=NO_CACHE, task_run_name="replace-or-keep {container_name}")
def replace_or_keep(
    docker_host: DockerHost, target_name: str, container_name: str, spec_hash: str, healthy: bool
) -> str | None:
    """Keep our running container when its spec is unchanged and it is healthy; else remove ours.

    Returns the kept container's name, or None when a new one must be started. A container holding
    the name that is not ours is never touched: the flow fails with the name to free instead.
    """
    logger = get_run_logger()
    kept: str | None = None
    with docker_client(docker_host) as client:
        for container in managed_containers(client, target_name):
            same = container.labels.get(LABEL_SPEC_HASH) == spec_hash and container.status == "running"
            if same and healthy and kept is None:
                logger.info("container %s runs spec %s and is healthy: unchanged", container.name, spec_hash)
                kept = container.name
                continue
            reason = (
                "spec changed"
                if container.labels.get(LABEL_SPEC_HASH) != spec_hash
                else f"status {container.status}, healthy={healthy}"
            )
            logger.info("removing our container %s (%s)", container.name, reason)
            remove_managed(container, stop_timeout=30)
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
def start_vllm_container(docker_host: DockerHost, create_kwargs: dict[str, Any], redacted: dict[str, Any]) -> str:
    """Create and start the server; on any failure remove what was created, and say why.

    Args:
        docker_host: the target's docker daemon.
        create_kwargs: docker-py ``containers.create`` arguments (secrets as masked ``SecretValue``s).
        redacted: the same configuration with secrets replaced by ``***``: only it is ever logged.

    Returns:
        The started container's id.
    """
    logger = get_run_logger()
    logger.info("docker run %s", " ".join(redacted.get("command", [])))
    with docker_client(docker_host) as client:
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
        logger.info("started container %s (%s)", container.name, container.short_id)
        return container.id


@task(name="arm-restart-policy", cache_policy=NO_CACHE)
def arm_restart_policy(docker_host: DockerHost, container_id: str, policy: dict[str, Any] | None) -> None:
    """Give a ready container its restart policy (`docker update --restart ...`)."""
    if not policy or policy.get("Name", "no") == "no":
        return
    with docker_client(docker_host) as client:
        client.containers.get(container_id).update(restart_policy=policy)
    get_run_logger().info("restart policy %s armed: the server has served", policy["Name"])


@task(name="remove-container", cache_policy=NO_CACHE, task_run_name="remove-container {container_id}")
def remove_container(docker_host: DockerHost, container_id: str, stop_timeout: int | None = 30) -> None:
    """Stop and remove one of our containers; ``stop_timeout=None`` kills at once (a server that
    never served loses nothing, and its log is already in the flow run's)."""
    with docker_client(docker_host) as client:
        try:
            container = client.containers.get(container_id)
        except NotFound:
            return
        remove_managed(container, stop_timeout)
    get_run_logger().info("removed container %s", container.name)


@task(name="stop-containers", cache_policy=NO_CACHE, task_run_name="stop-containers {target_name}")
def remove_managed_containers(docker_host: DockerHost, target_name: str, stop_timeout: int = 30) -> list[str]:
    """The runbook's `docker compose down`, limited to our own containers of ``target_name``.

    Returns:
        The names of the containers removed.
    """
    logger = get_run_logger()
    removed = []
    with docker_client(docker_host) as client:
        for container in managed_containers(client, target_name):
            logger.info("stopping and removing %s", container.name)
            remove_managed(container, stop_timeout)
            removed.append(container.name)
    return removed


class ServerState(BaseModel):
    """What docker says about our server of a target: the inputs of a failure's classification."""

    name: str
    status: str  # docker's: running, exited, restarting, ...
    exit_code: int | None
    oom_killed: bool
    restart_count: int
    log_tail: list[str]  # the last lines, secrets scrubbed


@task(name="inspect-server", cache_policy=NO_CACHE, task_run_name="inspect-server {target_name}")
def inspect_server(
    docker_host: DockerHost, target_name: str, secrets: list[str], tail: int = 500
) -> ServerState | None:
    """Our server of ``target_name`` (the newest, if several), with its state and log tail; None when
    there is none."""
    with docker_client(docker_host) as client:
        containers = managed_containers(client, target_name)
        if not containers:
            return None
        container = max(containers, key=lambda c: c.attrs.get("Created", ""))
        state = container.attrs.get("State", {})
        text = container.logs(tail=tail, stdout=True, stderr=True).decode("utf-8", "replace")
    running = state.get("Running", False)
    return ServerState(
        name=container.name,
        status=container.status,
        exit_code=None if running else state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        restart_count=container.attrs.get("RestartCount", 0),
        log_tail=[scrub(line, secrets) for line in split_lines(text)],
    )
