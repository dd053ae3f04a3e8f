#!/usr/bin/env bash
# Smoke test of a cluster for the pbft-operator e2e tests. Works on any kubeconfig
# (the local test bed, kind, an existing cluster) with the test bed's images present
# (busybox, toolbox and the ldd self-test image: build-images.sh portable); the hermetic checks run only on the test bed.
#
#   KUBECONFIG=/var/lib/pbft-testbed/kubeconfig e2e/testbed/smoke.sh
#
# Each check prints PASS/FAIL with what it saw; exits non-zero on any failure; the
# namespace it creates is deleted on exit (PBFT_SMOKE_KEEP=1 keeps it for debugging).
set -euo pipefail
# shellcheck disable=SC2034  # read by lib.sh
LOG_TAG=smoke
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_PATH}"
[[ -f "$KUBECONFIG" ]] || die "kubeconfig $KUBECONFIG not found (bring a cluster up: e2e/cluster.sh up)"
KUBECTL_BIN="$(command -v kubectl || echo "$KUBECTL")"
k() { "$KUBECTL_BIN" "$@"; }
NS="pbft-smoke-$$"
PASSED=0 FAILED=0
pass() { PASSED=$((PASSED + 1)); printf 'PASS %-28s %s\n' "$1" "$2"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL %-28s %s\n' "$1" "$2"; }
one_line() { tr '\n' ' ' | sed -e 's/  */ /g' -e 's/ $//' | cut -c1-200; }
PF_PID="" PEER_NS="" PEER_IF=""
NETNS_DIR_EXISTED=0; [[ -e /run/netns ]] && NETNS_DIR_EXISTED=1
KUBECACHEDIR=$(mktemp -d /tmp/pbft-smoke-kubecache.XXXXXX); export KUBECACHEDIR
cleanup() {
  [[ -n "$PF_PID" ]] && kill "$PF_PID" 2>/dev/null || true
  [[ -n "$PEER_IF" ]] && ip link del "${PEER_IF}a" 2>/dev/null || true
  [[ -n "$PEER_NS" ]] && ip netns del "$PEER_NS" 2>/dev/null || true
  # `ip netns add` bind-mounts /run/netns onto itself: undo that if we created it
  if ((NETNS_DIR_EXISTED == 0)) && [[ -d /run/netns && -z "$(ls -A /run/netns 2>/dev/null)" ]]; then
    umount /run/netns 2>/dev/null || true; rmdir /run/netns 2>/dev/null || true
  fi
  if [[ -n "${PBFT_SMOKE_KEEP:-}" ]]; then echo "PBFT_SMOKE_KEEP set: namespace $NS kept"
  else k delete namespace "$NS" --wait=true --timeout=90s >/dev/null 2>&1 || echo "warning: namespace $NS not deleted in time"; fi
  rm -rf "$KUBECACHEDIR"
}
trap cleanup EXIT
T0=$EPOCHREALTIME

# ---------------------------------------------------------------- node
if ready=$(k get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status} {end}' 2>&1) \
   && [[ -n "$ready" && "$ready" != *"=False"* && "$ready" != *"=Unknown"* ]]; then
  pass node-ready "$ready"
else
  fail node-ready "${ready:-no nodes}"
fi

# ---------------------------------------------------------------- workloads
k create namespace "$NS" >/dev/null
k apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: besteffort, labels: {app: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: $TOOLBOX_IMAGE
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "echo smoke-log-marker-\$(hostname); exec sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: burstable}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: $BUSYBOX_IMAGE
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
      resources:
        requests: {cpu: 10m, memory: 16Mi}
        limits: {memory: 64Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: guaranteed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: $BUSYBOX_IMAGE
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
      resources:
        requests: {cpu: 50m, memory: 48Mi}
        limits: {cpu: 50m, memory: 48Mi}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-vip}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 2
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: httpd
          image: $BUSYBOX_IMAGE
          imagePullPolicy: IfNotPresent
          command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
          ports: [{containerPort: 8080}]
          readinessProbe:
            tcpSocket: {port: 8080}
            periodSeconds: 1
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: pvc-user}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: $BUSYBOX_IMAGE
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "echo persisted-\$(hostname) > /data/f && exec sleep 3600"]
      volumeMounts: [{name: data, mountPath: /data}]
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: data}
---
apiVersion: v1
kind: Pod
metadata: {name: oom}
spec:
  restartPolicy: Never
  containers:
    - name: hog
      image: $BUSYBOX_IMAGE
      imagePullPolicy: IfNotPresent
      # dd fills a 128 MiB buffer: past the 32 MiB limit, the kernel's memcg OOM killer ends
      # it. It waits 2 s first: an OOM in the container's first instants can come before
      # containerd 1.6 watches the cgroup's OOM events, and the kill then reads "Error".
      command: ["sh", "-c", "sleep 2; exec dd if=/dev/zero of=/dev/null bs=128M count=1"]
      resources:
        requests: {memory: 32Mi}
        limits: {memory: 32Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: ldd-selftest}
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: $SELFTEST_IMAGE
      imagePullPolicy: IfNotPresent
      args: ["from-smoke"]
