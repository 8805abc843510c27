#!/usr/bin/env bash
# Side by side, in one run: our bridge and the bridge a user would write in Python (FastAPI +
# LiveKit's official Python SDK, bench/python_bridge/bridge.py), on the same devroom with the
# same agent side (bridge/examples/load_agent.rs replaying Opus in every room) and the same
# callers (callsim, espeak-ng speech). N calls of SECS seconds go to one bridge, then the same to
# the other; each bridge's CPU and RSS are read from /proc over the window when all its calls are
# up. Prints one JSON object: per-call CPU (% of one core) and RSS for both, and the ratios.
#
#   cargo build --release -p bridge -p devroom -p callsim --bins --examples
#   pip install livekit livekit-api fastapi 'uvicorn[standard]' python-multipart numpy
#   scripts/compare_python_bridge.sh [N=20] [SECS=40]
#   PHONE_CODEC=opus scripts/compare_python_bridge.sh 20 40     # our bridge's env passes through
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}; SECS=${2:-40}; RAMP=${RAMP:-10}; WINDOW=${WINDOW:-$(( SECS / 2 ))}
BIN=target/release
for b in devroom bridge callsim examples/load_agent; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: cargo build --release -p bridge -p devroom -p callsim --bins --examples" >&2; exit 2; }
done
python3 -c "import livekit.rtc, livekit.api, fastapi, uvicorn, multipart, numpy, websockets" 2>/dev/null || {
  echo "pip install livekit livekit-api fastapi 'uvicorn[standard]' python-multipart numpy" >&2; exit 2; }

LK_PORT=$((17000 + RANDOM % 1000)); OURS_PORT=$((18000 + RANDOM % 500)); PY_PORT=$((18500 + RANDOM % 500))
OUT=$(mktemp -d)
$BIN/devroom --listen 127.0.0.1:$LK_PORT --rtc-port 0 > "$OUT/devroom.out" 2> "$OUT/devroom.log" &
LK=$!
COMMON=(TWILIO_AUTH_TOKEN=cmptoken TWILIO_ACCOUNT_SID=AC00000000000000000000000000000001
        LIVEKIT_URL=ws://127.0.0.1:$LK_PORT LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret)
env "${COMMON[@]}" PUBLIC_URL=http://127.0.0.1:$OURS_PORT BRIDGE_LISTEN=127.0.0.1:$OURS_PORT RUST_LOG=warn \
  $BIN/bridge > "$OUT/ours.log" 2>&1 &
OURS=$!
env "${COMMON[@]}" PUBLIC_URL=http://127.0.0.1:$PY_PORT python3 bench/python_bridge/bridge.py --port $PY_PORT \
  > "$OUT/python.log" 2>&1 &
PY=$!
$BIN/examples/load_agent --url ws://127.0.0.1:$LK_PORT > "$OUT/agent.json" 2> "$OUT/agent.log" &
AG=$!
trap 'kill $OURS $PY $AG $LK 2>/dev/null || true' EXIT
for port in $OURS_PORT $PY_PORT; do
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/health >/dev/null && break; sleep 0.2; done
done

AUDIO=(--tone 440)
if command -v espeak-ng >/dev/null; then
  python3 -c "import sys; print(' '.join(['My name is Peter. It happened in the warehouse. There was a fire. It is critical.'] * (int(sys.argv[1]) // 5 + 1)))" "$SECS" \
    | espeak-ng -v en-us+m3 -s 150 -g 8 --stdin -w "$OUT/caller.wav"
  AUDIO=(--wav "$OUT/caller.wav")
fi
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
rss_kb() { awk '/VmRSS/ {print $2}' /proc/$1/status; }
HZ=$(getconf CLK_TCK)

# run LABEL PORT PID: N calls against one bridge; writes $OUT/LABEL.json
run() {
  local label=$1 port=$2 pid=$3
  local rss0; rss0=$(rss_kb "$pid")
  $BIN/callsim --url http://127.0.0.1:$port --auth-token cmptoken --calls "$N" --ramp-per-sec "$RAMP" \
    --duration "$SECS" --no-status "${AUDIO[@]}" > "$OUT/$label-calls.json" &
  local sim=$!
  sleep $(( N / RAMP + 3 ))
  local t0 w0 t1 w1 rss1
  t0=$(ticks "$pid"); w0=$(date +%s.%N)
  sleep "$WINDOW"
  t1=$(ticks "$pid"); w1=$(date +%s.%N); rss1=$(rss_kb "$pid")
  wait $sim || true
  python3 - "$OUT/$label-calls.json" "$N" "$t0" "$t1" "$w0" "$w1" "$HZ" "$rss0" "$rss1" > "$OUT/$label.json" <<'PY'
import json, sys
rep, n, t0, t1, w0, w1, hz, rss0, rss1 = sys.argv[1:]
n = int(n); cpu = (int(t1) - int(t0)) / int(hz); wall = float(w1) - float(w0)
a = json.load(open(rep)); a = a.get("aggregate", a)
print(json.dumps({
  "calls": n, "completed": a.get("completed"),
  "cpu_pct_of_core_per_call": round(100 * cpu / wall / n, 3),
  "rss_mb": round(int(rss1) / 1024, 1),
  "rss_per_call_kb": round((int(rss1) - int(rss0)) / n, 1),
  "frames_received": a.get("frames_received"),
  "gaps_within_utterances": (a.get("gaps") or {}).get("within_utterance_count"),
}))
PY
  sleep 3 # rooms deleted, sockets closed
}
run ours $OURS_PORT $OURS
run python $PY_PORT $PY
python3 - "$OUT/ours.json" "$OUT/python.json" <<'PY'
import json, sys
ours, py = (json.load(open(p)) for p in sys.argv[1:3])
ratio = lambda k: round(py[k] / ours[k], 1) if ours[k] > 0 else None
print(json.dumps({"ours": ours, "python": py,
                  "python_over_ours": {"cpu_per_call": ratio("cpu_pct_of_core_per_call"),
                                       "rss_per_call": ratio("rss_per_call_kb")}}, indent=1))
PY
echo "logs in $OUT" >&2
