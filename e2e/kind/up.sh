#!/usr/bin/env bash
# Create the kind cluster for the e2e tests and load the same image archives the local
# test bed imports (built by e2e/images/build-images.sh, no registry involved).
#   e2e/kind/up.sh        create (if absent) + load images; prints export KUBECONFIG=...
#   e2e/kind/up.sh down   delete the cluster
# Env: KIND_CLUSTER (pbft-e2e), KIND_NODE_IMAGE (kindest/node:v1.34.0),
#      PBFT_KIND_KUBECONFIG ($HOME/.kube/pbft-e2e-kind.yaml)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${KIND_CLUSTER:=pbft-e2e}"
: "${KIND_NODE_IMAGE:=kindest/node:v1.34.0}"
: "${PBFT_KIND_KUBECONFIG:=$HOME/.kube/pbft-e2e-kind.yaml}"
log() { printf '[kind %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { printf '[kind] ERROR: %s\n' "$*" >&2; exit 1; }

command -v kind >/dev/null || die "kind not found (go install sigs.k8s.io/kind@v0.30.0, or see kind.sigs.k8s.io)"
command -v docker >/dev/null && docker info >/dev/null 2>&1 || die "kind needs a running Docker (or podman) engine"

if [[ "${1:-up}" == down ]]; then
  kind delete cluster --name "$KIND_CLUSTER" --kubeconfig "$PBFT_KIND_KUBECONFIG"
  exit 0
fi

if kind get clusters 2>/dev/null | grep -cx "$KIND_CLUSTER" >/dev/null; then
  log "cluster $KIND_CLUSTER exists"
  kind export kubeconfig --name "$KIND_CLUSTER" --kubeconfig "$PBFT_KIND_KUBECONFIG"
else
  mkdir -p "$(dirname "$PBFT_KIND_KUBECONFIG")"
  kind create cluster --name "$KIND_CLUSTER" --config "$HERE/kind-config.yaml" \
    --image "$KIND_NODE_IMAGE" --kubeconfig "$PBFT_KIND_KUBECONFIG" --wait 120s
fi

# kind brings its own pause, CoreDNS and local-path provisioner: load ours for tests only.
"$HERE/../images/build-images.sh" portable
while read -r archive; do
  log "loading $(basename "$archive")"
  kind load image-archive "$archive" --name "$KIND_CLUSTER"
done < <("$HERE/../images/build-images.sh" list-portable)
log "kind cluster $KIND_CLUSTER ready"
echo "export KUBECONFIG=$PBFT_KIND_KUBECONFIG"
