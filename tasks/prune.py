"""The runbook's ``docker system prune -f``, through docker-py, with a scope and a report.

The runbook's "Container Fails with Memory Errors" says: stop the containers, ``docker system
prune -f``, lower the utilization. ``docker system prune -f`` removes stopped containers, unused
networks, dangling images and the unused build cache; never volumes and never a running container.
`prune_docker` does the same four calls (``scope="system"``), or only what this project labelled
(``scope="project"``: containers and networks carrying ``org.spark-vllm.managed-by=spark-vllm``,
and the target's label when one is named; dangling images with that label; no build cache, which
carries no labels).

A prune frees disk, not memory: a stopped container holds no memory, so the recovery planner
(`tasks.recovery.planner`) prunes because the runbook does, never in the hope of a start that fits. The
flow reads meminfo before and after and says so in its report.
"""

from __future__ import annotations

from typing import Any, Literal

import docker
from docker.errors import APIError
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_docker.host import DockerHost
from pydantic import BaseModel, Field, computed_field

from blocks.render import label_filters
from tasks.container import docker_client

__all__ = ["PruneKind", "PruneReport", "PruneScope", "prune_docker", "prune_filters", "prune_with"]

PruneScope = Literal["system", "project"]
PruneKind = Literal["containers", "networks", "images", "build_cache"]
#: The kinds in the order ``docker system prune`` removes them (containers first: they free networks and images).
KINDS: tuple[PruneKind, ...] = ("containers", "networks", "images", "build_cache")


class PruneReport(BaseModel):
    """What a prune removed and the disk it reclaimed, per kind and in total.

    Stopped containers hold no memory: a prune frees disk, not memory. The recovery report shows
    meminfo before and after the prune (the flow reads it) so nobody takes it for a memory fix.
    """

    scope: PruneScope
    target_name: str | None = None
    #: removed containers by name (the id's first 12 characters when the name was not seen).
    containers: list[str] = Field(default_factory=list)
    container_ids: list[str] = Field(default_factory=list)
    networks: list[str] = Field(default_factory=list)
    #: image ids removed (untagged-only entries are not counted).
    images: list[str] = Field(default_factory=list)
    build_cache_count: int = 0
    containers_bytes: int = 0
    images_bytes: int = 0
    build_cache_bytes: int = 0
    #: kinds not pruned in this scope (build cache in project scope).
    skipped: list[PruneKind] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_bytes(self) -> int:
        """Disk reclaimed by all kinds (networks reclaim none)."""
        return self.containers_bytes + self.images_bytes + self.build_cache_bytes

    @computed_field  # type: ignore[prop-decorator]
    @property
    def summary(self) -> str:
        """One line for the flow log and the recovery report."""
        where = (
            "docker system prune"
            if self.scope == "system"
            else (f"project prune (target {self.target_name})" if self.target_name else "project prune (all targets)")
        )
        names = f" ({', '.join(self.containers)})" if self.containers else ""
        parts = [
            f"{len(self.containers)} stopped container(s){names}",
            f"{len(self.networks)} network(s)",
            f"{len(self.images)} dangling image(s)",
            "build cache skipped"
            if "build_cache" in self.skipped
            else f"{self.build_cache_count} build cache entr(ies)",
        ]
        return (
            f"{where}: removed {', '.join(parts)}; {human_bytes(self.total_bytes)} of disk reclaimed (disk, not memory)"
        )


