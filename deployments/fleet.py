"""Register a fleet: every target of one targets file, its deployments on its own work queue.

    python -m deployments.fleet register fleet.yaml          # blocks, limits, deployments; prints worker commands
    python -m deployments.fleet render fleet.yaml            # only write .fleet/<fleet>.prefect.yaml

A targets file names the fleet and its machines, each with the fields of the TargetMachine block
(docs/configuration.md)::

    fleet: sparks
    targets:
      spark-a: {docker_base_url: "unix:///var/run/docker.sock", cache_dir: /opt/hf}
      spark-b: {cache_dir: /opt/hf, host_port: 8000}

Why one queue per machine: the process worker that runs a target's flows must run on that target,
because staging writes its cache, meminfo reads its memory and drop-caches writes its /proc. Each
machine runs one worker polling the `spark-vllm` pool's queue named after its target; Prefect's
server, pool and queues carry each run to the right machine, and nothing here schedules work.

The per-target deployments are not written anew: they are the `spark` deployments of prefect.yaml
(the single-machine ones: descriptions, schedules, concurrency, triggers), copied per target with
the target's name, queue and parameters, so a fleet's deploy-qwen/spark-a is exactly deploy-qwen/spark
for another machine. The fleet flows (deploy-fleet, health-check-fleet, rolling-update) get one
deployment each, on the `fleet` queue, which one worker polls (e.g. the first machine's).
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from blocks.router import FleetRouter
from blocks.shared import WORK_POOL
from blocks.target import TargetMachine
from tasks.events import ServiceEvent

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "prefect.yaml"
#: The queue the fleet flows run from (they only start and watch other deployments).
FLEET_QUEUE = "fleet"
#: The fleet flows: (flow name, entrypoint, description, schedule interval in s or None).
FLEET_FLOWS: tuple[tuple[str, str, str, int | None], ...] = (
    (
        "deploy-fleet",
        "flows/fleet.py:deploy_fleet",
        "Deploy every target of the fleet at once, each through its own deploy-qwen deployment and worker.",
        None,
    ),
    (
        "health-check-fleet",
        "flows/fleet.py:health_check_fleet",
        "One status view of the whole fleet: every target's last health verdict, spec and endpoint.",
        300,
    ),
    (
        "rolling-update",
        "flows/fleet.py:rolling_update",
        "Change the spec on every target one at a time, each gated by health and smoke, stopping at the first failure.",
        None,
    ),
)


class FleetFile(BaseModel):
    """A targets file: the fleet's name and its machines (name -> TargetMachine fields)."""

    fleet: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$")
    targets: dict[str, dict[str, Any]] = Field(min_length=1)
    router: dict[str, Any] | None = None  # the FleetRouter fields (docs/router.md); absent: no router

    @field_validator("targets")
    @classmethod
    def _not_fleet_queue(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if FLEET_QUEUE in value:
            raise ValueError(f"a target may not be named {FLEET_QUEUE!r}: that is the fleet flows' work queue")
        return value

    def machines(self) -> dict[str, TargetMachine]:
        """Each target as a validated TargetMachine; every invalid one is named at once, with its errors."""
        machines, problems = {}, []
        for name, fields in self.targets.items():
            try:
                machines[name] = TargetMachine(**{**fields, "name": name})
            except ValidationError as exc:
                details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                problems.append(f"target {name!r}: {details}")
        if problems:
            raise ValueError("the targets file has invalid targets:\n  " + "\n  ".join(problems))
        return machines

    def fleet_router(self) -> FleetRouter | None:
        """The router section as a FleetRouter of this fleet's targets (None: no router).

        Raises:
            ValueError: an invalid field, or targets whose API keys differ from the router's (a client
                sends one key through the router, and every Spark must accept it).
        """
        if self.router is None:
            return None
        try:
            router = FleetRouter(**{**self.router, "fleet": self.fleet, "targets": list(self.targets)})
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"the targets file's router: {details}") from exc
        keys = {name: m.api_key_secret for name, m in self.machines().items()}
        if any(key != router.api_key_secret for key in keys.values()):
            raise ValueError(
                f"the router's api_key_secret is {router.api_key_secret!r} but the targets have {keys}: give the "
                "router and every target the same Secret block (clients send one key through the router)"
            )
        return router


def load_fleet_file(path: Path) -> FleetFile:
    """Read and validate a targets file (YAML); errors name the file and what to fix."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the targets file {path}: {exc}") from exc
    try:
        fleet = FleetFile.model_validate(data)
    except ValidationError as exc:
        raise ValueError(
            f"{path}: not a targets file ({exc.error_count()} problems): {exc}; it needs `fleet: <name>` "
            "and `targets: {<name>: {<TargetMachine fields>}}` (docs/fleet.md)"
        ) from exc
    fleet.machines()
    fleet.fleet_router()
    return fleet


def spark_templates(prefect_yaml: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The single-machine `spark` deployments of prefect.yaml (anchors and merge keys resolved)."""
    document = yaml.safe_load(prefect_yaml.read_text())
    return [d for d in document["deployments"] if d["name"] == "spark"]


