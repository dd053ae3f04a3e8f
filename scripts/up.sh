#!/usr/bin/env bash
# The main job: builds the project and its images, brings up a local real
# Kubernetes cluster (the test bed of e2e/testbed; or kind / an existing
# cluster with PBFT_E2E_PROVIDER), installs the operator with Helm, creates
# the f=2 sample ConsensusCluster (7 replicas), waits until it is Available,
# writes and reads a key, and shows how to look around.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
SAMPLE="${PBFT_SAMPLE:-examples/ledger-f2.yaml}"
NS="${PBFT_SAMPLE_NAMESPACE:-pbft-demo}"
echo "==> building (release)"
cargo build --release --workspace
echo "==> bringing up the cluster (${PBFT_E2E_PROVIDER:-testbed})"
e2e/cluster.sh up
source e2e/testbed/versions.env
export PATH="$K8S_BIN:$HELM_BIN:$PATH"
export KUBECONFIG="$(e2e/cluster.sh kubeconfig)"
echo "==> images of this build into the cluster"
PBFT_REPLICA_BIN="$TARGET/release/pbft-replica" PBFT_OPERATOR_BIN="$TARGET/release/pbft-operator" e2e/cluster.sh images
echo "==> the operator (Helm chart charts/pbft-operator)"
e2e/operator.sh install
echo "==> the sample cluster $SAMPLE in namespace $NS"
PBFTCTL="$TARGET/release/pbftctl" e2e/operator.sh sample "$SAMPLE" "$NS"
NAME=$(awk '/^metadata:/{m=1} m&&/name:/{print $2; exit}' "$SAMPLE")
kubectl -n "$NS" get cc "$NAME"
cat <<MSG

The cluster is up and committing. Look around:
  export KUBECONFIG=$KUBECONFIG PATH=$K8S_BIN:$HELM_BIN:\$PATH
  kubectl -n $NS get cc $NAME -o wide         # F, replicas, ready, view, primary, epoch
  kubectl -n $NS describe cc $NAME            # conditions, members, evidence, Events
  kubectl -n $NS get pods,secrets,cm,pdb
  e2e/operator.sh ctl $NS $NAME status        # every replica's view, sequence numbers, memory
  e2e/operator.sh ctl $NS $NAME put k v && e2e/operator.sh ctl $NS $NAME get k
  kubectl -n pbft-system logs deploy/pbft-operator
Tear it down with: make down
MSG
