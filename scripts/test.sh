#!/usr/bin/env bash
# The whole test suite (what `make test` and CI run): formatting, unit and
# local-cluster tests (incl. the fault-injection replica), the deterministic
# simulator over many seeds, the Helm chart and manifests, and on the real
# Kubernetes test bed: smoke test, CRD admission, server-side validation of
# every manifest, and the e2e suite (e2e/, a Rust test crate: the operator
# installed with Helm and with the plain manifest, clusters under crashes,
# Byzantine members, scaling, upgrades, bad input, a memory flood under a
# 96Mi limit, uninstall).
# Exits non-zero on the first failure and always tears the test bed down.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"
SEEDS="${PBFT_SIM_SEEDS:-2000}"
SKIP_CLUSTER="${PBFT_SKIP_CLUSTER:-0}"

# Everything is also written to a log. On failure, the last lines printed
# (after the test bed's teardown) name the step that failed and repeat its
# FAIL/ERROR/panic lines, so a CI report that keeps only the tail says why.
LOG="${PBFT_TEST_LOG:-/var/tmp/pbft-test-$(date -u +%Y%m%dT%H%M%SZ).log}"
mkdir -p "$(dirname "$LOG")"
exec 3>&1 4>&2
exec > >(tee -a "$LOG") 2>&1
tee_pid=$!
CURRENT_STEP="start"
CLUSTER_UP=0
step() { CURRENT_STEP="$*"; printf '\n==> %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
finish() {
  local rc=$? failed_step="$CURRENT_STEP"
  if ((CLUSTER_UP)); then
    step "Kubernetes test bed: down"
    e2e/cluster.sh down || true
  fi
  exec 1>&3 2>&4
  wait "$tee_pid" 2>/dev/null || true
  if ((rc != 0)); then
    printf '\n==> FAILED (exit %s) in step: %s\n' "$rc" "$failed_step"
    printf 'its failure lines (full log: %s):\n' "$LOG"
    grep -E 'FAIL|ERROR|panicked|^error|did not|timed out' "$LOG" | grep -v -E '^MEASURE| PASS ' | tail -n 20 || true
  fi
  exit "$rc"
}
trap finish EXIT
started=$(date +%s)

step "toolchain"
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
cargo --version

step "format"
cargo fmt --all -- --check

step "build (release)"
cargo build --release --workspace --all-targets

step "fault-injection replica build (tests only; never in release images)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
CARGO_TARGET_DIR="$TARGET/fault-injection" cargo build --release -p replica --features fault-injection --bin pbft-replica
FI_REPLICA="$TARGET/fault-injection/release/pbft-replica"
export PBFT_REPLICA_FAULTY_BIN="$FI_REPLICA"

step "unit and local-cluster tests (fault-injection replicas: an equivocating primary, a conflicting voter, a peer flood beside the client flood)"
PBFT_FI_REPLICA="$FI_REPLICA" cargo test --release --workspace

step "Helm chart, install manifest and examples (offline checks; Helm built from source once, cached)"
e2e/testbed/build-binaries.sh helm
source e2e/testbed/versions.env
export PATH="$K8S_BIN:$HELM_BIN:$PATH"
scripts/check-manifests.sh

step "simulator: $SEEDS seeds at n=4 and n=7, every fault mix"
"${CARGO_TARGET_DIR:-target}/release/pbft-sim" --seeds "$SEEDS"

if [[ "$SKIP_CLUSTER" == 1 ]]; then
  step "real Kubernetes test bed skipped (PBFT_SKIP_CLUSTER=1)"
else
  if [[ $(id -u) -ne 0 ]]; then
    echo "the local Kubernetes test bed needs root (or set PBFT_E2E_PROVIDER=kind|existing)" >&2
    exit 1
  fi
  step "Kubernetes test bed: up (${PBFT_E2E_PROVIDER:-testbed}; builds upstream binaries once, cached)"
  CLUSTER_UP=1
  e2e/cluster.sh up
  step "Kubernetes test bed: smoke test"
  e2e/cluster.sh smoke
  step "ConsensusCluster CRD admission on the real apiserver"
  PBFT_E2E_KUBECONFIG="$(e2e/cluster.sh kubeconfig)" \
    PBFT_OPERATOR_BIN="${CARGO_TARGET_DIR:-target}/release/pbft-operator" operator/tests/crd-admission.sh
  step "every rendered manifest and example, validated strictly by the apiserver"
  KUBECONFIG="$(e2e/cluster.sh kubeconfig)" scripts/check-manifests.sh
  step "images of this build into the cluster"
  PBFT_REPLICA_BIN="$TARGET/release/pbft-replica" PBFT_OPERATOR_BIN="$TARGET/release/pbft-operator" e2e/cluster.sh images
  step "the operator end to end, bash (Helm install, clusters, pod loss, scaling, helm test)"
  KUBECONFIG="$(e2e/cluster.sh kubeconfig)" PBFTCTL="$TARGET/release/pbftctl" e2e/operator.sh test
  # The Rust e2e suite: every scenario by default, or PBFT_E2E_SCENARIOS=a list
  # (`all,-name` leaves one out).
  E2E_SCENARIOS="${PBFT_E2E_SCENARIOS:-all}"
  step "the e2e suite (e2e/tests/e2e.rs: $E2E_SCENARIOS; every scenario prints MEASURE lines)"
  e2e_started=$(date +%s)
  KUBECONFIG="$(e2e/cluster.sh kubeconfig)" PBFT_E2E=1 HELM="$HELM_BIN/helm" KUBECTL="$K8S_BIN/kubectl" \
    PBFT_E2E_SCENARIOS="$E2E_SCENARIOS" cargo test --release -p e2e --test e2e
  step "e2e suite passed in $(( $(date +%s) - e2e_started ))s"
fi

step "all tests passed in $(( $(date +%s) - started ))s"
