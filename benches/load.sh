#!/usr/bin/env bash
# Load test of `sentimentd serve` (release build, trained model):
#  1. POST /predict with wrk: 64 connections, bodies rotating over the real texts of
#     data/datasets/tweeteval/val.csv; prints req/s and p50/p99 latency.
#  2. A 100,000-row CSV dropped into the inbox: rows/s end to end (rename into the inbox
#     until the scored file is in the outbox and the input archived).
#  3. RSS of the serving process (current and peak).
#  4. With RETRAIN=1: /predict under the same load while a candidate retrains in the
#     background (POST /admin/retrain on labelled feedback), then while versions are swapped
#     (admin promote every 0.5 s): p99 and errors of each phase.
#  5. With LARGE=1: a BIG_ROWS-row file (default 2,000,000) and a file of just under BIG_MIB
#     MiB (default 512) through the inbox: rows/s end to end, and the daemon's peak RSS
#     during each batch (VmHWM, reset before each through /proc/<pid>/clear_refs) and its
#     RSS before and after.
#  6. With FLOOD=1: backpressure (see FLOOD below).
#
# Usage: benches/load.sh            (from the repository root)
# Env:   DURATION=20s CONNECTIONS=64 THREADS=2 ROWS=100000 PORT=18080 WORKERS=2
#        (WORKERS = HTTP workers, default as in the config. With wrk on the same 2-core
#        machine, WORKERS=1 trades throughput for a shorter tail.)
#        MODEL_STORE=DIR  reuse a trained model store instead of training one (~60 s); a
#                         store whose current version is a transformer finds its encoder in
#                         SENTIMENTD_PRETRAINED (default ~/.cache/sentimentd-pretrained)
#        SKIP_BUILD=1     use the release binary already in $CARGO_TARGET_DIR
#        OBSERVE=false    turn drift observation off ([drift] enabled), to measure its cost
#        RETRAIN=1        add phase 4
#        LARGE=1          add phase 5 (BIG_ROWS=2000000 BIG_MIB=512)
#        FLOOD=1          add phase 6: 1,024-text /predict batches from 32 connections for
#                         DURATION while one connection polls /health: the flood's status
#                         counts (200, 429, 5xx) and /health p50/p99
#        PHASES="http inbox"  the phases 1-3 to run (drop one to skip it)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
: "${CARGO_TARGET_DIR:=$HOME/.cache/sentimentd-target}"
export CARGO_TARGET_DIR
DURATION="${DURATION:-20s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
ROWS="${ROWS:-100000}"
BIG_ROWS="${BIG_ROWS:-2000000}"
BIG_MIB="${BIG_MIB:-512}"
PHASES="${PHASES-http inbox}"
phase() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
PORT="${PORT:-18080}"
WORKERS="${WORKERS:-2}"
VAL="$ROOT/data/datasets/tweeteval/val.csv"

if ! command -v wrk >/dev/null 2>&1; then
    echo "== installing wrk"
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi

if [ -z "${SKIP_BUILD:-}" ]; then
    echo "== building the release binary"
    cargo build --release --bin sentimentd
fi
BIN="$CARGO_TARGET_DIR/release/sentimentd"

