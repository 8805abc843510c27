#!/usr/bin/env bash
# Load run: release devroom + bridge on loopback, `callsim --calls N` against them, and the
# bridge's CPU time and RSS measured from /proc while the calls run.
#   scripts/load.sh N [SECONDS] [extra callsim args...]
# Needs `cargo build --release -p bridge -p devroom -p callsim` first.
set -euo pipefail
N=${1:-50}; SECS=${2:-20}; shift $(( $# > 2 ? 2 : $# )) || true
cd "$(dirname "$0")/.."
BIN=target/release
LK_PORT=$((17000 + RANDOM % 1000)); BR_PORT=$((18000 + RANDOM % 1000))
OUT=$(mktemp -d)
$BIN/devroom --listen 127.0.0.1:$LK_PORT --rtc-port 0 > "$OUT/devroom.out" 2> "$OUT/devroom.log" &
LK=$!
PUBLIC_URL=http://127.0.0.1:$BR_PORT BRIDGE_LISTEN=127.0.0.1:$BR_PORT TWILIO_AUTH_TOKEN=loadtoken \
  TWILIO_ACCOUNT_SID=AC00000000000000000000000000000001 LIVEKIT_URL=ws://127.0.0.1:$LK_PORT \
  RUST_LOG=warn $BIN/bridge > "$OUT/bridge.log" 2>&1 &
BR=$!
trap 'kill $BR $LK 2>/dev/null || true' EXIT
sleep 1
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
rss_kb() { awk '/VmRSS/ {print $2}' /proc/$1/status; }
HZ=$(getconf CLK_TCK)
rss0=$(rss_kb $BR)
$BIN/callsim --url http://127.0.0.1:$BR_PORT --auth-token loadtoken --calls "$N" --ramp-per-sec 20 \
  --duration "$SECS" "$@" > "$OUT/report.json" &
SIM=$!
# Measure over the middle of the run, when every call is up.
sleep $(( N / 20 + 3 ))
t0=$(ticks $BR); w0=$(date +%s.%N); rss_peak=$(rss_kb $BR)
sleep $(( SECS / 2 - 2 ))
t1=$(ticks $BR); w1=$(date +%s.%N); rss_mid=$(rss_kb $BR)
wait $SIM || true
python3 - "$OUT/report.json" "$N" "$t0" "$t1" "$w0" "$w1" "$HZ" "$rss0" "$rss_mid" <<'PY'
import json, sys
rep, n, t0, t1, w0, w1, hz, rss0, rss1 = sys.argv[1:]
n = int(n); cpu = (int(t1) - int(t0)) / int(hz); wall = float(w1) - float(w0)
agg = json.load(open(rep))
a = agg.get("aggregate", agg)
out = {
  "calls": n,
  "bridge_cpu_cores": round(cpu / wall, 3),
  "bridge_cpu_pct_of_core_per_call": round(100 * cpu / wall / n, 3),
  "bridge_rss_mb": round(int(rss1) / 1024, 1),
  "bridge_rss_per_call_kb": round((int(rss1) - int(rss0)) / n, 1),
  "completed": a.get("completed"), "not_completed": a.get("not_completed"),
  "frames_sent": a.get("frames_sent"), "frames_received": a.get("frames_received"),
}
print(json.dumps(out))
PY
echo "logs and callsim report in $OUT" >&2
