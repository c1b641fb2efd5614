#!/usr/bin/env bash
# `make demo` / `make down`: the main job on the embedded default, end to end.
#   up:   local Prefect server (SQLite) -> Hub imitation -> blocks, pool, limits, deployments ->
#         a process worker -> `prefect deployment run deploy-qwen/sim --watch`
#   down: stop-qwen on the sim target, then the worker, the Hub imitation and the server.
# State lives in .demo/ (Prefect database, model cache, memory ledger, logs, pids).
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
    "$BIN/python" -m deployments.setup --hub-endpoint "$HUB_URL" --sim-root "$DEMO/sim" 2>&1 | grep -v "is ignored" | tail -n 20

    say "Process worker on pool spark-vllm (log: .demo/worker.log)"
    if ! alive "$DEMO/worker.pid"; then
        (cd "$ROOT" && setsid nohup "$BIN/prefect" worker start --pool spark-vllm --name demo-worker \
            >"$DEMO/worker.log" 2>&1 </dev/null & echo $! >"$DEMO/worker.pid")
    fi

    say "prefect deployment run deploy-qwen/sim --watch"
    "$BIN/prefect" deployment run deploy-qwen/sim --watch --watch-timeout 900

    cat <<MSG

The imitation of vLLM serving Qwen/Qwen3-32B-FP8 is up:
  endpoint   http://127.0.0.1:18000/v1   (try: curl http://127.0.0.1:18000/v1/models)
  Prefect UI http://127.0.0.1:${DEMO_PREFECT_PORT:-4200}   (flow runs, the deploy report and load progress artifacts)
  again      PREFECT_API_URL=$PREFECT_API_URL .venv/bin/prefect deployment run deploy-qwen/sim --watch
  stop all   make down
MSG
}

down() {
    if curl -sf "$PREFECT_API_URL/health" >/dev/null; then
        say "stop-qwen on the sim target"
        "$BIN/python" -c "from flows.teardown import stop_qwen; stop_qwen(target='sim', memory_timeout_s=10)" || true
    fi
    for name in worker hub; do
        if alive "$DEMO/$name.pid"; then kill -- -"$(cat "$DEMO/$name.pid")" 2>/dev/null || kill "$(cat "$DEMO/$name.pid")" || true; fi
        rm -f "$DEMO/$name.pid"
    done
    "$BIN/prefect" server stop >/dev/null 2>&1 || true
    say "stopped (state kept in .demo/; rm -rf .demo to start from nothing)"
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
