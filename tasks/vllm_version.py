"""Which vLLM a target runs: learnt before the start, confirmed by the server once it serves.

Decisions such as dropping the page cache (vLLM 0.10.x reads MemFree, 0.11.1+ MemAvailable) or
which `vllm serve` flags exist are taken before the server starts, so deploy-qwen learns the
version right after preflight, in the order of trust (docs/versions.md):

1. the image itself: `IMAGE_PROBE` (``vllm.__version__``, and whether ``fastsafetensors`` imports:
   the image's capabilities, `ImageFacts`) in one throwaway container of the image on the target's
   docker host, as the memory reader runs one (tasks/memory.py
   `helper_container_kwargs`: our labels, no network, the entrypoint bypassed); source ``image``;
2. the NGC tag table (`version_of_image`, NVIDIA's release notes); source ``ngc-tag``;
3. the runbook's vLLM, with a warning that says how to check; source ``assumed``.

Once the server serves, its own word wins: the startup log's version line (`Readiness.stats`)
or ``GET /version``; a disagreement with what was learnt before is a warning in the report.
"""

from __future__ import annotations

import httpx
from docker.errors import APIError, ContainerError, ImageNotFound
from packaging.version import Version
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.target import TargetMachine
from tasks.container import docker_client
from tasks.memory import helper_container_kwargs
from tasks.vllm.api import VERSION_PATH, version_from_body, vllm_client
from tasks.vllm.versions import (
    RUNBOOK_VERSION,
    VERSION_PROBE,
    VersionInfo,
    VersionUnknown,
    parse_vllm_version,
    version_from_probe,
    version_of_image,
)

__all__ = [
    "IMAGE_PROBE",
    "ImageFacts",
    "confirm_version",
    "facts_before_start",
    "fastsafetensors_from_probe",
    "fetch_server_version",
    "learn_image",
    "learn_vllm_version",
    "read_server_version",
    "recorded_version",
    "server_agrees",
    "version_before_start",
    "version_rows",
    "version_warnings",
]


#: The line the probe prints about the fastsafetensors package, before the version line.
_FASTSAFETENSORS = "fastsafetensors:"
#: What runs in the one throwaway container: whether ``fastsafetensors`` imports (the package vLLM's
#: fastsafetensors loader imports: vllm/model_executor/model_loader/weight_utils.py:48 in 0.10.1.1, :57 in
#: 0.31.0; its absence is caught, never fatal), then `VERSION_PROBE` (the version on the last line).
IMAGE_PROBE: tuple[str, ...] = (
    VERSION_PROBE[0],
    VERSION_PROBE[1],
    "try:\n    import fastsafetensors\n"
    f"    print({_FASTSAFETENSORS!r}, 'yes')\n"
    "except Exception as exc:\n"
    f"    print({_FASTSAFETENSORS!r}, 'no', type(exc).__name__)\n" + VERSION_PROBE[2],
)


class ImageFacts(BaseModel):
    """What deploy-qwen knows of the image before it starts: its vLLM and what it offers the loader
    (tasks/loader.py `choose_loader`).

    Attributes:
        vllm: the image's vLLM (`version_before_start`).
        fastsafetensors: ``import fastsafetensors`` works inside the image (False when the probe said nothing).
        note: why ``fastsafetensors`` is taken as absent when the probe could not say.
    """

    vllm: VersionInfo
    fastsafetensors: bool = False
    note: str = ""


def fastsafetensors_from_probe(output: str | None) -> bool | None:
    """What `IMAGE_PROBE` printed about fastsafetensors: True, False, None (no such line: it did not run)."""
    for line in (output or "").splitlines():
        words = line.split()
        if words[:1] == [_FASTSAFETENSORS]:
            return words[1:2] == ["yes"]
    return None


def facts_before_start(image: str, probed: str | None, probe_error: str | None) -> ImageFacts:
    """`ImageFacts` from the probe's output (pure): the version as `version_before_start` reads it, and
    the fastsafetensors line (absent when the probe did not run: the loader then does without it)."""
    info = version_before_start(image, probed, probe_error)
    has = fastsafetensors_from_probe(probed)
    note = "" if has is not None else f"whether the image has fastsafetensors is unknown ({probe_error or 'no probe'})"
    return ImageFacts(vllm=info, fastsafetensors=bool(has), note=note)


