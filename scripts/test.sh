#!/usr/bin/env bash
# The test command (README, CI): every test of the workspace, in one build.
#
#   scripts/test.sh                  # = cargo test --workspace
#   scripts/test.sh -p bridge        # extra arguments go to cargo test
#
# With CALLBRIDGE_FEATURES set (CI: agent/piper,agent/whisper,agent/llama, after
# `eval "$(scripts/models.sh)"`), the agent's optional local models are built into the same
# build and their tests run too — no second build of the agent.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace ${CALLBRIDGE_FEATURES:+--features "$CALLBRIDGE_FEATURES"} "$@"
