"""Preflight of a deploy: every check runs, and all problems are reported together, each with its fix.

Checked before anything changes on the machine, so a failing deploy leaves nothing behind:
docker reachable (done when the client is made), the NVIDIA runtime when GPUs are requested,
the published port free or held by our own container, the image present or pullable.
Free disk for the model is the staging flow's own preflight (it knows the bytes still missing).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import docker
from docker.errors import APIError, DockerException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.container import image_present, is_managed


class PreflightFailed(RuntimeError):
    """One or more preconditions of a deploy are not met; the message lists each with its fix."""


@dataclass(frozen=True)
class PortUse:
    container: str
    ours: bool


def gpu_runtime_problem(info: dict) -> str | None:
    """None when docker can hand GPUs to containers, else what to install."""
    runtimes = set((info.get("Runtimes") or {}).keys())
    if "nvidia" in runtimes or "nvidia" == info.get("DefaultRuntime"):
        return None
    return (
        "GPUs are requested but this docker daemon has no NVIDIA runtime (docker would answer"
        ' `could not select device driver "nvidia" with capabilities: [[gpu]]`): install the NVIDIA'
        " Container Toolkit (`apt-get install nvidia-container-toolkit && nvidia-ctk runtime configure"
        " --runtime=docker && systemctl restart docker`)."
    )


def containers_on_port(client: docker.DockerClient, host_port: int) -> list[PortUse]:
    """Running containers that publish ``host_port``."""
    users = []
    for container in client.containers.list():
        for bindings in (container.attrs.get("HostConfig", {}).get("PortBindings") or {}).values():
            if any(str(b.get("HostPort")) == str(host_port) for b in bindings or []):
                users.append(PortUse(container.name, is_managed(container)))
    return users


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@task(name="preflight", cache_policy=NO_CACHE)
def preflight(
    client: docker.DockerClient, image: str, want_gpus: bool, client_host: str, host_port: int, pull: bool
) -> None:
    """Run every check; raise one PreflightFailed that lists every problem found."""
    logger = get_run_logger()
    problems: list[str] = []
    info = client.info()
    if want_gpus and (problem := gpu_runtime_problem(info)):
        problems.append(problem)
    users = containers_on_port(client, host_port)
    foreign = [u.container for u in users if not u.ours]
    if foreign:
        problems.append(
            f"port {host_port} is published by container(s) {', '.join(foreign)} that this project does not"
            f" manage: stop them (`docker stop {foreign[0]}`) or set another host_port on the target."
        )
    elif not users and port_answers(client_host, host_port):
        problems.append(
            f"port {host_port} on {client_host} is in use by a process outside docker: free it"
            f" (`ss -ltnp 'sport = :{host_port}'` shows which) or set another host_port on the target."
        )
    if not image_present(client, image):
        if not pull:
            problems.append(f"image {image} is not on the docker host and pulling is off: `docker pull {image}` or `docker load` it.")
        else:
            logger.info("pulling %s (not on the docker host yet)", image)
            try:
                client.images.pull(image)
            except (APIError, DockerException) as exc:
                problems.append(
                    f"image {image} is not on the docker host and cannot be pulled ({_short(exc)}): check the"
                    " network and registry login (`docker login nvcr.io` with an NGC key), or `docker load` it."
                )
    if problems:
        raise PreflightFailed("preflight found {} problem(s):\n- {}".format(len(problems), "\n- ".join(problems)))
    logger.info("preflight passed: docker %s, port %s, image %s", info.get("ServerVersion"), host_port, image)


def _short(exc: Exception) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).splitlines()[0][:300]
