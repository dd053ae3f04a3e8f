#!/usr/bin/env bash
# Admission checks of crds/consensuscluster.yaml against a real apiserver.
#
# Applies the CRD, then submits valid and invalid ConsensusClusters
# (`kubectl apply --dry-run=server`; updates against a stored object) and
# checks that each is accepted, or rejected with the intended message.
# Prints PASS/FAIL per case; exits non-zero on any unexpected result.
#
#   sudo e2e/testbed/up.sh
#   KUBECONFIG=/var/lib/pbft-testbed/kubeconfig operator/tests/crd-admission.sh
#   sudo e2e/testbed/down.sh
#
# Environment: KUBECONFIG (or PBFT_E2E_KUBECONFIG, which wins), KUBECTL
# (default: kubectl on PATH, else the test bed's), PBFT_OPERATOR_BIN (default:
# $CARGO_TARGET_DIR or target/ release/pbft-operator; used to render the
# examples' objects and dry-run them; skipped when absent). Works in a throw-away
# namespace that it deletes; deletes the CRD afterwards only if it installed
# it (PBFT_KEEP_CRD=1 keeps it).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
crd="$here/../../crds/consensuscluster.yaml"
export KUBECONFIG="${PBFT_E2E_KUBECONFIG:-${KUBECONFIG:-}}"
if [[ -z "$KUBECONFIG" ]]; then
  echo "crd-admission: set KUBECONFIG or PBFT_E2E_KUBECONFIG" >&2
  exit 2
fi
KUBECTL=${KUBECTL:-$(command -v kubectl || true)}
if [[ -z "$KUBECTL" ]]; then
  for k in /var/cache/pbft-operator/bin/k8s-v*/kubectl; do [[ -x "$k" ]] && KUBECTL=$k; done
fi
if [[ -z "$KUBECTL" ]]; then
  echo "crd-admission: no kubectl (set KUBECTL)" >&2
  exit 2
fi
k() { "$KUBECTL" "$@"; }

ns="pbft-crd-admission-$$"
crd_name=consensusclusters.consensus.pbft.dev
installed_crd=0
if ! k get crd "$crd_name" >/dev/null 2>&1; then installed_crd=1; fi

cleanup() {
  k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  if [[ $installed_crd == 1 && "${PBFT_KEEP_CRD:-0}" != 1 ]]; then
    k delete crd "$crd_name" --wait=false >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

k apply --server-side --force-conflicts -f "$crd" >/dev/null
"$here/../../scripts/wait-crd-established.sh" "$KUBECTL" "$crd_name"
k create namespace "$ns" >/dev/null
# The CRD's REST endpoint can lag Established by a moment.
for _ in $(seq 1 30); do
  k get consensusclusters -n "$ns" >/dev/null 2>&1 && break
  sleep 1
done

pass=0
fail=0
result() { # result PASS|FAIL name detail
  if [[ $1 == PASS ]]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
  printf '%s  %-44s %s\n' "$1" "$2" "$3"
}

# The object's name is $obj when set (updates of a stored object), else the case's name.
obj=""
cr() { # cr CASE SPEC-YAML (indented by 2)
  printf 'apiVersion: consensus.pbft.dev/v1alpha1\nkind: ConsensusCluster\nmetadata:\n  name: %s\nspec:\n%s\n' "${obj:-$1}" "$2"
}

# accept CASE SPEC [live]: dry-run apply must succeed (live: really apply).
accept() {
  local case=$1 spec=$2 mode=${3:-dry} out
  local args=(apply -n "$ns" -f -)
  [[ $mode == live ]] || args+=(--dry-run=server)
  if out=$(cr "$case" "$spec" | k "${args[@]}" 2>&1); then
    result PASS "$case" "accepted"
  else
    result FAIL "$case" "expected acceptance, got: $out"
  fi
}

# reject CASE SPEC MESSAGE...: dry-run apply must fail and print every MESSAGE.
reject() {
  local case=$1 spec=$2 out missing=""
  shift 2
  if out=$(cr "$case" "$spec" | k apply --dry-run=server -n "$ns" -f - 2>&1); then
    result FAIL "$case" "expected rejection, was accepted"
    return
  fi
  for m in "$@"; do
    [[ $out == *"$m"* ]] || missing+=" [$m]"
  done
  if [[ -n $missing ]]; then
    result FAIL "$case" "rejected, but without:$missing; got: $out"
  else
    # The apiserver's own lines, one per violation.
    result PASS "$case" "rejected: $(grep -E 'Invalid value|Forbidden|unknown field|Required value|Unsupported value' <<<"$out" |
      sed -e 's/^\* //' -e 's/^The ConsensusCluster "[^"]*" is invalid: //' -e 's/^Error from server.*cannot be handled as a ConsensusCluster: //' |
      grep -v 'some validation rules were not checked' | paste -sd'#' | sed 's/#/ || /g')"
  fi
}

