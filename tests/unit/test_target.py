"""TargetMachine and the rendering to docker-py arguments (no docker daemon needed)."""

from __future__ import annotations

import inspect
import json

import docker
import docker.types
import pytest
from docker.api.client import APIClient
from pydantic import ValidationError

from blocks.engine import EngineSpec
from blocks.render import (
    REDACTED,
    SecretValue,
    container_kwargs,
    container_labels,
    label_filters,
    redacted,
    secret_environment,
)
from blocks.shared import LABEL_MANAGED_BY, LABEL_SERVED_MODEL, LABEL_SPEC_HASH, LABEL_TARGET, MANAGED_BY
from blocks.target import TargetMachine

HF = "hf_abcdefghijklmnopqrstuvwxyz0123"
KEY = "sk-local-test-key-42"


def spark() -> TargetMachine:
    return TargetMachine(name="spark")


def sim(**overrides) -> TargetMachine:
    fields = dict(
        name="sim",
        image="spark-vllm/vllm-sim:latest",
        gpus="none",
        cache_dir="/tmp/sim/hf",
        publish_host="127.0.0.1",
        host_port=18000,
        hub_endpoint="http://127.0.0.1:18080",
        drop_caches_path="/tmp/sim/ledger/drop_caches",
        meminfo_command=["python3", "-m", "vllm_sim", "meminfo"],
        extra_volumes={"/tmp/sim/ledger": "/var/lib/vllm-sim"},
        extra_env={"VLLM_SIM_TIME_SCALE": "0.05"},
        image_pull=False,
    )
    fields.update(overrides)
    return TargetMachine(**fields)


# ------------------------------------------------------------------------------ the block


def test_block_identity_and_defaults():
    assert TargetMachine._block_type_name == "vLLM Target Machine"
    assert TargetMachine.get_block_type_slug() == "vllm-target-machine"
    t = spark()
    assert t.docker_base_url is None and t.cache_dir == "/opt/hf" and t.gpus == "all"
    assert (t.publish_host, t.host_port, t.client_host) == ("0.0.0.0", 8000, "127.0.0.1")
    assert t.hf_token_secret == "hf-token" and t.api_key_secret is None
    assert t.hub_endpoint is None and t.image is None
    assert t.drop_caches_path == "/proc/sys/vm/drop_caches" and t.meminfo_command == ["cat", "/proc/meminfo"]
    assert t.host_memory_floor_gib == 4.0
    assert t.extra_volumes == {} and t.extra_env == {} and t.image_pull is True
    assert t.event_resource_id == "vllm.service.spark"
    assert t.concurrency_limit == "gpu:spark"
    assert t.endpoint == "http://127.0.0.1:8000"


def test_docker_host_from_base_url():
    from prefect_docker.host import DockerHost

    local = spark().docker_host()
    assert isinstance(local, DockerHost) and local.base_url is None
    remote = TargetMachine(name="spark", docker_base_url="ssh://ops@spark.local").docker_host(timeout=30)
    assert remote.base_url == "ssh://ops@spark.local" and remote.timeout == 30


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"name": "Spark One"}, "name"),
        ({"name": ""}, "name"),
        ({"docker_base_url": "spark.local:2375"}, "docker_base_url"),
        ({"cache_dir": "opt/hf"}, "cache_dir"),
        ({"gpus": "2"}, "gpus"),
        ({"publish_host": "localhost"}, "publish_host"),
        ({"host_port": 0}, "host_port"),
        ({"host_port": 65536}, "host_port"),
        ({"client_host": "http://x/"}, "client_host"),
        ({"hf_token_secret": "HF Token"}, "hf_token_secret"),
        ({"api_key_secret": "key_1"}, "api_key_secret"),
        ({"hub_endpoint": "huggingface.co"}, "hub_endpoint"),
        ({"drop_caches_path": "drop"}, "drop_caches_path"),
        ({"meminfo_command": []}, "meminfo_command"),
        ({"host_memory_floor_gib": -1}, "host_memory_floor_gib"),
        ({"extra_volumes": {"/srv/x": "relative"}}, "extra_volumes"),
        ({"extra_env": {"VLLM_API_KEY": "x"}}, "extra_env"),
    ],
)
def test_validation_errors_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as info:
        TargetMachine(**{"name": "spark", **kwargs})
    assert field in str(info.value)


