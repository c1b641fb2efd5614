"""Preflight of a deploy: every check runs, and all problems are reported together, each with its fix.

Checked before anything changes on the machine, so a failing deploy leaves nothing behind: the
target's docker host is this machine (the worker's) and reachable, the NVIDIA runtime is there when
GPUs are requested, the published port is free or held by our own container, the image is present or
pullable. Free disk for the model is the staging flow's own preflight (it knows the bytes still
missing). What is allowed but worth knowing (a server open to the network without an API key, a docker
host with no OOM guard) comes back as warnings, for the log and the deploy report.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass

import docker
from docker.errors import APIError, ContainerError, DockerException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.target import TargetMachine
from tasks.container import docker_client, image_present, is_managed
from tasks.errors import SparkVllmError
from tasks.memory import helper_container_kwargs

#: Daemons that kill the largest memory user while the machine still answers (their process names).
#: On GB10 the GPU's memory is the host's and a start or a long prefill can exhaust it and hang the
#: whole machine before the kernel's OOM killer acts (vllm issue 46307); either daemon acts first.
OOM_GUARDS: tuple[str, ...] = ("earlyoom", "systemd-oomd")
#: The docker host's process names, read in a throwaway container that shares the host's process
#: namespace (``pid_mode="host"``): the worker may not be the docker host. ``true``: a process that
#: ends while it is read is no failure.
HOST_PROCESS_NAMES = ["sh", "-c", "cat /proc/[0-9]*/comm 2>/dev/null; true"]


class PreflightFailed(SparkVllmError):
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
    for container in client.containers.list(ignore_removed=True):
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


def _docker_problems(client: docker.DockerClient, machine: TargetMachine, image: str) -> tuple[list[str], str | None]:
    """The checks that need the daemon: GPU runtime, port, image. Returns (problems, docker version)."""
    problems: list[str] = []
    info = client.info()
    if machine.gpus == "all" and (problem := gpu_runtime_problem(info)):
        problems.append(problem)
    # The port is tried before the containers are listed: a deploy of ours starting its server meanwhile
    # (a second deploy waits for the GPU lock after its preflight) is then in the list, not "outside docker".
    answers = port_answers(machine.client_host, machine.host_port)
    users = containers_on_port(client, machine.host_port)
    foreign = [u.container for u in users if not u.ours]
    if foreign:
        problems.append(
            f"port {machine.host_port} is published by container(s) {', '.join(foreign)} that this project does not"
            f" manage: stop them (`docker stop {foreign[0]}`) or set another host_port on the target."
        )
    elif not users and answers:
        problems.append(
            f"port {machine.host_port} on {machine.client_host} is in use by a process outside docker: free it"
            f" (`ss -ltnp 'sport = :{machine.host_port}'` shows which) or set another host_port on the target."
        )
    if not image_present(client, image):
        if not machine.image_pull:
            problems.append(
                f"image {image} is not on the docker host and pulling is off: "
                f"`docker pull {image}` or `docker load` it."
            )
        else:
            get_run_logger().info("pulling %s (not on the docker host yet)", image)
            try:
                client.images.pull(image)
            except (APIError, DockerException) as exc:
                problems.append(
                    f"image {image} is not on the docker host and cannot be pulled ({_short(exc)}): check the"
                    " network and registry login (`docker login nvcr.io` with an NGC key), or `docker load` it."
                )
    return problems, info.get("ServerVersion")


def running_oom_guard(process_names: Iterable[str]) -> str | None:
    """The first of `OOM_GUARDS` among the docker host's process names, or None (pure)."""
    names = {name.strip() for name in process_names}
    return next((guard for guard in OOM_GUARDS if guard in names), None)


def oom_guard_warning(target_name: str, process_names: Iterable[str]) -> str | None:
    """None when an OOM guard runs on the docker host, else the warning with its fix (pure)."""
    if running_oom_guard(process_names) is not None:
        return None
    return (
        f"no OOM guard runs on the docker host of {target_name} (neither {' nor '.join(OOM_GUARDS)}): on GB10 a"
        " start or a long prefill that exhausts the unified memory can hang the whole machine before the kernel's"
        " OOM killer acts (vllm issue 46307). Install and enable one: `sudo apt-get install earlyoom &&"
        " sudo systemctl enable --now earlyoom`, or `sudo systemctl enable --now systemd-oomd`."
    )


def _host_oom_warning(client: docker.DockerClient, machine: TargetMachine, image: str) -> str | None:
    """`oom_guard_warning` from the docker host's processes, read in a helper of ``image`` (present after
    the image check); a host that cannot be read is a warning too, never a failure."""
    kwargs = helper_container_kwargs(machine, image, HOST_PROCESS_NAMES, pid_mode="host")
    try:
        output = client.containers.run(**kwargs)
    except (APIError, ContainerError) as exc:
        return f"could not tell whether an OOM guard runs on the docker host of {machine.name}: {_short(exc)}"
    return oom_guard_warning(machine.name, output.decode("utf-8", "replace").splitlines())


@task(name="preflight", cache_policy=NO_CACHE, task_run_name="preflight {machine.name}")
def preflight(machine: TargetMachine, image: str) -> list[str]:
    """Run every check; raise one PreflightFailed that lists every problem found.

    Args:
        machine: the target (its docker host, GPUs, port, addresses, API key setting).
        image: the image the spec runs on this machine.

    Returns:
        Warnings: allowed, but an operator should know (each says what to do about it).
    """
    logger = get_run_logger()
    problems: list[str] = []
    version, host = None, None
    if remote := machine.remote_docker_problem():
        problems.append(remote)  # and no connection to that machine: nothing there would be used
    else:
        try:
            with docker_client(machine.docker_host()) as client:
                found, version = _docker_problems(client, machine, image)
                problems += found
                host = None if found else _host_oom_warning(client, machine, image)
        except ConnectionError as exc:
            problems.append(str(exc))
    if problems:
        raise PreflightFailed("preflight found {} problem(s):\n- {}".format(len(problems), "\n- ".join(problems)))
    warnings = [w for w in (machine.open_to_network_warning(), host) if w is not None]
    for warning in warnings:
        logger.warning("%s", warning)
    logger.info("preflight passed: docker %s, port %s, image %s", version, machine.host_port, image)
    return warnings


def _short(exc: Exception) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).splitlines()[0][:300]
