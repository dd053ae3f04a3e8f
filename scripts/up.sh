#!/usr/bin/env bash
# The main job: builds the project and brings up the local real Kubernetes
# cluster (the test bed of e2e/testbed, or kind / an existing cluster with
# PBFT_E2E_PROVIDER), then shows how to look around.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"
echo "==> building (release)"
cargo build --release --workspace
echo "==> bringing up the cluster (${PBFT_E2E_PROVIDER:-testbed})"
e2e/cluster.sh up
KC="$(e2e/cluster.sh kubeconfig)"
cat <<MSG

The cluster is up. Look around:
  export KUBECONFIG=$KC
  kubectl get nodes,pods -A
Tear it down with: make down

Not yet here: the operator's reconciler and a sample ConsensusCluster (issues 5 and 6).
Meanwhile a replica cluster runs locally:
  target/release/pbft-replica dev --replicas 4 --dir /tmp/pbft-dev
  target/release/pbftctl --membership /tmp/pbft-dev/membership.yaml put k v
MSG