def _check_command(image: str) -> str:
    """The command an operator runs to see the vLLM of ``image`` for themselves."""
    return f"docker run --rm --entrypoint '' {image} {VERSION_PROBE[0]} -c '{VERSION_PROBE[2]}'"


def version_before_start(image: str, probed: str | None, probe_error: str | None) -> VersionInfo:
    """What is known of ``image``'s vLLM before it starts (pure): the probe's answer, else the NGC
    tag table, else the runbook's version, assumed (its note says how to check).

    Args:
        image: the server image.
        probed: what `VERSION_PROBE` printed in a container of the image (None: it did not run).
        probe_error: why the probe gave nothing, for the note.
    """
    if probed is not None:
        try:
            version = version_from_probe(probed)
            return VersionInfo(version=_printed(probed, version), source="image", image=image)
        except VersionUnknown as exc:
            probe_error = str(exc)
    why = f"the image's own vLLM could not be read ({probe_error or 'no probe'})"
    tagged = version_of_image(image)
    if tagged is not None:
        return VersionInfo(version=str(tagged), source="ngc-tag", image=image, note=f"{why}; NGC release notes")
    return VersionInfo(
        version=str(RUNBOOK_VERSION),
        source="assumed",
        image=image,
        note=(
            f"{why}, and {image} is not an NGC vLLM tag of docs/versions.md: the flows assume the runbook's"
            f" vLLM {RUNBOOK_VERSION}. Check with `{_check_command(image)}`"
        ),
    )


def _printed(output: str, version: Version) -> str:
    """The version as the image printed it (``+381074ae.nv25.09``: `packaging` would write ``nv25.9``)."""
    for line in reversed(output.splitlines()):
        word = line.strip()
        if _is_version(word) and parse_vllm_version(word) == version:
            return word
    return str(version)


def _is_version(text: str) -> bool:
    try:
        parse_vllm_version(text)
    except VersionUnknown:
        return False
    return True


def _probe(machine: TargetMachine, image: str) -> tuple[str | None, str | None]:
    """`IMAGE_PROBE` in a throwaway container of ``image`` on the target's docker host: (what it
    printed, why it printed nothing). Never raises for a probe that fails."""
    probed, error = None, None
    try:
        with docker_client(machine.docker_host()) as client:
            output = client.containers.run(**helper_container_kwargs(machine, image, list(IMAGE_PROBE)))
        probed = output.decode("utf-8", "replace") if isinstance(output, bytes) else str(output)
    except ContainerError as exc:  # docker-py keeps the container's stderr: its last line says why
        said = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()[-1:]
        error = f"`{' '.join(VERSION_PROBE)}` exited {exc.exit_status}" + (f": {said[0][:200]}" if said else "")
    except (APIError, ImageNotFound, ConnectionError) as exc:
        error = str(getattr(exc, "explanation", None) or exc).splitlines()[0][:200]
    return probed, error


def _log_version(info: VersionInfo, image: str) -> None:
    if info.source == "assumed":
        get_run_logger().warning("%s: %s", info.label(), info.note)
    else:
        get_run_logger().info("%s runs %s", image, info.label())


@task(name="learn-vllm-version", cache_policy=NO_CACHE, task_run_name="learn-vllm-version {machine.name}")
def learn_vllm_version(machine: TargetMachine, image: str) -> VersionInfo:
    """The vLLM of ``image``, before it starts: `IMAGE_PROBE` in a throwaway container of the image
    on the target's docker host (a few seconds on a Spark: importing vllm imports torch), then the
    NGC tag table, then the runbook's (assumed, with a warning). Never raises for a probe that fails.
    """
    info = version_before_start(image, *_probe(machine, image))
    _log_version(info, image)
    return info