def test_empty_strings_mean_none():
    t = TargetMachine(
        name="spark", docker_base_url="", hf_token_secret="", hub_endpoint=" ", image="", container_name=" "
    )
    assert t.docker_base_url is None and t.hf_token_secret is None and t.hub_endpoint is None and t.image is None
    assert t.container_name is None


# ------------------------------------------------------------------------------ overrides


@pytest.mark.parametrize("bad", ["bad name!", "vllm/qwen", "-leading-dash", "x"])
def test_a_bad_container_name_override_is_refused_with_the_fix(bad):
    with pytest.raises(ValidationError) as info:
        TargetMachine(name="spark", container_name=bad)
    message = str(info.value)
    assert "container_name" in message and "not a valid docker container name" in message
    assert "runbook: vllm-qwen3-32b-fp8" in message and "leave it empty" in message


def test_target_and_spec_share_one_container_name_rule():
    for name in ("vllm-qwen3-32b-fp8", "a.b_c-1", "Qwen3"):
        assert (
            TargetMachine(name="sim", container_name=name).container_name
            == EngineSpec(container_name=name).container_name
        )
    with pytest.raises(ValidationError, match="not a valid docker container name"):
        EngineSpec(container_name=" ")  # the spec needs a name; on the target, empty = the spec's
    for name in ("bad name!", "x", "_x", "vllm/qwen"):
        with pytest.raises(ValidationError, match="not a valid docker container name"):
            EngineSpec(container_name=name)
        with pytest.raises(ValidationError, match="not a valid docker container name"):
            TargetMachine(name="sim", container_name=name)


def test_apply_to_validates_the_overrides():
    spec = EngineSpec(max_num_seqs=32)
    applied = sim(container_name="vllm-sim-1").apply_to(spec)
    assert (applied.image, applied.container_name, applied.max_num_seqs) == (
        "spark-vllm/vllm-sim:latest",
        "vllm-sim-1",
        32,
    )
    assert spec.container_name == "vllm-qwen3-32b-fp8"  # the input is untouched
    assert spark().apply_to(spec) is spec  # no overrides: the spec itself
    # A block that skipped validation (model_construct, an old saved document) is still refused
    # when applied: apply_to rebuilds the spec through its validators, unlike model_copy(update=).
    unchecked = TargetMachine.model_construct(name="odd", container_name="vllm/qwen")
    with pytest.raises(ValueError, match=r"target 'odd': its overrides \(container_name\)") as info:
        unchecked.apply_to(spec)
    assert "not a valid docker container name" in str(info.value)


# ------------------------------------------------------------------------------ names shared with tasks


def test_limit_and_resource_names_are_defined_once():
    from blocks.target import gpu_limit_name, service_resource_id
    from tasks import events, locks

    t = spark()
    assert t.concurrency_limit == gpu_limit_name("spark") == locks.gpu_limit_name("spark") == "gpu:spark"
    assert locks.gpu_limit_name is gpu_limit_name
    assert t.event_resource_id == service_resource_id("spark") == "vllm.service.spark"
    assert events.service_resource("spark")["prefect.resource.id"] == t.event_resource_id
    assert events.INCIDENT_LABEL not in events.service_resource("spark")
    with_incident = events.service_resource("spark", incident="2026-12-05T21:00:00+00:00")
    assert with_incident[events.INCIDENT_LABEL] == "2026-12-05T21:00:00+00:00"


def test_recovery_triggers_bucket_by_target_and_incident():
    """prefect.yaml's recover-vllm triggers key their window on the outage too, so a second outage fires."""
    from pathlib import Path

    import yaml

    from tasks.events import INCIDENT_LABEL

    project = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    triggers = [t for d in project["deployments"] for t in d.get("triggers") or [] if "unhealthy" in str(t["expect"])]
    assert triggers and all(t["for_each"] == ["prefect.resource.id", INCIDENT_LABEL] for t in triggers)


