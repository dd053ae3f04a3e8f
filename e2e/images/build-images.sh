#!/usr/bin/env bash
# Build the test bed's container images as docker-archive tarballs (no Docker, no
# registry) and import them into containerd.
#
#   build-images.sh base      pause, busybox, toolbox (busybox+curl), CoreDNS, local-path-provisioner,
#                             ldd self-test
#   build-images.sh apps      pbft-replica (with pbftctl; also tagged <ver>-upgrade for the
#                             e2e rolling upgrade), pbft-operator, pbft-replica-faulty (skipped
#                             with a message when the Rust binary is not built yet)
#   build-images.sh all       base + apps (default)
#   build-images.sh import [ARCHIVE...]   ctr -n k8s.io images import (all archives by default)
#   build-images.sh pause|busybox|toolbox|coredns|local-path|selftest   one base image
#   build-images.sh portable  the images tests need on any cluster (kind brings its own
#                             pause/CoreDNS/local-path): busybox, ldd self-test, apps
#   build-images.sh list      print the archive paths
#   build-images.sh list-portable   the archives `kind load image-archive` should load
#
# Archives go to $PBFT_CACHE/images (default /var/cache/pbft-operator/images); each is
# rebuilt only when missing or older than its inputs. Tags are versions, never :latest.
#
# App images (env):
#   PBFT_IMAGE_VERSION        tag (default: version from the workspace Cargo.toml)
#   PBFT_REPLICA_BIN          default target/release/pbft-replica
#   PBFT_PBFTCTL_BIN          default: pbftctl next to PBFT_REPLICA_BIN
#   PBFT_UPGRADE_TAG          second tag of the replica image (default <ver>-upgrade)
#   PBFT_OPERATOR_BIN         default target/release/pbft-operator
#   PBFT_REPLICA_FAULTY_BIN   default target/fault-injection/release/pbft-replica
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=../testbed/versions.env
source "$HERE/../testbed/versions.env"
MKIMAGE="$HERE/mkimage.py"
: "${CONTAINERD_SOCK:=$PBFT_TESTBED_STATE/containerd/containerd.sock}"

log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$IMAGES_DIR"
WORK="$PBFT_CACHE/images/.work"; mkdir -p "$WORK"

archive_name() { # image ref -> archive file name
  local ref="${1##*/}"; echo "$IMAGES_DIR/${ref//:/_}.tar"
}

# fresh OUT INPUT... : true when OUT exists and is newer than every INPUT and mkimage.py
fresh() {
  local out="$1"; shift
  [[ -f "$out" ]] || return 1
  local i; for i in "$MKIMAGE" "$@"; do [[ "$out" -nt "$i" ]] || return 1; done
}

need_bin() { [[ -x "$1" ]] || die "$1 missing: run e2e/testbed/build-binaries.sh first"; }

img_pause() {
  local out; out=$(archive_name "$PAUSE_IMAGE")
  local src="$HERE/pause/pause.c" bin="$WORK/pause"
  if fresh "$out" "$src"; then log "pause: up to date ($out)"; return; fi
  gcc -Os -static -Wall -Wextra -Werror -o "$bin" "$src"
  strip "$bin"
  "$MKIMAGE" --tag "$PAUSE_IMAGE" --out "$out" --file "$bin:/pause" --entrypoint /pause
}

img_busybox() {
  local out; out=$(archive_name "$BUSYBOX_IMAGE")
  local bb=/bin/busybox
  [[ -x $bb ]] || die "$bb missing (Debian package busybox-static)"
  ldd "$bb" >/dev/null 2>&1 && die "$bb is dynamically linked; need busybox-static"
  if fresh "$out" "$bb"; then log "busybox: up to date ($out)"; return; fi
  local args=(--file "$bb:/bin/busybox" --base-etc --dir root:0700 --dir var --dir home)
  local applet
  while read -r applet; do
    [[ "$applet" == bin/busybox ]] && continue
    args+=(--symlink "$applet:/bin/busybox")
  done < <("$bb" --list-full)
  "$MKIMAGE" --tag "$BUSYBOX_IMAGE" --out "$out" "${args[@]}" --cmd sh
}

