#!/usr/bin/env bash
# The pieces `make up` (scripts/up.sh) uses: install the operator with Helm,
# run a sample ConsensusCluster, talk to it with pbftctl. Talks to the
# replicas from this machine at their pod IPs (the local test bed routes
# them). The end-to-end tests are the Rust crate e2e/ (cargo test -p e2e).
#
#   e2e/operator.sh install            helm install/upgrade the chart, wait until the operator is ready
#   e2e/operator.sh sample FILE NS     apply a ConsensusCluster, wait for Available, write and read a key
#   e2e/operator.sh ctl NS NAME ARGS   pbftctl against the cluster's replicas
#   e2e/operator.sh uninstall
#
# Needs KUBECONFIG (e2e/cluster.sh kubeconfig), kubectl and helm on PATH, and
# the images pbft-operator / pbft-replica imported (e2e/cluster.sh images).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${KUBECONFIG:?set KUBECONFIG (e2e/cluster.sh kubeconfig)}"
: "${PBFT_OPERATOR_NAMESPACE:=pbft-system}"
PBFTCTL="${PBFTCTL:-$ROOT/target/release/pbftctl}"

log() { printf '[operator-e2e %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR $*"; exit 1; }
now_ms() { date +%s%3N; }

install() {
  log "helm upgrade --install pbft-operator (namespace $PBFT_OPERATOR_NAMESPACE)"
  helm upgrade --install pbft-operator "$ROOT/charts/pbft-operator" \
    --namespace "$PBFT_OPERATOR_NAMESPACE" --create-namespace \
    --set logFormat=text --wait --timeout 180s
  kubectl -n "$PBFT_OPERATOR_NAMESPACE" rollout status deploy/pbft-operator --timeout=120s
}

uninstall() {
  helm uninstall pbft-operator --namespace "$PBFT_OPERATOR_NAMESPACE" --wait 2>/dev/null || true
}

# field NS NAME JSONPATH
field() { kubectl -n "$1" get cc "$2" -o "jsonpath=$3"; }

wait_available() { # NS NAME TIMEOUT_S
  local ns=$1 name=$2 t=${3:-240} i
  for ((i = 0; i < t; i++)); do
    if [[ "$(field "$ns" "$name" '{.status.conditions[?(@.type=="Available")].status}')" == True &&
          "$(field "$ns" "$name" '{.status.readyReplicas}')" == "$(field "$ns" "$name" '{.status.replicas}')" ]]; then
      return 0
    fi
    sleep 1
  done
  kubectl -n "$ns" get cc "$name" -o yaml | sed -n '/^status:/,$p' >&2
  kubectl -n "$ns" get pods -o wide >&2
  return 1
}

# ctl NS NAME ARGS...: pbftctl against the cluster's replicas at their pod IPs.
ctl() {
  local ns=$1 name=$2; shift 2
  local m; m=$(mktemp)
  kubectl -n "$ns" get cm "$name-membership" -o 'jsonpath={.data.membership\.yaml}' > "$m"
  local ep; ep=$(kubectl -n "$ns" get pods -l "app.kubernetes.io/instance=$name,app.kubernetes.io/component=replica" \
    -o 'jsonpath={range .items[*]}{.metadata.labels.consensus\.pbft\.dev/member-id}={.status.podIP}:7001,{end}')
  "$PBFTCTL" --membership "$m" --endpoint "${ep%,}" --timeout 20 "$@"
  local rc=$?
  rm -f "$m"
  return $rc
}

sample() { # FILE NS
  local file=$1 ns=$2 name t0
  name=$(awk '/^metadata:/{m=1} m&&/name:/{print $2; exit}' "$file")
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  t0=$(now_ms)
  kubectl -n "$ns" apply -f "$file"
  log "waiting for $ns/$name to be Available"
  wait_available "$ns" "$name" 300 || die "$ns/$name did not become Available"
  log "$ns/$name Available after $(( $(now_ms) - t0 )) ms"
  ctl "$ns" "$name" put greeting "hello from $(hostname)" >/dev/null
  [[ "$(ctl "$ns" "$name" get greeting)" == "hello from $(hostname)" ]] || die "wrote a key but read back something else"
  log "wrote and read back key 'greeting' through f+1 matching replies"
}

case "${1:-}" in
  install) install ;;
  uninstall) uninstall ;;
  sample) [[ $# -eq 3 ]] || die "usage: $0 sample FILE NAMESPACE"; sample "$2" "$3" ;;
  ctl) shift; ctl "$@" ;;
  *) die "usage: $0 install|uninstall|sample FILE NS|ctl NS NAME ARGS... (the tests: cargo test -p e2e, see e2e/README.md)" ;;
esac
