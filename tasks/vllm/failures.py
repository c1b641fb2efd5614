"""Why a vLLM server failed: one table of failure rules, tried in priority order.

vLLM (0.10.1.1 in ``nvcr.io/nvidia/vllm:25.09-py3`` to 0.31.0 in 26.10) has no failure codes: a start that fails prints
a traceback, the API server adds ``RuntimeError: Engine core initialization failed. See root cause
above.``, and the container exits. The cause is in the exact error texts (tests/data/logs/ holds recorded examples)
and, when the kernel killed the container, only in docker's ``State`` (``ExitCode`` 137,
``OOMKilled``). This module turns those into a `FailureCause`: a kind that recovery code can branch
on (``cause.kind``), an operator's summary and fix, the log lines that show it, the numbers of the
error (``cause.numbers``) and the spec changes the numbers support (``cause.suggested``).

The rule table
--------------
`RULES` is the whole classifier: `classify_failure` returns the cause built by the first rule that
matches. A `FailureRule` holds everything about one kind in one place: the log patterns it matches
(or a test of the container's exit code and OOMKilled flag), which lines it shows as evidence, and
its texts: a fixed ``summary``/``fix``, or a ``build`` function that computes them from the matched
error's numbers. Order matters because one failure prints several errors: the root cause must win
over its consequences; each rule's ``why`` in the table says why it sits where it does.

Versions
--------
Given the server's vLLM (``classify_failure(..., version=...)``), a rule matches only the texts that
version prints: a pattern that is a `Variant` holds for its range (``Free memory on device cuda:0``
from 0.17.1; ``MPClient: engine core exited unexpectedly`` in 0.31), a plain one for every version;
unknown, every text is matched. The fixes follow what the version's free-memory check reads
(`tasks.vllm.versions.FREE_MEMORY`): before 0.11.1 the page cache counts as used and dropping it is
the fix; from 0.11.1 it does not, so the fixes never send the operator to drop caches there.

The ``RuntimeError: Engine core initialization failed`` line is context, never a kind: it follows
every startup failure, so it is added to the evidence of the kind that matched.

Two causes are not read from a log but built from the numbers of the check that found them:
`free_memory_cause` (the pre-start memory check of tasks/memory.py refuses a start vLLM would refuse,
with vLLM's own numbers) and `host_memory_guard_cause` (the readiness gate stopped a start below the
host's memory floor). Both sit next to the rule they stand for.

Adding a kind
-------------
Add a member to `FailureKind` and one `FailureRule` to `RULES` at its place in the order, with its
patterns, its texts (a ``build`` function when the texts need the error's numbers), its ``why`` and its
``source`` (the vLLM file:line that prints each text in each inspected version, read from their wheels;
a text that differs between versions becomes one `Variant` per form),
and add a recorded log to ``tests/data/logs/`` for it. Nothing else: the table is checked at import
(each kind read from logs exactly once, the catch-all last).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from packaging.version import Version
from pydantic import BaseModel, Field

from tasks.recovery.sizing import MARGIN_GIB, MODEL_LEN_STEP, fit_utilization, round_model_len
from tasks.secrets import scrub
from tasks.vllm.logs import (
    EventKind,
    is_cosmetic,
    is_exception,
    parse_line,
    split_header,
    split_lines,
    strip_ansi,
    strip_prefix,
)
from tasks.vllm.versions import DEAD_ENGINE_HEALTH, FREE_MEMORY, FreeMemory, Variant, select, variants_for

__all__ = [
    "MAX_EVIDENCE",
    "RULES",
    "Diagnosis",
    "Evidence",
    "FailureCause",
    "FailureKind",
    "FailureRule",
    "Hit",
    "classify_failure",
    "free_memory_cause",
    "host_memory_guard_cause",
    "wedged_engine_cause",
]

#: At most this many log lines are kept as a cause's evidence.
MAX_EVIDENCE = 6


class FailureKind(StrEnum):
    """What went wrong, as recovery code branches on it (`RULES` gives the priority order)."""

    FREE_MEMORY = "free_memory"
    KV_TOO_SMALL = "kv_too_small"
    NO_KV_MEMORY = "no_kv_memory"
    CUDA_OOM = "cuda_oom"
    MEMORY_PROFILING = "memory_profiling"
    MISSING_MODEL_FILES = "missing_model_files"
    FP8_KERNEL = "fp8_kernel"
    GPU_RUNTIME_MISSING = "gpu_runtime_missing"
    HOST_MEMORY_GUARD = "host_memory_guard"
    BAD_ARGUMENTS = "bad_arguments"
    ENGINE_DEAD = "engine_dead"
    OOM_KILLED = "oom_killed"
    KILLED = "killed"
    UNKNOWN = "unknown"


#: Kinds no log line shows: built from the numbers of the check that found them (`host_memory_guard_cause`).
NOT_FROM_LOGS: frozenset[FailureKind] = frozenset({FailureKind.HOST_MEMORY_GUARD})


class FailureCause(BaseModel):
    """Why the server failed, in operator terms, with the log lines that show it."""

    kind: FailureKind
    summary: str
    fix: str
    evidence: list[str] = Field(default_factory=list)
    numbers: dict[str, float] = Field(default_factory=dict)
    #: engine spec overrides the numbers support (e.g. {"gpu_memory_utilization": 0.65}).
    suggested: dict[str, float | int] = Field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.summary}"

    def markdown(self) -> str:
        """The cause for a Prefect artifact or a report: kind and summary, fix, suggestions, evidence."""
        parts = [f"**Failure: `{self.kind.value}`** {self.summary}", "", f"**Fix:** {self.fix}"]
        if self.suggested:
            parts += ["", "**Suggested spec changes:** " + ", ".join(f"`{k}={v}`" for k, v in self.suggested.items())]
        if self.evidence:
            parts += ["", "```", *self.evidence, "```"]
        return "\n".join(parts)


# ============================================================================ the rule type


class Evidence(StrEnum):
    """Which log lines a rule shows as its evidence."""

    #: the lines its patterns (and ``evidence_patterns``) match, then the engine-init context line.
    MATCHES = "matches"
    #: the log's error lines, exceptions preferred, the last `MAX_EVIDENCE` (no pattern names the cause).
    ERRORS = "errors"


@dataclass(frozen=True)
class Hit:
    """What a rule matched: the inputs its ``build`` function explains."""

    #: the first log line (docker/process prefixes stripped) a pattern matched; "" for an exit match.
    line: str
    #: the scrubbed lines that show the failure (see `Evidence`).
    evidence: tuple[str, ...]
    #: the log shows ``Application startup complete.``: the server had been ready (died while serving).
    ready: bool
    exit_code: int | None
    oom_killed: bool
    #: GiB a suggested utilization leaves free (tasks/recovery/sizing.py `margin_for`).
    margin_gib: float = MARGIN_GIB
    #: the vLLM that printed the log (None: unknown, the runbook's 0.10.1.1 for what the fix says).
    version: Version | None = None


@dataclass(frozen=True)
class Diagnosis:
    """A rule's explanation of its hit; the rule adds its kind and the evidence."""

    summary: str
    fix: str
    numbers: dict[str, float] = field(default_factory=dict)
    suggested: dict[str, float | int] = field(default_factory=dict)


