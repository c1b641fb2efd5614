"""Which vLLM runs: what is known before the start (probe, NGC tag, assumed), the server's word,
and how reports, records and events name it. Outputs are vLLM's own: the probe prints
``vllm.__version__`` (vllm/version.py), ``GET /version`` answers ``{"version": VLLM_VERSION}``
(vllm/entrypoints/openai/api_server.py:573-576 in 0.10.1.1, serve/instrumentator/basic.py:53-56 in 0.31.0)."""

from __future__ import annotations

import json

import httpx
import pytest

from tasks import events
from tasks.fleet import DeployOutcome, fleet_row
from tasks.state import HealthState, HealthyRecord
from tasks.vllm.versions import RUNBOOK_VERSION, VERSION_PROBE
from tasks.vllm_version import (
    read_server_version,
    recorded_version,
    server_agrees,
    version_before_start,
    version_rows,
    version_warnings,
)

NGC_2509 = "nvcr.io/nvidia/vllm:25.09-py3"
NGC_2610 = "nvcr.io/nvidia/vllm:26.10-py3"
NVIDIA_BUILD = "0.10.1.1+381074ae.nv25.09"  # what 25.09's vllm.__version__ prints
TORCH_WARNING = "/usr/local/lib/python3.12/dist-packages/torch/cuda/__init__.py:63: FutureWarning: ..."


def test_the_image_s_own_version_comes_first_and_keeps_nvidia_s_local_part():
    info = version_before_start(NGC_2509, f"{TORCH_WARNING}\n{NVIDIA_BUILD}\n", None)
    assert (info.source, info.version, info.image) == ("image", NVIDIA_BUILD, NGC_2509)
    assert str(info.parsed.public) == "0.10.1.1" and info.tested
    assert info.label() == f"vLLM {NVIDIA_BUILD} (image)"


@pytest.mark.parametrize(
    ("probed", "error"),
    [(None, "`python3 -c ...` exited 1"), ("Traceback ...\nModuleNotFoundError: No module named 'vllm'\n", None)],
)
def test_a_failed_probe_falls_back_to_the_ngc_tag_table(probed, error):
    info = version_before_start(NGC_2610, probed, error)
    assert (info.source, info.version) == ("ngc-tag", "0.31.0")
    assert "could not be read" in info.note and version_warnings(info) == []


def test_an_unknown_image_without_an_answer_assumes_the_runbook_s_vllm_and_says_how_to_check():
    image = "spark-vllm-sim:latest"
    info = version_before_start(image, None, "`python3 -c import vllm; print(vllm.__version__)` exited 1")
    assert (info.source, info.version) == ("assumed", str(RUNBOOK_VERSION))
    assert f"docker run --rm --entrypoint '' {image} python3 -c '{VERSION_PROBE[2]}'" in info.note
    assert version_warnings(info) == [info.note]


def test_a_version_outside_the_checked_span_is_said_untested():
    info = version_before_start("vllm/vllm-openai:v0.40.0", "0.40.0\n", None)
    assert not info.tested and "untested" in info.label()
    assert any("outside the versions" in w for w in version_warnings(info))
    assert "untested" in (version_rows(info)["vLLM"] or "")


def test_the_server_confirms_and_keeps_the_more_precise_text():
    before = version_before_start(NGC_2509, NVIDIA_BUILD, None)
    info, warning = server_agrees(before, "0.10.1.1")
    assert warning is None and (info.source, info.version) == ("server", NVIDIA_BUILD)
    assert "image" in info.note


def test_the_server_s_version_wins_a_disagreement_with_a_warning():
    before = version_before_start("spark-vllm-sim:latest", None, "exited 1")  # assumed 0.10.1.1
    info, warning = server_agrees(before, "0.31.0")
    assert (info.source, info.version) == ("server", "0.31.0")
    assert warning is not None and "0.31.0" in warning and "0.10.1.1" in warning and "assumed" in warning
    assert version_rows(info)["vLLM note"] == warning


def test_a_server_that_says_nothing_leaves_what_was_learnt():
    before = version_before_start(NGC_2610, None, "exited 1")
    assert server_agrees(before, None) == (before, None)
    assert server_agrees(before, "not a version") == (before, None)


