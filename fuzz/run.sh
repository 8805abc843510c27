#!/usr/bin/env bash
# Builds every fuzz target once, then runs each for SECONDS (default 60) on its committed corpus.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Stable toolchain: libFuzzer's coverage instrumentation takes only stable -C flags, so
# `--sanitizer none` needs no nightly (our code is safe Rust; debug assertions and overflow
# checks are on, so an overflow is a crash). New inputs go to fuzz/work/<target> (ignored),
# crashes to fuzz/artifacts/<target>/. Each target runs in a network namespace of its own when
# `unshare` allows it: the inputs choose ICE candidates, and nothing may be sent to them.
# Exits non-zero if any target crashed; ends with "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true

if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

build_start=$(date +%s)
cargo fuzz build --sanitizer none 2>&1 | tail -n 3
echo "fuzz build: $(( $(date +%s) - build_start )) s"

bin_dir=target/$(rustc -vV | sed -n 's/^host: //p')/release
netns=()
if unshare --net --map-root-user true 2>/dev/null; then
    netns=(unshare --net --map-root-user)
fi

passed=0
failed=0
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "artifacts/$t"
    log="work/$t.log"   # kept (ignored) for a look after the run
    set +e
    "${netns[@]}" "$bin_dir/$t" "work/$t" "corpus/$t" \
        -max_total_time="$secs" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n "s/^stat::number_of_executed_units: *//p" "$log" | tail -n 1 || true)
    cov=$(grep -o "cov: [0-9]*" "$log" | tail -n 1 | cut -d" " -f2 || true)
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        echo "$t: ok, ${runs:-?} runs in ${secs} s, coverage ${cov:-?} edges, corpus $(ls "work/$t" "corpus/$t" | wc -l) files"
    else
        failed=$((failed + 1))
        echo "$t: FAILED (exit $rc)"
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -n 8 || true
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ $failed -eq 0 ]
