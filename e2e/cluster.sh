#!/usr/bin/env bash
# One entry point for the e2e cluster, whatever provides it.
#   PBFT_E2E_PROVIDER=testbed  (default) the local real Kubernetes of e2e/testbed (root, no Docker)
#   PBFT_E2E_PROVIDER=kind     a kind cluster (e2e/kind, needs Docker)
#   PBFT_E2E_PROVIDER=existing whatever $KUBECONFIG points at (nothing is created or deleted)
#
#   e2e/cluster.sh up          bring the cluster up; prints export KUBECONFIG=...
#   e2e/cluster.sh down        tear it down
#   e2e/cluster.sh kubeconfig  print the kubeconfig path the tests should use
#   e2e/cluster.sh images      build the app images and load them into the cluster
#   e2e/cluster.sh smoke       run e2e/testbed/smoke.sh against it
set -euo pipefail
E2E="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROVIDER="${PBFT_E2E_PROVIDER:-testbed}"
source "$E2E/testbed/versions.env"
: "${KIND_CLUSTER:=pbft-e2e}"
: "${PBFT_KIND_KUBECONFIG:=$HOME/.kube/pbft-e2e-kind.yaml}"
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }
case "$PROVIDER" in testbed|kind|existing) ;; *) die "PBFT_E2E_PROVIDER must be testbed, kind or existing (got '$PROVIDER')" ;; esac
# prefer the kubectl built for the test bed (matching version) when present
[[ -x "$K8S_BIN/kubectl" ]] && export PATH="$K8S_BIN:$PATH"

kubeconfig() {
  case "$PROVIDER" in
    testbed)  echo "$PBFT_TESTBED_STATE/kubeconfig" ;;
    kind)     echo "$PBFT_KIND_KUBECONFIG" ;;
    existing) [[ -n "${KUBECONFIG:-}" ]] || die "PBFT_E2E_PROVIDER=existing needs KUBECONFIG"; echo "$KUBECONFIG" ;;
    *) die "PBFT_E2E_PROVIDER must be testbed, kind or existing (got '$PROVIDER')" ;;
  esac
}

cmd="${1:-}"
case "$PROVIDER:$cmd" in
  testbed:up)       "$E2E/testbed/up.sh" ;;
  testbed:down)     "$E2E/testbed/down.sh" ;;
  testbed:images)   "$E2E/images/build-images.sh" apps && "$E2E/images/build-images.sh" import ;;
  kind:up)          "$E2E/kind/up.sh" ;;
  kind:down)        "$E2E/kind/up.sh" down ;;
  kind:images)
    "$E2E/images/build-images.sh" portable
    while read -r f; do kind load image-archive "$f" --name "$KIND_CLUSTER"; done < <("$E2E/images/build-images.sh" list-portable) ;;
  existing:up)
    kc=$(kubeconfig); kubectl --kubeconfig "$kc" version >/dev/null || die "cluster at $kc does not answer"
    echo "export KUBECONFIG=$kc" ;;
  existing:down)    echo "existing cluster: nothing to tear down" ;;
  existing:images)  "$E2E/images/build-images.sh" portable
                    echo "load these archives into your cluster's nodes (ctr -n k8s.io images import FILE):"
                    "$E2E/images/build-images.sh" list-portable ;;
  *:kubeconfig)     kubeconfig ;;
  *:smoke)          KUBECONFIG="$(kubeconfig)" "$E2E/testbed/smoke.sh" ;;
  *) die "usage: PBFT_E2E_PROVIDER=testbed|kind|existing $0 up|down|kubeconfig|images|smoke" ;;
esac
