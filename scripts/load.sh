#!/usr/bin/env bash
# Load run: release devroom + bridge on loopback, `callsim --calls N` against them, an agent in
# every call's room replaying pre-encoded Opus (bridge/examples/load_agent.rs; AGENT=0 to leave
# it out), and the bridge's CPU time and RSS measured from /proc while the calls run. At the end
# the bridge's /metrics give p50/p99 bridge-added latency each way and underruns.
#   [RAMP=calls/s] [AGENT=0|1] scripts/load.sh N [SECONDS] [extra callsim args...]
# The CPU/RSS window is the time when every call is up: from N/RAMP + 3 s to SECONDS - 2 s.
# Needs `cargo build --release -p bridge -p devroom -p callsim --bins --examples` first.
set -euo pipefail
N=${1:-50}; SECS=${2:-20}; shift $(( $# > 2 ? 2 : $# )) || true
RAMP=${RAMP:-20}
WINDOW=$(( SECS - N / RAMP - 5 ))
[ "$WINDOW" -ge 4 ] || { echo "SECONDS must be at least N/RAMP + 9" >&2; exit 2; }
cd "$(dirname "$0")/.."
BIN=target/release
LK_PORT=$((17000 + RANDOM % 1000)); BR_PORT=$((18000 + RANDOM % 1000))
OUT=$(mktemp -d)
$BIN/devroom --listen 127.0.0.1:$LK_PORT --rtc-port 0 > "$OUT/devroom.out" 2> "$OUT/devroom.log" &
LK=$!
PUBLIC_URL=http://127.0.0.1:$BR_PORT BRIDGE_LISTEN=127.0.0.1:$BR_PORT TWILIO_AUTH_TOKEN=loadtoken \
  TWILIO_ACCOUNT_SID=AC00000000000000000000000000000001 LIVEKIT_URL=ws://127.0.0.1:$LK_PORT \
  LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret \
  RUST_LOG=warn $BIN/bridge > "$OUT/bridge.log" 2>&1 &
BR=$!
AG=""
if [ "${AGENT:-1}" = 1 ]; then
  $BIN/examples/load_agent --url ws://127.0.0.1:$LK_PORT > "$OUT/agent.json" 2> "$OUT/agent.log" &
  AG=$!
fi
trap 'kill $BR $LK $AG 2>/dev/null || true' EXIT
sleep 1
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
rss_kb() { awk '/VmRSS/ {print $2}' /proc/$1/status; }
HZ=$(getconf CLK_TCK)
rss0=$(rss_kb $BR)
# The callers speak (espeak-ng, sentences with pauses: Opus DTX works as on a real call); a tone
# when espeak-ng is missing.
AUDIO=(--tone 440)
if command -v espeak-ng >/dev/null; then
  python3 -c "import sys; print(' '.join(['My name is Peter. It happened in the warehouse. There was a fire. It is critical.'] * (int(sys.argv[1]) // 5 + 1)))" "$SECS" \
    | espeak-ng -v en-us+m3 -s 150 -g 8 --stdin -w "$OUT/caller.wav"
  AUDIO=(--wav "$OUT/caller.wav")
fi
$BIN/callsim --url http://127.0.0.1:$BR_PORT --auth-token loadtoken --calls "$N" --ramp-per-sec "$RAMP" \
  --duration "$SECS" "${AUDIO[@]}" "$@" > "$OUT/report.json" &
SIM=$!
# Measure over the middle of the run, when every call is up.
sleep $(( N / RAMP + 3 ))
t0=$(ticks $BR); w0=$(date +%s.%N); rss_peak=$(rss_kb $BR)
a0=0; l0=$(ticks $LK); [ -n "$AG" ] && a0=$(ticks $AG)
sleep "$WINDOW"
t1=$(ticks $BR); w1=$(date +%s.%N); rss_mid=$(rss_kb $BR)
a1=0; l1=$(ticks $LK); [ -n "$AG" ] && a1=$(ticks $AG)
wait $SIM || true
curl -s http://127.0.0.1:$BR_PORT/metrics > "$OUT/metrics.txt" || true
if [ -n "$AG" ]; then kill -TERM $AG 2>/dev/null || true; wait $AG 2>/dev/null || true; fi
python3 - "$OUT/report.json" "$N" "$t0" "$t1" "$w0" "$w1" "$HZ" "$rss0" "$rss_mid" "$OUT/metrics.txt" "$OUT/agent.json" "$l0" "$l1" "$a0" "$a1" <<'PY'
import json, sys, re
rep, n, t0, t1, w0, w1, hz, rss0, rss1, metrics, agent, l0, l1, a0, a1 = sys.argv[1:]
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
  "devroom_cpu_cores": round((int(l1) - int(l0)) / int(hz) / wall, 3),
  "agent_cpu_cores": round((int(a1) - int(a0)) / int(hz) / wall, 3),
}
# Quantiles from the Prometheus histograms (upper bound of the bucket holding the quantile).
text = open(metrics).read() if metrics else ""
def quantiles(name):
    b = [(float(le), float(v)) for le, v in re.findall(name + r'_bucket\{le="([^"]+)"\} (\S+)', text)]
    if not b or b[-1][1] == 0:
        return None
    total = b[-1][1]
    q = {}
    for p in (0.5, 0.99, 0.999):
        q["p%g" % (p * 100)] = next((round(le * 1e3, 3) for le, c in b if c >= p * total), None)
    q["count"] = int(total)
    return q
out["inbound_latency_ms"] = quantiles("bridge_inbound_latency_seconds")
out["outbound_latency_ms"] = quantiles("bridge_outbound_latency_seconds")
m = re.search(r'^bridge_outbound_underruns_total (\S+)', text, re.M)
out["bridge_underruns"] = int(float(m.group(1))) if m else None
for k in ("gaps", "invalid_messages", "marks_echoed", "mark_rtt_ms"):
    if k in a:
        out["callsim_" + k] = a[k]
try:
    out["agent"] = json.loads(open(agent).read().strip().splitlines()[-1])
except Exception:
    pass
print(json.dumps(out))
PY
echo "logs and callsim report in $OUT" >&2
