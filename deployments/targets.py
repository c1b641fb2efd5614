"""The two kinds of target the project knows, as settings of one TargetMachine block type.

``spark_target()`` is the runbook's machine; ``sim_target()`` points the same flows at the
imitations (the vLLM imitation image and the local Hub). Nothing else differs: no flow or task
branches on which one it runs.

The product never imports the imitations (``sim/``): the imitation image's tag is defined here,
where the sim target needs it, and ``sim/image.py`` builds the image under this tag by importing
it from here. This module stays light to import (``TargetMachine``, and with it Prefect, is
imported only by the functions that build a target), so ``python -m sim.image check`` in
deployments/bootstrap.sh does not pay Prefect's import for one string.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from blocks.target import TargetMachine

#: The vLLM imitation's image, as ``sim/image.py`` tags it (built locally, never pulled): it speaks
#: vLLM 0.10.1.1 (``nvcr.io/nvidia/vllm:25.09-py3``).
SIM_IMAGE = "spark-vllm/vllm-sim:latest"

#: The imitation image per vLLM version it speaks (docs/imitations.md, "Versions"): the image itself
#: says its version as an NGC image does (``import vllm; print(vllm.__version__)``, its log, GET /version).
#: The 0.11.1 and 0.31.0 tags are ``SIM_IMAGE`` plus ``ENV VLLM_SIM_VERSION``, built by ``sim/image.py``.
SIM_IMAGES: dict[str, str] = {
    "0.10.1.1+381074ae.nv25.09": SIM_IMAGE,
    "0.11.1": "spark-vllm/vllm-sim:0.11.1",
    "0.31.0": "spark-vllm/vllm-sim:0.31.0",
}

#: The imitation's /proc/meminfo: its memory ledger rendered when read (sim/vllm, `vllm_sim meminfo`).
SIM_MEMINFO_COMMAND: tuple[str, ...] = ("python3", "-m", "vllm_sim", "meminfo")

#: Where the imitation keeps its memory ledger inside the container (VLLM_SIM_LEDGER_DIR's default).
SIM_LEDGER_MOUNT = "/var/lib/vllm-sim"


def spark_target(name: str = "spark", **overrides: Any) -> TargetMachine:
    """The DGX Spark of the runbook: local docker, /opt/hf, all GPUs, port 8000, the real Hub."""
    from blocks.target import TargetMachine

    return TargetMachine(name=name, **overrides)


def sim_target(
    name: str,
    root: Path,
    hub_endpoint: str,
    host_port: int,
    time_scale: float = 0.05,
    decode_time_scale: float = 0.0,
    extra_env: dict[str, str] | None = None,
    **overrides: Any,
) -> TargetMachine:
    """A target on this rig: the imitation image, a model cache, a compile/kernel cache directory
    (``vllm-cache``, created by deploy-qwen's helper container as a Spark's is) and a memory ledger
    under ``root``.

    The ledger directory stands for the Spark's unified memory: every imitation container of
    this target mounts it, the image's ``meminfo`` command renders it as /proc/meminfo at the moment
    it is read (the target's meminfo_command, where a Spark has ``cat /proc/meminfo``), and writing 3
    to its ``drop_caches`` clears the page-cache term, as /proc/sys/vm/drop_caches does on a Spark.
    """
    from blocks.target import TargetMachine

    root = Path(root).absolute()
    cache, ledger = root / "hf", root / "ledger"
    cache.mkdir(parents=True, exist_ok=True)
    ledger.mkdir(parents=True, exist_ok=True)
    (ledger / "drop_caches").touch()  # the file the drop-caches helper mounts, as /proc/sys/vm/drop_caches
    env = {"VLLM_SIM_TIME_SCALE": str(time_scale), "VLLM_SIM_DECODE_TIME_SCALE": str(decode_time_scale)}
    settings = dict(
        image=SIM_IMAGE,
        container_name=f"vllm-qwen3-32b-fp8-{name}",
        image_pull=False,
        gpus="none",
        cache_dir=str(cache),
        vllm_cache_dir=str(root / "vllm-cache"),
        publish_host="127.0.0.1",
        client_host="127.0.0.1",
        host_port=host_port,
        hub_endpoint=hub_endpoint,
        drop_caches_path=str(ledger / "drop_caches"),
        meminfo_command=list(SIM_MEMINFO_COMMAND),
        extra_volumes={str(ledger): SIM_LEDGER_MOUNT},
        extra_env={**env, **(extra_env or {})},
    )
    return TargetMachine(name=name, **{**settings, **overrides})
