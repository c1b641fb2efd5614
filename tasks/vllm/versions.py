"""Which vLLM runs, and the facts that differ between vLLM versions, as data selected by version.

The runbook pins ``nvcr.io/nvidia/vllm:25.09-py3`` (vLLM 0.10.1.1); operators move to newer NGC
images (docs/versions.md). What differs between versions is never an ``if version`` branch in a
flow: each kind of knowledge keeps its variants in its own table (log forms in tasks/vllm/logs.py,
failure texts in tasks/vllm/failures.py, metric names in tasks/vllm/metrics.py, CLI flags in
blocks/engine.py, the engine-wide facts below), each variant with the PEP 440 version range it
applies to and the vLLM file:line it comes from, and `select` / `variants_for` pick by version.
A version between two inspected ones (0.13, 0.24) gets the variant of the range it falls in; a
range starts at the first inspected version that shows its form (0.10.1.1, 0.10.2, 0.11.1, 0.17.1,
0.20.1, 0.31.0: the wheels of the NGC images in `NGC_IMAGES`).

Versions are `packaging` versions: ``0.10.1.1+381074ae.nv25.09`` (NVIDIA's build, as the image
reports it) compares as 0.10.1.1 and keeps its local part for the report.

    version = parse_vllm_version("0.11.1+nv25.12")
    select(FREE_MEMORY, version)        # FreeMemory.MEM_AVAILABLE
    version_of_image("nvcr.io/nvidia/vllm:26.10-py3")   # Version("0.31.0"), from the NGC table
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, Literal, TypeVar

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, Field

from tasks.errors import SparkVllmError

__all__ = [
    "DEAD_ENGINE_HEALTH",
    "FREE_MEMORY",
    "NGC_IMAGES",
    "RUNBOOK_VERSION",
    "TESTED_VERSIONS",
    "VERSION_PROBE",
    "FreeMemory",
    "NgcImage",
    "Variant",
    "VersionInfo",
    "parse_vllm_version",
    "select",
    "variants_for",
    "version_from_probe",
    "version_of_image",
]

T = TypeVar("T")

#: The runbook's vLLM (``nvcr.io/nvidia/vllm:25.09-py3`` logs ``vLLM API server version 0.10.1.1``):
#: what the flows assume when nothing says which vLLM runs.
RUNBOOK_VERSION = Version("0.10.1.1")
#: The versions whose sources this project was checked against (docs/versions.md): a version
#: outside is used with the rules of the nearest range, and the deploy report says it is untested.
TESTED_VERSIONS = SpecifierSet(">=0.10.1.1,<0.32")

#: What runs in a throwaway container of the server's image to learn its vLLM: the package's own
#: ``vllm.__version__`` (vllm/version.py:5, from the build's _version.py; NVIDIA's images report
#: ``0.10.1.1+381074ae.nv25.09``). Importing vllm imports torch (vllm/__init__.py:14): a few
#: seconds on a Spark, once per deploy.
VERSION_PROBE: tuple[str, ...] = ("python3", "-c", "import vllm; print(vllm.__version__)")


class VersionUnknown(SparkVllmError, ValueError):
    """A text that is no vLLM version; the message says where it came from and what to do."""


def parse_vllm_version(text: str | Version) -> Version:
    """A vLLM version as `packaging` reads it (PEP 440), local part kept (normalised: keep the text
    for reports, `VersionInfo`).

    Raises:
        VersionUnknown: the text is not a PEP 440 version.
    """
    if isinstance(text, Version):
        return text
    try:
        return Version(text.strip())
    except InvalidVersion:
        raise VersionUnknown(
            f"{text.strip()!r} is not a vLLM version (PEP 440, e.g. 0.10.1.1+381074ae.nv25.09)"
        ) from None


@dataclass(frozen=True)
class Variant(Generic[T]):
    """One form of a versioned fact: the versions it holds for, the value, where vLLM says so.

    Attributes:
        versions: a PEP 440 specifier (``"<0.11.1"``, ``">=0.31"``; ``""`` is every version).
        value: the fact in that range (a pattern, a metric name, a status code...).
        source: the vLLM file:line (and version read) it comes from.
    """

    versions: str
    value: T
    source: str

    def holds_for(self, version: Version | None) -> bool:
        """True for ``version`` and for None (unknown: every form). The release part decides: a
        pre-release or an NVIDIA build of 0.11.1 (``0.11.1rc2``, ``0.11.1+nv25.12``) is 0.11.1."""
        if version is None:
            return True
        return SpecifierSet(self.versions).contains(Version(version.base_version))


def variants_for(table: Iterable[Variant[T]], version: Version | None) -> list[T]:
    """Every value of ``table`` that holds for ``version``; all of them when it is unknown (a log read
    before the version is known accepts every form)."""
    return [variant.value for variant in table if variant.holds_for(version)]


def select(table: Sequence[Variant[T]], version: Version | None) -> T:
    """The one value of ``table`` for ``version``; the runbook's when it is unknown.

    Raises:
        LookupError: no variant, or more than one, holds for the version (a table with a gap or an
            overlap; the tests check every table on every inspected version).
    """
    wanted = RUNBOOK_VERSION if version is None else version
    found = variants_for(table, wanted)
    if len(found) != 1:
        raise LookupError(f"{len(found)} variants hold for vLLM {wanted}: the table needs one per range")
    return found[0]


# ============================================================================ engine-wide facts


class FreeMemory(StrEnum):
    """What vLLM's free-memory check reads on GB10 (unified memory)."""

    #: ``torch.cuda.mem_get_info()``: the page cache counts as used, so a previous load's cached
    #: weights can refuse a start (vllm issue 35313; measured on GB10 in unsloth PR 10704).
    MEM_FREE = "MemFree"
    #: ``psutil.virtual_memory().available``: reclaimable page cache counts as free.
    MEM_AVAILABLE = "MemAvailable"