@dataclass(frozen=True)
class FailureRule:
    """One kind of failure: how to recognise it and how to explain it.

    A rule matches when one of its ``patterns`` for the server's vLLM is found in a log line (prefixes
    stripped) or when ``exit_matches(exit_code, oom_killed)`` is true. A plain pattern holds for every
    version; a `Variant` only for its range (a text vLLM words differently, or prints only in some
    versions). Its texts are either fixed (``summary`` and ``fix``) or computed by ``build`` from the
    `Hit` (for fixes with the error's own numbers, or what the version's free-memory check reads).
    """

    kind: FailureKind
    patterns: tuple[re.Pattern[str] | Variant[re.Pattern[str]], ...] = ()
    summary: str = ""
    fix: str = ""
    build: Callable[[Hit], Diagnosis] | None = None
    #: a test of the container's exit (docker's ``State.ExitCode`` and ``State.OOMKilled``).
    exit_matches: Callable[[int | None, bool], bool] | None = None
    evidence: Evidence = Evidence.MATCHES
    #: more lines to show as evidence, never matched on (e.g. the exceptions around an engine death).
    evidence_patterns: tuple[re.Pattern[str], ...] = ()
    #: why the rule sits where it does in `RULES` (the table's order is the priority).
    why: str = ""
    #: where each matched text comes from: vLLM's file:line (function) in each inspected version (a
    #: `Variant` cites its own), or the library, daemon or kernel that prints it when it is not vLLM's.
    source: str = ""

    def __post_init__(self) -> None:
        if not self.patterns and self.exit_matches is None:
            raise ValueError(f"rule {self.kind.value}: give patterns or exit_matches, or it never matches")
        if self.build is None and not (self.summary and self.fix):
            raise ValueError(f"rule {self.kind.value}: give a build function or both summary and fix")

    def patterns_for(self, version: Version | None) -> tuple[re.Pattern[str], ...]:
        """The patterns that hold for ``version`` (every one when it is unknown)."""
        plain = [p for p in self.patterns if isinstance(p, re.Pattern)]
        versioned = variants_for([p for p in self.patterns if isinstance(p, Variant)], version)
        return (*plain, *versioned)

    def first_match(self, bodies: Sequence[str], version: Version | None = None) -> str | None:
        """The first line (prefixes stripped) one of the version's patterns matches, or None."""
        patterns = self.patterns_for(version)
        for body in bodies:
            if any(p.search(body) for p in patterns):
                return body
        return None

    def diagnose(self, hit: Hit) -> Diagnosis:
        """The summary, fix and numbers of this rule for `hit`."""
        if self.build is not None:
            return self.build(hit)
        return Diagnosis(summary=self.summary, fix=self.fix)


# ============================================================================ patterns with numbers

_FREE_MEMORY_TAIL = (
    r"\((?P<free>[\d.]+)/(?P<total>[\d.]+) GiB\) on startup is less than desired GPU memory utilization "
    r"\((?P<util>[\d.]+), (?P<req>[\d.]+) GiB\)"
)
#: vLLM's free-memory check: ``Free memory on device (...)``, from 0.17.1 with the device named.
_FREE_MEMORY: tuple[Variant[re.Pattern[str]], ...] = (
    Variant(
        "<0.17.1",
        re.compile(r"Free memory on device " + _FREE_MEMORY_TAIL),
        "vllm/v1/worker/gpu_worker.py:180-187 (init_device) in 0.10.1.1, :181-188 in 0.10.2, :248-255 in 0.11.1",
    ),
    Variant(
        ">=0.17.1",
        re.compile(r"Free memory on device (?P<device>\S+) " + _FREE_MEMORY_TAIL),
        "vllm/v1/worker/utils.py:414-421 (request_memory: `on device {init_snapshot.device_}`, cuda:0; numbers by "
        "format_gib, the request rounded up with math.ceil) in 0.17.1 and 0.20.1, :549-556 in 0.31.0",
    ),
)
_KV_TOO_SMALL_TAIL = (
    r"max seq len \((?P<len>\d+)\),\s*\((?P<needed>[\d.]+) GiB KV cache is needed, which is larger than the "
    r"available KV cache memory \((?P<avail>-?[\d.]+) GiB\)\.\s*(?:Based on the available memory, the estimated "
    r"maximum model length is (?P<est>\d+)\.)?"
)
#: vLLM's KV sizing check for max_model_len. The estimate sentence is left out when the estimate is 0 (then
#: ``GiB).  Try``, two spaces, in 0.10.1.1): kv_cache_utils.py:692-696 in 0.10.1.1, :633-638 in 0.17.1.
_KV_TOO_SMALL: tuple[Variant[re.Pattern[str]], ...] = (
    Variant(
        "<0.31",
        re.compile(r"To serve at least one request with the models's " + _KV_TOO_SMALL_TAIL),
        "vllm/v1/core/kv_cache_utils.py:700 (check_enough_kv_cache_memory) in 0.10.1.1, :709 in 0.10.2, :708 in "
        "0.11.1; :642 (_check_enough_kv_cache_memory) in 0.17.1, :715 in 0.20.1 (vLLM's typo `models's`)",
    ),
    Variant(
        ">=0.31",
        re.compile(r"To serve at least one request with the model's " + _KV_TOO_SMALL_TAIL),
        "vllm/v1/core/kv_cache_utils.py:926 (_check_enough_kv_cache_memory) in 0.31.0",
    ),
)
# `Available KV cache memory: %s GiB`, logged just before the KV checks (tasks/vllm/logs.py GRAMMAR cites it).
_KV_BUDGET = re.compile(r"Available KV cache memory: (?P<gib>-?\d+(?:\.\d+)?) GiB")
# "Error in memory profiling. Initial free memory X GiB, current free memory Y GiB. This happens when ..."
_PROFILING = re.compile(
    r"Error in memory profiling\. Initial free memory (?P<initial>-?[\d.]+) GiB, current free memory "
    r"(?P<current>-?[\d.]+) GiB"
)
_CUDA_OOM_DETAIL = {
    "tried_to_allocate_gib": re.compile(r"Tried to allocate ([\d.]+) ([KMG]iB)"),
    "total_capacity_gib": re.compile(r"total capacity of ([\d.]+) ([KMG]iB)"),
    "free_gib": re.compile(r"of which ([\d.]+) ([KMG]iB) is free"),
}
_UNIT = {"KiB": 1 / (1024 * 1024), "MiB": 1 / 1024, "GiB": 1.0}
# The API server's line after every failed engine start: context for the evidence, never a cause.
# vllm/v1/engine/utils.py:759 (wait_for_engine_startup) in 0.10.1.1, :782 in 0.10.2, :965 in 0.11.1,
# :1011 in 0.17.1, :1179 in 0.20.1, :1349 in 0.31.0.
_CONTEXT = (re.compile(r"RuntimeError: Engine core initialization failed"),)
_EXCEPTION_IN_MESSAGE = re.compile(r"(?:^|\] )(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception)\b: ")