def test_service_events_are_one_vocabulary(monkeypatch):
    from tasks import events
    from tasks.events import ServiceEvent, emit_service_event

    assert {e.value for e in ServiceEvent} == {
        "deployed", "unchanged", "failed", "stopped", "healthy", "degraded", "starting",
        "unhealthy", "recovering", "recovered", "recovery-failed", "rolled-back", "needs-operator",
    }  # fmt: skip
    assert ServiceEvent.NEEDS_OPERATOR.event == "vllm.service.needs-operator"
    assert ServiceEvent("deployed") == "deployed"  # a StrEnum: compares and formats as its value
    sent: list[dict] = []
    monkeypatch.setattr(events, "emit_event", lambda **kw: sent.append(kw))
    emit_service_event("spark", ServiceEvent.UNHEALTHY, {"reason": "x"})
    emit_service_event("sim", "deployed")  # plain strings still work
    assert [(kw["event"], kw["resource"]["prefect.resource.id"], kw["payload"]) for kw in sent] == [
        ("vllm.service.unhealthy", "vllm.service.spark", {"reason": "x", "target": "spark"}),
        ("vllm.service.deployed", "vllm.service.sim", {"target": "sim"}),
    ]
    with pytest.raises(ValueError, match="unknown service event 'deploy'.*deployed, unchanged"):
        emit_service_event("spark", "deploy")
    assert len(sent) == 2  # refused before anything is emitted


# ------------------------------------------------------------------------------ network exposure


def test_the_runbook_default_is_open_to_the_network_and_says_how_to_close_it():
    t = spark()
    assert t.open_to_network()
    warning = t.open_to_network_warning()
    assert "target 'spark' publishes port 8000 on every interface (0.0.0.0" in warning
    assert "api_key_secret" in warning and "python -m deployments.setup --targets spark --api-key" in warning
    assert "vllm-api-key" in warning and "publish_host to 127.0.0.1" in warning


@pytest.mark.parametrize(
    "kwargs,is_open",
    [
        ({}, True),
        ({"publish_host": "::"}, True),
        ({"publish_host": "192.168.1.20"}, True),
        ({"api_key_secret": "vllm-api-key"}, False),
        ({"publish_host": "127.0.0.1"}, False),
        ({"publish_host": "127.0.0.2"}, False),
        ({"publish_host": "::1"}, False),
    ],
)
def test_open_to_network(kwargs, is_open):
    t = TargetMachine(name="spark", **kwargs)
    assert t.open_to_network() is is_open
    assert (t.open_to_network_warning() is not None) is is_open


def test_a_specific_address_is_named_in_the_warning():
    assert (
        "192.168.1.20, a non-loopback address"
        in TargetMachine(name="spark", publish_host="192.168.1.20").open_to_network_warning()
    )


# ------------------------------------------------------------------------------ remote docker hosts


@pytest.mark.parametrize(
    "url,remote",
    [
        (None, False),
        ("unix:///var/run/docker.sock", False),
        ("unix:///run/user/1000/docker.sock", False),
        ("npipe:////./pipe/docker_engine", False),
        ("ssh://ops@spark.local", True),
        ("ssh://ops@127.0.0.1", True),  # ssh always goes through another login: treated as remote
        ("tcp://127.0.0.1:2375", False),
        ("tcp://127.1.2.3:2375", False),
        ("tcp://localhost:2375", False),
        ("tcp://LOCALHOST:2375", False),
        ("tcp://[::1]:2375", False),
        ("tcp://spark.local:2376", True),
        ("tcp://10.0.0.5:2376", True),
        ("tcp://[2001:db8::1]:2376", True),
        ("https://spark.local:2376", True),
    ],
)
def test_docker_is_remote(url, remote):
    t = TargetMachine(name="spark", docker_base_url=url)
    assert t.docker_is_remote() is remote
    assert (t.remote_docker_problem() is not None) is remote


def test_remote_docker_problem_says_why_and_the_fix():
    problem = TargetMachine(name="spark", docker_base_url="ssh://ops@spark.local").remote_docker_problem()
    assert "target 'spark'" in problem and "'ssh://ops@spark.local'" in problem
    assert "cache_dir (/opt/hf)" in problem and "without its model" in problem
    assert "prefect worker start --pool spark-vllm" in problem and "docker_base_url empty" in problem


# ------------------------------------------------------------------------------ labels


def test_labels():
    spec, target = EngineSpec(), spark()
    labels = container_labels(spec, target)
    assert labels == {
        "org.spark-vllm.managed-by": "spark-vllm",
        "org.spark-vllm.target": "spark",
        "org.spark-vllm.spec-hash": spec.spec_hash(target),
        "org.spark-vllm.served-model": "Qwen/Qwen3-32B-FP8",
    }
    assert (LABEL_MANAGED_BY, LABEL_TARGET, LABEL_SPEC_HASH, LABEL_SERVED_MODEL, MANAGED_BY) == (
        "org.spark-vllm.managed-by",
        "org.spark-vllm.target",
        "org.spark-vllm.spec-hash",
        "org.spark-vllm.served-model",
        "spark-vllm",
    )  # fmt: skip: the keys live in blocks.shared, once
    assert label_filters("spark") == {"label": ["org.spark-vllm.managed-by=spark-vllm", "org.spark-vllm.target=spark"]}
    assert label_filters() == {"label": ["org.spark-vllm.managed-by=spark-vllm"]}


