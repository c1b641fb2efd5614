"""Create, idempotently, everything the deployments need on a Prefect server, then deploy them.

    python -m deployments.setup --hub-endpoint http://127.0.0.1:18080 --sim-root .demo/sim
    python -m deployments.setup --targets spark            # on the Spark's own Prefect server
    python -m deployments.setup --targets spark --api-key  # ... and require an API key

Steps: register the block types; save the target blocks (``spark``, ``sim``) and the engine spec
``qwen3-32b-fp8`` (the runbook's defaults) that do not exist yet (saved ones are the operator's,
edited in the UI, and are kept unless ``--reset-blocks``) and, when a token is given in the
environment, the ``hf-token`` Secret block; with ``--api-key``, a generated key in the
``vllm-api-key`` Secret block (kept when it exists) named by the spark target; create the process
work pool and a ``gpu:<target>`` global concurrency limit of 1 per target; then
``prefect deploy --all`` from the project root. A reset keeps a target's ``api_key_secret``: a
re-run never reopens a server that requires a key.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

from prefect import get_client
from prefect.blocks.system import Secret
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from blocks.engine import EngineSpec
from blocks.health_limits import ensure_health_limits
from blocks.shared import API_KEY_BLOCK, HF_TOKEN_BLOCK, WORK_POOL
from blocks.target import TargetMachine
from deployments.notify import ALERTS_BLOCK, NOTIFY_AUTOMATION, configure_notifications, notify_argument
from deployments.targets import sim_target, spark_target
from deployments.zombies import ensure_zombie_detection
from tasks.locks import ensure_gpu_limit

ROOT = Path(__file__).resolve().parent.parent
ENGINE_BLOCK = "qwen3-32b-fp8"
#: The target `--api-key` protects: the one published on every interface, as the runbook does.
API_KEY_TARGET = "spark"


def ensure_work_pool(name: str = WORK_POOL) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            print(f"work pool {name} created")
        except ObjectAlreadyExists:
            print(f"work pool {name} exists")


def _secret_exists(name: str) -> bool:
    """Whether the Secret block exists, asked without fetching its value."""
    with get_client(sync_client=True) as client:
        try:
            client.read_block_document_by_name(name, block_type_slug="secret", include_secrets=False)
        except ObjectNotFound:
            return False
    return True


def ensure_api_key(name: str = API_KEY_BLOCK, rotate: bool = False) -> bool:
    """Save a generated API key in the Secret block `name`, unless it exists; True when written.

    An existing key is kept: operators may already have handed it to clients, and replacing it
    would lock them out. `rotate` replaces it on purpose. The key is never printed or logged;
    the message says where it is and how to read it.
    """
    if _secret_exists(name) and not rotate:
        print(f"Secret block {name} exists: its key is kept (clients may already use it; --rotate-api-key replaces it)")
        return False
    Secret(value=secrets.token_urlsafe(32)).save(name, overwrite=True)
    print(
        f"API key {'rotated' if rotate else 'generated'} into the Prefect Secret block {name} (value not shown).\n"
        f'  read it:  {sys.executable} -c "from prefect.blocks.system import Secret; '
        f"print(Secret.load('{name}').get())\"\n"
        f"  (`prefect block inspect secret/{name}` shows the block, with the value masked)\n"
        "  clients send it as `Authorization: Bearer <key>`"
    )
    if rotate:
        print("  the running server still has the old key: run stop-qwen, then deploy-qwen, to replace it")
    return True


def _saved(block_type, name: str):
    """The saved block of that name, or None (absent, or one that no longer validates)."""
    try:
        return block_type.load(name)
    except ValueError:
        return None


def _target_to_save(
    target: TargetMachine, saved: TargetMachine | None, reset: bool, api_key_block: str | None
) -> TargetMachine | None:
    """What to save for a target, or None to leave its saved block as it is.

    A saved block is the operator's (edited in the UI): it is kept unless ``reset``. Even a reset
    keeps the saved ``api_key_secret``: clearing it would silently reopen a server that requires a
    key. ``api_key_block`` (from --api-key) is set on the saved block as the one change.
    """
    if saved is not None and not reset:
        if api_key_block and saved.api_key_secret != api_key_block:
            return TargetMachine(
                **{**saved.model_dump(include=set(TargetMachine.model_fields)), "api_key_secret": api_key_block}
            )
        return None
    key = api_key_block or target.api_key_secret or (saved.api_key_secret if saved else None)
    if key == target.api_key_secret:
        return target
    return TargetMachine(**{**target.model_dump(include=set(TargetMachine.model_fields)), "api_key_secret": key})


def register_blocks(
    targets: list[TargetMachine], hf_token: str | None, reset: bool = False, api_key_for: dict[str, str] | None = None
) -> None:
    """Register the block types, then save the engine spec and target blocks that are missing.

    Args:
        targets: the targets this setup knows (their default settings).
        hf_token: saved as the ``hf-token`` Secret block (`HF_TOKEN_BLOCK`) when given.
        reset: overwrite saved blocks with the defaults (operators' UI edits are lost).
        api_key_for: target name -> Secret block name of its API key (from --api-key).
    """
    EngineSpec.register_type_and_schema()
    TargetMachine.register_type_and_schema()
    if reset or _saved(EngineSpec, ENGINE_BLOCK) is None:
        EngineSpec().save(ENGINE_BLOCK, overwrite=True)
        print(f"engine block {ENGINE_BLOCK} saved (the runbook's compose service)")
    else:
        print(f"engine block {ENGINE_BLOCK} exists: kept (--reset-blocks overwrites it)")
    for target in targets:
        saved = _saved(TargetMachine, target.name)
        to_save = _target_to_save(target, saved, reset, (api_key_for or {}).get(target.name))
        if to_save is None:
            print(f"target block {target.name} exists: kept (--reset-blocks overwrites it)")
        else:
            to_save.save(target.name, overwrite=True)
            print(f"target block {target.name} saved")
        current = to_save or saved
        if warning := current.open_to_network_warning():
            print(f"  warning: {warning}")
    if hf_token:
        Secret(value=hf_token).save(HF_TOKEN_BLOCK, overwrite=True)
        print(f"Secret block {HF_TOKEN_BLOCK} saved (value not shown)")


def deploy_all() -> None:
    """`prefect deploy --all` from the project root (the worker runs the flows from there)."""
    prefect = Path(sys.executable).with_name("prefect")
    run = subprocess.run([str(prefect), "--no-prompt", "deploy", "--all"], cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        sys.stderr.write(run.stdout + run.stderr)
        raise SystemExit(f"`prefect deploy --all` failed (exit {run.returncode}); its output is above")
    for name in re.findall(r"Deployment '([^']+)' successfully", run.stdout.replace("\n", " ")):
        print(f"deployment {name} ready")


def unreachable_reason(target: TargetMachine) -> str | None:
    """Why this machine cannot serve ``target`` (None: it can): its docker host does not answer, or the
    image the target runs is not there. Checks scheduled on such a target would only ever report it."""
    from tasks.container import docker_client, image_present

    image = target.image or EngineSpec().image
    if problem := target.remote_docker_problem():
        return problem
    try:
        with docker_client(target.docker_host()) as client:
            return None if image_present(client, image) else f"the image {image} is not on its docker host"
    except Exception as exc:  # noqa: BLE001 - any failure to reach docker is the reason itself
        return f"its docker host does not answer ({str(exc).splitlines()[0][:200]})"


def pause_checks_of_unreachable(targets: list[TargetMachine]) -> None:
    """Pause the scheduled health check of each target this machine cannot reach (`unreachable_reason`),
    so a demo or a fresh setup shows no checks and no recoveries of a Spark that is not there; resumed
    in the UI (Deployments -> health-check/<target> -> schedule) once the target is set up."""
    with get_client(sync_client=True) as client:
        for target in targets:
            why = unreachable_reason(target)
            if why is None:
                continue
            try:
                deployment = client.read_deployment_by_name(f"health-check/{target.name}")
            except ObjectNotFound:
                continue
            for schedule in deployment.schedules:
                client.update_deployment_schedule(deployment.id, schedule.id, active=False)
            print(f"health-check/{target.name}: schedule paused: {why}; resume it in the UI once it is set up")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.setup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", default="spark,sim", help="comma-separated: spark, sim")
    parser.add_argument(
        "--hub-endpoint",
        default=os.environ.get("SPARK_VLLM_HUB", "http://127.0.0.1:18080"),
        help="the Hub imitation's URL, for the sim target",
    )
    parser.add_argument(
        "--sim-root", type=Path, default=ROOT / ".demo" / "sim", help="cache and memory ledger of the sim target"
    )
    parser.add_argument("--sim-port", type=int, default=18000, help="host port of the sim target's server")
    parser.add_argument(
        "--sim-time-scale", type=float, default=0.05, help="imitation startup time scale (1.0 = a Spark's 3-4 min)"
    )
    parser.add_argument(
        "--api-key",
        action="store_true",
        help=f"require an API key on the {API_KEY_TARGET} target: generate one into the Secret "
        f"block {API_KEY_BLOCK} (kept if it exists) and set the target's api_key_secret",
    )
    parser.add_argument(
        "--rotate-api-key",
        action="store_true",
        help=f"like --api-key, but replace the key in {API_KEY_BLOCK} (clients need the new one)",
    )
    parser.add_argument(
        "--reset-blocks",
        action="store_true",
        help="overwrite the saved engine spec and target blocks with these defaults (UI edits are lost)",
    )
    parser.add_argument("--no-deploy", action="store_true", help="skip `prefect deploy --all`")
    parser.add_argument(
        "--pause-unreachable",
        action="store_true",
        help="pause the scheduled health check of every target this machine cannot reach (the demo's Spark)",
    )
    parser.add_argument(
        "--notify",
        type=notify_argument,
        metavar="URL|off",
        help=f"send incident messages to this webhook (Slack, Teams, Discord, or any URL: a JSON POST) through "
        f"the block {ALERTS_BLOCK} and the automation {NOTIFY_AUTOMATION}, replacing the earlier destination; "
        f"'off' removes both; `python -m deployments.notify` says where they go now",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    want_key = args.api_key or args.rotate_api_key
    if want_key and API_KEY_TARGET not in names:
        parser.error(
            f"--api-key protects the {API_KEY_TARGET} target: add it to --targets "
            f"(for another target, name a Secret block in its api_key_secret in the UI)"
        )
    targets = []
    for name in names:
        if name == "spark":
            targets.append(spark_target())
        elif name == "sim":
            targets.append(sim_target("sim", args.sim_root, args.hub_endpoint, args.sim_port, args.sim_time_scale))
        else:
            parser.error(f"unknown target {name!r}: spark or sim (edit other targets as blocks in the UI)")
    if want_key:
        ensure_api_key(API_KEY_BLOCK, rotate=args.rotate_api_key)
    register_blocks(
        targets,
        os.environ.get("HF_TOKEN"),
        reset=args.reset_blocks,
        api_key_for={API_KEY_TARGET: API_KEY_BLOCK} if want_key else None,
    )
    ensure_health_limits()
    ensure_work_pool()
    for target in targets:
        print(f"concurrency limit {ensure_gpu_limit(target.name)} ready")
    if args.notify:
        configure_notifications(args.notify)
    if not args.no_deploy:
        deploy_all()
        if args.pause_unreachable:
            pause_checks_of_unreachable(targets)
    ensure_zombie_detection()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
