#!/usr/bin/env bash
# The benchmarks of issue 7 in one command (not part of `make test`):
# builds our replica (and its fault-injection variant) and the harness, installs
# etcd and CometBFT once into the cache, then runs `pbft-bench run`, which writes
# bench/results/<timestamp>.json, docs/benchmarks.md and docs/benchmarks-latency.svg.
#
#   bench/run.sh            full run (60 s points, 3 repeats: about 1.5-2 h on 2 cores)
#   bench/run.sh --quick    smoke run of every part (about 10 min)
#   bench/run.sh --help     every flag (any flag is passed to `pbft-bench run`)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"
# shellcheck source=../e2e/testbed/versions.env
source e2e/testbed/versions.env
# shellcheck source=versions.env
source bench/versions.env

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*"; }

if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
  cargo build --release -q -p loadgen --bin pbft-bench
  exec "$CARGO_TARGET_DIR/release/pbft-bench" run --help
fi

bench/install-peers.sh

# The fault-injection replica first, copied aside, then the normal one (cargo keeps
# both builds of the crate, so switching back and forth relinks only). Not with
# --no-byzantine (the only runs that use it).
FI_ARGS=()
if [[ " $* " != *" --no-byzantine "* ]]; then
  FI_BIN="$CARGO_TARGET_DIR/bench-fi/pbft-replica"
  log "building pbft-replica with fault injection"
  cargo build --release -q -p replica --features fault-injection --bin pbft-replica
  mkdir -p "$(dirname "$FI_BIN")"
  cp "$CARGO_TARGET_DIR/release/pbft-replica" "$FI_BIN.tmp" && mv "$FI_BIN.tmp" "$FI_BIN"
  FI_ARGS=(--fi-replica-bin "$FI_BIN")
fi
log "building pbft-replica and pbft-bench"
cargo build --release -q -p replica --bin pbft-replica -p loadgen --bin pbft-bench

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"

log "running (nproc: $(nproc); other heavy processes now: $(ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 > 20 {print $2}' | sort | uniq -c | tr '\n' ' '))"
exec "$CARGO_TARGET_DIR/release/pbft-bench" run \
  --replica-bin "$CARGO_TARGET_DIR/release/pbft-replica" \
  "${FI_ARGS[@]}" \
  --etcd-bin "$ETCD_BIN/etcd" \
  --cometbft-bin "$COMETBFT_BIN/cometbft" \
  --git-commit "$commit" \
  "$@"
