#!/usr/bin/env bash
# `make demo` / `make down`: the main job on the embedded default, end to end.
#   up:   local Prefect server (SQLite) -> Hub imitation -> blocks, pool, limits, deployments ->
#         a process worker (one: never a second) -> `prefect deployment run deploy-qwen/sim --watch`,
#         printing the flow run's own log lines, then its final state and the deploy report
#         (every Prefect event: .demo/run-events.log)
#         then the fleet's router in front of it (deployments/dev/router.py, docs/router.md)
#   down: stop-qwen on the sim target, then the router and the worker (bounded: SIGTERM, 20 s, then its process
#         tree is killed), the Hub imitation and the server.
# State lives in .demo/ (Prefect database, model cache, memory ledger, logs, pids).
# The worker is the operator's `prefect worker start`, started and stopped by deployments/dev/worker.py
# as in the tests (it stands in for the operator's systemd unit: see its docstring).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/.demo
BIN=${VENV:-$ROOT/.venv}/bin
export PREFECT_HOME=$DEMO/prefect
export PREFECT_API_URL=http://127.0.0.1:${DEMO_PREFECT_PORT:-4200}/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
HUB_PORT=${DEMO_HUB_PORT:-18080}
HUB_URL=http://127.0.0.1:$HUB_PORT
# The imitation's token: a stand-in for a real hf_ token, accepted only by the local Hub imitation.
export HF_TOKEN=${DEMO_HF_TOKEN:-hf_demo_imitation_token}
mkdir -p "$DEMO/prefect"
say() { printf '\n==> %s\n' "$*"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
WORKER=(--pool spark-vllm --name demo-worker)

# Run a deployment and follow it with Prefect's own `prefect deployment run --watch`. The server
# streams the flow run's log lines out (PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED and _PUBLISHING_ENABLED, set where `up`
# starts it), so --watch prints them among the run's events; the terminal gets the log lines
# (without Prefect's "Finished in state Completed()" line of every task run) and the final state,
# the file gets everything. Then the report: the run's markdown artifact KEY as `key: value` lines.
#   follow DEPLOYMENT KEY EVENTS_LOG TIMEOUT_S
follow() {  # called as `follow ... || status=$?`: errexit is off inside, PIPESTATUS says how --watch ended
    local code run
    COLUMNS=500 "$BIN/prefect" deployment run "$1" --watch --watch-timeout "$4" 2>&1 | tee "$3" \
        | grep --line-buffered -v -e '^●' -e 'Finished in state Completed()$' -e '^ *$'
    code=${PIPESTATUS[0]}
    run=$(grep -oE 'UUID: [0-9a-f-]{36}' "$3" | head -n 1 | cut -c7-)
    [ -n "$run" ] || return "$code"
    "$BIN/python" - "$2" "$run" <<'PY' || true
import sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

key, run_id = sys.argv[1], sys.argv[2]
with get_client(sync_client=True) as client:
    found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                  flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
for artifact in [a for a in found if isinstance(a.data, str)][-1:]:
    print(f"\n==> report (artifact {key})")
    for line in artifact.data.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[:2] != ["what", "value"] and set("".join(cells)) - set("-: "):
            print(f"  {cells[0]}: {' | '.join(cells[1:])}")
        elif line.startswith("#"):
            print(line.lstrip("#").strip())
        elif line.strip() and not line.startswith(("|", "```")):
            print(f"  {line}")
PY
    return "$code"
}

up() {
    say "Prefect server (SQLite in $PREFECT_HOME)"
    if ! curl -sf "$PREFECT_API_URL/health" >/dev/null; then
        # Not `prefect server start --background`: Prefect 3.9.1 gives that server stdout/stderr pipes
        # nobody reads once the CLI exits, so the first error it logs (a 500's traceback) killed it
        # in the middle of a demo. A detached foreground server with its log in a file instead.
        PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED=true PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED=true setsid nohup "$BIN/prefect" server start --host 127.0.0.1 --port "${DEMO_PREFECT_PORT:-4200}" \
            >"$DEMO/server.log" 2>&1 </dev/null &
        echo $! >"$DEMO/server.pid"
    fi
    "$BIN/prefect" server status --wait --timeout 90 >/dev/null

    say "Hub imitation at $HUB_URL (7 shards of 64 MiB shaped like Qwen/Qwen3-32B-FP8)"
    if ! alive "$DEMO/hub.pid"; then
        setsid nohup "$BIN/python" -m sim.hub --host 127.0.0.1 --port "$HUB_PORT" --data-dir "$DEMO/hub" \
            --repo Qwen/Qwen3-32B-FP8 --shards 7 --shard-bytes $((64 * 1024 * 1024)) --token "$HF_TOKEN" \
            >"$DEMO/hub.log" 2>&1 </dev/null &
        echo $! >"$DEMO/hub.pid"
        for _ in $(seq 1 120); do grep -q "serving" "$DEMO/hub.log" && break; sleep 0.5; done
        grep -q "serving" "$DEMO/hub.log" || { cat "$DEMO/hub.log"; exit 1; }
    fi

    say "Blocks, work pool, concurrency limits and deployments"
    "$BIN/python" -m deployments.setup --reset-blocks --pause-unreachable --hub-endpoint "$HUB_URL" --sim-root "$DEMO/sim" 2>&1 | grep -v "is ignored" | tail -n 20

    say "Process worker on pool spark-vllm (log: .demo/worker.log)"
    "$BIN/python" -m deployments.dev.worker start "${WORKER[@]}" --log "$DEMO/worker.log"

    say "deploy-qwen/sim: the flow run's log (every event: .demo/run-events.log)"
    status=0
    follow deploy-qwen/sim deploy-sim "$DEMO/run-events.log" 900 || status=$?
    if [ "$status" -ne 0 ]; then
        printf '\ndeploy-qwen/sim did not complete: the report above says why (worker log: .demo/worker.log).\n' >&2
        exit "$status"
    fi

    say "health-check/sim: one check now (then every 5 minutes on its schedule, run by the same worker)"
    status=0
    follow health-check/sim health-sim "$DEMO/health-events.log" 300 || status=$?
    # the verdict the check left, and the schedule the worker now runs (prefect.yaml: every 5 minutes)
    verdict=$("$BIN/python" - <<'PY' 2>/dev/null || echo "unknown (see the report above)"
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from tasks.state import health_state

state = health_state("sim")
with get_client(sync_client=True) as client:
    deployment = client.read_deployment_by_name("health-check/sim")
    every = [f"every {s.schedule.interval.total_seconds():.0f} s" for s in deployment.schedules
             if s.active and getattr(s.schedule, "interval", None)]
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
following = f", next at {runs[0].expected_start_time.astimezone():%H:%M:%S}" if runs else ""
print(f"{state.verdict.value if state.verdict else 'unknown'} since {state.since}   "
      f"(health-check/sim {', '.join(every) or 'with no active schedule'}{following}, worker demo-worker)")
PY
)
    ROUTER_PORT=${DEMO_ROUTER_PORT:-30000}
    say "vllm-router in front (a fleet of one here; docs/router.md): the launcher an operator runs under systemd"
    if ! alive "$DEMO/router.pid"; then
        "$BIN/python" -c "from blocks.router import FleetRouter as R; R(fleet='sim', targets=['sim'], host='127.0.0.1', \
port=$ROUTER_PORT, metrics_port=${DEMO_ROUTER_METRICS_PORT:-29000}).save('sim', overwrite=True)"
        router=$("$BIN/python" -m deployments.dev.router start --fleet sim --log "$DEMO/router.log" --pid-file "$DEMO/router.pid") \
            || router="did not start (.demo/router.log says why)"
    else
        router="already running (pid $(cat "$DEMO/router.pid"))"
    fi
    echo "  $router"
    UI=http://127.0.0.1:${DEMO_PREFECT_PORT:-4200}
    alerts=$("$BIN/python" -m deployments.notify 2>/dev/null) || alerts="unknown (python -m deployments.notify says)"

    cat <<MSG

The imitation of vLLM serving Qwen/Qwen3-32B-FP8 is up:
  endpoint   http://127.0.0.1:18000/v1   (try: curl http://127.0.0.1:18000/v1/models)
  router     http://127.0.0.1:${ROUTER_PORT}/v1   (the fleet's one URL; curl http://127.0.0.1:${ROUTER_PORT}/list_workers)
  verdict    ${verdict}
  alerts     ${alerts#notifications: }
  again      make demo   (keeps the server, the Hub and the worker; "unchanged" if nothing changed)
  stop all   make down

Where to look in the Prefect UI ($UI; docs/ui.md shows each page):
  verdict    $UI/artifacts/key/health-sim           (newest first; open one for its layers)
  history    $UI/artifacts/key/health-history-sim   (the last checks, newest first)
  deploy     $UI/artifacts/key/deploy-sim           (the last deploy's report: KV cache, timings, command)
  recoveries $UI/artifacts/key/recover-sim          (recover-vllm's report, once a recovery ran)
  events     $UI/events?resource=vllm.service.sim   (vllm.service.deployed, healthy, unhealthy, recovered, ...)
  schedule   $UI/deployments                        (health-check/sim every 5 minutes; recover-vllm/sim on unhealthy)
  memory     $UI/variables                          (vllm-health-sim, vllm-last-healthy-sim, vllm-desired-sim, ...)
  terminal   .demo/run-events.log, .demo/health-events.log, .demo/worker.log, .demo/server.log, .demo/router.log
MSG
    if [ "$status" -ne 0 ]; then
        printf '\nhealth-check/sim did not complete: its report above says why (worker log: .demo/worker.log).\n' >&2
        exit "$status"
    fi
}

down() {
    if curl -sf "$PREFECT_API_URL/health" >/dev/null; then
        say "stop-qwen on the sim target"
        "$BIN/python" -c "from flows.stop import stop_qwen; stop_qwen(target='sim', memory_timeout_s=10)" || true
    fi
    say "router and worker"
    "$BIN/python" -m deployments.dev.router stop --pid-file "$DEMO/router.pid"
    "$BIN/python" -m deployments.dev.worker stop "${WORKER[@]}"
    rm -f "$DEMO/worker.pid"  # an older demo's
    if alive "$DEMO/hub.pid"; then kill -- -"$(cat "$DEMO/hub.pid")" 2>/dev/null || kill "$(cat "$DEMO/hub.pid")" || true; fi
    rm -f "$DEMO/hub.pid"
    if alive "$DEMO/server.pid"; then
        kill -- -"$(cat "$DEMO/server.pid")" 2>/dev/null || kill "$(cat "$DEMO/server.pid")" || true
        for _ in $(seq 1 40); do alive "$DEMO/server.pid" || break; sleep 0.25; done
    fi
    rm -f "$DEMO/server.pid"
    "$BIN/prefect" server stop >/dev/null 2>&1 || true  # one an older demo started with --background
    say "stopped (state kept in .demo/; rm -rf .demo to start from nothing)"
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