WORK="$(mktemp -d /tmp/sentimentd-load.XXXXXX)"
DAEMON_PID=""
cleanup() {
    if [ -n "$DAEMON_PID" ]; then kill -TERM "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

STORE="${MODEL_STORE:-$WORK/models}"
cat > "$WORK/sentimentd.toml" <<EOF
[paths]
model_store = "$STORE"
state_dir = "$WORK/state"

[data]
train = ["$ROOT/data/datasets/tweeteval/train.csv"]
val = "$VAL"


[train]
on_start = "never"

[server]
workers = $WORKERS
inference_threads = 2

[ingest]
inbox = "$WORK/inbox"
outbox = "$WORK/outbox"
archive = "$WORK/archive"
rejected = "$WORK/rejected"
processing = "$WORK/processing"
journal = "$WORK/journal"
labelled_dir = "$WORK/labelled"
settle_ms = 200

[drift]
enabled = ${OBSERVE:-true}

[retrain]
on_drift = false

[admin]
token_file = "$WORK/token"

[transformer]
pretrained_dir = "${SENTIMENTD_PRETRAINED:-$HOME/.cache/sentimentd-pretrained}"

[logging]
level = "warn,sentimentd_actors=info"
EOF

echo "load-test-admin-token-0123456789" > "$WORK/token"
chmod 600 "$WORK/token"
TOKEN_HDR="Authorization: Bearer load-test-admin-token-0123456789"

if [ -z "${MODEL_STORE:-}" ]; then
    echo "== training the default model (release)"
    "$BIN" --config "$WORK/sentimentd.toml" train --out "$STORE"
fi

echo "== starting sentimentd on port $PORT"
"$BIN" --config "$WORK/sentimentd.toml" serve --port "$PORT" 2> "$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 1 200); do
    if curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/model"; echo

# Request bodies: one JSON document per line, built from the validation texts.
python3 - "$VAL" "$WORK/bodies.txt" <<'EOF'
import csv, json, sys
with open(sys.argv[1], newline='', encoding='utf-8') as f, open(sys.argv[2], 'w') as out:
    for row in csv.DictReader(f):
        t = row['text'].strip()
        if t:
            out.write(json.dumps({"text": t}) + "\n")
EOF

cat > "$WORK/rotate.lua" <<EOF
local bodies = {}
for line in io.lines("$WORK/bodies.txt") do bodies[#bodies + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function setup(thread) thread:set("offset", math.random(#bodies)) end
function request()
    i = i + 1
    return wrk.format(nil, "/predict", nil, bodies[(i + (offset or 0)) % #bodies + 1])
end
function done(summary, latency, requests)
    io.write(string.format("RESULT requests=%d errors=%d req_per_s=%.0f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
        summary.requests,
        summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
        summary.requests / (summary.duration / 1e6),
        latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
EOF

if phase http; then
echo "== warm-up"
wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$WORK/rotate.lua" "http://127.0.0.1:$PORT/predict" >/dev/null
echo "== wrk -t$THREADS -c$CONNECTIONS -d$DURATION against $WORKERS HTTP worker(s) (rotating $(wc -l < "$WORK/bodies.txt") validation texts)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/rotate.lua" "http://127.0.0.1:$PORT/predict" | tee "$WORK/wrk.txt"
grep '^RESULT' "$WORK/wrk.txt"

echo "== memory after the HTTP load"
grep -E '^(VmRSS|VmHWM)' "/proc/$DAEMON_PID/status"
fi

if phase inbox; then
echo "== inbox throughput: $ROWS rows"
python3 - "$VAL" "$WORK/big.csv" "$ROWS" <<'EOF'
import csv, sys
texts = [r['text'] for r in csv.DictReader(open(sys.argv[1], newline='', encoding='utf-8')) if r['text'].strip()]
n = int(sys.argv[3])
with open(sys.argv[2], 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(['id', 'text'])
    for i in range(n):
        w.writerow([i, texts[i % len(texts)]])
EOF
START=$(date +%s.%N)
mv "$WORK/big.csv" "$WORK/inbox/big.csv"
while [ ! -f "$WORK/archive/big.csv" ]; do sleep 0.01; done
END=$(date +%s.%N)
OUT_ROWS=$(($(python3 -c "import csv,sys; print(sum(1 for _ in csv.reader(open(sys.argv[1], newline='', encoding='utf-8'))))" "$WORK/outbox/big.csv") - 1))
python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); n=int(sys.argv[3]); print(f'RESULT inbox_rows={n} seconds={s:.3f} rows_per_s={n/s:.0f}')" "$START" "$END" "$OUT_ROWS"
grep 'batch processed' "$WORK/daemon.log" | tail -1

echo "== memory after the inbox batch"
grep -E '^(VmRSS|VmHWM)' "/proc/$DAEMON_PID/status"
fi

rss_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$DAEMON_PID/status"; }

# Drops $1 (a file in $WORK) into the inbox and reports rows/s and the peak RSS of the batch.
large_batch() {
    local name="$1" label="$2"
    local rows bytes before start end
    rows=$(($(wc -l < "$WORK/$name") - 1))
    bytes=$(stat -c %s "$WORK/$name")
    sleep 1
    before=$(rss_kb VmRSS)
    # Peak RSS from here on (the HTTP phases raised it before).
    echo 5 > "/proc/$DAEMON_PID/clear_refs"
    start=$(date +%s.%N)
    mv "$WORK/$name" "$WORK/inbox/$name"
    while [ ! -f "$WORK/archive/$name" ]; do sleep 0.05; done
    end=$(date +%s.%N)
    sleep 2
    python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); n=int(sys.argv[3]); print(f'RESULT {sys.argv[4]} rows={n} bytes={sys.argv[5]} seconds={s:.2f} rows_per_s={n/s:.0f} rss_before_mb={int(sys.argv[6])/1024:.0f} peak_rss_mb={int(sys.argv[7])/1024:.0f} rss_after_mb={int(sys.argv[8])/1024:.0f}')" \
        "$start" "$end" "$rows" "$label" "$bytes" "$before" "$(rss_kb VmHWM)" "$(rss_kb VmRSS)"
    grep 'batch processed' "$WORK/daemon.log" | tail -1
    rm -f "$WORK/archive/$name" "$WORK/outbox/$name"
}

if [ -n "${LARGE:-}" ]; then
    echo "== large files through the inbox"
    # Real texts, cycled; the second file is padded with rows until it reaches BIG_MIB.
    python3 - "$VAL" "$WORK" "$BIG_ROWS" "$BIG_MIB" <<'EOF'
import csv, sys
texts = [r['text'] for r in csv.DictReader(open(sys.argv[1], newline='', encoding='utf-8')) if r['text'].strip()]
work, rows, mib = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def write(name, stop):
    with open(f"{work}/{name}", 'w', newline='', encoding='utf-8') as f:
        w = csv.writer(f)
        w.writerow(['id', 'source', 'text'])
        i = 0
        while not stop(i, f):
            w.writerow([i, 'load', texts[i % len(texts)]])
            i += 1
write('rows.csv', lambda i, f: i >= rows)
# Just under the size (the default max_file_bytes is exactly 512 MiB).
write('mib.csv', lambda i, f: i % 1000 == 0 and f.tell() >= (mib << 20) - (1 << 20))
EOF
    large_batch rows.csv "large_rows"
    large_batch mib.csv "large_${BIG_MIB}mib"
fi

if [ -n "${RETRAIN:-}" ]; then
    echo "== /predict while a candidate retrains (wrk -c$CONNECTIONS -d$DURATION)"
    python3 - "$ROOT/data/datasets/tweeteval/train.csv" > "$WORK/feedback.json" <<'EOF'
import csv, json, sys
rows = [r for r in csv.DictReader(open(sys.argv[1], newline='', encoding='utf-8')) if r['text'].strip()]
print(json.dumps({"items": [{"text": r['text'], "label": r['label']} for r in rows[-1000:]]}))
EOF
    curl -fsS -H 'content-type: application/json' --data-binary @"$WORK/feedback.json" "http://127.0.0.1:$PORT/feedback" >/dev/null
    curl -fsS -X POST -H "$TOKEN_HDR" "http://127.0.0.1:$PORT/admin/retrain"; echo
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/rotate.lua" "http://127.0.0.1:$PORT/predict" | grep '^RESULT' | sed 's/^RESULT/RESULT during_retrain/'
    for _ in $(seq 1 600); do
        if grep -q 'retrain finished' "$WORK/daemon.log"; then break; fi
        sleep 0.5
    done
    grep -E 'retrain finished|candidate|retrain failed' "$WORK/daemon.log" | tail -3 || true
    echo "== /predict while versions are swapped every 0.5 s"
    mapfile -t VERSIONS < <(ls "$STORE/versions" | grep -v '^\.')
    SWAP_SECS="${DURATION%s}"
    (
        end=$((SECONDS + SWAP_SECS))
        while [ "$SECONDS" -lt "$end" ]; do
            for v in "${VERSIONS[@]}"; do
                curl -fsS -H "$TOKEN_HDR" -H 'content-type: application/json' -d "{\"version\": \"$v\"}" "http://127.0.0.1:$PORT/admin/promote" >/dev/null || true
                sleep 0.5
            done
        done
    ) &
    SWAPPER=$!
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/rotate.lua" "http://127.0.0.1:$PORT/predict" | grep '^RESULT' | sed 's/^RESULT/RESULT during_swaps/'
    wait "$SWAPPER" || true
    echo "swaps: $(grep -c 'promoted by the admin API' "$WORK/daemon.log") across ${#VERSIONS[@]} versions"
fi

if [ -n "${FLOOD:-}" ]; then
    echo "== flood: 1,024-text batches from 32 connections, /health polled meanwhile"
    python3 - "$VAL" "$WORK/flood.json" <<'EOF'
import csv, json, sys
texts = [r['text'] for r in csv.DictReader(open(sys.argv[1], newline='', encoding='utf-8')) if r['text'].strip()]
json.dump({"texts": [texts[i % len(texts)] for i in range(1024)]}, open(sys.argv[2], 'w'))
EOF
    cat > "$WORK/flood.lua" <<EOF
local f = io.open("$WORK/flood.json"); local body = f:read("*a"); f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = body
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; throttled = 0; server_error = 0; other = 0 end
function response(status, headers, body)
    if status == 200 then ok = ok + 1
    elseif status == 429 then throttled = throttled + 1
    elseif status >= 500 then server_error = server_error + 1
    else other = other + 1 end
end
function done(summary, latency, requests)
    local t = {ok = 0, throttled = 0, server_error = 0, other = 0}
    for _, th in ipairs(threads) do
        for k, _ in pairs(t) do t[k] = t[k] + th:get(k) end
    end
    io.write(string.format("RESULT flood requests=%d ok=%d throttled_429=%d server_error_5xx=%d other=%d texts_per_s=%.0f p99_ms=%.1f\n",
        summary.requests, t.ok, t.throttled, t.server_error, t.other,
        t.ok * 1024 / (summary.duration / 1e6), latency:percentile(99) / 1000))
end
EOF
    cat > "$WORK/health.lua" <<'EOF'
function done(summary, latency, requests)
    io.write(string.format("RESULT health_during_flood requests=%d errors=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
        summary.requests,
        summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
EOF
    wrk -t2 -c32 -d"$DURATION" -s "$WORK/flood.lua" "http://127.0.0.1:$PORT/predict" > "$WORK/flood.txt" &
    FLOODER=$!
    sleep 1
    wrk -t1 -c1 -d"$((${DURATION%s} - 2))s" --latency -s "$WORK/health.lua" "http://127.0.0.1:$PORT/health" | grep '^RESULT'
    wait "$FLOODER" || true
    grep '^RESULT' "$WORK/flood.txt"
fi

kill -TERM "$DAEMON_PID"
wait "$DAEMON_PID" && echo "== clean exit (0) after SIGTERM"
DAEMON_PID=""