def _server(status: int, body: object) -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/version" and "authorization" not in request.headers
        return httpx.Response(status, content=json.dumps(body).encode())

    return httpx.Client(base_url="http://spark:8000", transport=httpx.MockTransport(answer))


def test_get_version_reads_vllm_s_body():
    assert read_server_version(_server(200, {"version": NVIDIA_BUILD})) == NVIDIA_BUILD
    assert read_server_version(_server(200, {"version": "0.31.0"})) == "0.31.0"
    assert read_server_version(_server(404, {"detail": "Not Found"})) is None
    assert read_server_version(_server(200, ["0.31.0"])) is None


def test_the_record_s_version_holds_for_the_image_it_ran():
    record = HealthyRecord.model_validate(
        {"spec": {"image": NGC_2509}, "spec_hash": "abc", "vllm_version": NVIDIA_BUILD}
    )
    assert record.vllm_version_of(NGC_2509) == NVIDIA_BUILD and record.vllm_version_of(NGC_2610) is None
    info = recorded_version(NGC_2509, record.vllm_version_of(NGC_2509))
    assert info is not None and (info.source, info.version) == ("server", NVIDIA_BUILD)
    assert recorded_version(NGC_2610, None) is None


def test_the_outcome_and_the_fleet_row_name_the_version():
    outcome = DeployOutcome(target="a", verdict="deployed", vllm_version="0.31.0")
    assert DeployOutcome.model_validate(outcome.model_dump(mode="json")).vllm_version == "0.31.0"
    record = HealthyRecord.model_validate({"spec": {}, "spec_hash": "abc", "vllm_version": "0.31.0"})
    assert fleet_row("a", "", None, record, HealthState(), now=0)["vllm"] == "0.31.0"
    assert fleet_row("a", "", None, HealthyRecord(), HealthState(), now=0)["vllm"] == ""


def test_events_carry_the_version_where_known(monkeypatch):
    sent: list[dict] = []
    monkeypatch.setattr(events, "emit_event", lambda **kw: sent.append(kw["payload"]))
    events.emit_service_event("spark", "deployed", {"spec_hash": "abc"}, vllm_version=NVIDIA_BUILD)
    events.emit_service_event("spark", "healthy", {})
    assert sent[0][events.VLLM_VERSION_KEY] == NVIDIA_BUILD and events.VLLM_VERSION_KEY not in sent[1]


# ------------------------------------------------------------------------------ the image's capabilities


def test_the_probe_says_whether_fastsafetensors_imports_and_still_ends_with_the_version():
    from tasks.vllm_version import IMAGE_PROBE, facts_before_start, fastsafetensors_from_probe

    assert IMAGE_PROBE[:2] == VERSION_PROBE[:2] and IMAGE_PROBE[2].endswith(VERSION_PROBE[2])
    image = "nvcr.io/nvidia/vllm:25.09-py3"
    has = facts_before_start(image, "fastsafetensors: yes\n0.10.1.1+381074ae.nv25.09\n", None)
    assert has.fastsafetensors is True and has.vllm.version == "0.10.1.1+381074ae.nv25.09" and has.note == ""
    lacks = facts_before_start(image, "fastsafetensors: no ModuleNotFoundError\n0.31.0\n", None)
    assert lacks.fastsafetensors is False and lacks.vllm.version == "0.31.0" and lacks.note == ""
    unknown = facts_before_start(image, None, "`python3 -c ...` exited 1: No module named 'vllm'")
    assert unknown.fastsafetensors is False and "unknown" in unknown.note and unknown.vllm.source == "ngc-tag"
    assert fastsafetensors_from_probe("0.11.1") is None


def test_the_probe_runs_as_python_prints_it():
    """The probe itself, run by this machine's python3 (no vllm here): the capability line comes first."""
    import subprocess
    import sys

    from tasks.vllm_version import IMAGE_PROBE, fastsafetensors_from_probe

    done = subprocess.run([sys.executable, "-c", IMAGE_PROBE[2]], capture_output=True, text=True)
    assert done.returncode != 0 and "No module named 'vllm'" in done.stderr
    assert fastsafetensors_from_probe(done.stdout) is False