@task(name="learn-image", cache_policy=NO_CACHE, task_run_name="learn-image {machine.name}")
def learn_image(machine: TargetMachine, image: str) -> ImageFacts:
    """`learn_vllm_version`, and whether the image has fastsafetensors, from the same one container."""
    facts = facts_before_start(image, *_probe(machine, image))
    _log_version(facts.vllm, image)
    get_run_logger().info(
        "%s: fastsafetensors %s", image, "imports" if facts.fastsafetensors else f"absent {facts.note}".strip()
    )
    return facts


def recorded_version(image: str, recorded: str | None) -> VersionInfo | None:
    """What a healthy server of ``image`` said it ran (`HealthyRecord.vllm_version_of`, tasks/state.py),
    as a `VersionInfo` (pure); None when nothing was recorded for that image.

    Why recover-vllm asks the record first: it is the server's own word, it costs no container
    (importing vllm takes seconds on a Spark, while the target is down), and a recovery restarts
    the spec that served. The probe is for an image no server of this target has run yet.
    """
    if not recorded or not _is_version(recorded):
        return None
    return VersionInfo(version=recorded, source="server", image=image, note="the last healthy server's word")


def read_server_version(http: httpx.Client) -> str | None:
    """The running server's ``GET /version`` (``{"version": ...}``; only ``/v1`` paths want the API
    key: vllm/entrypoints/openai/api_server.py:573-576 in 0.10.1.1, :487 in 0.11.1,
    vllm/entrypoints/serve/instrumentator/basic.py:53-56 in 0.17.1 and 0.31.0); None when it gives none.

    Args:
        http: a client bound to the server's base URL.
    """
    try:
        response = http.get(VERSION_PATH)
        body = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    version = version_from_body(body)
    return version if version is not None and _is_version(version) else None


def fetch_server_version(base_url: str, timeout_s: float = 5.0) -> str | None:
    """`read_server_version` of the server at ``base_url``."""
    with vllm_client(base_url, timeout=timeout_s) as http:
        return read_server_version(http)


def server_agrees(before: VersionInfo, running: str | None) -> tuple[VersionInfo, str | None]:
    """What the report names once the server said its version (pure): the server's version wins;
    a disagreement with what was learnt before the start is a warning (the flows chose by the
    wrong version: say which). ``running`` None: the server said nothing, ``before`` stays.

    Returns:
        The version as the report names it, and a warning when the two disagree.
    """
    if running is None or not _is_version(running):
        return before, None
    said = parse_vllm_version(running)
    if said.public == before.parsed.public:
        text = before.version if len(before.version) > len(running) else running  # keep the local part
        note = f"confirmed by the server (learnt before the start from: {before.source})"
        return VersionInfo(version=text, source="server", image=before.image, note=note), None
    warning = (
        f"the server runs vLLM {running}, but {before.version} was learnt before the start ({before.source}):"
        f" the start's flags and memory rules were chosen for {before.version}. Check the image"
        f" (`{_check_command(before.image)}`) and docs/versions.md"
    )
    return VersionInfo(version=running, source="server", image=before.image, note=warning), warning


@task(name="confirm-vllm-version", cache_policy=NO_CACHE)
def confirm_version(before: VersionInfo, logged: str | None, base_url: str) -> tuple[VersionInfo, str | None]:
    """The server's own version (its startup log's line, else ``GET /version``) against what was
    learnt before the start: `server_agrees`, with one log line."""
    running = logged or fetch_server_version(base_url)
    info, warning = server_agrees(before, running)
    if warning:
        get_run_logger().warning("%s", warning)
    return info, warning


def version_warnings(info: VersionInfo) -> list[str]:
    """The warnings a report carries about the version (pure): assumed, or untested."""
    warnings = []
    if info.source == "assumed":
        warnings.append(info.note)
    if not info.tested:
        warnings.append(
            f"vLLM {info.version} is outside the versions this project was checked against (docs/versions.md):"
            " the rules of the nearest version apply"
        )
    return warnings


def version_rows(info: VersionInfo | None) -> dict[str, str | None]:
    """How a report's key-value table names the vLLM (pure): its label (version, source, untested)
    and the note (why assumed, or the disagreement with the server); None values are left out."""
    if info is None:
        return {"vLLM": None}
    return {"vLLM": info.label().removeprefix("vLLM "), "vLLM note": info.note or None}
