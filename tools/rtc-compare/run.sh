#!/usr/bin/env bash
# Runs the comparison matrix: both stacks, N pairs, one-way and both-ways, each measurement twice
# (the machine is shared), interleaving the stacks so drifting background load hits both alike.
# Usage: tools/rtc-compare/run.sh [SECONDS] [PAIRS...]   (default: 30 s, 50 and 200 pairs)
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/rtc-compare-target}"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/rtc-compare"
secs="${1:-30}"; shift || true
pairs=("${@:-50 200}")
for n in ${pairs[@]}; do
  for mode in oneway both; do
    for run in 1 2; do
      for stack in str0m webrtc; do
        echo "run=$run $("$bin" --stack "$stack" --pairs "$n" --mode "$mode" --seconds "$secs" --warmup 3)"
      done
    done
  done
done
