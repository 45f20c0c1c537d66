#!/usr/bin/env bash
# Kubernetes without a cluster: starts two simulated clusters (`mover-testdata cluster up`, a
# strict API server each, whose pods run as real processes in namespaces of their own), deploys a
# small application into the source one (namespaces `shop` and `shop-db`, three claims full of a
# generated tree, one used by the running Deployment `shop/web`, one by the CronJob
# `shop/thumbnails`, one whose target claim already exists), installs mover in both (`mover k8s
# manifests`, applied as `kubectl apply -f -` would), runs `mover preflight` and
# `mover plan run` for it, compares every target claim with its source, and stops the clusters.
# Needs root (pods get network and mount namespaces).
#
# With `--final`, a cutover instead: a stage run while the application runs, then a final run
# with the seed's environment.yml as hook Jobs (PreBackup on the source, PostRestore on the
# target, their output shown) that leaves the source quiesced, then `mover plan rollback`; the
# workloads (and the target's namespaces and claims) are printed after each step.
#   PROFILE=debug ./scripts/demo-k8s.sh [--final] [DIR]   uses debug builds (faster to build)
set -euo pipefail
cd "$(dirname "$0")/.."
final=false
if [ "${1:-}" = --final ]; then final=true; shift; fi
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
# The install, as on a real cluster (`mover k8s manifests | kubectl apply -f -`): the namespace,
# the coordinator's service account and role. mover keeps a final run's record there.
for context in source target; do
  "$bin/mover" k8s manifests | "$bin/mover-testdata" cluster apply "$work" --context "$context"
done
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
if [ "$final" = false ]; then
  echo "== mover plan run $work/plan.yaml"
  "$bin/mover" plan run "$work/plan.yaml"
  echo "== target claims against their sources"
  "$bin/mover-testdata" cluster check-app "$work"
  echo "every claim of shop and shop-db is identical in the target cluster"
  exit 0
fi

# The cutover. The seed's playbook runs as a Job before the final copy on the source and after
# it on the target (the tools image runs this machine's ansible-playbook).
cp examples/hooks/environment.yml "$work/"
cat >> "$work/plan.yaml" <<'PLAN'
hooks:
  - {name: before, phase: PreBackup, playbook: environment.yml, image: "registry.sim/tools:1"}
  - {name: after, phase: PostRestore, playbook: environment.yml, image: "registry.sim/tools:1"}
PLAN
state() {
  echo "-- $1"
  "$bin/mover-testdata" cluster workloads "$work"
  "$bin/mover-testdata" cluster workloads "$work" --context target
}
state "before the migration"
echo "== mover plan run --stage $work/plan.yaml   (the application keeps running)"
"$bin/mover" plan run --stage "$work/plan.yaml"
state "after the stage run"
echo "== mover plan run --final $work/plan.yaml"
"$bin/mover" plan run --final "$work/plan.yaml"
state "after the final run (the source stays quiesced)"
echo "== target claims against their sources"
"$bin/mover-testdata" cluster check-app "$work"
echo "== mover plan rollback $work/plan.yaml"
"$bin/mover" plan rollback "$work/plan.yaml"
state "after the rollback"