_RUNBOOK_MEMORY_STEPS = (
    "the runbook's steps: stop the containers (`docker compose down`; the flows stop only their "
    "own), clean up (`docker system prune -f`)"
)
_KILLED_FIX = (
    "Check `dmesg` for the OOM killer. On the DGX Spark GPU and CPU share memory: drop the page "
    "cache, stop other memory users, and lower gpu_memory_utilization before retrying; "
    "do not retry in a loop (pushing memory on GB10 can hang the host)."
)


def _gib(value: str, unit: str) -> float:
    return round(float(value) * _UNIT[unit], 4)


# ============================================================================ texts with numbers


#: What held memory means on GB10, by what the version's free-memory check reads (`FREE_MEMORY`).
_HELD_MEMORY: dict[FreeMemory, str] = {
    FreeMemory.MEM_FREE: (
        "On the DGX Spark (GB10, unified memory) vLLM before 0.11.1 counts the Linux page cache as used (its check "
        "reads MemFree: vllm issue 35313, measured on GB10 in unsloth PR 10704), and a previous load leaves the "
        "weights there: if the host's page cache (`Cached` in /proc/meminfo) is about that size, drop it "
        "(`sync; echo 3 > /proc/sys/vm/drop_caches`) and retry with the same utilization."
    ),
    FreeMemory.MEM_AVAILABLE: (
        "On the DGX Spark (GB10) vLLM 0.11.1 and later reads MemAvailable, which already counts the reclaimable "
        "page cache as free: dropping caches frees nothing here (it only makes the next weight read cold). The "
        "memory is really held: by processes or containers, or by shared memory and tmpfs (`Shmem` in "
        "/proc/meminfo), which no cache drop returns."
    ),
}
#: The page-cache step of a KV fix: only where the version counts the page cache as used.
_DROP_FIRST: dict[FreeMemory, str] = {
    FreeMemory.MEM_FREE: "; on the Spark drop the page cache first (`sync; echo 3 > /proc/sys/vm/drop_caches`)",
    FreeMemory.MEM_AVAILABLE: "",
}
#: Who can release memory under a profiling vLLM, as its free-memory reading sees it.
_RELEASED_BY: dict[FreeMemory, str] = {
    FreeMemory.MEM_FREE: "another process (or the page cache, which this vLLM counts as used)",
    FreeMemory.MEM_AVAILABLE: "another process",
}


def _free_memory(hit: Hit) -> Diagnosis:
    m = next((found for p in variants_for(_FREE_MEMORY, None) if (found := p.search(hit.line))), None)
    assert m is not None
    free, total, util, req = float(m["free"]), float(m["total"]), float(m["util"]), float(m["req"])
    device = m.groupdict().get("device") or ""
    return _free_memory_diagnosis(free, total, util, req, device, hit.margin_gib, hit.version)


def _free_memory_diagnosis(
    free: float,
    total: float,
    util: float,
    requested: float,
    device: str,
    margin_gib: float,
    version: Version | None,
    cached: float = 0.0,
) -> Diagnosis:
    """The texts of a free-memory failure; ``cached`` (page cache a drop returns) counts only where the
    version's check reads MemFree (`FREE_MEMORY`): MemAvailable already includes it."""
    reads = select(FREE_MEMORY, version)
    cached = cached if reads is FreeMemory.MEM_FREE else 0.0
    suggested_util = fit_utilization(free + cached, total, margin_gib)
    held = total - free
    device = f" {device}" if device else ""
    dropped = " once the page cache is dropped" if cached else ""
    numbers = {
        "free_gib": free,
        "total_gib": total,
        "held_gib": round(held, 2),
        "requested_utilization": util,
        "requested_gib": requested,
        "suggested_utilization": suggested_util,
    }
    summary = (
        f"vLLM found {free:.2f} of {total:.2f} GiB free on device{device} but gpu_memory_utilization "
        f"{util:.2f} asks for {requested:.2f} GiB; {held:.2f} GiB is held by something else"
    )
    lower = (
        f"lower gpu_memory_utilization to {suggested_util:.2f} (the largest multiple of 0.01 that leaves "
        f"{margin_gib:.1f} GiB of the {free + cached:.2f} GiB free{dropped}), and max_model_len to 16384 if the KV "
        "cache then gets too small"
        if suggested_util > 0
        else "there is too little free memory for any utilization: free memory first"
    )
    fix = (
        f"Find out what holds the memory before lowering anything. {_HELD_MEMORY[reads]} If other processes or "
        f"containers hold it, follow {_RUNBOOK_MEMORY_STEPS}, and retry. Only if nothing can be freed, {lower}."
    )
    suggested = {"gpu_memory_utilization": suggested_util} if 0 < suggested_util < util else {}
    return Diagnosis(summary=summary, fix=fix, numbers=numbers, suggested=suggested)


