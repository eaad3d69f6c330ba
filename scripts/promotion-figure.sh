#!/usr/bin/env bash
# Time from a promotion on the lease holder to the last follower serving it, with real-size
# models: nats-server (JetStream) and an MLflow server on loopback, one leader and FOLLOWERS
# followers (default 3) of the release build. The leader starts on a copy of MODEL_STORE (a
# trained store, e.g. one `sentimentd train` made on the bundled data), trains a second
# version with `train --no-promote` and promotes it through the admin API; the script prints
# how long until every follower's /model names it (their champion_poll_secs is 1).
#
#   MODEL_STORE=/path/to/store scripts/promotion-figure.sh
#
# PROMOTE=<version> promotes that version of MODEL_STORE instead of training one (e.g. a
# transformer version, while the store's current one is a fast version); PRETRAINED=<dir> is
# every node's [transformer] pretrained_dir, which a transformer version needs.
#
# Needs what scripts/test-deps.sh installs (nats-server, the venv with mlflow).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MODEL_STORE:?set MODEL_STORE to a trained model store}"
FOLLOWERS="${FOLLOWERS:-3}"
PROMOTE="${PROMOTE:-}"
PRETRAINED="${PRETRAINED:-state/pretrained}"
if [ -n "$PROMOTE" ] && [ ! -d "$MODEL_STORE/versions/$PROMOTE" ]; then
    echo "PROMOTE=$PROMOTE is not a version of $MODEL_STORE" >&2
    exit 1
fi
VENV="${SENTIMENTD_VENV:-$HOME/.cache/sentimentd-venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sentimentd-target}"
cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/sentimentd"
REPO="$(pwd)"
WORK="$(mktemp -d)"
PIDS=()
MLFLOW_PID=
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "$MLFLOW_PID" ] && kill -- "-$MLFLOW_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url, seconds
    for _ in $(seq 1 $(($2 * 10))); do
        curl -fs "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "no answer from $1 within $2 s" >&2
    return 1
}
version_of() { curl -fs "http://127.0.0.1:$1/model" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("version",""))' 2>/dev/null || true; }

NATS_PORT=$(free_port)
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
MLFLOW_PORT=$(free_port)
# In its own process group, so its workers stop with it.
(cd "$WORK" && MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false exec setsid "$VENV/bin/mlflow" server \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$WORK/mlflow.db" --artifacts-destination "$WORK/mlartifacts" \
    >"$WORK/mlflow.log" 2>&1) &
MLFLOW_PID=$!
wait_http "http://127.0.0.1:$MLFLOW_PORT/health" 180
TOKEN=promotion-figure-token-0123456789
printf '%s\n' "$TOKEN" >"$WORK/admin.token"
chmod 600 "$WORK/admin.token"

PORTS=()
start_node() { # index
    local dir="$WORK/node-$1" port
    port=$(free_port)
    mkdir -p "$dir"
    cat >"$dir/sentimentd.toml" <<EOF
[paths]
model_store = "models"
state_dir = "state"

[data]
train = ["$REPO/data/datasets/tweeteval/train.csv"]
val = "$REPO/data/datasets/tweeteval/val.csv"

[train]
on_start = "never"

[logging]
level = "warn"

[tracking]
mlflow_uri = "http://127.0.0.1:$MLFLOW_PORT"
registered_model = "promotion-figure"

[admin]
token_file = "$WORK/admin.token"

[transformer]
pretrained_dir = "$PRETRAINED"

[cluster]
nats_url = "nats://127.0.0.1:$NATS_PORT"
node_name = "node-$1"
champion_poll_secs = 1
EOF
    (cd "$dir" && exec "$BIN" --config sentimentd.toml serve --port "$port" >"$dir/log" 2>&1) &
    PIDS+=($!)
    PORTS+=("$port")
    wait_http "http://127.0.0.1:$port/health" 120
}

mkdir -p "$WORK/node-0"
cp -r "$MODEL_STORE" "$WORK/node-0/models"
start_node 0
for _ in $(seq 1 200); do
    [ "$(curl -fs "http://127.0.0.1:${PORTS[0]}/model" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster"].get("role",""))' 2>/dev/null)" = leader ] && break
    sleep 0.1
done
for i in $(seq 1 "$FOLLOWERS"); do start_node "$i"; done

if [ -n "$PROMOTE" ]; then
    V2="$PROMOTE"
else
    echo "training a second version on the leader (train --no-promote)"
    if ! (cd "$WORK/node-0" && "$BIN" --config sentimentd.toml train --no-promote >"$WORK/train.log" 2>&1); then
        tail -20 "$WORK/train.log" >&2
        exit 1
    fi
    V2=$(ls -t "$WORK/node-0/models/versions" | head -1)
fi
SIZE=$(du -sm "$WORK/node-0/models/versions/$V2" | cut -f1)
START=$(date +%s.%N)
curl -fs -X POST -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"version\": \"$V2\"}" "http://127.0.0.1:${PORTS[0]}/admin/promote" >/dev/null
SERVED=()
DONE=0
for _ in $(seq 1 3000); do
    now=$(date +%s.%N)
    for i in $(seq 1 "$FOLLOWERS"); do
        if [ -z "${SERVED[$i]:-}" ] && [ "$(version_of "${PORTS[$i]}")" = "$V2" ]; then
            SERVED[i]=$(python3 -c "print(f'{$now - $START:.1f}')")
            DONE=$((DONE + 1))
        fi
    done
    [ "$DONE" -eq "$FOLLOWERS" ] && break
    sleep 0.1
done
if [ "$DONE" -ne "$FOLLOWERS" ]; then
    echo "not every follower served $V2 within 300 s" >&2
    for i in $(seq 1 "$FOLLOWERS"); do tail -5 "$WORK/node-$i/log" >&2; done
    exit 1
fi
LAST=0
for i in $(seq 1 "$FOLLOWERS"); do
    echo "follower node-$i serves $V2 after ${SERVED[$i]} s"
    LAST=$(python3 -c "print(max($LAST, ${SERVED[$i]}))")
done
echo "RESULT followers=$FOLLOWERS version_mb=$SIZE last_follower_s=$LAST"
