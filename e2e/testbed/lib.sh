# Shared paths and helpers for up.sh, down.sh and smoke.sh (sourced, not run).
# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this

TESTBED_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$TESTBED_DIR/versions.env"

S="$PBFT_TESTBED_STATE"           # the ONE state directory: pki, data, logs, pids, mounts
PKI="$S/pki"
LOGS="$S/logs"
PIDS="$S/run"
KUBECONFIG_PATH="$S/kubeconfig"   # admin kubeconfig written by up.sh
CONTAINERD_SOCK="$S/containerd/containerd.sock"
KUBELET_ROOT="$S/kubelet/root"
NODE_NAME=pbft-testbed
BRIDGE=cni0                       # pod bridge made by the CNI bridge plugin
SINK_IF=pbftsink0                 # local sink interface for service / foreign pod ranges
HERMETIC_CHAIN=PBFT-HERMETIC
CNI_NETWORK=pbft-testbed
KUBECTL="$K8S_BIN/kubectl"
CRICTL="$CRICTL_BIN/crictl"
export PATH="$K8S_BIN:$CRICTL_BIN:$PATH"
# kubectl's discovery cache: inside the state dir, not in ~/.kube (smoke.sh uses a temp dir)
[[ $EUID -eq 0 ]] && export KUBECACHEDIR="$S/kubectl-cache"

log()  { printf '[%s %(%H:%M:%S)T] %s\n' "${LOG_TAG:-testbed}" -1 "$*"; }
warn() { printf '[%s %(%H:%M:%S)T] WARNING: %s\n' "${LOG_TAG:-testbed}" -1 "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "${LOG_TAG:-testbed}" "$*" >&2; exit 1; }

kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# node_ip: the IPv4 address of the interface holding the default route (not loopback:
# /etc/hosts maps the host name to 127.0.0.1). No packet is sent to find it.
node_ip() {
  local dev ip
  dev=$(ip -4 route show default 2>/dev/null | awk '{for(i=1;i<NF;i++) if($i=="dev"){print $(i+1); exit}}')
  if [[ -n "$dev" ]]; then
    ip=$(ip -4 -o addr show dev "$dev" scope global | awk '{print $4}' | cut -d/ -f1 | head -1)
  fi
  [[ -n "${ip:-}" ]] || ip=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)
  [[ -n "$ip" ]] || die "no global IPv4 address on this machine for the node IP"
  echo "$ip"
}

# proc_alive PID NAME: PID runs (not a zombie) and its argv[0] is the NAME binary
# (guards against reused pids and unreaped zombies after a kill)
proc_alive() {
  local pid="$1" name="$2" state argv0
  [[ -n "$pid" && -r "/proc/$pid/stat" ]] || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ "$state" != Z && "$state" != X ]] || return 1
  argv0=$(tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | head -1) || return 1
  [[ "$(basename "$argv0")" == "$name" ]]
}

# pid_alive NAME: the daemon recorded in $PIDS/NAME.pid is running
pid_alive() {
  local f="$PIDS/$1.pid"
  [[ -f "$f" ]] || return 1
  proc_alive "$(<"$f")" "$1"
}

# start_daemon NAME CMD... : start detached (new session), log to $LOGS/NAME.log,
# pid in $PIDS/NAME.pid; no-op when already running.
start_daemon() {
  local name="$1"; shift
  if pid_alive "$name"; then log "$name: already running (pid $(<"$PIDS/$name.pid"))"; return 0; fi
  mkdir -p "$LOGS" "$PIDS"
  echo "=== $(date -u +%FT%TZ) start: $*" >> "$LOGS/$name.log"
  setsid "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name.pid"
  log "$name: started (pid $!, log $LOGS/$name.log)"
}

# stop_daemons TIMEOUT NAME...: TERM all at once, wait for all, KILL stragglers
stop_daemons() {
  local timeout="$1"; shift
  local name pid i alive pids=()
  for name in "$@"; do
    pid_alive "$name" || { rm -f "$PIDS/$name.pid"; continue; }
    pid=$(<"$PIDS/$name.pid"); pids+=("$name:$pid")
    kill -TERM "$pid" 2>/dev/null || true
  done
  for ((i = 0; i < timeout * 10; i++)); do
    alive=0
    for name in "${pids[@]}"; do proc_alive "${name#*:}" "${name%%:*}" && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for name in "${pids[@]}"; do
    pid=${name#*:}; name=${name%%:*}
    if proc_alive "$pid" "$name"; then warn "$name (pid $pid) ignored TERM; killing"; kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$PIDS/$name.pid"
    log "$name: stopped (pid $pid)"
  done
}

# stop_daemon NAME [TIMEOUT]: TERM, wait, then KILL; removes the pid file
stop_daemon() {
  local name="$1" timeout="${2:-15}" f="$PIDS/$1.pid" pid i
  [[ -f "$f" ]] || return 0
  pid=$(<"$f")
  if proc_alive "$pid" "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do proc_alive "$pid" "$name" || break; sleep 0.1; done
    if proc_alive "$pid" "$name"; then warn "$name (pid $pid) ignored TERM; killing"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    log "$name: stopped (pid $pid)"
  fi
  rm -f "$f"
}

# write_file PATH < content: replace PATH only when the content differs (kube-proxy exits
# when its config file changes; containerd reloads on CNI config writes)
write_file() {
  local f="$1" tmp="$1.new.$$"
  cat > "$tmp"
  if cmp -s "$tmp" "$f"; then rm -f "$tmp"; else mv "$tmp" "$f"; fi
}

# wait_for DESCRIPTION TIMEOUT_S CMD... : retry CMD until it succeeds
wait_for() {
  local what="$1" timeout="$2"; shift 2
  local end=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.5
  done
  log "ready: $what"
}

# Sysctls that up.sh (or the kubelet/kube-proxy it runs) may change; saved once, restored by down.sh.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
         fs.inotify.max_user_instances fs.inotify.max_user_watches vm.overcommit_memory
         vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
         kernel.keys.root_maxbytes)