def free_memory_cause(
    free_gib: float,
    total_gib: float,
    utilization: float,
    margin_gib: float = MARGIN_GIB,
    page_cache_gib: float = 0.0,
    version: Version | None = None,
) -> FailureCause:
    """The `free_memory` cause of a start refused before it ran: the pre-start memory check
    (tasks/memory.py `room_for_start`) knows vLLM's check would fail and has its numbers, so no log
    is read. The check it stands for compares free memory with utilization x total at startup:
    ``vllm/v1/worker/gpu_worker.py:177-187`` (``init_device``) in 0.10.1.1, ``vllm/v1/worker/utils.py:413``
    (``request_memory``) from 0.17.1 (`_FREE_MEMORY` cites each version).

    Args:
        free_gib: the free memory vLLM's check would see now: MemFree on GB10 before 0.11.1,
            MemAvailable from 0.11.1 (`tasks.vllm.versions.FREE_MEMORY`).
        total_gib: the device total (MemTotal on GB10).
        utilization: the spec's gpu_memory_utilization.
        margin_gib: GiB the suggested utilization leaves free (tasks/recovery/sizing.py `margin_for`).
        page_cache_gib: page cache a drop would return before the start (counted in the suggestion
            only where the version reads MemFree: MemAvailable already includes it).
        version: the server's vLLM (None: the runbook's 0.10.1.1); the fix says what its check reads.
    """
    free, total = round(free_gib, 2), round(total_gib, 2)
    requested = round(total * utilization, 2)
    diagnosis = _free_memory_diagnosis(
        free, total, utilization, requested, "", margin_gib, version, round(page_cache_gib, 2)
    )
    return FailureCause(
        kind=FailureKind.FREE_MEMORY,
        summary=diagnosis.summary,
        fix=diagnosis.fix,
        numbers=diagnosis.numbers,
        suggested=diagnosis.suggested,
    )


def _kv_too_small(hit: Hit) -> Diagnosis:
    m = next((found for p in variants_for(_KV_TOO_SMALL, None) if (found := p.search(hit.line))), None)
    assert m is not None
    length, needed, available = int(m["len"]), float(m["needed"]), float(m["avail"])
    numbers: dict[str, float] = {"max_model_len": length, "needed_gib": needed, "available_gib": available}
    suggested: dict[str, float | int] = {}
    summary = (
        f"max_model_len {length} needs {needed:.2f} GiB of KV cache for one request, but only "
        f"{available:.2f} GiB is left for the KV cache"
    )
    if m["est"]:
        estimate = int(m["est"])
        new_len = round_model_len(estimate)
        numbers.update(estimated_max_model_len=estimate, suggested_max_model_len=new_len)
        summary += f" (vLLM estimates a maximum model length of {estimate})"
        if new_len:
            suggested["max_model_len"] = new_len
            lower = (
                f"lower max_model_len to {new_len} (vLLM's estimate {estimate} rounded down to a multiple of "
                f"{MODEL_LEN_STEP})"
            )
        else:
            lower = f"the estimate is below {MODEL_LEN_STEP} tokens: only more memory helps"
    else:
        lower = "lower max_model_len"
    fix = (
        f"Either {lower}, or raise gpu_memory_utilization so that about {needed - available:.2f} GiB more "
        f"is left for the KV cache (if free memory allows{_DROP_FIRST[select(FREE_MEMORY, hit.version)]}). "
        "The runbook's max-context preset keeps 32000 with max_num_seqs 32."
    )
    return Diagnosis(summary=summary, fix=fix, numbers=numbers, suggested=suggested)


def _no_kv_memory(hit: Hit) -> Diagnosis:
    budget = next((m for e in hit.evidence if (m := _KV_BUDGET.search(e))), None)
    numbers = {"available_gib": float(budget["gib"])} if budget else {}
    left = f" (vLLM computed {budget['gib']} GiB for it)" if budget else ""
    return Diagnosis(
        summary=f"after loading the weights and profiling, no memory was left for the KV cache{left}",
        fix=(
            "Raise gpu_memory_utilization if free memory allows (the ~32 GB of FP8 weights must fit with "
            "room to spare; the runbook uses 0.90), or lower max_num_batched_tokens / max_num_seqs to shrink "
            f"the profiling peak{_DROP_FIRST[select(FREE_MEMORY, hit.version)]}."
        ),
        numbers=numbers,
    )


def _memory_profiling(hit: Hit) -> Diagnosis:
    m = _PROFILING.search(hit.line)
    assert m is not None
    initial, current = float(m["initial"]), float(m["current"])
    released_by = _RELEASED_BY[select(FREE_MEMORY, hit.version)]
    return Diagnosis(
        summary=(
            f"free memory grew while vLLM profiled ({initial:.2f} GiB before, {current:.2f} GiB after): "
            f"{released_by} released memory during the start, so vLLM could not size the KV cache"
        ),
        fix=(
            "Nothing is wrong with the spec: wait until the host's memory is steady (no other container starting "
            "or stopping, no large file copy finishing), then start the same spec once more."
        ),
        numbers={"initial_free_gib": initial, "current_free_gib": current},
    )


def _cuda_oom(hit: Hit) -> Diagnosis:
    joined = " ".join(strip_prefix(e) for e in hit.evidence) + " " + hit.line
    numbers: dict[str, float] = {}
    for name, pattern in _CUDA_OOM_DETAIL.items():
        if found := pattern.search(joined):
            numbers[name] = _gib(found[1], found[2])
    detail = ""
    if "tried_to_allocate_gib" in numbers:
        detail = f" (tried to allocate {numbers['tried_to_allocate_gib']:.2f} GiB"
        if "free_gib" in numbers and "total_capacity_gib" in numbers:
            detail += f" with {numbers['free_gib']:.2f} of {numbers['total_capacity_gib']:.2f} GiB free"
        detail += ")"
    when = "while serving" if hit.ready else "during startup"
    numbers["after_ready"] = 1.0 if hit.ready else 0.0
    return Diagnosis(
        summary=f"PyTorch ran out of GPU memory {when}{detail}",
        fix=(
            "On GB10 the utilization is not a hard cap during profiling, so other memory users count: drop "
            "the page cache and stop other GPU containers, then retry once. If it repeats, lower "
            "max_num_batched_tokens or max_num_seqs (smaller activation peak) or gpu_memory_utilization. "
            "Do not retry in a loop: pushing memory on the Spark can hang the host."
        ),
        numbers=numbers,
    )


