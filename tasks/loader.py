"""Which weight loader a start uses: the engine spec's ``loader`` setting against what the image offers.

On GB10 the weights read through mmap (vLLM's default) come in at about 155 MB/s: the runbook's 32 GB
take 3.4 minutes, while a whole-file read (vLLM's eager strategy) or fastsafetensors load the same bytes
several times faster (issue 17's sources: NVIDIA developer forum thread 349886). ``auto`` takes the
fastest the image has; an operator may pin one. The rule is one pure function, `choose_loader`;
which flag each loader renders, and from which vLLM on, is `blocks.engine.ENGINE_FLAGS` (its
``loader`` rows); what the image has is learnt with its version (tasks/vllm_version.py `learn_image`).

    choose_loader("auto", Version("0.11.1"), has_fastsafetensors=False)
    # LoaderChoice(name="eager", flags=["--safetensors-load-strategy", "eager"], why="auto: ...")
"""

from __future__ import annotations

from typing import Literal

from packaging.version import Version
from pydantic import BaseModel

from blocks.engine import ENGINE_FLAGS, EngineSpec, LoaderSetting
from tasks.errors import SparkVllmError
from tasks.vllm.versions import RUNBOOK_VERSION

__all__ = ["LoaderChoice", "LoaderUnavailable", "choose_loader", "loader_as_served", "with_loader"]

LoaderName = Literal["mmap", "eager", "fastsafetensors"]

#: The flag the eager strategy needs (`ENGINE_FLAGS`' row for it says from which vLLM on).
_EAGER_FLAG = next(flag for flag in ENGINE_FLAGS if flag.field == "loader" and "eager" in flag.when)
#: How to see for oneself whether an image has fastsafetensors.
FASTSAFETENSORS_CHECK = "python3 -c 'import fastsafetensors'"


class LoaderChoice(BaseModel):
    """The loader a start uses, the `vllm serve` arguments it adds, and why (for the deploy report).

    Attributes:
        name: mmap (vLLM's default: no argument), eager or fastsafetensors.
        flags: the arguments, as the image's vLLM spells them.
        why: one sentence: the setting, and what about the image decided it.
    """

    name: LoaderName
    flags: list[str]
    why: str


class LoaderUnavailable(SparkVllmError, ValueError):
    """The engine spec pins a loader the image's vLLM or packages do not have; says how to fix it."""


def _has_eager(version: Version) -> bool:
    return _EAGER_FLAG.flag_for(version) is not None


def choose_loader(setting: LoaderSetting, version: Version | None, has_fastsafetensors: bool) -> LoaderChoice:
    """The loader for ``setting`` on an image of vLLM ``version`` (None: the runbook's 0.10.1.1).

    ``auto``: fastsafetensors when the image has the package, else the eager strategy when the vLLM has
    ``--safetensors-load-strategy`` (0.10.2+), else mmap. A pinned loader is taken as is, or refused.

    Args:
        setting: the engine spec's ``loader``.
        version: the image's vLLM (tasks/vllm_version.py).
        has_fastsafetensors: ``import fastsafetensors`` works inside the image (False when unknown).

    Raises:
        LoaderUnavailable: a pinned loader the image cannot run (eager before vLLM 0.10.2,
            fastsafetensors without the package); raised before anything starts.
    """
    vllm = RUNBOOK_VERSION if version is None else version
    eager = _has_eager(vllm)
    if setting == "auto":
        if has_fastsafetensors:
            return _choice("fastsafetensors", vllm, "auto: the image has the fastsafetensors package")
        lacks = "the image has no fastsafetensors package"
        if eager:
            return _choice("eager", vllm, f"auto: {lacks}, and vLLM {vllm} has --safetensors-load-strategy (0.10.2+)")
        return _choice(
            "mmap",
            vllm,
            f"auto: {lacks}, and vLLM {vllm} has no --safetensors-load-strategy (0.10.2+): vLLM's own mmap;"
            " an image with fastsafetensors, or with vLLM 0.10.2 or later, loads faster",
        )
    if setting == "eager" and not eager:
        raise LoaderUnavailable(
            f"the engine spec's loader 'eager' needs --safetensors-load-strategy, which vLLM {vllm} does not"
            f" have (vLLM {_EAGER_FLAG.spelled[0].versions}): set loader to auto (fastsafetensors when the image"
            " has it, else mmap) or mmap, or run an image with vLLM 0.10.2 or later (NGC 25.10 on; docs/versions.md)"
        )
    if setting == "fastsafetensors" and not has_fastsafetensors:
        raise LoaderUnavailable(
            "the engine spec's loader 'fastsafetensors' needs the fastsafetensors package inside the image, and"
            f" the image has none (`{FASTSAFETENSORS_CHECK}` fails in it): set loader to auto (the eager strategy"
            " on vLLM 0.10.2+, else mmap), or run an image that has the package (`pip install fastsafetensors`)"
        )
    return _choice(setting, vllm, "pinned in the engine spec")


def _choice(name: LoaderName, version: Version, why: str) -> LoaderChoice:
    return LoaderChoice(name=name, flags=EngineSpec(loader=name).loader_flags(version), why=why)


def with_loader(spec: EngineSpec, choice: LoaderChoice) -> EngineSpec:
    """``spec`` with its loader set to the choice (``auto`` resolved), built anew through its validators.

    Why resolve instead of rendering ``auto`` at start time: the spec that starts is what the container
    label's hash, the last-healthy record and a rollback describe, so they all name the loader that ran.
    """
    if spec.loader == choice.name:
        return spec
    fields = spec.model_dump(include=set(type(spec).model_fields))
    return type(spec).model_validate({**fields, "loader": choice.name})


def loader_as_served(spec: EngineSpec, served: EngineSpec | None) -> EngineSpec:
    """``spec`` with ``auto`` resolved as the last healthy server of the same image had it (pure).

    For recover-vllm, which restarts the spec without probing the image (the record is the server's
    own word, tasks/vllm_version.py `recorded_version`): the restart then reads the weights as fast as
    deploy-qwen's start did, and carries the same spec hash, so the next deploy keeps it. Nothing
    recorded for this image (or a pinned loader): ``spec`` as it is (``auto`` renders vLLM's default).
    """
    if spec.loader != "auto" or served is None or served.image != spec.image or served.loader == "auto":
        return spec
    fields = spec.model_dump(include=set(type(spec).model_fields))
    return type(spec).model_validate({**fields, "loader": served.loader})
