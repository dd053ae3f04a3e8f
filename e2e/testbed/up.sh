#!/usr/bin/env bash
# Bring up a real single-node Kubernetes on this machine, the way upstream's
# hack/local-up-cluster.sh does, but hermetic: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy (iptables),
# CoreDNS and the local-path provisioner (StorageClass `standard`).
#
# Idempotent: running it again keeps what runs and (re)starts what does not.
# Everything lives under $PBFT_TESTBED_STATE (default /var/lib/pbft-testbed):
# pki/, logs/, run/*.pid, etcd/, containerd/, kubelet/, cni/, local-path/.
# Undo with e2e/testbed/down.sh.
set -euo pipefail
# shellcheck disable=SC2034  # read by lib.sh
LOG_TAG=up
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

[[ $EUID -eq 0 ]] || die "must run as root (it starts containerd and the kubelet)"
T0=$EPOCHREALTIME
elapsed() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- binaries, images
"$TESTBED_DIR/build-binaries.sh" apt etcd k8s coredns local-path crictl helm | sed 's/^/  /'
for b in "${K8S_BIN}"/{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy,kubectl} \
         "$ETCD_BIN/etcd" "$CRICTL"; do
  [[ -x "$b" ]] || die "$b missing after build-binaries.sh"
done
"$TESTBED_DIR/../images/build-images.sh" base | sed 's/^/  /'

