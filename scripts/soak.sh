#!/usr/bin/env bash
# Soak: TOTAL calls in all, WAVE at a time (default 1000 and 50), through release builds of
# devroom + bridge with an agent side in every room (bridge/examples/load_agent.rs, replaying
# Opus), callers speaking (espeak-ng). After every wave the bridge must be back to zero active
# calls; its RSS, open file descriptors and tokio task count are sampled then. At the end:
# every call completed, and RSS / fds / tasks flat after warm-up (the first WARMUP waves).
#
#   cargo build --release -p bridge -p devroom -p callsim --bins --examples
#   scripts/soak.sh                 # TOTAL=1000 WAVE=50 SECS=8
#   TOTAL=200 WAVE=50 scripts/soak.sh
#
# Prints one JSON object; exits non-zero when a check fails. Logs stay in the printed directory.
set -euo pipefail
cd "$(dirname "$0")/.."

TOTAL=${TOTAL:-1000}; WAVE=${WAVE:-50}; SECS=${SECS:-8}; RAMP=${RAMP:-25}; WARMUP=${WARMUP:-3}
# Flat means: after warm-up, no more growth than this between the first and the last sample.
# Idle HTTP connections to LiveKit's API (each one fd and one task) are counted apart: the
# bridge pools at most 16 (bridge/src/livekit.rs), and they expire after 90 s idle.
RSS_SLACK_KB=${RSS_SLACK_KB:-8192}; FD_SLACK=${FD_SLACK:-4}; TASK_SLACK=${TASK_SLACK:-4}; MAX_POOL=16
BIN=target/release
for b in devroom bridge callsim examples/load_agent; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: cargo build --release -p bridge -p devroom -p callsim --bins --examples" >&2; exit 2; }
done
WAVES=$(( (TOTAL + WAVE - 1) / WAVE ))

LK_PORT=$((17000 + RANDOM % 1000)); BR_PORT=$((18000 + RANDOM % 1000))
OUT=$(mktemp -d)
$BIN/devroom --listen 127.0.0.1:$LK_PORT --rtc-port 0 > "$OUT/devroom.out" 2> "$OUT/devroom.log" &
LK=$!
PUBLIC_URL=http://127.0.0.1:$BR_PORT BRIDGE_LISTEN=127.0.0.1:$BR_PORT TWILIO_AUTH_TOKEN=soaktoken \
  TWILIO_ACCOUNT_SID=AC00000000000000000000000000000001 LIVEKIT_URL=ws://127.0.0.1:$LK_PORT \
  LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret TWILIO_API_BASE=http://127.0.0.1:9 \
  RUST_LOG=warn $BIN/bridge > "$OUT/bridge.log" 2>&1 &
BR=$!
$BIN/examples/load_agent --url ws://127.0.0.1:$LK_PORT > "$OUT/agent.json" 2> "$OUT/agent.log" &
AG=$!
trap 'kill $BR $LK $AG 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:$BR_PORT/health >/dev/null && break; sleep 0.2; done

AUDIO=(--tone 440)
if command -v espeak-ng >/dev/null; then
  python3 -c "import sys; print(' '.join(['My name is Peter. It happened in the warehouse. There was a fire. It is critical.'] * (int(sys.argv[1]) // 5 + 1)))" "$SECS" \
    | espeak-ng -v en-us+m3 -s 150 -g 8 --stdin -w "$OUT/caller.wav"
  AUDIO=(--wav "$OUT/caller.wav")
fi

