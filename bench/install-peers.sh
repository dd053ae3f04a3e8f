#!/usr/bin/env bash
# Builds (once) the peer systems of the benchmarks from the Go module proxy into
# a fixed cache outside the checkout, and reuses them afterwards:
#   etcd     $PBFT_CACHE/bin/etcd-$ETCD_VERSION/etcd   (the test bed's build: e2e/testbed/build-binaries.sh etcd)
#   CometBFT $PBFT_CACHE/bench/cometbft-$COMETBFT_VERSION/cometbft   (go install)
# No peer code is ever written into the checkout.
# Usage: bench/install-peers.sh [etcd] [cometbft]   (default: both)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=../e2e/testbed/versions.env
source "$ROOT/e2e/testbed/versions.env"
# shellcheck source=versions.env
source "$HERE/versions.env"

log() { printf '[install-peers %(%H:%M:%S)T] %s\n' -1 "$*"; }

command -v go >/dev/null || [[ ! -x /usr/local/go/bin/go ]] || export PATH="/usr/local/go/bin:$PATH"
export GOMODCACHE="$PBFT_CACHE/go/mod"   # shared with the test bed's builds
export GOCACHE="$PBFT_CACHE/go/build"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0

install_etcd() {
  if [[ -x "$ETCD_BIN/etcd" ]]; then log "etcd $ETCD_VERSION: cached in $ETCD_BIN"; return; fi
  "$ROOT/e2e/testbed/build-binaries.sh" etcd
}

install_cometbft() {
  local dest="$COMETBFT_BIN"
  if [[ -x "$dest/cometbft" ]]; then log "cometbft $COMETBFT_VERSION: cached in $dest"; return; fi
  command -v go >/dev/null || { echo "install-peers: Go not found (needed to build CometBFT)" >&2; exit 1; }
  local tmp="$dest.tmp" start; start=$(date +%s)
  rm -rf "$tmp"; mkdir -p "$tmp"
  log "cometbft $COMETBFT_VERSION: go install"
  GOBIN="$tmp" go install -trimpath "github.com/cometbft/cometbft/cmd/cometbft@$COMETBFT_VERSION"
  "$tmp/cometbft" version | grep -q "${COMETBFT_VERSION#v}" || { echo "install-peers: built cometbft does not report $COMETBFT_VERSION" >&2; exit 1; }
  printf 'component=cometbft\nbuilt=%s\nseconds=%s\ngo=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(( $(date +%s) - start ))" "$(go env GOVERSION)" > "$tmp/BUILD_INFO"
  rm -rf "$dest"; mkdir -p "$(dirname "$dest")"; mv "$tmp" "$dest"
  log "cometbft $COMETBFT_VERSION: built in $(( $(date +%s) - start ))s -> $dest"
}

targets=("$@"); ((${#targets[@]})) || targets=(etcd cometbft)
for t in "${targets[@]}"; do
  case "$t" in
    etcd) install_etcd ;;
    cometbft) install_cometbft ;;
    *) echo "install-peers: unknown target $t (etcd|cometbft)" >&2; exit 2 ;;
  esac
done