# ------------------------------------------------------------------------------ docker kwargs


def test_container_kwargs_for_the_spark_are_the_runbook_service():
    spec, target = EngineSpec.preset("runbook"), spark()
    kw = container_kwargs(spec, target, secret_env=secret_environment(HF, None), labels=container_labels(spec, target))
    assert kw["image"] == "nvcr.io/nvidia/vllm:25.09-py3"
    assert kw["command"] == spec.vllm_command()
    assert kw["name"] == "vllm-qwen3-32b-fp8" and kw["detach"] is True
    assert kw["ports"] == {"8000/tcp": ("0.0.0.0", 8000)}
    assert kw["volumes"] == {"/opt/hf": {"bind": "/root/.cache/huggingface", "mode": "rw"}}
    assert kw["restart_policy"] == {"Name": "unless-stopped"}
    assert kw["environment"] == {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": "/root/.cache/huggingface",
        "HF_TOKEN": HF,
        "HUGGING_FACE_HUB_TOKEN": HF,
    }
    [request] = kw["device_requests"]
    assert isinstance(request, docker.types.DeviceRequest)
    assert request == docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])
    assert kw["labels"][LABEL_SPEC_HASH] == spec.spec_hash(target)
    assert "ipc_mode" not in kw and "shm_size" not in kw


def test_container_kwargs_for_an_imitation():
    spec, target = EngineSpec(), sim(api_key_secret="vllm-api-key", vllm_cache_dir="/tmp/sim/vllm-cache/")
    kw = container_kwargs(spec, target, secret_env=secret_environment(None, KEY))
    assert kw["image"] == "spark-vllm/vllm-sim:latest"  # the target's image override
    assert "device_requests" not in kw
    assert kw["ports"] == {"8000/tcp": ("127.0.0.1", 18000)}
    assert kw["volumes"] == {
        "/tmp/sim/hf": {"bind": "/root/.cache/huggingface", "mode": "rw"},
        "/tmp/sim/vllm-cache/vllm": {"bind": "/root/.cache/vllm", "mode": "rw"},
        "/tmp/sim/vllm-cache/triton": {"bind": "/root/.triton/cache", "mode": "rw"},
        "/tmp/sim/vllm-cache/flashinfer": {"bind": "/root/.cache/flashinfer", "mode": "rw"},
        "/tmp/sim/ledger": {"bind": "/var/lib/vllm-sim", "mode": "rw"},
    }
    assert kw["environment"]["VLLM_SIM_TIME_SCALE"] == "0.05"
    assert kw["environment"]["VLLM_API_KEY"] == KEY and "HF_TOKEN" not in kw["environment"]
    assert kw["labels"][LABEL_TARGET] == "sim"  # default labels


def test_env_precedence_and_colliding_volume():
    spec = EngineSpec(env={"VLLM_LOGGING_LEVEL": "DEBUG", "HF_HUB_OFFLINE": "0"})
    env = container_kwargs(spec, sim(extra_env={"VLLM_LOGGING_LEVEL": "INFO"}))["environment"]
    assert env["HF_HUB_OFFLINE"] == "0" and env["VLLM_LOGGING_LEVEL"] == "INFO"
    with pytest.raises(ValueError, match="collides"):
        container_kwargs(spec, sim(extra_volumes={"/srv/other": "/root/.cache/huggingface"}))
    with pytest.raises(ValueError, match="cache mount of vllm_cache_dir"):
        container_kwargs(spec, sim(extra_volumes={"/srv/other": "/root/.cache/vllm"}))
    assert (
        "/srv/other"
        in container_kwargs(spec.preset("runbook"), sim(extra_volumes={"/srv/other": "/root/.cache/vllm"}))["volumes"]
    )


def _captured_create_body(kw: dict) -> dict:
    """Run docker-py's own `containers.create(**kw)` up to the HTTP request; return its JSON body."""
    api = APIClient(base_url="tcp://127.0.0.1:9", version="1.41")  # explicit version: no connection
    captured: dict = {}

    def create_container_from_config(config, name, platform=None):
        captured.update(config=config, name=name)
        return {"Id": "0123456789ab"}

    api.create_container_from_config = create_container_from_config  # type: ignore[method-assign]
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = api
    containers = client.containers
    containers.get = lambda container_id: container_id  # type: ignore[method-assign]
    assert containers.create(**kw) == "0123456789ab"
    assert captured["name"] == kw["name"]
    return json.loads(json.dumps(captured["config"]))