#: What vLLM compares with utilization x total at startup, on GB10.
FREE_MEMORY: tuple[Variant[FreeMemory], ...] = (
    Variant(
        "<0.11.1",
        FreeMemory.MEM_FREE,
        "vllm/utils/__init__.py:2622 (MemorySnapshot.measure: torch.cuda.mem_get_info) in 0.10.1.1 and 0.10.2",
    ),
    Variant(
        ">=0.11.1",
        FreeMemory.MEM_AVAILABLE,
        "vllm/utils/mem_utils.py:86-102 (MemorySnapshot.measure: compute capability (12, 1) reads "
        "psutil.virtual_memory().available) in 0.11.1; :105-122 in 0.17.1; is_integrated_gpu at :109-116 "
        "in 0.20.1 and :144-151 in 0.31.0",
    ),
)

#: ``GET /health`` once the engine core died.
DEAD_ENGINE_HEALTH: tuple[Variant[int], ...] = (
    Variant(
        "<0.11.1",
        500,
        "vllm/entrypoints/openai/api_server.py:446-450 (health: engine_client.check_health raises, "
        "FastAPI answers 500) in 0.10.1.1",
    ),
    Variant(
        ">=0.11.1",
        503,
        "vllm/entrypoints/openai/api_server.py:366-374 (health: EngineDeadError -> 503) in 0.11.1; "
        "vllm/entrypoints/serve/instrumentator/health.py:28-33 in 0.31.0",
    ),
)


# ============================================================================ which vLLM an image runs


@dataclass(frozen=True)
class NgcImage:
    """An NGC vLLM image tag and the vLLM it ships (NVIDIA's vLLM release notes)."""

    tag: str
    vllm: str


#: ``nvcr.io/nvidia/vllm:<tag>-py3`` -> vLLM, from NVIDIA's "vLLM Release Notes"
#: (docs.nvidia.com/deeplearning/frameworks/vllm-release-notes/, one page per release).
NGC_IMAGES: tuple[NgcImage, ...] = (
    NgcImage("25.09", "0.10.1.1"),
    NgcImage("25.10", "0.10.2"),
    NgcImage("25.12", "0.11.1"),
    NgcImage("26.01", "0.11.1"),
    NgcImage("26.03", "0.17.1"),
    NgcImage("26.05", "0.20.1"),
    NgcImage("26.10", "0.31.0"),
)
_NGC_REPOSITORY = re.compile(r"^(?:[\w.-]+/)*nvidia/vllm:(?P<tag>\d\d\.\d\d)(?:-py3)?$")


def version_of_image(image: str) -> Version | None:
    """The vLLM of an NGC image by its tag (`NGC_IMAGES`); None for any other image or tag."""
    match = _NGC_REPOSITORY.match(image.strip())
    if match is None:
        return None
    found = next((i.vllm for i in NGC_IMAGES if i.tag == match["tag"]), None)
    return Version(found) if found else None


_PROBE_OUTPUT = re.compile(r"^\s*(\d+\.\d+[\w.+-]*)\s*$")


def version_from_probe(output: str) -> Version:
    """The version `VERSION_PROBE` printed: its last line that reads as a version (torch may print
    warnings before it).

    Raises:
        VersionUnknown: no line of the output is a version.
    """
    for line in reversed(output.splitlines()):
        if match := _PROBE_OUTPUT.match(line):
            try:
                return parse_vllm_version(match[1])
            except VersionUnknown:
                continue
    raise VersionUnknown(f"the image printed no vLLM version: {output.strip()[-200:]!r}")


VersionSource = Literal["image", "ngc-tag", "server", "assumed"]


class VersionInfo(BaseModel):
    """Which vLLM a target runs and how the flows know: what the report, the status and the events name.

    Attributes:
        version: the full version as vLLM prints it (``0.10.1.1+381074ae.nv25.09``; `packaging` would
            normalise the local part to ``nv25.9``, so the text is kept).
        source: ``image`` (the image's own ``vllm.__version__``), ``ngc-tag`` (the NGC release notes'
            table), ``server`` (the running server's log or ``GET /version``), ``assumed`` (nothing
            said: the runbook's 0.10.1.1).
        image: the image it was learnt for.
    """

    version: str
    source: VersionSource
    image: str = ""
    note: str = Field("", description="why it was assumed, or a disagreement between two sources")

    @property
    def parsed(self) -> Version:
        return parse_vllm_version(self.version)

    @property
    def tested(self) -> bool:
        """The version falls in the span this project's tables were checked against."""
        return TESTED_VERSIONS.contains(Version(self.parsed.base_version))

    def label(self) -> str:
        """``vLLM 0.10.1.1+381074ae.nv25.09 (image)``: how reports name it."""
        untested = "" if self.tested else ", untested: the rules of the nearest version apply"
        return f"vLLM {self.version} ({self.source}{untested})"