# busybox plus curl (with the shared libraries ldd lists): the client pod of the smoke
# and e2e tests. Debian's static busybox wget segfaults at start (seen here), and curl
# speaks TLS with CA verification, for talking to the apiserver from a pod.
img_toolbox() {
  local out; out=$(archive_name "$TOOLBOX_IMAGE")
  local bb=/bin/busybox curl=/usr/bin/curl
  [[ -x $curl ]] || die "$curl missing (Debian package curl)"
  if fresh "$out" "$bb" "$curl"; then log "toolbox: up to date ($out)"; return; fi
  local args=(--file "$bb:/bin/busybox" --base-etc --dir root:0700 --with-libs "$curl:/usr/bin/curl")
  local applet
  while read -r applet; do
    [[ "$applet" == bin/busybox || "$applet" == usr/bin/wget ]] && continue
    args+=(--symlink "$applet:/bin/busybox")
  done < <("$bb" --list-full)
  "$MKIMAGE" --tag "$TOOLBOX_IMAGE" --out "$out" "${args[@]}" --cmd sh
}

img_coredns() {
  local out; out=$(archive_name "$COREDNS_IMAGE")
  need_bin "$COREDNS_BIN/coredns"
  if fresh "$out" "$COREDNS_BIN/coredns"; then log "coredns: up to date ($out)"; return; fi
  "$MKIMAGE" --tag "$COREDNS_IMAGE" --out "$out" --base-etc \
    --file "$COREDNS_BIN/coredns:/coredns" --entrypoint /coredns
}

img_local_path() {
  local out; out=$(archive_name "$LOCAL_PATH_IMAGE")
  need_bin "$LOCAL_PATH_BIN/local-path-provisioner"
  if fresh "$out" "$LOCAL_PATH_BIN/local-path-provisioner"; then log "local-path: up to date ($out)"; return; fi
  "$MKIMAGE" --tag "$LOCAL_PATH_IMAGE" --out "$out" --base-etc \
    --file "$LOCAL_PATH_BIN/local-path-provisioner:/usr/bin/local-path-provisioner" \
    --entrypoint local-path-provisioner
}

# pack_binary TAG BINARY [DEST] : the generic "Rust release binary + ldd libs" image
pack_binary() {
  local tag="$1" bin="$2" dest="${3:-/usr/local/bin/$(basename "$2")}"
  local out; out=$(archive_name "$tag")
  if fresh "$out" "$bin"; then log "${tag}: up to date ($out)"; return; fi
  "$MKIMAGE" --tag "$tag" --out "$out" --base-etc --with-libs "$bin:$dest" \
    --entrypoint "$dest" --user 65534:65534
}

# A dynamically linked Rust program (rustc + glibc, like our release binaries), packed
# with pack_binary: the smoke test runs it in a pod to prove the ldd packing works.
img_selftest() {
  local src="$WORK/ldd-selftest.rs" bin="$WORK/ldd-selftest"
  cat > "$src.new" <<'EOF'
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    println!("ldd-selftest ok: dynamically linked rust binary runs (args={:?}, hostname={})", &args[1..], host.trim());
}
EOF
  if ! cmp -s "$src.new" "$src" 2>/dev/null; then mv "$src.new" "$src"; else rm -f "$src.new"; fi
  command -v rustc >/dev/null || [[ ! -x "${HOME:-/root}/.cargo/bin/rustc" ]] || PATH="${HOME:-/root}/.cargo/bin:$PATH"
  if ! command -v rustc >/dev/null; then log "ldd-selftest: SKIPPED (no rustc on PATH or in ~/.cargo/bin)"; return; fi
  if [[ ! -x "$bin" || "$src" -nt "$bin" ]]; then rustc -O -o "$bin" "$src"; fi
  ldd "$bin" | grep -c 'libc.so' >/dev/null || die "ldd-selftest: expected a dynamically linked binary"
  pack_binary "$SELFTEST_IMAGE" "$bin" /usr/local/bin/ldd-selftest
}

workspace_version() {
  python3 - "$REPO/Cargo.toml" <<'EOF' 2>/dev/null || true
import sys, tomllib
try:
    d = tomllib.load(open(sys.argv[1], "rb"))
except OSError:
    sys.exit(0)
v = d.get("workspace", {}).get("package", {}).get("version") or d.get("package", {}).get("version")
if v:
    print(v)
EOF
}