# State left by a run whose processes are all gone (machine restarted, session ended):
# clean it first, so stale mounts, shims and netns cannot confuse the new daemons.
if compgen -G "$PIDS/*.pid" >/dev/null; then
  alive=0
  for f in "$PIDS"/*.pid; do n=$(basename "$f" .pid); pid_alive "$n" && alive=$((alive + 1)); done
  if ((alive == 0)); then
    log "stale state in $S (no daemon of it is running): cleaning with down.sh first"
    "$TESTBED_DIR/down.sh" | sed 's/^/  /'
  fi
fi

NODE_IP=$(node_ip)
log "node $NODE_NAME, IP $NODE_IP, state $S"
mkdir -p "$S" "$PKI" "$LOGS" "$PIDS"
if [[ -f "$S/node-ip" && "$(<"$S/node-ip")" != "$NODE_IP" ]]; then
  die "node IP changed ($(<"$S/node-ip") -> $NODE_IP): certificates name the old one; run e2e/testbed/down.sh first"
fi
echo "$NODE_IP" > "$S/node-ip"
# Host paths that the daemons may create outside the state dir: remember which were
# absent before the first bring-up, so down.sh removes exactly those.
if [[ ! -f "$S/host-paths.absent" ]]; then
  for p in /var/lib/cni /run/containerd /var/log/containers /var/log/pods /run/netns \
           /var/lib/kubelet /etc/kubernetes /var/run/kubernetes /etc/cni /opt/cni /run/mount \
           "$HOME/.kube"; do
    [[ -e "$p" ]] || echo "$p"
  done > "$S/host-paths.absent"
  # netfilter tables present before (iptables-nft creates filter/nat/mangle on first use)
  if command -v nft >/dev/null; then nft list tables > "$S/nft-tables.before" 2>/dev/null || true; fi
fi

# ---------------------------------------------------------------- kernel settings
if [[ ! -f "$S/sysctl.saved" ]]; then
  for k in "${SYSCTLS[@]}"; do
    v=$(sysctl -n "$k" 2>/dev/null) && printf '%s=%s\n' "$k" "$v"
  done > "$S/sysctl.saved.tmp"
  mv "$S/sysctl.saved.tmp" "$S/sysctl.saved"
fi
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 \
  || die "br_netfilter is not available (net.bridge.bridge-nf-call-iptables): Services to pods on the bridge need it"
(( $(sysctl -n fs.inotify.max_user_instances) >= 8192 )) || sysctl -qw fs.inotify.max_user_instances=8192
(( $(sysctl -n fs.inotify.max_user_watches) >= 524288 )) || sysctl -qw fs.inotify.max_user_watches=524288

# ---------------------------------------------------------------- hermetic network
# 1) The service range and the pod range beyond this node's /24 are routed to a local
#    sink interface that drops what it is given (a dummy device; this kernel lacks
#    CONFIG_DUMMY, so an ifb device, which drops everything not redirected to it by tc,
#    stands in). A ClusterIP without kube-proxy rules yet is swallowed on the node, never
#    sent to the default gateway; host processes still get a route, so kube-proxy's
#    OUTPUT DNAT works for them (a blackhole/unreachable route would fail first).
if ! ip link show "$SINK_IF" >/dev/null 2>&1; then
  ip link add "$SINK_IF" type dummy 2>/dev/null || ip link add "$SINK_IF" type ifb \
    || die "cannot create sink interface $SINK_IF (neither dummy nor ifb link types available)"
  log "hermetic: created sink interface $SINK_IF ($(ip -d link show "$SINK_IF" | awk 'NR==3{print $1}'))"
fi
ip link set "$SINK_IF" up
for cidr in "$SERVICE_CIDR" "$CLUSTER_CIDR"; do
  ip route replace "$cidr" dev "$SINK_IF"
done
# 2) Nothing from the pod bridge may be forwarded to any other interface: the same DROP
#    in the filter table (first FORWARD rule; kept first after kube-proxy adds its jumps,
#    below) and in the mangle table, which runs before filter and which neither
#    kube-proxy nor the kubelet touches, so no ordering race can open a gap.
for table in mangle filter; do
  iptables -w -t "$table" -N "$HERMETIC_CHAIN" 2>/dev/null || true
  iptables -w -t "$table" -C "$HERMETIC_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment "pbft-testbed: pods never leave the node" -j DROP 2>/dev/null \
    || iptables -w -t "$table" -A "$HERMETIC_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment "pbft-testbed: pods never leave the node" -j DROP
  iptables -w -t "$table" -C FORWARD -j "$HERMETIC_CHAIN" 2>/dev/null || iptables -w -t "$table" -I FORWARD 1 -j "$HERMETIC_CHAIN"
done
log "hermetic: $SERVICE_CIDR and $CLUSTER_CIDR -> $SINK_IF; FORWARD (mangle, filter) -i $BRIDGE ! -o $BRIDGE DROP"

# ---------------------------------------------------------------- certificates
# mkcert NAME CN [O] [SANS]: key + cert signed by the test bed CA (kept when present)
mkcert() {
  local name="$1" cn="$2" o="${3:-}" sans="${4:-}" subj="/CN=$2"
  [[ -f "$PKI/$name.crt" && -f "$PKI/$name.key" ]] && return 0
  [[ -n "$o" ]] && subj="/O=$o/CN=$cn"
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "$sans" ]]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$sans"
    else echo "extendedKeyUsage=clientAuth"; fi
  } > "$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}
if [[ ! -f "$PKI/ca.crt" ]]; then
  log "pki: creating CA and certificates in $PKI"
  openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=pbft-testbed-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
fi
mkcert apiserver kube-apiserver "" \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost,DNS:$NODE_NAME,IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP"
mkcert admin kubernetes-admin system:masters
mkcert controller-manager system:kube-controller-manager
mkcert scheduler system:kube-scheduler
mkcert kube-proxy system:kube-proxy
mkcert kubelet "system:node:$NODE_NAME" system:nodes
mkcert kubelet-serving "system:node:$NODE_NAME" system:nodes "DNS:$NODE_NAME,DNS:localhost,IP:$NODE_IP,IP:127.0.0.1"
mkcert apiserver-kubelet-client kube-apiserver-kubelet-client
if [[ ! -f "$PKI/sa.key" ]]; then
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi
chmod 600 "$PKI"/*.key

# mkkubeconfig FILE CERTNAME [SERVER]
mkkubeconfig() {
  local f="$1" c="$2" server="${3:-https://127.0.0.1:6443}"
  [[ -f "$f" ]] && return 0
  "$KUBECTL" config --kubeconfig="$f.tmp" set-cluster pbft-testbed --server="$server" \
    --certificate-authority="$PKI/ca.crt" --embed-certs=true >/dev/null
  "$KUBECTL" config --kubeconfig="$f.tmp" set-credentials "$c" --client-certificate="$PKI/$c.crt" \
    --client-key="$PKI/$c.key" --embed-certs=true >/dev/null
  "$KUBECTL" config --kubeconfig="$f.tmp" set-context pbft-testbed --cluster=pbft-testbed --user="$c" >/dev/null
  "$KUBECTL" config --kubeconfig="$f.tmp" use-context pbft-testbed >/dev/null
  chmod 600 "$f.tmp"; mv "$f.tmp" "$f"
}
mkdir -p "$S/kubeconfigs"
mkkubeconfig "$KUBECONFIG_PATH" admin
for c in controller-manager scheduler kube-proxy kubelet; do
  mkkubeconfig "$S/kubeconfigs/$c.kubeconfig" "$c" "https://$NODE_IP:6443"
done

# ---------------------------------------------------------------- etcd
mkdir -p "$S/etcd"
start_daemon etcd "$ETCD_BIN/etcd" --name pbft-testbed --data-dir "$S/etcd/data" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster pbft-testbed=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
  --quota-backend-bytes 2147483648 --log-level warn
wait_for "etcd" 60 curl -fsS http://127.0.0.1:2379/health || die "etcd not healthy: see $LOGS/etcd.log"

# ---------------------------------------------------------------- control plane
start_daemon kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:2379 \
  --advertise-address="$NODE_IP" --bind-address=0.0.0.0 --secure-port=6443 \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true \
  --client-ca-file="$PKI/ca.crt" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$PKI/ca.crt" \
  --kubelet-preferred-address-types=InternalIP \
  --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --cert-dir="$PKI/apiserver-certs" --profiling=false --v=1
wait_for "kube-apiserver" 90 kc get --raw /readyz || die "kube-apiserver not ready: see $LOGS/kube-apiserver.log"
kc apply -f "$TESTBED_DIR/manifests/rbac.yaml" >/dev/null

start_daemon kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig="$S/kubeconfigs/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$S/kubeconfigs/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$S/kubeconfigs/controller-manager.kubeconfig" \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --use-service-account-credentials=true \
  --allocate-node-cidrs=true --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size=24 \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --leader-elect=false --bind-address=127.0.0.1 --cert-dir="$PKI/kcm-certs" --v=1
start_daemon kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig="$S/kubeconfigs/scheduler.kubeconfig" \
  --authentication-kubeconfig="$S/kubeconfigs/scheduler.kubeconfig" \
  --authorization-kubeconfig="$S/kubeconfigs/scheduler.kubeconfig" \
  --leader-elect=false --bind-address=127.0.0.1 --v=1

# ---------------------------------------------------------------- containerd + CNI
mkdir -p "$S/containerd" "$S/cni/net.d" "$S/cni/ipam" "$S/containerd/certs.d"
write_file "$S/cni/net.d/10-pbft-testbed.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$S/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
# Images are never pulled: a pull of any of these registries goes to a closed local port.
# (containerd 1.6 ignores a hosts.toml without a [host] table: "invalid `host` tree".)
for reg in _default docker.io registry.k8s.io ghcr.io quay.io gcr.io registry.gitlab.com public.ecr.aws \
           mcr.microsoft.com localhost; do
  mkdir -p "$S/containerd/certs.d/$reg"
  printf 'server = "http://127.0.0.1:1"\n\n[host."http://127.0.0.1:1"]\n  capabilities = ["pull", "resolve"]\n' \
    | write_file "$S/containerd/certs.d/$reg/hosts.toml"
done
write_file "$S/containerd/config.toml" <<EOF
version = 2
root = "$S/containerd/root"
state = "$S/containerd/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$S/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  tolerate_missing_hugetlb_controller = true
  stream_server_address = "127.0.0.1"
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$S/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$S/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$S/containerd/certs.d"
EOF
start_daemon containerd containerd --config "$S/containerd/config.toml"
wait_for "containerd" 30 ctr --address "$CONTAINERD_SOCK" version || die "containerd not answering: see $LOGS/containerd.log"
log "images: importing archives from $IMAGES_DIR"
"$TESTBED_DIR/../images/build-images.sh" import | sed 's/^/  /'

# ---------------------------------------------------------------- kubelet, kube-proxy
mkdir -p "$S/kubelet" "$KUBELET_ROOT"
# Pods with dnsPolicy Default get this resolv.conf: nothing upstream (hermetic).
printf 'nameserver 127.0.0.1\noptions ndots:1\n' | write_file "$S/kubelet/resolv.conf"
write_file "$S/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$PKI/kubelet-serving.crt"
tlsPrivateKeyFile: "$PKI/kubelet-serving.key"
address: "$NODE_IP"
healthzBindAddress: 127.0.0.1
cgroupDriver: cgroupfs
cgroupRoot: /
containerRuntimeEndpoint: "unix://$CONTAINERD_SOCK"
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMaximumGCAge: 0s
evictionHard: {memory.available: "100Mi", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%", imagefs.inodesFree: "0%"}
clusterDNS: ["$CLUSTER_DNS_IP"]
clusterDomain: "$CLUSTER_DOMAIN"
resolvConf: "$S/kubelet/resolv.conf"
podLogsDir: "$S/pod-logs"
podCIDR: "$NODE_POD_CIDR"
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
protectKernelDefaults: false
makeIPTablesUtilChains: false
maxPods: 110
EOF
start_daemon kubelet "$K8S_BIN/kubelet" --config="$S/kubelet/config.yaml" \
  --kubeconfig="$S/kubeconfigs/kubelet.kubeconfig" --root-dir="$KUBELET_ROOT" \
  --cert-dir="$S/kubelet/pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1

write_file "$S/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$S/kubeconfigs/kube-proxy.kubeconfig"}
mode: iptables
hostnameOverride: "$NODE_NAME"
clusterCIDR: "$CLUSTER_CIDR"
detectLocalMode: ClusterCIDR
bindAddress: 0.0.0.0
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
nodePortAddresses: ["primary"]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
EOF
start_daemon kube-proxy "$K8S_BIN/kube-proxy" --config="$S/kube-proxy.yaml" --v=1

wait_for "node $NODE_NAME registered" 90 kc get node "$NODE_NAME" || die "node never registered: see $LOGS/kubelet.log"
wait_for "node $NODE_NAME Ready" 120 kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s \
  || die "node not Ready: $(kc get node "$NODE_NAME" -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.message}; {end}')"

# kube-proxy prepends its own FORWARD jumps; keep ours first (insert, then drop the
# older copy by number, so the rule is never absent).
ensure_hermetic_first() {
  [[ "$(iptables -w -S FORWARD | sed -n 2p)" == "-A FORWARD -j $HERMETIC_CHAIN" ]] && return 0
  iptables -w -I FORWARD 1 -j "$HERMETIC_CHAIN"
  local n; n=$(iptables -w -L FORWARD --line-numbers -n | awk -v c="$HERMETIC_CHAIN" '$2 == c {print $1}' | sed -n 2p)
  [[ -n "$n" ]] && iptables -w -D FORWARD "$n"
  log "hermetic: $HERMETIC_CHAIN moved back to the top of FORWARD"
}
wait_for "kube-proxy synced" 60 curl -fsS http://127.0.0.1:10256/healthz || die "kube-proxy not healthy: see $LOGS/kube-proxy.log"
# its first sync prepends four FORWARD jumps (KUBE-PROXY-FIREWALL, KUBE-FORWARD,
# KUBE-SERVICES, KUBE-EXTERNAL-SERVICES); later syncs only check they exist
kube_proxy_forward_jumps() { (( $(iptables -w -S FORWARD | grep -c -- ' -j KUBE-') >= 4 )); }
wait_for "kube-proxy FORWARD rules" 60 kube_proxy_forward_jumps || die "kube-proxy did not install its FORWARD rules: see $LOGS/kube-proxy.log"
ensure_hermetic_first

# ---------------------------------------------------------------- addons
render() { # FILE: fill @VARS@ in a manifest
  sed -e "s#@COREDNS_IMAGE@#$COREDNS_IMAGE#g" -e "s#@CLUSTER_DNS_IP@#$CLUSTER_DNS_IP#g" \
      -e "s#@LOCAL_PATH_IMAGE@#$LOCAL_PATH_IMAGE#g" -e "s#@BUSYBOX_IMAGE@#$BUSYBOX_IMAGE#g" \
      -e "s#@LOCAL_PATH_DIR@#$S/local-path#g" "$1"
}
wait_for "default ServiceAccount" 60 kc -n default get serviceaccount default || die "no default ServiceAccount (controller-manager: $LOGS/kube-controller-manager.log)"
render "$TESTBED_DIR/manifests/coredns.yaml" | kc apply -f - >/dev/null
render "$TESTBED_DIR/manifests/local-path.yaml" | kc apply -f - >/dev/null
log "addons applied: CoreDNS ($CLUSTER_DNS_IP), local-path-provisioner (StorageClass standard)"
wait_for "CoreDNS available" 120 kc -n kube-system rollout status deploy/coredns --timeout=2s \
  || die "CoreDNS not available: kubectl -n kube-system describe pod -l k8s-app=kube-dns"
dns_ok() { dig +short +time=1 +tries=1 "@$CLUSTER_DNS_IP" "kubernetes.default.svc.$CLUSTER_DOMAIN" | grep -cx "$KUBERNETES_SVC_IP" >/dev/null; }
wait_for "DNS answers (kubernetes.default.svc.$CLUSTER_DOMAIN -> $KUBERNETES_SVC_IP)" 60 dns_ok \
  || die "DNS at $CLUSTER_DNS_IP does not answer: check $LOGS/kube-proxy.log and CoreDNS pod logs"
wait_for "local-path-provisioner available" 120 kc -n local-path-storage rollout status deploy/local-path-provisioner --timeout=2s \
  || die "local-path-provisioner not available: kubectl -n local-path-storage describe pod"

log "test bed up in $(elapsed)s: node $NODE_NAME Ready, DNS answers, StorageClass standard"
echo "export KUBECONFIG=$KUBECONFIG_PATH"
echo "export PATH=$K8S_BIN:$HELM_BIN:$CRICTL_BIN:\$PATH   # kubectl $K8S_VERSION, helm, crictl"
