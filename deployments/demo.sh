#!/usr/bin/env bash
# `make demo` / `make down`: the main job on the embedded default, end to end.
#   up:   local Prefect server (SQLite) -> Hub imitation -> blocks, pool, limits, deployments ->
#         a process worker (one: never a second) -> deploy-qwen/sim, printing the flow run's own log,
#         then its final state and the deploy report (every Prefect event: .demo/run-events.log)
#   down: stop-qwen on the sim target, then the worker (bounded: SIGTERM, 20 s, then its process
#         tree is killed), the Hub imitation and the server.
# State lives in .demo/ (Prefect database, model cache, memory ledger, logs, pids).
# The worker is started and stopped by deployments/worker.py, as in the tests (see its docstring
# for why not `prefect worker start &`: the pid, SIGINT inherited ignored, flow runs in own sessions).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/.demo
BIN=$ROOT/.venv/bin
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
WORKER=(--pool spark-vllm --name demo-worker --pid-file "$DEMO/worker.pid")

up() {
    say "Prefect server (SQLite in $PREFECT_HOME)"
    if ! curl -sf "$PREFECT_API_URL/health" >/dev/null; then
        "$BIN/prefect" server start --host 127.0.0.1 --port "${DEMO_PREFECT_PORT:-4200}" --background >/dev/null
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
    "$BIN/python" -m deployments.setup --reset-blocks --hub-endpoint "$HUB_URL" --sim-root "$DEMO/sim" 2>&1 | grep -v "is ignored" | tail -n 20

    say "Process worker on pool spark-vllm (log: .demo/worker.log)"
    "$BIN/python" -m deployments.worker start "${WORKER[@]}" --log "$DEMO/worker.log"

    say "deploy-qwen/sim: the flow run's log (every event: .demo/run-events.log)"
    status=0
    "$BIN/python" -m deployments.worker run deploy-qwen/sim --events-log "$DEMO/run-events.log" --report deploy-sim \
        --timeout 900 || status=$?
    if [ "$status" -ne 0 ]; then
        printf '\ndeploy-qwen/sim did not complete: the report above says why (worker log: .demo/worker.log).\n' >&2
        exit "$status"
    fi

    cat <<MSG

The imitation of vLLM serving Qwen/Qwen3-32B-FP8 is up:
  endpoint   http://127.0.0.1:18000/v1   (try: curl http://127.0.0.1:18000/v1/models)
  Prefect UI http://127.0.0.1:${DEMO_PREFECT_PORT:-4200}   (flow runs, the deploy report and load progress artifacts)
  again      make demo   (keeps the server, the Hub and the worker; "unchanged" if nothing changed)
  event feed .demo/run-events.log, or: PREFECT_API_URL=$PREFECT_API_URL .venv/bin/prefect deployment run deploy-qwen/sim --watch
  stop all   make down
MSG
}

down() {
    if curl -sf "$PREFECT_API_URL/health" >/dev/null; then
        say "stop-qwen on the sim target"
        "$BIN/python" -c "from flows.teardown import stop_qwen; stop_qwen(target='sim', memory_timeout_s=10)" || true
    fi
    say "worker"
    "$BIN/python" -m deployments.worker stop "${WORKER[@]}"
    if alive "$DEMO/hub.pid"; then kill -- -"$(cat "$DEMO/hub.pid")" 2>/dev/null || kill "$(cat "$DEMO/hub.pid")" || true; fi
    rm -f "$DEMO/hub.pid"
    "$BIN/prefect" server stop >/dev/null 2>&1 || true
    say "stopped (state kept in .demo/; rm -rf .demo to start from nothing)"
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
