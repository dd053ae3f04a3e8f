#!/usr/bin/env bash
# Tear down what e2e/testbed/up.sh started, and leave nothing behind: pods and their
# cgroups, daemons (by pid file), mounts, network namespaces, the pod bridge and the
# sink interface, iptables rules (ours, kube-proxy's, the CNI portmap plugin's),
# changed sysctls, host paths the daemons created, and the state directory.
# Safe to run when nothing is up, or after a crashed up.
set -euo pipefail
# shellcheck disable=SC2034  # read by lib.sh
LOG_TAG=down
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
[[ $EUID -eq 0 ]] || die "must run as root"
T0=$EPOCHREALTIME

# ---------------------------------------------------------------- pods
stop_daemon kubelet 20
if pid_alive containerd && [[ -S "$CONTAINERD_SOCK" && -x "$CRICTL" ]]; then
  n=$("$CRICTL" -r "unix://$CONTAINERD_SOCK" pods -q 2>/dev/null | wc -l || true)
  if ((n > 0)); then
    log "pods: stopping and removing $n pod sandboxes (CNI DEL, netns, mounts)"
    timeout 90 "$CRICTL" -r "unix://$CONTAINERD_SOCK" --timeout 60s rmp -f -a >/dev/null 2>&1 \
      || warn "crictl rmp -fa did not finish cleanly; forcing below"
  fi
fi

# Processes left in the kubelet's pod cgroups (anything crictl could not stop).
kill_cgroup_tree() { # kill every pid in a cgroup-v1 subtree, then remove the subtree
  local root="$1" pids
  [[ -d "$root" ]] || return 0
  pids=$(find "$root" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
  if [[ -n "$pids" ]]; then
    warn "killing $(wc -w <<<"$pids") leftover pod processes in $root"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  fi
  find "$root" -depth -type d -exec rmdir {} \; 2>/dev/null || true
}

# ---------------------------------------------------------------- daemons
stop_daemon kube-proxy 10
[[ -x "$K8S_BIN/kube-proxy" ]] && "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
stop_daemon containerd 20
# containerd shims of this test bed (identified by our containerd socket in their argv)
for d in /proc/[0-9]*; do
  cmd=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null) || continue
  if [[ "$cmd" == *containerd-shim* && "$cmd" == *"-address $CONTAINERD_SOCK"* ]]; then
    warn "killing leftover shim ${d#/proc/}"; kill -KILL "${d#/proc/}" 2>/dev/null || true
  fi
done
for ctrl in /sys/fs/cgroup/*/; do
  kill_cgroup_tree "${ctrl}kubepods"
done
stop_daemons 20 kube-scheduler kube-controller-manager kube-apiserver
stop_daemon etcd 15

# ---------------------------------------------------------------- mounts
# Every mount under the state dir (kubelet volumes, containerd rootfs/shm, netns), deepest first.
mapfile -t mnts < <(awk -v s="$S" '$5 == s || index($5, s "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
for m in "${mnts[@]}"; do
  m=$(printf '%b' "$m")  # mountinfo escapes spaces as \040
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || warn "cannot unmount $m"
done
((${#mnts[@]} == 0)) || log "mounts: unmounted ${#mnts[@]} under $S"

# ---------------------------------------------------------------- network
for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  ip link del "$v" 2>/dev/null || true
done
for l in "$BRIDGE" "$SINK_IF"; do
  if ip link show "$l" >/dev/null 2>&1; then ip link del "$l" && log "network: removed interface $l"; fi
done

# iptables: our chain, and the chains kube-proxy (KUBE-*) and the CNI plugins (CNI-*) made.
clean_iptables() { # BIN
  local ipt="$1" table rules chains
  command -v "$ipt" >/dev/null || return 0
  for table in filter nat mangle raw; do
    "$ipt" -w -t "$table" -S >/dev/null 2>&1 || continue
    # rules in any chain that jump to one of ours
    mapfile -t rules < <("$ipt" -w -t "$table" -S | grep -E -- "-j (KUBE-|CNI-|$HERMETIC_CHAIN)" | grep '^-A ' || true)
    local r
    for r in "${rules[@]}"; do
      # shellcheck disable=SC2086
      eval "$ipt -w -t $table ${r/-A /-D }" 2>/dev/null || true
    done
    mapfile -t chains < <("$ipt" -w -t "$table" -S | awk '$1 == "-N" {print $2}' | grep -E "^(KUBE-|CNI-|$HERMETIC_CHAIN$)" || true)
    local c
    for c in "${chains[@]}"; do "$ipt" -w -t "$table" -F "$c" 2>/dev/null || true; done
    for c in "${chains[@]}"; do "$ipt" -w -t "$table" -X "$c" 2>/dev/null || warn "$ipt -t $table: cannot delete chain $c"; done
  done
}
clean_iptables iptables
clean_iptables ip6tables
# nftables: kube-proxy's own tables, and the iptables-nft tables (filter, nat, mangle,
# raw) that appeared with the test bed and are empty again (only policies left).
if command -v nft >/dev/null; then
  for fam in ip ip6; do nft delete table "$fam" kube-proxy 2>/dev/null || true; done
  if [[ -f "$S/nft-tables.before" ]]; then
    while read -r _ fam name; do
      grep -qx "table $fam $name" "$S/nft-tables.before" && continue
      case "$fam:$name" in
        ip:filter|ip:nat|ip:mangle|ip:raw) ipt=iptables ;;
        ip6:filter|ip6:nat|ip6:mangle|ip6:raw) ipt=ip6tables ;;
        *) continue ;;
      esac
      if ! "$ipt" -w -t "$name" -S 2>/dev/null | grep -cv '^-P ' >/dev/null; then
        nft delete table "$fam" "$name" 2>/dev/null && log "nftables: removed empty table $fam $name"
      fi
    done < <(nft list tables 2>/dev/null)
  fi
fi

# ---------------------------------------------------------------- kernel settings, host paths
if [[ -f "$S/sysctl.saved" ]]; then
  while IFS='=' read -r k v; do sysctl -qw "$k=$v" 2>/dev/null || warn "cannot restore $k=$v"; done < "$S/sysctl.saved"
  log "sysctl: restored $(wc -l < "$S/sysctl.saved") settings"
fi
# Host paths the daemons create outside the state dir (only removed when up.sh found them absent).
if [[ -f "$S/host-paths.absent" ]]; then
  while read -r p; do
    [[ -n "$p" && -e "$p" ]] || continue
    # /run/netns is bind-mounted onto itself by `ip netns`; unmount it once empty
    if mountpoint -q "$p"; then
      if [[ -z "$(ls -A "$p")" ]]; then umount "$p" || warn "cannot unmount $p"; else warn "$p is a mount point in use; kept"; continue; fi
    fi
    rm -rf --one-file-system "$p" && log "host path: removed $p"
  done < "$S/host-paths.absent"
fi
# CNI result cache entries of our network (libcni keeps them in /var/lib/cni/results)
rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true
# /var/log/containers links into our pod logs
if [[ -d /var/log/containers ]]; then
  find /var/log/containers -maxdepth 1 -type l -lname "$S/*" -delete 2>/dev/null || true
fi

# ---------------------------------------------------------------- state
if [[ -d "$S" ]]; then
  left=$(awk -v s="$S" 'index($5, s) == 1' /proc/self/mountinfo | wc -l)
  ((left == 0)) || die "$left mounts still under $S; not removing it (see: grep $S /proc/self/mountinfo)"
  rm -rf --one-file-system "$S"
  log "state: removed $S"
fi
log "down in $(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s"