def _engine_dead(hit: Hit) -> Diagnosis:
    when = "after the server was ready" if hit.ready else "during startup"
    health = " or ".join(str(code) for code in variants_for(DEAD_ENGINE_HEALTH, hit.version))
    return Diagnosis(
        summary=(
            f"the engine core process died {when}; the API server stops serving (/health answers {health}) and exits"
        ),
        fix=(
            "Read the lines before the evidence for the root cause, then recover (restart the container: the "
            "recover flow). If it repeats under load, lower max_num_seqs or max_num_batched_tokens."
        ),
        numbers={"after_ready": 1.0 if hit.ready else 0.0},
    )


def _exit_numbers(hit: Hit) -> dict[str, float]:
    return {"exit_code": float(hit.exit_code)} if hit.exit_code is not None else {}


def wedged_engine_cause(evidence: Sequence[str] = ()) -> FailureCause:
    """A server whose /health says 200 but which answers nothing: a hang prints no log line, so no
    rule of the table can see it; what the probes saw makes it an engine death after ready
    (vllm issue 39863), which recovery restarts with the same spec."""
    return FailureCause(
        kind=FailureKind.ENGINE_DEAD,
        summary="the engine stopped answering while /health and /v1/models still said 200: wedged (vllm issue 39863)",
        fix=(
            "Restart the server with the same spec (recover-vllm does, once an hour); if it repeats, lower"
            " max_num_seqs."
        ),
        evidence=list(evidence)[-MAX_EVIDENCE:],
        numbers={"after_ready": 1.0},
    )


def host_memory_guard_cause(available_gib: float, floor_gib: float, evidence: Sequence[str] = ()) -> FailureCause:
    """The readiness gate stopped a start because the host's MemAvailable fell below the target's
    floor (tasks/readiness.py `MemoryGuard`): the gate has the numbers, and whatever vLLM printed
    last was cut short by that stop, so this cause wins over anything in the log.

    No vLLM check stands behind it: vLLM applies gpu_memory_utilization only after profiling
    (``vllm/v1/worker/gpu_worker.py:244`` runs ``profile_run`` and :257 subtracts its peak from the
    requested memory, ``determine_available_memory``, 0.10.1.1), so nothing in vLLM stops the
    profiling peak from exhausting the host's memory on GB10; the gate is the project's own guard."""
    return FailureCause(
        kind=FailureKind.HOST_MEMORY_GUARD,
        summary=(
            f"the host's MemAvailable fell to {available_gib:.2f} GiB, below the floor of {floor_gib:.2f} GiB, while "
            "vLLM started, and the start was stopped: on GB10 the utilization is not a hard cap while vLLM profiles "
            "(vllm issue 46307) and a machine out of memory can hang"
        ),
        fix=(
            "Lower max_num_batched_tokens / max_num_seqs (a smaller profiling peak) or gpu_memory_utilization, and "
            "stop other memory users; do not retry the same spec in a loop."
        ),
        evidence=list(evidence)[-MAX_EVIDENCE:],
        numbers={"available_gib": round(available_gib, 2), "floor_gib": round(floor_gib, 2)},
    )


def _oom_flagged(exit_code: int | None, oom_killed: bool) -> bool:
    return oom_killed


def _sigkilled(exit_code: int | None, oom_killed: bool) -> bool:
    return exit_code == 137


def _always(exit_code: int | None, oom_killed: bool) -> bool:
    return True


def _oom_killed(hit: Hit) -> Diagnosis:
    code = f", exit code {hit.exit_code}" if hit.exit_code is not None else ""
    summary = (
        f"the kernel's OOM killer killed the container (docker reports OOMKilled{code}) without a vLLM "
        "error: host memory was exhausted; on the DGX Spark (GB10) GPU and CPU share one memory, so "
        "the weights, the KV cache and every other process on the host draw from the same pool"
    )
    return Diagnosis(summary=summary, fix=_KILLED_FIX, numbers={**_exit_numbers(hit), "oom_killed": 1.0})


def _killed(hit: Hit) -> Diagnosis:
    summary = (
        "the container was killed (exit code 137, SIGKILL) without a vLLM error: the kernel's "
        "OOM killer (host memory exhausted) or a `docker kill`"
    )
    return Diagnosis(summary=summary, fix=_KILLED_FIX, numbers={**_exit_numbers(hit), "oom_killed": 0.0})


def _unknown(hit: Hit) -> Diagnosis:
    code = f" with exit code {hit.exit_code}" if hit.exit_code is not None else ""
    return Diagnosis(
        summary=f"the server stopped{code} and its log matches no known failure",
        fix=(
            "Read the evidence and the full container log (`docker logs <container>`); the lines above the "
            "last error name the cause."
        ),
        numbers=_exit_numbers(hit),
    )


# ============================================================================ the table

