#!/usr/bin/env bash
# Waits until a CustomResourceDefinition is Established (uses $KUBECONFIG).
#   scripts/wait-crd-established.sh KUBECTL CRD_NAME [TIMEOUT_S]
# Polled rather than `kubectl wait --for=condition=Established`: that fails at
# once ("accessor error") when it reads the CRD before the apiserver has
# written any condition.
set -euo pipefail
kubectl_bin=$1 crd=$2 timeout_s=${3:-60}
established() {
  [[ "$("$kubectl_bin" get crd "$crd" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" == True ]]
}
deadline=$(( $(date +%s) + timeout_s ))
until established; do
  if (( $(date +%s) >= deadline )); then
    echo "CRD $crd not Established after ${timeout_s} s" >&2
    exit 1
  fi
  sleep 0.5
done
