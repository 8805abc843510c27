#!/usr/bin/env bash
# The offline demo, one command: builds devroom, bridge and agent (release) and runs
# `callbridge-demo` — a simulated Twilio caller who holds a conversation with the offline agent
# (pocketsphinx STT, rule-based dialog, espeak-ng TTS) through the bridge and a devroom room.
# No keys, no network. Extra arguments go to callbridge-demo (see --help), e.g.
#   scripts/demo.sh --out /tmp/demo --say "my name is anna" --say "it happened in the kitchen"
set -euo pipefail
cd "$(dirname "$0")/.."

# The Debian packages the build and the offline stack need, when missing.
scripts/setup.sh demo

echo "== Silero VAD model (PyPI silero-vad wheel; without it the agent uses its energy detector)"
if out="$(scripts/models.sh silero 2>/dev/null)"; then eval "$out"; else echo "   (not fetched: python3 -m pip is needed)"; fi

echo "== building (release; the first build takes a while)"
cargo build --release -p devroom -p bridge -p agent -p demo --bins

echo "== running the demo"
exec target/release/callbridge-demo "$@"