#: The failure rules, highest priority first; each rule's ``why`` says why it sits where it does.
RULES: tuple[FailureRule, ...] = (
    FailureRule(
        kind=FailureKind.GPU_RUNTIME_MISSING,
        patterns=(
            re.compile(r'could not select device driver "nvidia"'),
            re.compile(r"could not select device driver \"\" with capabilities: \[\[gpu\]\]"),
            re.compile(r"nvidia-container-cli: initialization error"),
            re.compile(r"unknown or invalid runtime name: nvidia"),
            re.compile(r"Failed to infer device type"),
            re.compile(r"No CUDA GPUs are available"),
            re.compile(r"Found no NVIDIA driver on your system"),
        ),
        summary="the container gets no GPU: docker has no NVIDIA runtime (or the container sees no CUDA device)",
        fix=(
            "Install the NVIDIA Container Toolkit on the target (`nvidia-ctk runtime configure --runtime=docker`, "
            "then restart docker) and check `docker run --rm --gpus all nvcr.io/nvidia/vllm:25.09-py3 nvidia-smi`. "
            "For an imitation without GPUs set the target's gpus to none."
        ),
        why="docker gives the container no GPU: everything vLLM says afterwards follows from that",
        source=(
            "dockerd (moby; Go, no line): `could not select device driver ...` (no driver for `--gpus`) and "
            "`unknown or invalid runtime name: nvidia`; libnvidia-container (NVIDIA Container Toolkit): "
            "`nvidia-container-cli: initialization error`; `Failed to infer device type` (DeviceConfig.__post_init__): "
            "vllm/config/__init__.py:1883 in 0.10.1.1, :1864 in 0.10.2, vllm/config/device.py:59 in 0.11.1, :57 in "
            "0.17.1 and 0.20.1, :56 in 0.31.0; torch c10/cuda/CUDAFunctions.cpp (torch is not installed "
            "here: no line): `No CUDA GPUs are available`, `Found no NVIDIA driver on your system`"
        ),
    ),
    FailureRule(
        kind=FailureKind.BAD_ARGUMENTS,
        patterns=(
            re.compile(r": error: unrecognized arguments: "),
            re.compile(r": error: argument \S+"),
            re.compile(r": error: the following arguments are required"),
            re.compile(r"\d+ validation errors? for \w*(?:Config|EngineArgs)\b"),
            re.compile(r"max_num_batched_tokens \(\d+\) is smaller than max_model_len"),
        ),
        summary="vllm serve rejected its command line",
        fix=(
            "Fix the flag named in the evidence in the engine spec (most often extra_args), and check it against "
            "`vllm serve --help` in the server's image: flags come and go between vLLM versions."
        ),
        why="vllm serve rejected its command line: nothing ran",
        source=(
            "Python's argparse (vLLM's FlexibleArgumentParser, vllm/utils/__init__.py:1698, subclasses it), in "
            "CPython 3.11.7 (the image's Python may number them differently): argparse.py:1871 (parse_args) "
            "`unrecognized arguments`, :776 (ArgumentError.__str__) `argument X: ...`, :2142 (_parse_known_args) "
            "`the following arguments are required`; pydantic_core's ValidationError (`N validation error(s) for "
            "SchedulerConfig`: vLLM's config classes are pydantic dataclasses); `max_num_batched_tokens (N) is smaller "
            "than max_model_len` (SchedulerConfig): vllm/config/scheduler.py:255-256 in 0.10.1.1, 0.10.2 and 0.11.1, "
            ":257-258 in 0.17.1, :265-266 in 0.20.1, :321-322 in 0.31.0"
        ),
    ),
    FailureRule(
        kind=FailureKind.FP8_KERNEL,
        patterns=(
            re.compile(r"cutlass_scaled_mm failed"),
            re.compile(r"RuntimeError: Error Internal"),
        ),
        summary="the FP8 CUTLASS kernel failed (`cutlass_scaled_mm failed` / `RuntimeError: Error Internal`)",
        fix=(
            "Runbook 'FP8 Quantization Fails with On-the-Fly Quantization': use the pre-quantized model "
            "Qwen/Qwen3-32B-FP8 instead and clear the spec's quantization (no `--quantization fp8` with the "
            "base model). Use the image nvcr.io/nvidia/vllm:25.09-py3: vllm/vllm-openai:latest fails FP8 on GB10."
        ),
        why="the runbook's FP8 CUTLASS failure is followed by generic CUDA and engine errors",
        source=(
            "`Error Internal`: CUTLASS's cutlassGetStatusString(kErrorInternal), raised by vLLM's C++ CUTLASS_CHECK "
            "macro (csrc/cutlass_extensions/common.hpp; C++, not in the wheel: no line); `cutlass_scaled_mm failed`: "
            "not in the .py files of any inspected vLLM (0.10.1.1 to 0.31.0; the runbook's symptom text)"
        ),
    ),
    FailureRule(
        kind=FailureKind.FREE_MEMORY,
        patterns=_FREE_MEMORY,
        build=_free_memory,
        why="vLLM's own check at startup, with exact numbers",
        source="; ".join(v.source for v in _FREE_MEMORY),
    ),
    FailureRule(
        kind=FailureKind.MEMORY_PROFILING,
        patterns=(_PROFILING,),
        build=_memory_profiling,
        why=(
            "vLLM's own assertion that free memory grew while it profiled: the numbers it measured are wrong, so "
            "the KV or OOM errors that may follow are its consequence"
        ),
        source=(
            "vllm/v1/worker/gpu_worker.py:249-256 (determine_available_memory) in 0.10.1.1; :272 in 0.10.2; :333 in "
            "0.11.1; :399 in 0.17.1 (format_gib numbers); :413 in 0.20.1; :653 in 0.31.0: the same text in each"
        ),
    ),
    FailureRule(
        kind=FailureKind.KV_TOO_SMALL,
        patterns=_KV_TOO_SMALL,
        build=_kv_too_small,
        why="vLLM's KV sizing check for max_model_len, with exact numbers",
        source="; ".join(v.source for v in _KV_TOO_SMALL),
    ),
    FailureRule(
        kind=FailureKind.NO_KV_MEMORY,
        patterns=(re.compile(r"No available memory for the cache blocks"),),
        build=_no_kv_memory,
        evidence_patterns=(_KV_BUDGET,),  # the negative budget vLLM logged just before
        why="vLLM's KV sizing found no room at all",
        source=(
            "vllm/v1/core/kv_cache_utils.py:682 (check_enough_kv_cache_memory) in 0.10.1.1, :691 in 0.10.2, :687 in "
            "0.11.1, :624 (_check_enough_kv_cache_memory) in 0.17.1, :697 in 0.20.1, :906 in 0.31.0; "
            "vllm/worker/worker.py:577 (raise_if_cache_size_invalid, the V0 engine) in 0.10.1.1 and :660 in 0.10.2"
        ),
    ),
    FailureRule(
        kind=FailureKind.CUDA_OOM,
        patterns=(
            re.compile(r"CUDA out of memory"),
            re.compile(r"torch(?:\.cuda)?\.OutOfMemoryError"),
            re.compile(r"CUDA error: out of memory"),
        ),
        build=_cuda_oom,
        why="PyTorch's generic out-of-memory: vLLM's own checks above name the cause better",
        source=(
            "torch (not vLLM; not installed here: no line): `CUDA out of memory. Tried to allocate ...` from "
            "c10/cuda/CUDACachingAllocator.cpp, raised as torch.OutOfMemoryError (torch.cuda.OutOfMemoryError); "
            "`CUDA error: out of memory`: c10's CUDA check with the CUDA runtime's error string; vLLM's own "
            "`CUDA out of memory occurred when warming up ...` also matches: "
            "vllm/v1/worker/gpu_model_runner.py:2464 (_dummy_sampler_run) and :2542 (_dummy_pooler_run_task) "
            "in 0.10.1.1"
        ),
    ),
    FailureRule(
        kind=FailureKind.MISSING_MODEL_FILES,
        patterns=(
            re.compile(r"LocalEntryNotFoundError"),
            re.compile(r"Cannot find an appropriate cached snapshot"),
            re.compile(r"FileNotFoundError: .*\.safetensors"),
            re.compile(r"No such file or directory: .*(?:\.safetensors|config\.json|tokenizer)"),
            re.compile(r"SafetensorError: Error while deserializing header"),
            re.compile(r"does not appear to have a file named"),
            re.compile(r"Cannot find any model weights with"),
            re.compile(r"outgoing traffic has been disabled"),
            re.compile(r"Can't load tokenizer for"),
            re.compile(r"config file at .* is not a valid JSON file"),
            re.compile(r"JSONDecodeError: .*\.json"),
        ),
        summary="vLLM could not find or read the model files in the staged cache (it runs offline: HF_HUB_OFFLINE=1)",
        fix=(
            "Run the staging flow for this model and revision to download and verify it into the target's "
            "cache_dir, and check that cache_dir is the directory mounted at the spec's download_dir. "
            "Runbook 'Model Download Incomplete': check disk space (`df -h /opt/hf`), remove the "
            "`*.incomplete` files under models--<org>--<name>/, and restart."
        ),
        why="the staged cache lacks a file or has a broken one",
        source=(
            "huggingface_hub 2.4.0 (this venv's; the image's version may number them differently): "
            "huggingface_hub/errors.py:467 (LocalEntryNotFoundError), _snapshot_download.py:382 and :388 "
            "(snapshot_download) `Cannot find an appropriate cached snapshot`, file_download.py:1945 "
            "(_raise_on_head_call_error) `outgoing traffic has been disabled`; "
            "`Cannot find any model weights with` (DefaultModelLoader._prepare_weights): "
            "vllm/model_executor/model_loader/default_loader.py:170 in 0.10.1.1, :151 in 0.10.2, :161 in 0.11.1, :180 "
            "in 0.17.1, :198 in 0.20.1, :249 in 0.31.0; transformers (not installed here: no line): `does not appear "
            "to have a file named`, `Can't load tokenizer for`, `config file at ... is not a valid JSON file`; "
            "safetensors (Rust): `SafetensorError: Error while deserializing header`; Python: FileNotFoundError / "
            "`No such file or directory` (ENOENT), json.JSONDecodeError"
        ),
    ),
    FailureRule(
        kind=FailureKind.OOM_KILLED,
        exit_matches=_oom_flagged,
        build=_oom_killed,
        evidence=Evidence.ERRORS,
        why=(
            "no vLLM error above and docker reports OOMKilled: the engine-death lines the kill may leave"
            " are its consequence"
        ),
        source="docker State.OOMKilled (the kernel's OOM killer; no vLLM text)",
    ),
    FailureRule(
        kind=FailureKind.ENGINE_DEAD,
        patterns=(
            re.compile(r"EngineDeadError"),
            re.compile(r"EngineCore encountered (?:a fatal error|an issue)"),
            re.compile(r"AsyncLLM output_handler failed"),
            # the monitor of the engine process, when it dies without an exception (killed, crashed)
            Variant(
                "<0.20.1",
                re.compile(r"Engine core proc \S+ died unexpectedly"),
                "vllm/v1/engine/core_client.py:563 (MPClient.start_engine_core_monitor) in 0.10.1.1, :565 in 0.10.2, "
                ":599 in 0.11.1, :692 in 0.17.1 (0.20.1 prints nothing there: core_client.py:652-661)",
            ),
            Variant(
                ">=0.31",
                re.compile(r"MPClient: engine core exited unexpectedly"),
                "vllm/v1/engine/core_client.py:809-811 (monitor_engine_cores, warning_once `[shutdown] MPClient: "
                "engine core exited unexpectedly; starting cleanup`) in 0.31.0",
            ),
            Variant(
                ">=0.20.1",
                re.compile(r"Engine core process \S+ died unexpectedly"),
                "vllm/v1/utils.py:314-317 (wait_for_completion_or_failure, several API servers) in 0.20.1, "
                ":601-604 in 0.31.0",
            ),
        ),
        build=_engine_dead,
        evidence_patterns=(_EXCEPTION_IN_MESSAGE,),  # the root cause comes along with the death lines
        why="the engine core died: a symptom, so any cause above wins over it",
        source=(
            "`EngineCore encountered an issue` (EngineDeadError): vllm/v1/engine/exceptions.py:12 in 0.10.1.1 and "
            "0.10.2, :13 in 0.11.1, 0.17.1 and 0.20.1, :16 in 0.31.0; `EngineCore encountered a fatal error.` "
            "(EngineCoreProc.run_engine_core and DPEngineCoreActor.run): vllm/v1/engine/core.py:702 and :1213 in "
            "0.10.1.1, :720 and :1242 in 0.10.2, :844 and :1417 in 0.11.1, :1102 and :1907 in 0.17.1, :1138 and "
            ":2018 in 0.20.1, :1435 and :2586 in 0.31.0; `AsyncLLM output_handler failed.`: "
            "vllm/v1/engine/async_llm.py:430 in 0.10.1.1, :485 in 0.10.2, :525 in 0.11.1, :708 in 0.17.1, :704 in "
            "0.20.1, :871 in 0.31.0; the monitor's lines: each pattern's own source"
        ),
    ),
    FailureRule(
        kind=FailureKind.KILLED,
        exit_matches=_sigkilled,
        build=_killed,
        evidence=Evidence.ERRORS,
        why="no vLLM error above, exit 137 without OOMKilled: the host's OOM killer or a `docker kill`",
        source=(
            "docker State.ExitCode 137 = 128 + SIGKILL (9): the kernel's OOM killer or `docker kill` (no vLLM text)"
        ),
    ),
    FailureRule(
        kind=FailureKind.UNKNOWN,
        exit_matches=_always,
        build=_unknown,
        evidence=Evidence.ERRORS,
        why="the catch-all: always matches and shows the last error lines of the log",
    ),
)