def human_bytes(count: int) -> str:
    """Bytes as docker prints them (decimal units): 0 B, 12.3 kB, 1.2 GB."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def prune_filters(scope: PruneScope, target_name: str | None = None) -> dict[PruneKind, dict[str, Any] | None]:
    """The ``filters=`` of each prune call; None = that kind is not pruned in this scope.

    ``system`` is the runbook's ``docker system prune -f``: no filters, except that images are the
    dangling ones only (what ``docker image prune`` without ``-a`` removes). ``project`` is only
    what carries our managed-by label (and the target's, when named): containers and networks by
    label, images dangling and labelled; the build cache carries no labels, so it is left alone.

    Raises:
        ValueError: an unknown scope, or a target name with the system scope (a system prune is the
            whole daemon's: a target there would suggest a narrower prune than the one that runs).
    """
    if scope == "system":
        if target_name is not None:
            raise ValueError(
                f"target_name {target_name!r} limits only scope='project'; scope='system' is `docker system "
                "prune -f` on the whole daemon. Use scope='project' to prune one target's leftovers"
            )
        return {"containers": {}, "networks": {}, "images": {"dangling": True}, "build_cache": {}}
    if scope == "project":
        labels = label_filters(target_name)
        return {
            "containers": dict(labels),
            "networks": dict(labels),
            "images": {"dangling": True, **labels},
            "build_cache": None,
        }
    raise ValueError(f"unknown prune scope {scope!r}: use 'system' (the runbook's docker system prune -f) or 'project'")


def _call(kind: PruneKind, fn: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        return fn(**kwargs) or {}
    except APIError as exc:
        hint = " (another prune is running on this daemon: retry when it ends)" if exc.status_code == 409 else ""
        raise RuntimeError(f"docker could not prune {kind.replace('_', ' ')}: {exc.explanation or exc}{hint}") from exc


def prune_with(client: docker.DockerClient, scope: PruneScope, target_name: str | None = None) -> PruneReport:
    """Prune with a live client (only ever called inside a task that opened it: `prune_docker`).

    The daemon itself skips running containers and networks in use, and nothing here calls a
    volume prune; the container names are read before the prune (the prune answers with ids).
    """
    filters = prune_filters(scope, target_name)
    report = PruneReport(scope=scope, target_name=target_name, skipped=[k for k in KINDS if filters[k] is None])

    container_filters = filters["containers"]
    if container_filters is not None:
        names = {
            c.id: c.name
            for c in client.containers.list(all=True, filters=container_filters or None, ignore_removed=True)
        }
        result = _call("containers", client.containers.prune, filters=container_filters or None)
        report.container_ids = list(result.get("ContainersDeleted") or [])
        report.containers = [names.get(cid, cid[:12]) for cid in report.container_ids]
        report.containers_bytes = int(result.get("SpaceReclaimed") or 0)

    if filters["networks"] is not None:
        result = _call("networks", client.networks.prune, filters=filters["networks"] or None)
        report.networks = list(result.get("NetworksDeleted") or [])

    if filters["images"] is not None:
        result = _call("images", client.images.prune, filters=filters["images"])
        report.images = [entry["Deleted"] for entry in result.get("ImagesDeleted") or [] if entry.get("Deleted")]
        report.images_bytes = int(result.get("SpaceReclaimed") or 0)

    if filters["build_cache"] is not None:
        result = _call("build_cache", client.api.prune_builds, filters=filters["build_cache"] or None)
        report.build_cache_count = len(result.get("CachesDeleted") or [])
        report.build_cache_bytes = int(result.get("SpaceReclaimed") or 0)
    return report


@task(name="prune-docker", cache_policy=NO_CACHE)
def prune_docker(docker_host: DockerHost, scope: PruneScope, target_name: str | None = None) -> PruneReport:
    """The runbook's ``docker system prune -f`` (``scope="system"``), or only our own leftovers.

    Args:
        docker_host: the target's prefect-docker block; the client is opened and closed here.
        scope: "system" = stopped containers, unused networks, dangling images and the build cache
            of the whole daemon, as the runbook runs it; "project" = only stopped containers,
            unused networks and dangling images carrying our managed-by label.
        target_name: with scope "project", only that target's (its target label).

    Returns:
        What was removed and the disk reclaimed; its ``summary`` says it is disk, not memory.

    Raises:
        ValueError: unknown scope, or a target name with scope "system".
        ConnectionError: the daemon does not answer (the message says how to start it).
        RuntimeError: the daemon refused a prune (e.g. another prune runs).
    """
    prune_filters(scope, target_name)  # refuse a bad scope before opening a client
    logger = get_run_logger()
    with docker_client(docker_host) as client:
        report = prune_with(client, scope, target_name)
    logger.info("%s", report.summary)
    return report
