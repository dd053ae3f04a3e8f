#!/usr/bin/env bash
# Build (once) and cache every binary the test bed needs, from the Go module proxy:
#   Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#   kube-proxy, kubectl), etcd, CoreDNS, Helm v3, rancher local-path-provisioner, crictl.
# Also installs the Debian packages the node needs (containerd, runc, CNI plugins...).
#
# Binaries land in $PBFT_CACHE/bin/<name>-<version>/ (default /var/cache/pbft-operator),
# with GOMODCACHE and GOCACHE under $PBFT_CACHE/go/, so later runs and CI on the same
# machine reuse them. A component is rebuilt only when one of its binaries is missing.
#
# Usage: e2e/testbed/build-binaries.sh [all|apt|k8s|etcd|coredns|helm|local-path|crictl]...
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

log() { printf '[build-binaries %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { printf '[build-binaries] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || [[ ! -x /usr/local/go/bin/go ]] || export PATH="/usr/local/go/bin:$PATH"
export GOMODCACHE="$PBFT_CACHE/go/mod"
export GOCACHE="$PBFT_CACHE/go/build"
export GOTOOLCHAIN=local        # never try to download another Go toolchain
export GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0            # static binaries: they go into images as they are
WRAP="$PBFT_CACHE/go/wrap"
mkdir -p "$GOMODCACHE" "$GOCACHE" "$WRAP" "$PBFT_CACHE/bin"

APT_PACKAGES=(containerd runc containernetworking-plugins conntrack iptables openssl
              busybox-static socat ethtool kmod iproute2 util-linux procps gcc libc6-dev
              python3 dnsutils curl nftables binutils)

ensure_apt() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -c 'install ok installed' >/dev/null || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then log "apt: all ${#APT_PACKAGES[@]} packages present"; return; fi
  log "apt: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# all_present DIR BIN... : true when every BIN exists and is executable in DIR
all_present() {
  local d="$1"; shift
  local b; for b in "$@"; do [[ -x "$d/$b" ]] || return 1; done
}

# finish NAME DIR TMPDIR START : atomically publish a finished build
finish() {
  local name="$1" dest="$2" tmp="$3" start="$4" secs
  secs=$(( $(date +%s) - start ))
  {
    echo "component=$name"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "seconds=$secs"
    echo "go=$(go env GOVERSION)"
  } > "$tmp/BUILD_INFO"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  log "$name: built in ${secs}s -> $dest"
}

need_go() { command -v go >/dev/null || die "Go toolchain not found (needed to build; Go 1.24+, e.g. /usr/local/go/bin)"; }

gomod_path() { # module@version -> path of its go.mod in the module cache
  need_go
  go mod download -json "$1" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("GoMod") or sys.exit(d.get("Error","no GoMod")))'
}

K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

build_k8s() {
  if all_present "$K8S_BIN" "${K8S_CMDS[@]}"; then log "k8s $K8S_VERSION: cached in $K8S_BIN"; return; fi
  local start; start=$(date +%s)
  local ver="${K8S_VERSION#v}" major minor
  major="${ver%%.*}"; minor="${ver#*.}"; minor="${minor%%.*}"
  local staging_ver="v0.${minor}.${ver##*.}"
  log "k8s $K8S_VERSION: preparing wrapper module (staging modules at $staging_ver)"
  local upstream; upstream=$(gomod_path "k8s.io/kubernetes@$K8S_VERSION")
  local w="$WRAP/k8s-$K8S_VERSION"; mkdir -p "$w"
  # Upstream's go.mod, verbatim (go/godebug lines, every pinned require), except:
  # our own module name, and each ./staging/src/k8s.io/X replace pointed at the
  # published k8s.io/X module of the matching v0.MINOR.PATCH.
  sed -E \
      -e 's#^module k8s\.io/kubernetes$#module pbft-testbed/k8s-build#' \
      -e "s#^([[:space:]]*)(k8s\.io/[A-Za-z0-9_.-]+) => \./staging/src/k8s\.io/[A-Za-z0-9_.-]+[[:space:]]*\$#\1\2 => \2 ${staging_ver}#" \
      "$upstream" > "$w/go.mod"
  grep -q '=> \./' "$w/go.mod" && die "k8s: a relative replace is left in $w/go.mod (upstream layout changed?)"
  printf '\nrequire k8s.io/kubernetes %s\n' "$K8S_VERSION" >> "$w/go.mod"
  log "k8s: $(grep -c "=> k8s.io/.* $staging_ver" "$w/go.mod") staging replaces derived from upstream go.mod"
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitCommit=$K8S_VERSION -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  local tmp="$K8S_BIN.tmp"; rm -rf "$tmp"; mkdir -p "$tmp"
  local pkgs=(); for p in "${K8S_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$p"); done
  log "k8s $K8S_VERSION: go build ${K8S_CMDS[*]} (cold: 15-30 min on 2 cores)"
  (cd "$w" && go build -mod=mod -trimpath -ldflags "$ld" -o "$tmp/" "${pkgs[@]}")
  all_present "$tmp" "${K8S_CMDS[@]}" || die "k8s: build finished but binaries are missing in $tmp"
  "$tmp/kubectl" version --client 2>/dev/null | grep -c "$K8S_VERSION" >/dev/null || die "k8s: kubectl does not report $K8S_VERSION"
  finish "k8s $K8S_VERSION" "$K8S_BIN" "$tmp" "$start"
}

