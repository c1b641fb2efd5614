#!/usr/bin/env bash
# One idempotent set-up for a fresh machine of this kind (as root), and a few seconds on a ready one:
#   1. the virtualenv with the project's dependencies (re-installed only when pyproject.toml changes;
#      no package of the project lands in site-packages: the checkout is the project, run from it);
#   2. docker.io when dockerd is missing, and a running daemon;
#   3. the imitation images (base from mmdebstrap + `docker import`, vLLM imitation on top),
#      skipped when images with the same content label exist (sim/image.py decides);
#   4. a headless Chromium for the UI test and screenshots (Debian's chromium-headless-shell,
#      or chromium where the archive has no such package), only when neither is installed;
#   5. Debian's PostgreSQL binaries, for the fleet tests only (tests/fleet/pg_cluster.py runs a private
#      cluster with them: the test machine reaches no registry, so it cannot pull the postgres:16 image
#      an operator runs with deployments/postgres-compose.yaml), only when no
#      /usr/lib/postgresql/<v>/bin/initdb exists. The distribution's own cluster is not created.
# Everything stays on loopback; nothing here is needed on a real DGX Spark except step 1.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
log() { printf '[bootstrap] %s\n' "$*"; }

apt_install() {
    if [ -z "${APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# 1. virtualenv
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    log "installing the project's dependencies into $VENV"
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    # pip's own status (pipefail), not grep's: a failed install says so here, not as a missing module later
    pip_install() {
        "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
    }
    pip_install || { log "pip install failed (above); trying once more"; pip_install; } \
        || { log "pip install failed twice: see the errors above"; exit 1; }
    "$VENV/bin/python" -c "import prefect, prefect_docker, huggingface_hub, httpx, pydantic"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi

# 2. docker daemon
if ! command -v dockerd >/dev/null 2>&1; then
    log "installing docker.io (dockerd, containerd, runc)"
    apt_install docker.io
fi
if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/spark-vllm-dockerd.log)"
    setsid nohup dockerd >/var/log/spark-vllm-dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { log "dockerd did not come up: see /var/log/spark-vllm-dockerd.log"; exit 1; }
fi

# 3. imitation images (mmdebstrap only when the base image must be built)
if ! "$VENV/bin/python" -m sim.image check >/dev/null 2>&1; then
    command -v mmdebstrap >/dev/null 2>&1 || { log "installing mmdebstrap"; apt_install mmdebstrap; }
fi
"$VENV/bin/python" -m sim.image ensure

# 4. headless Chromium (tests/integration/test_ui.py, bench/ui_screenshots.py)
if ! command -v chromium-headless-shell >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then
    [ -n "${APT_UPDATED:-}" ] || { DEBIAN_FRONTEND=noninteractive apt-get update -qq; APT_UPDATED=1; }
    chromium_pkg=chromium-headless-shell
    apt-cache policy chromium-headless-shell 2>/dev/null | grep -q 'Candidate: [0-9]' || chromium_pkg=chromium
    log "installing $chromium_pkg (the UI test and the screenshots render the Prefect UI with it)"
    NEEDRESTART_SUSPEND=1 apt_install "$chromium_pkg"
fi

# 5. PostgreSQL binaries for the fleet tests' Prefect server (SQLite answers "database is locked"
#    under several workers; an operator uses postgres-compose.yaml). postgresql-common first, so that its createcluster.conf can say "no main
#    cluster" before postgresql-<v> is configured: nothing then listens on 5432 or starts at boot.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    log "installing postgresql (binaries for the fleet tests; no distribution cluster is created)"
    NEEDRESTART_SUSPEND=1 apt_install postgresql-common
    conf=/etc/postgresql-common/createcluster.conf
    if grep -Eq '^#?[[:space:]]*create_main_cluster' "$conf" 2>/dev/null; then
        sed -Ei 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' "$conf"
    else
        echo 'create_main_cluster = false' >> "$conf"
    fi
    NEEDRESTART_SUSPEND=1 apt_install postgresql
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || { log "postgresql installed no initdb"; exit 1; }
fi
log "ready"
