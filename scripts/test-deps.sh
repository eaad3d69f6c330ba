#!/usr/bin/env bash
# Installs what the test suite needs: Debian's prometheus (tests/monitoring.rs), nats-server
# (tests/cluster.rs) and chromium
# (tests/status_page.rs) packages, and a virtualenv with MLflow, whose server and Python client
# tests/mlflow.rs runs against, and schemathesis, which tests/openapi.rs runs against the
# daemon's /openapi.json. Idempotent: a stamp file inside the venv records what was installed,
# so a second run costs a few milliseconds and touches no network.
#
#   SENTIMENTD_VENV   where the venv lives (default: ~/.cache/sentimentd-venv)
#   PYTHON            interpreter to build it from (default: python3; 3.9 or newer)
#
# Prints the venv path on its last line.
set -euo pipefail

# mlflow and mlflow-skinny/mlflow-tracing are released in lock-step; pin one version all three
# exist at, so the install never mixes releases. Bumping it re-installs on the next run.
MLFLOW_VERSION="3.17.2"
# Schemathesis' CLI (check names, flags) changes between minor releases; tests/openapi.rs is
# written against this one. Installed in the same pip call as MLflow so the resolver sees both.
SCHEMATHESIS_VERSION="4.32.5"

VENV="${SENTIMENTD_VENV:-$HOME/.cache/sentimentd-venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.sentimentd-test-deps"
WANT="mlflow==$MLFLOW_VERSION schemathesis==$SCHEMATHESIS_VERSION"

log() { echo "test-deps: $*" >&2; }

# Debian's packages: prometheus (promtool and a real Prometheus, tests/monitoring.rs) and
# chromium (the headless browser of tests/status_page.rs), nats-server (JetStream, for
# tests/cluster.rs).
missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
if ((${#missing[@]})); then
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
        log "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        log "missing Debian packages: ${missing[*]}; install them (as root)"
        exit 1
    fi
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" && -x "$VENV/bin/mlflow"
      && -x "$VENV/bin/schemathesis" ]]; then
    log "$WANT already installed in $VENV"
    echo "$VENV"
    exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    log "no $PYTHON on PATH; install python3 (with its venv module) first"
    exit 1
fi

start=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV with $("$PYTHON" --version 2>&1)"
    mkdir -p "$(dirname "$VENV")"
    if ! "$PYTHON" -m venv "$VENV"; then
        # Debian splits ensurepip into python3-venv; a fresh CI machine may lack it.
        if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
            log "python venv module incomplete; installing python3-venv with apt-get"
            rm -rf "$VENV"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv "$VENV"
        else
            log "cannot create a venv with $PYTHON; install python3-venv"
            exit 1
        fi
    fi
fi

# A stale or partial install: drop the stamp first so an interrupted run is retried in full.
rm -f "$STAMP"
log "installing $WANT into $VENV (first run takes a minute or two)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086 # WANT is a list of requirements
"$VENV/bin/python" -m pip install --quiet $WANT
"$VENV/bin/python" -m pip check >&2
"$VENV/bin/python" - "$MLFLOW_VERSION" "$SCHEMATHESIS_VERSION" <<'PY'
import sys
from importlib.metadata import version
for name, want in zip(("mlflow", "schemathesis"), sys.argv[1:]):
    assert version(name) == want, f"{name} {version(name)} installed, {want} wanted"
PY
echo "$WANT" >"$STAMP"
log "installed $WANT in $(($(date +%s) - start)) s; venv size $(du -sh "$VENV" | cut -f1)"
echo "$VENV"