metric() { curl -s http://127.0.0.1:$BR_PORT/metrics | awk -v m="$1" '$1 == m {v = $2} END {print v}'; }
rss_kb() { awk '/VmRSS/ {print $2}' /proc/$BR/status; }
fds() { ls /proc/$BR/fd | wc -l; }
# Established connections from the bridge to LiveKit's HTTP port: the API client's pool.
pool() { ss -tnp state established "( dport = :$LK_PORT )" 2>/dev/null | grep -c "pid=$BR," || true; }

: > "$OUT/samples.jsonl"
for w in $(seq 1 "$WAVES"); do
  n=$WAVE; left=$(( TOTAL - (w - 1) * WAVE )); [ "$left" -lt "$n" ] && n=$left
  $BIN/callsim --url http://127.0.0.1:$BR_PORT --auth-token soaktoken --calls "$n" --ramp-per-sec "$RAMP" \
    --duration "$SECS" --no-status "${AUDIO[@]}" > "$OUT/wave-$w.json" || true
  # Every call of the wave is over: wait (bounded) for the bridge to clean up.
  active=1
  for _ in $(seq 100); do active=$(metric bridge_active_calls); [ "${active%.*}" = 0 ] && break; sleep 0.1; done
  python3 - "$OUT/wave-$w.json" "$w" "${active%.*}" "$(rss_kb)" "$(fds)" "$(metric bridge_tokio_tasks)" "$(metric bridge_unstarted_streams)" "$(pool)" >> "$OUT/samples.jsonl" <<'PY'
import json, sys
rep, w, active, rss, fds, tasks, unstarted, pool = sys.argv[1:]
a = json.load(open(rep)); a = a.get("aggregate", a)
print(json.dumps({"wave": int(w), "calls": a.get("calls"), "completed": a.get("completed"),
                  "not_completed": a.get("not_completed"), "active_after": int(active),
                  "gaps_within_utterances": (a.get("gaps") or {}).get("within_utterance_count"),
                  "rss_kb": int(rss), "fds": int(fds), "tokio_tasks": int(float(tasks or 0)),
                  "livekit_pool": int(pool or 0), "unstarted": int(float(unstarted or 0))}))
PY
  tail -1 "$OUT/samples.jsonl" >&2
done
curl -s http://127.0.0.1:$BR_PORT/metrics > "$OUT/metrics.txt"
# What the bridge still holds after the last wave (sockets by kind), for leak hunting.
ls -l /proc/$BR/fd > "$OUT/fds.txt" 2>/dev/null || true
ss -tanup 2>/dev/null | grep "pid=$BR," > "$OUT/sockets.txt" || true
if [ -n "${HOLD:-}" ]; then echo "holding: bridge pid $BR, port $BR_PORT (Ctrl-C to end)" >&2; sleep "$HOLD"; fi

rc=0
python3 - "$OUT/samples.jsonl" "$TOTAL" "$WARMUP" "$RSS_SLACK_KB" "$FD_SLACK" "$TASK_SLACK" "$OUT/metrics.txt" "$MAX_POOL" <<'PY' || rc=$?
import json, re, sys
path, total, warmup, rss_slack, fd_slack, task_slack, metrics, max_pool = sys.argv[1:]
s = [json.loads(l) for l in open(path)]
for x in s:  # what is left once the bounded API connection pool is set apart
    x["other_fds"] = x["fds"] - x["livekit_pool"]
    x["other_tasks"] = x["tokio_tasks"] - x["livekit_pool"]
total, warmup = int(total), int(warmup)
after = s[warmup:] if len(s) > warmup else s[-1:]
text = open(metrics).read()
def m(name):
    x = re.search(r'^' + re.escape(name) + r' (\S+)', text, re.M)
    return float(x.group(1)) if x else 0.0
out = {
  "calls": sum(x["calls"] or 0 for x in s),
  "completed": sum(x["completed"] or 0 for x in s),
  "not_completed": sum(x["not_completed"] or 0 for x in s),
  "active_after_each_wave": max(x["active_after"] for x in s),
  "rss_kb": {"first_after_warmup": after[0]["rss_kb"], "last": after[-1]["rss_kb"], "max": max(x["rss_kb"] for x in after)},
  "fds": {"first_after_warmup": after[0]["fds"], "last": after[-1]["fds"], "max": max(x["fds"] for x in after)},
  "tokio_tasks": {"first_after_warmup": after[0]["tokio_tasks"], "last": after[-1]["tokio_tasks"], "max": max(x["tokio_tasks"] for x in after)},
  "livekit_pool_max": max(x["livekit_pool"] for x in s),
  "other_fds": {"first_after_warmup": after[0]["other_fds"], "max": max(x["other_fds"] for x in after)},
  "other_tasks": {"first_after_warmup": after[0]["other_tasks"], "max": max(x["other_tasks"] for x in after)},
  "bridge_calls_completed": m('bridge_calls_total{outcome="completed"}'),
  "bridge_errors": {k: float(v) for k, v in re.findall(r'^bridge_errors_total\{kind="([^"]+)"\} (\S+)', text, re.M)},
}
checks = {
  "all calls completed": out["completed"] == total and out["not_completed"] == 0,
  "active calls back to 0 after every wave": out["active_after_each_wave"] == 0,
  "RSS flat after warm-up": out["rss_kb"]["max"] - out["rss_kb"]["first_after_warmup"] <= int(rss_slack),
  "fds flat after warm-up (besides the API pool)": out["other_fds"]["max"] - out["other_fds"]["first_after_warmup"] <= int(fd_slack),
  "tokio tasks flat after warm-up (besides the API pool)": out["other_tasks"]["max"] - out["other_tasks"]["first_after_warmup"] <= int(task_slack),
  "LiveKit API pool bounded": out["livekit_pool_max"] <= int(max_pool),
}
out["checks"] = checks
print(json.dumps(out, indent=1))
sys.exit(0 if all(checks.values()) else 1)
PY

echo "logs, per-wave reports and samples in $OUT" >&2
exit $rc