build_etcd() {
  if all_present "$ETCD_BIN" etcd; then log "etcd $ETCD_VERSION: cached in $ETCD_BIN"; return; fi
  local start; start=$(date +%s)
  # go.etcd.io/etcd/server/v3 has relative replaces, so it cannot be `go install`ed:
  # a wrapper main that calls etcdmain.Main, exactly like upstream's server/main.go.
  local w="$WRAP/etcd-$ETCD_VERSION"; mkdir -p "$w"
  cat > "$w/go.mod" <<EOF
module pbft-testbed/etcd-build

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
  cat > "$w/main.go" <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  need_go
  local tmp="$ETCD_BIN.tmp"; rm -rf "$tmp"; mkdir -p "$tmp"
  log "etcd $ETCD_VERSION: go build"
  (cd "$w" && go mod tidy && go build -trimpath \
      -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" -o "$tmp/etcd" .)
  "$tmp/etcd" --version | grep -c "${ETCD_VERSION#v}" >/dev/null || die "etcd: built binary does not report $ETCD_VERSION"
  finish "etcd $ETCD_VERSION" "$ETCD_BIN" "$tmp" "$start"
}

# go_install NAME DEST MODULE@VERSION LDFLAGS BINNAME
go_install() {
  local name="$1" dest="$2" modver="$3" ld="$4" bin="$5"
  if all_present "$dest" "$bin"; then log "$name: cached in $dest"; return; fi
  local start; start=$(date +%s)
  need_go
  local tmp="$dest.tmp"; rm -rf "$tmp"; mkdir -p "$tmp"
  log "$name: go install $modver"
  GOBIN="$tmp" go install -trimpath -ldflags "-s -w $ld" "$modver"
  all_present "$tmp" "$bin" || die "$name: go install produced no $bin"
  finish "$name" "$dest" "$tmp" "$start"
}

build_coredns() {
  go_install "coredns $COREDNS_VERSION" "$COREDNS_BIN" "github.com/coredns/coredns@$COREDNS_VERSION" \
    "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" coredns
}

build_helm() {
  if all_present "$HELM_BIN" helm; then log "helm $HELM_VERSION: cached in $HELM_BIN"; return; fi
  # Like Helm's Makefile: the default Capabilities.KubeVersion (helm template, lint) is
  # the Kubernetes version of the client-go that Helm's go.mod requires (v0.X.Y -> 1.X).
  local cg; cg=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$(gomod_path "helm.sh/helm/v3@$HELM_VERSION")")
  [[ "$cg" =~ ^v0\.([0-9]+)\. ]] || die "helm: cannot read the k8s.io/client-go version from its go.mod (got '$cg')"
  local kmin="${BASH_REMATCH[1]}" ld="" p
  ld+="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  ld+=" -X helm.sh/helm/v3/internal/version.gitCommit=$HELM_VERSION"
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ld+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$kmin"
  done
  go_install "helm $HELM_VERSION" "$HELM_BIN" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$ld" helm
}

build_local_path() {
  go_install "local-path-provisioner $LOCAL_PATH_VERSION" "$LOCAL_PATH_BIN" \
    "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION" \
    "-X main.VERSION=$LOCAL_PATH_VERSION" local-path-provisioner
}

build_crictl() {
  go_install "crictl $CRICTL_VERSION" "$CRICTL_BIN" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" \
    "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" crictl
}

targets=("$@"); ((${#targets[@]})) || targets=(all)
t0=$(date +%s)
for t in "${targets[@]}"; do
  case "$t" in
    all)        ensure_apt; build_etcd; build_k8s; build_coredns; build_local_path; build_crictl; build_helm ;;
    apt)        ensure_apt ;;
    k8s)        build_k8s ;;
    etcd)       build_etcd ;;
    coredns)    build_coredns ;;
    helm)       build_helm ;;
    local-path) build_local_path ;;
    crictl)     build_crictl ;;
    *) die "unknown target '$t' (all|apt|k8s|etcd|coredns|helm|local-path|crictl)" ;;
  esac
done
log "done in $(( $(date +%s) - t0 ))s; binaries under $PBFT_CACHE/bin"
