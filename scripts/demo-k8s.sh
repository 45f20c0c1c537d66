#!/usr/bin/env bash
# Kubernetes without a cluster: starts two simulated clusters (`mover-testdata cluster up`, a
# strict API server each, whose pods run as real processes in namespaces of their own), deploys a
# small application into the source one (namespaces `shop` and `shop-db`, three claims full of a
# generated tree, one used by a running pod, one whose target claim already exists), runs
# `mover preflight` and `mover plan run` for it, compares every target claim with its source, and
# stops the clusters. Needs root (pods get network and mount namespaces).
#   PROFILE=debug ./scripts/demo-k8s.sh   uses debug builds (faster to build)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/mover-demo-k8s}
profile=${PROFILE:-release}
if [ "$(id -u)" != 0 ]; then
  echo "demo-k8s.sh needs root: the simulated clusters' pods get network and mount namespaces" >&2
  exit 1
fi
flag=(); [ "$profile" = release ] && flag=(--release)
cargo build "${flag[@]}" --locked -p mover-cli -p mover-agent -p mover-testdata
bin=target/$profile
"$bin/mover-testdata" cluster down "$work" 2>/dev/null || true
rm -rf "$work"
mkdir -p "$work"
"$bin/mover-testdata" cluster up "$work" --with-app > "$work/clusters.log" 2>&1 &
trap '"$bin/mover-testdata" cluster down "$work" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 600); do [ -f "$work/pid" ] && break; sleep 0.1; done
[ -f "$work/pid" ] || { cat "$work/clusters.log"; echo "the clusters did not start" >&2; exit 1; }
cat "$work/clusters.log"
export KUBECONFIG=$work/kubeconfig
cat > "$work/plan.yaml" <<'PLAN'
apiVersion: mover/v1alpha1
kind: MigrationPlan
name: shop-migration
namespaces: [shop, shop-db]
clusters:
  source: {context: source}
  target: {context: target}
PLAN
echo "== mover preflight $work/plan.yaml"
"$bin/mover" preflight "$work/plan.yaml"
echo "== mover plan run $work/plan.yaml"
"$bin/mover" plan run "$work/plan.yaml"
echo "== target claims against their sources"
"$bin/mover-testdata" cluster check-app "$work"
echo "every claim of shop and shop-db is identical in the target cluster"
