"""Pure helpers of the deploy: preflight's GPU check, restart policy split, report keys, timeouts, exit state."""

from tasks.container import restart_policy_after_ready
from tasks.locks import gpu_limit_name
from tasks.preflight import gpu_runtime_problem
from tasks.readiness import ExitState, ReadinessTimeouts, exit_state
from tasks.report import artifact_key, key_value_table


def test_gpu_runtime_check_names_the_toolkit():
    assert gpu_runtime_problem({"Runtimes": {"runc": {}, "nvidia": {}}}) is None
    assert gpu_runtime_problem({"Runtimes": {"runc": {}}, "DefaultRuntime": "nvidia"}) is None
    problem = gpu_runtime_problem({"Runtimes": {"runc": {}}})
    assert "NVIDIA Container Toolkit" in problem and 'could not select device driver "nvidia"' in problem


def test_restart_policy_is_armed_only_after_ready():
    first, policy = restart_policy_after_ready({"image": "x", "restart_policy": {"Name": "unless-stopped"}})
    assert first["restart_policy"] == {"Name": "no"} and first["image"] == "x"
    assert policy == {"Name": "unless-stopped"}


def test_artifact_keys_are_what_prefect_accepts():
    assert artifact_key("deploy", "Spark_2") == "deploy-spark-2"
    assert artifact_key("vllm-load", "sim") == "vllm-load-sim"


def test_markdown_table_skips_missing_values_and_escapes_pipes():
    table = key_value_table([("a", 1), ("b", None), ("c", "x|y")])
    assert "| a | 1 |" in table and "| b |" not in table and r"x\|y" in table


def test_each_phase_has_a_limit():
    timeouts = ReadinessTimeouts(loading_s=5)
    assert timeouts.limit_for("loading") == 5
    assert timeouts.limit_for("kv_cache") == timeouts.kv_cache_s
    assert timeouts.limit_for("ready") == timeouts.serving_s


def test_gpu_limit_per_target():
    assert gpu_limit_name("spark") == "gpu:spark"


def test_exit_state_reads_dockers_state_for_the_classifier():
    oom = exit_state({"State": {"Running": False, "ExitCode": 137, "OOMKilled": True}, "RestartCount": 0})
    assert oom == ExitState("exited with code 137 (OOMKilled)", 137, True)
    plain = exit_state({"State": {"Running": False, "ExitCode": 1, "OOMKilled": False}})
    assert plain == ExitState("exited with code 1", 1, False)
    restarting = exit_state({"State": {"Restarting": True, "ExitCode": 1}, "RestartCount": 2})
    assert restarting.summary == "restarting after exit code 1 (restart 2)" and not restarting.oom_killed


def test_a_server_hashed_before_the_fast_restart_fields_is_replaced_once_and_said_so():
    from blocks.engine import RESTART_FIELDS, EngineSpec
    from blocks.target import TargetMachine
    from flows.deploy import replaced_for_upgrade

    spark, spec = TargetMachine(name="spark"), EngineSpec(loader="eager")
    before_upgrade = spec.spec_hash(spark, RESTART_FIELDS)
    assert replaced_for_upgrade(before_upgrade, spec, spark)
    assert not replaced_for_upgrade(spec.spec_hash(spark), spec, spark)  # the same server: kept, nothing to say
    assert not replaced_for_upgrade(EngineSpec(max_num_seqs=8).spec_hash(spark, RESTART_FIELDS), spec, spark)
    assert not replaced_for_upgrade(None, spec, spark)
