#!/usr/bin/env bash
# The whole test suite (what `make test` and CI run): formatting and lints,
# unit tests, the deterministic simulator over many seeds, and the real
# Kubernetes test bed's smoke test. Exits non-zero on the first failure and
# always tears the test bed down.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"
SEEDS="${PBFT_SIM_SEEDS:-2000}"
SKIP_CLUSTER="${PBFT_SKIP_CLUSTER:-0}"

step() { printf '\n==> %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
started=$(date +%s)

step "toolchain"
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
cargo --version

step "format"
cargo fmt --all -- --check

step "build (release)"
cargo build --release --workspace --all-targets

step "unit tests"
cargo test --release --workspace

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
  trap 'step "Kubernetes test bed: down"; e2e/cluster.sh down || true' EXIT
  e2e/cluster.sh up
  step "Kubernetes test bed: smoke test"
  e2e/cluster.sh smoke
  step "ConsensusCluster CRD admission on the real apiserver"
  PBFT_E2E_KUBECONFIG="$(e2e/cluster.sh kubeconfig)" \
    PBFT_OPERATOR_BIN="${CARGO_TARGET_DIR:-target}/release/pbft-operator" operator/tests/crd-admission.sh
fi

step "all tests passed in $(( $(date +%s) - started ))s"