EOF

if k -n "$NS" wait --for=condition=Ready pod/besteffort pod/burstable pod/guaranteed --timeout=90s >/dev/null 2>&1; then :; fi
for p in besteffort burstable guaranteed; do
  got=$(k -n "$NS" get pod "$p" -o jsonpath='{.status.phase} qos={.status.qosClass}' 2>&1)
  want="Running qos=$(tr '[:lower:]' '[:upper:]' <<<"${p:0:1}")${p:1}"
  [[ "$p" == besteffort ]] && want="Running qos=BestEffort"
  if [[ "$got" == "$want" ]]; then pass "qos-$p" "$got"; else fail "qos-$p" "want '$want', got '$got'"; fi
done

# the memory limit is a real cgroup limit inside the Guaranteed pod (48Mi = 50331648)
lim=$(k -n "$NS" exec guaranteed -- sh -c 'cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max' 2>&1 | one_line || true)
if [[ "$lim" == 50331648 ]]; then pass cgroup-memory-limit "guaranteed pod sees memory limit $lim bytes"
else fail cgroup-memory-limit "want 50331648, got '$lim'"; fi

# ---------------------------------------------------------------- logs / exec / port-forward
out=$(k -n "$NS" logs besteffort 2>&1 | one_line || true)
if [[ "$out" == *smoke-log-marker-besteffort* ]]; then pass kubectl-logs "$out"; else fail kubectl-logs "$out"; fi
out=$(k -n "$NS" exec besteffort -- cat /etc/hostname 2>&1 | one_line || true)
if [[ "$out" == besteffort ]]; then pass kubectl-exec "hostname=$out"; else fail kubectl-exec "$out"; fi

k -n "$NS" rollout status statefulset/web --timeout=90s >/dev/null 2>&1 || true
PF_PORT=$((20000 + $$ % 10000))
k -n "$NS" port-forward pod/web-0 "$PF_PORT:8080" --address 127.0.0.1 > /tmp/pbft-smoke-pf.$$ 2>&1 &
PF_PID=$!
out=""
for _ in $(seq 1 40); do
  out=$(curl -fsS --max-time 2 "http://127.0.0.1:$PF_PORT/" 2>/dev/null) && break
  sleep 0.25
done
kill "$PF_PID" 2>/dev/null || true; wait "$PF_PID" 2>/dev/null || true; PF_PID=""
if [[ "$out" == web-0 ]]; then pass kubectl-port-forward "127.0.0.1:$PF_PORT -> web-0:8080 answered '$out'"
else fail kubectl-port-forward "got '$out' ($(one_line < /tmp/pbft-smoke-pf.$$))"; fi
rm -f /tmp/pbft-smoke-pf.$$