def _check_rules(rules: Sequence[FailureRule]) -> None:
    """Fail at import, not in a deploy, when the table loses or doubles a kind or its catch-all."""
    kinds = [rule.kind for rule in rules]
    if sorted(kinds) != sorted(set(FailureKind) - NOT_FROM_LOGS):
        raise ValueError(f"RULES must name every FailureKind read from logs exactly once, got {kinds}")
    if kinds[-1] is not FailureKind.UNKNOWN:
        raise ValueError("the catch-all rule (unknown) must come last")


_check_rules(RULES)


# ============================================================================ classification


def _normalise(lines: Iterable[str] | str | bytes) -> list[str]:
    """Whole lines without colour codes, blank lines and the GB10 cosmetic warning (never a cause)."""
    items: Iterable[str | bytes] = [lines] if isinstance(lines, (str, bytes)) else lines
    out: list[str] = []
    for item in items:
        for line in split_lines(item):
            text = strip_ansi(line).strip()
            if text and not is_cosmetic(text):
                out.append(text)
    return out


def _matching_lines(lines: Sequence[str], patterns: Iterable[re.Pattern[str]], secrets: Sequence[str]) -> list[str]:
    """The lines a pattern matches, scrubbed, once per message (a traceback is often printed twice)."""
    patterns = tuple(patterns)
    seen: set[str] = set()
    picked: list[str] = []
    for line in lines:
        body = strip_prefix(line)
        if any(p.search(body) for p in patterns):
            key = split_header(body)[2]
            if key not in seen:
                seen.add(key)
                picked.append(scrub(line, secrets))
    return picked[:MAX_EVIDENCE]