echo "== valid specs"
accept minimal '  faultTolerance: 1'
accept f7-full '  faultTolerance: 7
  image: registry.example/pbft-replica:1.2.3
  imagePullPolicy: Always
  resources: {limits: {memory: 1Gi, cpu: 2}, requests: {cpu: 250m}}
  storage: {size: 10Gi, storageClassName: standard}
  protocol: {batchSize: 4096, checkpointInterval: 128, watermarkWindow: 384, viewChangeTimeout: 1m30s}
  quarantine: {mode: Manual}
  memorySoftLimitPercent: 95
  placement:
    nodeSelector: {pbft.dev/pool: consensus}
    tolerations: [{key: dedicated, operator: Equal, value: consensus, effect: NoSchedule}]
    podAntiAffinity: Required
  networkPolicy: {enabled: true, clientFrom: [{namespaceSelector: {matchLabels: {team: a}}}]}'
accept memory-at-floor '  faultTolerance: 1
  resources: {limits: {memory: 64Mi}}'
accept memory-bytes-at-floor '  faultTolerance: 1
  resources: {limits: {memory: "67108864"}}'
accept cpu-quoted-fraction '  faultTolerance: 1
  resources: {limits: {cpu: "0.5"}}'
accept vct-bounds '  faultTolerance: 2
  protocol: {viewChangeTimeout: 100ms}'

echo "== invalid specs"
reject f-zero '  faultTolerance: 0' 'faultTolerance (f) must be between 1 and 7'
reject f-eight '  faultTolerance: 8' 'faultTolerance (f) must be between 1 and 7'
reject f-missing '  image: x:1' 'spec.faultTolerance: Required value'
reject memory-below-floor '  faultTolerance: 1
  resources: {limits: {memory: 63Mi}}' 'resources.limits.memory must be at least 64Mi'
reject memory-decimal-below-floor '  faultTolerance: 1
  resources: {limits: {memory: 64M}}' 'resources.limits.memory must be at least 64Mi'
reject memory-not-a-quantity '  faultTolerance: 1
  resources: {limits: {memory: lots}}' 'spec.resources.limits.memory' 'should match'
reject cpu-zero '  faultTolerance: 1
  resources: {limits: {cpu: 0}}' 'resources.limits.cpu must be a positive CPU quantity'
reject cpu-unquoted-fraction '  faultTolerance: 1
  resources: {limits: {cpu: 0.5}}' 'spec.resources.limits.cpu'
reject watermark-not-multiple '  faultTolerance: 1
  protocol: {checkpointInterval: 64, watermarkWindow: 100}' 'protocol.watermarkWindow must be a multiple of protocol.checkpointInterval'
reject watermark-too-small '  faultTolerance: 1
  protocol: {checkpointInterval: 64, watermarkWindow: 64}' 'protocol.watermarkWindow must be at least 2 x protocol.checkpointInterval'
reject checkpoint-zero '  faultTolerance: 1
  protocol: {checkpointInterval: 0}' 'spec.protocol.checkpointInterval'
reject batch-zero '  faultTolerance: 1
  protocol: {batchSize: 0}' 'spec.protocol.batchSize' 'greater than or equal to 1'
reject vct-too-short '  faultTolerance: 1
  protocol: {viewChangeTimeout: 50ms}' 'protocol.viewChangeTimeout must be between 100ms and 5m'
reject vct-not-a-duration '  faultTolerance: 1
  protocol: {viewChangeTimeout: soon}' 'spec.protocol.viewChangeTimeout' 'should match'
reject soft-limit-low '  faultTolerance: 1
  memorySoftLimitPercent: 40' 'spec.memorySoftLimitPercent' 'greater than or equal to 50'
reject storage-below-floor '  faultTolerance: 1
  storage: {size: 1Mi}' 'storage.size must be at least 64Mi'
reject quarantine-mode '  faultTolerance: 1
  quarantine: {mode: Sometimes}' 'spec.quarantine.mode' 'Unsupported value: "Sometimes"'
reject anti-affinity-mode '  faultTolerance: 1
  placement: {podAntiAffinity: Maybe}' 'spec.placement.podAntiAffinity' 'Unsupported value'