def test_docker_py_accepts_the_kwargs_and_sends_what_the_runbook_says():
    spec, target = EngineSpec.preset("runbook"), spark()
    kw = container_kwargs(spec, target, secret_env=secret_environment(HF, KEY))
    body = _captured_create_body(kw)
    host = body["HostConfig"]
    assert body["Image"] == "nvcr.io/nvidia/vllm:25.09-py3"
    assert body["Cmd"] == spec.vllm_command()
    assert body["Labels"] == kw["labels"]
    assert body["ExposedPorts"] == {"8000/tcp": {}}
    assert host["PortBindings"] == {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}]}
    assert host["Binds"] == ["/opt/hf:/root/.cache/huggingface:rw"]
    assert host["RestartPolicy"] == {"Name": "unless-stopped"}
    assert host["DeviceRequests"] == [
        {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    # docker receives the real secret values (only in the container's env), never "***"
    assert f"HF_TOKEN={HF}" in body["Env"] and f"HUGGING_FACE_HUB_TOKEN={HF}" in body["Env"]
    assert f"VLLM_API_KEY={KEY}" in body["Env"]
    # the defaults add the cache mounts, as binds docker creates on the host when missing
    default = _captured_create_body(container_kwargs(EngineSpec(), target))["HostConfig"]["Binds"]
    assert default == [
        "/opt/hf:/root/.cache/huggingface:rw",
        "/opt/vllm-cache/vllm:/root/.cache/vllm:rw",
        "/opt/vllm-cache/triton:/root/.triton/cache:rw",
        "/opt/vllm-cache/flashinfer:/root/.cache/flashinfer:rw",
    ]
    assert "HF_HUB_OFFLINE=1" in body["Env"] and "HF_HUB_CACHE=/root/.cache/huggingface" in body["Env"]
    assert not any(KEY in arg or HF in arg for arg in body["Cmd"])


def test_prefect_docker_create_task_takes_the_kwargs():
    from prefect_docker.containers import create_docker_container

    inspect.signature(create_docker_container.fn).bind(**container_kwargs(EngineSpec(), spark()))


# ------------------------------------------------------------------------------ secrets


def test_secrets_never_show_in_repr_or_str():
    kw = container_kwargs(EngineSpec(), spark(), secret_env=secret_environment(HF, KEY))
    for text in (repr(kw), str(kw), f"{kw}", repr(kw["environment"]), str(list(kw["environment"].values()))):
        assert HF not in text and KEY not in text
    assert isinstance(kw["environment"]["HF_TOKEN"], SecretValue)
    assert str(kw["environment"]["HF_TOKEN"]) == HF  # what docker-py formats


def test_secret_environment_accepts_pydantic_secrets_and_skips_empty():
    from pydantic import SecretStr

    env = secret_environment(SecretStr(HF), SecretStr(KEY))
    assert set(env) == {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY"}
    assert env["VLLM_API_KEY"] == KEY
    assert secret_environment(None, "") == {}


def test_redacted_is_plain_json_without_secrets():
    kw = container_kwargs(EngineSpec(), spark(), secret_env=secret_environment(HF, KEY))
    safe = redacted(kw)
    text = json.dumps(safe)
    assert HF not in text and KEY not in text
    assert safe["environment"]["HF_TOKEN"] == REDACTED and safe["environment"]["VLLM_API_KEY"] == REDACTED
    assert safe["environment"]["HF_HUB_OFFLINE"] == "1"
    assert safe["device_requests"] == [
        {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert safe["command"] == kw["command"]
    assert kw["environment"]["HF_TOKEN"] == HF  # the original is untouched


def test_redacted_masks_secret_flags_and_env_lists():
    kw = {
        "command": ["vllm", "serve", "m", "--api-key", KEY, f"--hf-token={HF}"],
        "environment": [f"HF_TOKEN={HF}", "A=1"],
    }
    safe = redacted(kw)
    assert safe["command"] == ["vllm", "serve", "m", "--api-key", REDACTED, "--hf-token=***"]
    assert safe["environment"] == ["HF_TOKEN=***", "A=1"]