def _pattern_evidence(
    rule: FailureRule, lines: Sequence[str], secrets: Sequence[str], version: Version | None
) -> list[str]:
    evidence = _matching_lines(lines, (*rule.patterns_for(version), *rule.evidence_patterns), secrets)
    context = _matching_lines(lines, _CONTEXT, secrets)
    room = max(0, MAX_EVIDENCE - len(evidence))
    return evidence + [line for line in context if line not in evidence][:room]


def _error_evidence(
    lines: Sequence[str], bodies: Sequence[str], secrets: Sequence[str], version: Version | None
) -> list[str]:
    """The last error lines, exceptions preferred; the last lines of all when none is an error."""
    errors = []
    for line, body in zip(lines, bodies, strict=True):
        parsed = parse_line(body, version)
        if parsed is not None and parsed.kind is EventKind.ERROR:
            errors.append(scrub(line, secrets))
    exceptions = [e for e in errors if is_exception(split_header(strip_prefix(e))[2])]
    return (exceptions or errors or [scrub(line, secrets) for line in lines])[-MAX_EVIDENCE:]


def classify_failure(
    lines: Iterable[str] | str,
    *,
    exit_code: int | None = None,
    oom_killed: bool = False,
    secrets: Iterable[str] = (),
    margin_gib: float = MARGIN_GIB,
    version: Version | None = None,
) -> FailureCause:
    """Name the cause of a failed start (or of a server that died) from its log and its exit.

    The first rule of `RULES` that matches builds the cause, so a root cause wins over the errors
    that follow from it, and a kill without a vLLM error is still named (docker's state is the only
    witness of the kernel's OOM killer).

    Args:
        lines: the container's log lines (or one text), e.g. `StartupTracker.recent`; may also hold
            docker's own error text (``str(APIError)`` when the container could not start).
        exit_code: the container's ``State.ExitCode`` once it stopped (137: SIGKILL), else None.
        oom_killed: docker's ``State.OOMKilled``: the kernel's OOM killer hit the container.
        secrets: values to scrub from the evidence (patterns for HF tokens, API keys and bearer
            tokens are always scrubbed).
        margin_gib: GiB a suggested utilization leaves free: the target's
            (`tasks.recovery.sizing.margin_for`), so the fix quotes the utilization the planner retries.
        version: the server's vLLM: only its texts are matched (a `Variant` of a rule holds for a range),
            and the fixes say what its free-memory check reads (`tasks.vllm.versions.FREE_MEMORY`: on
            0.11.1+ a page-cache drop frees nothing). None: every text, and the runbook's 0.10.1.1 fixes.

    Returns:
        The cause; ``unknown`` (with the last error lines) when no other rule matches. The GB10
        ``cuda capability 12.1`` warning is never a cause.
    """
    secret_values = [s for s in secrets if s]
    text_lines = _normalise(lines)
    bodies = [strip_prefix(line) for line in text_lines]
    ready = any("Application startup complete." in body for body in bodies)

    for rule in RULES:
        first = rule.first_match(bodies, version) if rule.patterns else None
        if first is None:
            if rule.exit_matches is None or not rule.exit_matches(exit_code, oom_killed):
                continue
            first = ""
        if rule.evidence is Evidence.MATCHES:
            evidence = _pattern_evidence(rule, text_lines, secret_values, version)
        else:
            evidence = _error_evidence(text_lines, bodies, secret_values, version)
        hit = Hit(first, tuple(evidence), ready, exit_code, oom_killed, margin_gib, version)
        diagnosis = rule.diagnose(hit)
        return FailureCause(
            kind=rule.kind,
            summary=diagnosis.summary,
            fix=diagnosis.fix,
            evidence=evidence,
            numbers=diagnosis.numbers,
            suggested=diagnosis.suggested,
        )
    raise AssertionError("unreachable: the last rule matches every failure")  # pragma: no cover