def for_target(template: Mapping[str, Any], machine: TargetMachine) -> dict[str, Any]:
    """One prefect.yaml deployment of `template` for `machine`: its name, queue, parameters, trigger."""
    name = machine.name
    deployment = copy.deepcopy(dict(template))
    deployment["name"] = name
    deployment["description"] = f"{deployment.get('description', '').strip()} (fleet target {name})".strip()
    deployment["work_pool"] = {"name": WORK_POOL, "work_queue_name": name}
    deployment["tags"] = [name if tag == "spark" else tag for tag in deployment.get("tags", [])]
    parameters = dict(deployment.get("parameters") or {})
    if "target" in parameters:
        parameters["target"] = name
    if "deploy_deployment" in parameters:
        parameters["deploy_deployment"] = f"deploy-qwen/{name}"
    if deployment["entrypoint"].startswith("flows/stage.py"):
        parameters.update(
            cache_dir=machine.cache_dir, endpoint=machine.hub_endpoint, token_secret_block=machine.hf_token_secret
        )
    deployment["parameters"] = parameters
    for trigger in deployment.get("triggers") or []:
        trigger["name"] = f"recover-{name}-on-unhealthy"
        trigger["match"] = {"prefect.resource.id": machine.event_resource_id}
    return deployment


def router_trigger(fleet: str, machines: Iterable[TargetMachine]) -> dict[str, Any]:
    """health-check-fleet on a target's unhealthy verdict: the router drops it at once, not at the next
    5-minute run (the router's own health check already stops sending to a dead Spark within seconds;
    this takes it off the list). A recovered target rejoins at the next run, after a healthy check."""
    return {
        "type": "event",
        "name": f"router-{fleet}-follows-health",
        "enabled": True,
        "expect": [ServiceEvent.UNHEALTHY.event],
        "match": {"prefect.resource.id": [m.event_resource_id for m in machines]},
        "parameters": {"run_checks": False},
    }


def render(fleet: FleetFile, prefect_yaml: Path = PREFECT_YAML) -> dict[str, Any]:
    """The fleet's prefect.yaml: every spark deployment per target, and the fleet flows."""
    machines = fleet.machines()
    deployments = [for_target(t, m) for m in machines.values() for t in spark_templates(prefect_yaml)]
    targets = list(machines)
    for _flow, entrypoint, description, interval in FLEET_FLOWS:
        deployment: dict[str, Any] = {
            "name": fleet.fleet,
            "entrypoint": entrypoint,
            "description": description,
            "parameters": {"targets": targets, "fleet": fleet.fleet},
            "tags": ["vllm", "fleet", fleet.fleet],
            "work_pool": {"name": WORK_POOL, "work_queue_name": FLEET_QUEUE},
            "concurrency_limit": {"limit": 1, "collision_strategy": "ENQUEUE" if interval is None else "CANCEL_NEW"},
        }
        if interval:
            deployment["schedules"] = [{"interval": interval, "active": True}]
        if _flow == "health-check-fleet" and fleet.router is not None:
            deployment["triggers"] = [router_trigger(fleet.fleet, machines.values())]
        deployments.append(deployment)
    return {
        "name": f"spark-vllm-{fleet.fleet}",
        "prefect-version": yaml.safe_load(prefect_yaml.read_text()).get("prefect-version"),
        "deployments": deployments,
    }


def write_rendered(fleet: FleetFile, out_dir: Path = ROOT / ".fleet") -> Path:
    """Write `<out_dir>/<fleet>.prefect.yaml` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{fleet.fleet}.prefect.yaml"
    header = (
        f"# Generated by `python -m deployments.fleet render` from the targets of fleet {fleet.fleet!r}: the\n"
        "# `spark` deployments of prefect.yaml, one set per target on its own queue. Do not edit: edit\n"
        "# prefect.yaml or the targets file and render again.\n"
    )
    path.write_text(header + yaml.safe_dump(render(fleet), sort_keys=False, width=110))
    return path


def worker_commands(fleet: FleetFile) -> list[str]:
    """The command to run on each machine (the first also runs the fleet flows)."""
    lines = []
    for i, name in enumerate(fleet.targets):
        queues = f"--work-queue {name}" + (f" --work-queue {FLEET_QUEUE}" if i == 0 else "")
        lines.append(
            f"on {name}: .venv/bin/prefect worker start --pool {WORK_POOL} --name {name}-worker {queues} "
            "--with-healthcheck   (or as a systemd unit)"
        )
    return lines


def register(fleet: FleetFile, env: Mapping[str, str] | None = None, cwd: Path = ROOT) -> Path:
    """Save every target's block (the file is the fleet's configuration: it overwrites them), its
    `gpu:<target>` limit, the pool, and deploy the rendered deployments with `prefect deploy`; then the
    zombie-run automation again, so that it judges the new deployments' runs too (deployments/zombies.py)."""
    from deployments.setup import ensure_work_pool
    from deployments.zombies import ensure_zombie_detection
    from tasks.locks import ensure_gpu_limit

    ensure_work_pool()
    for name, machine in fleet.machines().items():
        machine.save(name, overwrite=True)
        ensure_gpu_limit(name)
        print(f"target {name}: block saved, limit gpu:{name}")
    router = fleet.fleet_router()
    if router is not None:
        router.save(fleet.fleet, overwrite=True)
        print(
            f"router of {fleet.fleet}: block saved ({router.url}, {router.policy}); start it on the front "
            f"machine: python -m deployments.router serve --fleet {fleet.fleet}"
        )
    path = write_rendered(fleet)
    prefect = str(Path(sys.executable).with_name("prefect"))
    done = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(path)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"prefect deploy --prefect-file {path} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    print(f"deployed {len(render(fleet)['deployments'])} deployments from {path}")
    ensure_zombie_detection()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("register", "render"))
    parser.add_argument("targets_file", type=Path)
    args = parser.parse_args(argv)
    try:
        fleet = load_fleet_file(args.targets_file)
        if args.command == "render":
            print(write_rendered(fleet))
            return 0
        register(fleet)
    except (ValueError, RuntimeError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print("\nRun one worker on each machine (systemd unit: docs/fleet.md):")
    print("\n".join(worker_commands(fleet)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
