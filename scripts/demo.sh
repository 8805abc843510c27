#!/usr/bin/env bash
# The offline demo, one command: builds devroom, bridge and agent (release) and runs
# `callbridge-demo` — a simulated Twilio caller who holds a conversation with the offline agent
# (pocketsphinx STT, rule-based dialog, espeak-ng TTS) through the bridge and a devroom room.
# No keys, no network. Extra arguments go to callbridge-demo (see --help), e.g.
#   scripts/demo.sh --out /tmp/demo --say "my name is anna" --say "it happened in the kitchen"
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the build and the offline stack need (Debian/Ubuntu names).
pkgs=(cmake clang libclang-dev pkg-config espeak-ng libespeak-ng-dev libpocketsphinx-dev pocketsphinx-en-us)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== Silero VAD model (PyPI silero-vad wheel; without it the agent uses its energy detector)"
if out="$(scripts/models.sh silero 2>/dev/null)"; then eval "$out"; else echo "   (not fetched: python3 -m pip is needed)"; fi

echo "== building (release; the first build takes a while)"
cargo build --release -p devroom -p bridge -p agent -p demo --bins

echo "== running the demo"
exec target/release/callbridge-demo "$@"