# pack_replica TAG REPLICA_BIN PBFTCTL_BIN : a replica image that also ships the
# client CLI at /usr/local/bin/pbftctl (helm test and e2e client pods use it)
pack_replica() {
  local tag="$1" bin="$2" ctl="$3"
  local out; out=$(archive_name "$tag")
  if fresh "$out" "$bin" "$ctl"; then log "${tag}: up to date ($out)"; return; fi
  "$MKIMAGE" --tag "$tag" --out "$out" --base-etc \
    --with-libs "$bin:/usr/local/bin/pbft-replica" --with-libs "$ctl:/usr/local/bin/pbftctl" \
    --entrypoint /usr/local/bin/pbft-replica --user 65534:65534
}

build_apps() {
  local ver="${PBFT_IMAGE_VERSION:-$(workspace_version)}"
  if [[ -z "$ver" ]]; then
    log "apps: SKIPPED: no PBFT_IMAGE_VERSION and no version in $REPO/Cargo.toml"; return
  fi
  local replica="${PBFT_REPLICA_BIN:-$REPO/target/release/pbft-replica}"
  local ctl="${PBFT_PBFTCTL_BIN:-$(dirname "$replica")/pbftctl}"
  local faulty="${PBFT_REPLICA_FAULTY_BIN:-$REPO/target/fault-injection/release/pbft-replica}"
  local operator="${PBFT_OPERATOR_BIN:-$REPO/target/release/pbft-operator}"
  local upgrade="${PBFT_UPGRADE_TAG:-$ver-upgrade}"
  local bin
  for bin in "$replica" "$ctl"; do
    [[ -x "$bin" ]] || { log "apps: SKIPPED the replica images: binary $bin not built yet (cargo build --release)"; replica=; }
  done
  if [[ -n "$replica" ]]; then
    pack_replica "pbft-replica:$ver" "$replica" "$ctl"
    # The same build under a second tag: the e2e rolling upgrade changes spec.image to it.
    pack_replica "pbft-replica:$upgrade" "$replica" "$ctl"
    if [[ -x "$faulty" ]]; then
      pack_replica "pbft-replica-faulty:$ver" "$faulty" "$ctl"
    else
      log "apps: SKIPPED pbft-replica-faulty:$ver: binary $faulty not built yet (cargo build --release -p replica --features fault-injection)"
    fi
  fi
  if [[ -x "$operator" ]]; then pack_binary "pbft-operator:$ver" "$operator"
  else log "apps: SKIPPED pbft-operator:$ver: binary $operator not built yet (cargo build --release)"; fi
}

build_base() { img_pause; img_busybox; img_toolbox; img_coredns; img_local_path; img_selftest; }

import_archives() {
  [[ -S "$CONTAINERD_SOCK" ]] || die "containerd socket $CONTAINERD_SOCK not found (is the test bed up?)"
  local files=("$@")
  ((${#files[@]})) || mapfile -t files < <(ls "$IMAGES_DIR"/*.tar 2>/dev/null)
  ((${#files[@]})) || die "no archives in $IMAGES_DIR"
  local f
  for f in "${files[@]}"; do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$f" >/dev/null \
      || die "ctr import $f failed"
    log "imported $(basename "$f")"
  done
}

cmd="${1:-all}"; shift || true
case "$cmd" in
  base)   build_base ;;
  apps)   build_apps ;;
  all)    build_base; build_apps ;;
  import) import_archives "$@" ;;
  list)   ls "$IMAGES_DIR"/*.tar ;;
  portable) img_busybox; img_toolbox; img_selftest; build_apps ;;
  list-portable)
    for f in "$IMAGES_DIR"/*.tar; do
      case "$(basename "$f")" in pbft-pause_*|pbft-coredns_*|pbft-local-path-provisioner_*) ;; *) echo "$f" ;; esac
    done ;;
  pause|busybox|toolbox|coredns|selftest) "img_$cmd" ;;
  local-path) img_local_path ;;
  *) die "usage: $0 [base|apps|all|import [ARCHIVE...]|list]" ;;
esac