# ---------------------------------------------------------------- DNS and pod networking
inpod() { k -n "$NS" exec besteffort -- sh -c "$1" 2>&1 | one_line || true; }
for p in web-0 web-1; do
  ip=$(k -n "$NS" get pod "$p" -o jsonpath='{.status.podIP}')
  fqdn="$p.web.$NS.svc.$CLUSTER_DOMAIN"
  got=$(inpod "nslookup $fqdn" )
  if [[ -n "$ip" && "$got" == *"Address: $ip"* ]]; then pass "dns-headless-$p" "$fqdn -> $ip"
  else fail "dns-headless-$p" "want $ip; nslookup said: $got"; fi
done
got=$(inpod "nslookup kubernetes.default.svc.$CLUSTER_DOMAIN")
if [[ "$got" == *"Address: $KUBERNETES_SVC_IP"* ]]; then pass dns-kubernetes-service "kubernetes.default -> $KUBERNETES_SVC_IP"
else fail dns-kubernetes-service "$got"; fi
got=$(inpod "curl -sS --max-time 3 http://web-1.web:8080/")
if [[ "$got" == web-1 ]]; then pass pod-to-pod "besteffort -> web-1.web:8080 answered '$got'"; else fail pod-to-pod "$got"; fi
got=$(inpod "for i in 1 2 3 4 5 6; do curl -sS --max-time 3 http://web-vip/; done")
if [[ "$got" == *web-* ]]; then pass pod-to-clusterip "web-vip:80 answered: $got"; else fail pod-to-clusterip "$got"; fi
sa=/var/run/secrets/kubernetes.io/serviceaccount
got=$(inpod "curl -sS --max-time 5 --cacert $sa/ca.crt -H \"Authorization: Bearer \$(cat $sa/token)\" https://kubernetes.default.svc/version")
if [[ "$got" == *gitVersion* ]]; then pass pod-to-apiserver "https://kubernetes.default.svc/version: $(grep -o '"gitVersion": *"[^"]*"' <<<"$got")"
else fail pod-to-apiserver "$got"; fi

# ---------------------------------------------------------------- storage
k -n "$NS" wait --for=condition=Ready pod/pvc-user --timeout=120s >/dev/null 2>&1 || true
got=$(k -n "$NS" get pvc data -o jsonpath='{.status.phase} sc={.spec.storageClassName} pv={.spec.volumeName}' 2>&1)
if [[ "$got" == "Bound sc=standard"* ]]; then pass pvc-bound "$got"; else fail pvc-bound "$got"; fi
got=$(k -n "$NS" exec pvc-user -- cat /data/f 2>&1 | one_line || true)
if [[ "$got" == persisted-pvc-user ]]; then pass pvc-write-read "/data/f: $got"; else fail pvc-write-read "$got"; fi

# ---------------------------------------------------------------- OOM kill, ldd-packed image
reason=""
for _ in $(seq 1 120); do
  reason=$(k -n "$NS" get pod oom -o jsonpath='{.status.containerStatuses[0].state.terminated.reason}/{.status.containerStatuses[0].state.terminated.exitCode}' 2>/dev/null || true)
  [[ -n "$reason" && "$reason" != / ]] && break
  sleep 0.5
done
if [[ "$reason" == OOMKilled/137 ]]; then pass oom-killed "container over its 32Mi limit: $reason"
else fail oom-killed "want OOMKilled/137, got '$reason'"; fi
for _ in $(seq 1 60); do
  ph=$(k -n "$NS" get pod ldd-selftest -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [[ "$ph" == Succeeded || "$ph" == Failed ]] && break
  sleep 0.5
done
got=$(k -n "$NS" logs ldd-selftest 2>&1 | one_line || true)
if [[ "$got" == *"ldd-selftest ok"* ]]; then pass ldd-packed-image "$got"; else fail ldd-packed-image "phase=$ph: $got"; fi

# ---------------------------------------------------------------- hermetic rules (test bed only)
if [[ -f "$S/node-ip" && "$KUBECONFIG" == "$KUBECONFIG_PATH" ]]; then
  for table in filter mangle; do
    rule=$(iptables -w -t "$table" -S "$HERMETIC_CHAIN" 2>/dev/null | grep -- "-i $BRIDGE ! -o $BRIDGE" | grep -- '-j DROP' || true)
    first=$(iptables -w -t "$table" -S FORWARD 2>/dev/null | sed -n 2p)
    if [[ -n "$rule" && "$first" == "-A FORWARD -j $HERMETIC_CHAIN" ]]; then pass "hermetic-forward-drop-$table" "$first; $rule"
    else fail "hermetic-forward-drop-$table" "rule='$rule' first FORWARD rule='$first'"; fi
  done
  r1=$(ip route show "$SERVICE_CIDR" | one_line); r2=$(ip route show "$CLUSTER_CIDR" | one_line)
  if [[ "$r1" == *"dev $SINK_IF"* && "$r2" == *"dev $SINK_IF"* ]]; then pass hermetic-sink-routes "$SERVICE_CIDR: $r1; $CLUSTER_CIDR: $r2"
  else fail hermetic-sink-routes "service: '$r1' pods: '$r2'"; fi
  conf=$(cat "$S"/cni/net.d/*.conflist 2>/dev/null | tr -d ' \n')
  if [[ "$conf" == *'"ipMasq":false'* ]]; then pass hermetic-no-masquerade "CNI bridge ipMasq=false"; else fail hermetic-no-masquerade "$conf"; fi
  cf=$(k -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}')
  if [[ "$cf" != *forward* && "$cf" != *proxy* ]]; then pass hermetic-dns-no-upstream "Corefile has no forward/proxy"; else fail hermetic-dns-no-upstream "$cf"; fi
  # Image pulls are pinned to a closed local port for every registry. Checked with ctr
  # (same hosts.toml resolver as the CRI) inside an empty network namespace, so even a
  # wrong config could not send anything off the machine.
  got=$(unshare -n sh -c "ip link set lo up; timeout 20 ctr --address $CONTAINERD_SOCK -n k8s.io images pull --hosts-dir $S/containerd/certs.d docker.io/library/pbft-smoke-nosuch:1" 2>&1 | tail -1 || true)
  if [[ "$got" == *"127.0.0.1:1"*"connection refused"* ]]; then pass hermetic-no-pull "docker.io pull -> 127.0.0.1:1 refused"
  else fail hermetic-no-pull "$got"; fi
  # A pod sending toward another interface is dropped. The target is a test host in a
  # network namespace made here (198.18.255.2, behind a veth on this machine): even
  # without the rule, nothing would leave the machine.
  PEER_NS="pbft-smoke-$$"; PEER_IF="pbftsm$(( $$ % 100000 ))"
  ip netns add "$PEER_NS"
  ip link add "${PEER_IF}a" type veth peer name "${PEER_IF}b"
  ip link set "${PEER_IF}b" netns "$PEER_NS"
  ip addr add 198.18.255.1/30 dev "${PEER_IF}a"; ip link set "${PEER_IF}a" up
  ip -n "$PEER_NS" addr add 198.18.255.2/30 dev "${PEER_IF}b"; ip -n "$PEER_NS" link set "${PEER_IF}b" up
  drops() { iptables -w -t mangle -L "$HERMETIC_CHAIN" -v -x -n | awk '$3 == "DROP" {print $1}'; }
  before=$(drops)
  inpod "nc -w 1 198.18.255.2 9 </dev/null" >/dev/null || true
  after=$(drops)
  ip link del "${PEER_IF}a" 2>/dev/null || true; ip netns del "$PEER_NS" 2>/dev/null || true
  if ((after > before)); then pass hermetic-egress-dropped "pod -> test host 198.18.255.2 (other interface) dropped in FORWARD (drops $before -> $after)"
  else fail hermetic-egress-dropped "drop counter did not move ($before -> $after)"; fi
fi

printf 'smoke: %s passed, %s failed (%.0fs)\n' "$PASSED" "$FAILED" "$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