reject unknown-field '  faultTolerance: 1
  replicas: 4' 'unknown field "spec.replicas"'

echo "== updates of a stored cluster (transition rules)"
obj=stored-persistent
accept create-persistent '  faultTolerance: 1
  storage: {size: 1Gi, storageClassName: standard}' live
accept grow-storage-and-scale '  faultTolerance: 2
  storage: {size: 2Gi, storageClassName: standard}'
reject shrink-storage '  faultTolerance: 1
  storage: {size: 512Mi, storageClassName: standard}' 'spec.storage: Forbidden' 'storage.size may not shrink'
reject change-storage-class '  faultTolerance: 1
  storage: {size: 1Gi, storageClassName: fast}' 'storage.storageClassName is immutable'
reject drop-storage-class '  faultTolerance: 1
  storage: {size: 1Gi}' 'storage.storageClassName is immutable'
reject remove-storage '  faultTolerance: 1' 'spec.storage cannot be added or removed after creation'
obj=stored-ephemeral
accept create-ephemeral '  faultTolerance: 1' live
reject add-storage '  faultTolerance: 1
  storage: {size: 1Gi}' 'spec.storage cannot be added or removed after creation'
accept scale-and-resize-memory '  faultTolerance: 3
  resources: {limits: {memory: 512Mi}}'
obj=""

echo "== sample manifests (operator/examples)"
for f in "$here"/../examples/*.yaml; do
  if out=$(k apply --dry-run=server -n "$ns" -f "$f" 2>&1); then
    result PASS "example $(basename "$f")" "accepted"
  else
    result FAIL "example $(basename "$f")" "expected acceptance, got: $out"
  fi
done

echo "== objects the builders make, checked by the apiserver (dry-run create)"
bin=${PBFT_OPERATOR_BIN:-}
if [[ -z $bin ]]; then
  for b in "${CARGO_TARGET_DIR:-$here/../../target}/release/pbft-operator" "$here/../../target/release/pbft-operator"; do
    [[ -x $b ]] && { bin=$b; break; }
  done
fi
if [[ -z $bin ]]; then
  echo "SKIP  rendered objects: no pbft-operator binary (set PBFT_OPERATOR_BIN or build it)"
else
  for f in "$here"/../examples/*.yaml; do
    if ! objs=$("$bin" render --file "$f" --namespace "$ns" 2>&1); then
      result FAIL "render $(basename "$f")" "$objs"
      continue
    fi
    n=$(grep -c '^kind:' <<<"$objs" || true)
    # A dry-run ServiceAccount is not stored, and pod admission looks the
    # account up: create it for real (the namespace is thrown away).
    sa=$(awk '/^kind: ServiceAccount/{f=1} f && /^  name: /{print $2; exit}' <<<"$objs")
    [[ -n $sa ]] && k create serviceaccount "$sa" -n "$ns" >/dev/null 2>&1
    if out=$(k apply --dry-run=server -n "$ns" -f - <<<"$objs" 2>&1); then
      result PASS "render $(basename "$f")" "$n objects accepted"
    else
      result FAIL "render $(basename "$f")" "apiserver refused: $out"
    fi
  done
fi

echo "== defaults filled in by the apiserver"
out=$(k get consensuscluster stored-ephemeral -n "$ns" -o jsonpath='{.spec.resources.limits.memory} {.spec.protocol.checkpointInterval} {.spec.protocol.watermarkWindow} {.spec.protocol.viewChangeTimeout} {.spec.quarantine.mode} {.spec.memorySoftLimitPercent} {.spec.placement.podAntiAffinity} {.spec.imagePullPolicy}' 2>&1)
want="256Mi 64 128 1s Automatic 80 Preferred IfNotPresent"
if [[ $out == "$want" ]]; then result PASS defaults "$out"; else result FAIL defaults "expected '$want', got '$out'"; fi

echo "== printer columns"
# (No `| head` under pipefail: kubectl's SIGPIPE would end the script.)
out=$(k get cc -n "$ns" 2>&1)
out=$(sed -n 1p <<<"$out")
want_cols="NAME F REPLICAS READY VIEW PRIMARY QUARANTINED AGE"
if [[ $(tr -s ' ' <<<"$out" | sed 's/ $//') == "$want_cols" ]]; then
  result PASS columns "$out"
else
  result FAIL columns "expected '$want_cols', got '$out'"
fi

echo "crd-admission: $pass passed, $fail failed"
[[ $fail == 0 ]]
