"""Create, idempotently, everything the deployments need on a Prefect server, then deploy them.

    python -m deployments.setup --hub-endpoint http://127.0.0.1:18080 --sim-root .demo/sim
    python -m deployments.setup --targets spark            # on the Spark's own Prefect server

Steps: register the block types; save the target blocks (``spark``, ``sim``), the engine spec
``qwen3-32b-fp8`` (the runbook's defaults) and, when a token is given in the environment, the
``hf-token`` Secret block; create the process work pool and a ``gpu:<target>`` global concurrency
limit of 1 per target; then ``prefect deploy --all`` from the project root.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from prefect import get_client
from prefect.blocks.system import Secret
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists

from blocks.engine import EngineSpec
from blocks.target import TargetMachine
from deployments.targets import sim_target, spark_target
from tasks.locks import ensure_gpu_limit

ROOT = Path(__file__).resolve().parent.parent
WORK_POOL = "spark-vllm"
ENGINE_BLOCK = "qwen3-32b-fp8"


def ensure_work_pool(name: str = WORK_POOL) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            print(f"work pool {name} created")
        except ObjectAlreadyExists:
            print(f"work pool {name} exists")


def register_blocks(targets: list[TargetMachine], hf_token: str | None) -> None:
    EngineSpec.register_type_and_schema()
    TargetMachine.register_type_and_schema()
    EngineSpec().save(ENGINE_BLOCK, overwrite=True)
    for target in targets:
        target.save(target.name, overwrite=True)
        print(f"target block {target.name} saved")
    if hf_token:
        Secret(value=hf_token).save("hf-token", overwrite=True)
        print("Secret block hf-token saved (value not shown)")


def deploy_all() -> None:
    """`prefect deploy --all` from the project root (the worker runs the flows from there)."""
    prefect = Path(sys.executable).with_name("prefect")
    run = subprocess.run([str(prefect), "--no-prompt", "deploy", "--all"], cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        sys.stderr.write(run.stdout + run.stderr)
        raise SystemExit(f"`prefect deploy --all` failed (exit {run.returncode}); its output is above")
    for name in re.findall(r"Deployment '([^']+)' successfully", run.stdout.replace("\n", " ")):
        print(f"deployment {name} ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.setup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="spark,sim", help="comma-separated: spark, sim")
    parser.add_argument("--hub-endpoint", default=os.environ.get("SPARK_VLLM_HUB", "http://127.0.0.1:18080"),
                        help="the Hub imitation's URL, for the sim target")
    parser.add_argument("--sim-root", type=Path, default=ROOT / ".demo" / "sim", help="cache and memory ledger of the sim target")
    parser.add_argument("--sim-port", type=int, default=18000, help="host port of the sim target's server")
    parser.add_argument("--sim-time-scale", type=float, default=0.05, help="imitation startup time scale (1.0 = a Spark's 3-4 min)")
    parser.add_argument("--no-deploy", action="store_true", help="skip `prefect deploy --all`")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    targets = []
    for name in names:
        if name == "spark":
            targets.append(spark_target())
        elif name == "sim":
            targets.append(sim_target("sim", args.sim_root, args.hub_endpoint, args.sim_port, args.sim_time_scale))
        else:
            parser.error(f"unknown target {name!r}: spark or sim (edit other targets as blocks in the UI)")
    register_blocks(targets, os.environ.get("HF_TOKEN"))
    ensure_work_pool()
    for target in targets:
        print(f"concurrency limit {ensure_gpu_limit(target.name)} ready")
    if not args.no_deploy:
        deploy_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
