#!/usr/bin/env bash
# Runs a real local Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager)
# on loopback. The binaries come from scripts/provision-k8s.sh (built from Kubernetes' Go
# modules, cached outside the repository); this script only starts and stops them.
#
# Usage:
#   scripts/control-plane.sh up [STATE_DIR]         provision if needed, start, wait until ready
#   scripts/control-plane.sh down [STATE_DIR]       stop everything (SIGTERM, then SIGKILL)
#   scripts/control-plane.sh restart-apiserver [STATE_DIR]
#   scripts/control-plane.sh status [STATE_DIR]
#   scripts/control-plane.sh env [STATE_DIR]        prints: export KUBECONFIG=STATE_DIR/kubeconfig
#
# STATE_DIR/kubeconfig is the admin kubeconfig; STATE_DIR/ports holds the ports in use and
# STATE_DIR/version the Kubernetes version running.
#
# Environment:
#   K8S_VERSION              Kubernetes release (default: scripts/provision-k8s.sh's, the newest)
#   ECS_CACHE_DIR            cache root (default ~/.cache/ecs-operator)
#   ECS_CP_DIR               default state dir (default /tmp/ecs-cp)
#   CP_ETCD_CLIENT_PORT, CP_ETCD_PEER_PORT, CP_APISERVER_PORT
#                            fixed ports; unset: free ports are picked at the first `up` and
#                            kept in STATE_DIR/ports for restarts
#   CP_READY_TIMEOUT         seconds to wait for /readyz (default 90)
#   CP_DELETE_COLLECTION_WORKERS  kube-apiserver --delete-collection-workers (default: unset = 1)
#   CP_APISERVER_EXTRA_ARGS  extra kube-apiserver flags (split on whitespace)
#   CP_CM_EXTRA_ARGS         extra kube-controller-manager flags (e.g. "--kube-api-qps=100")
set -euo pipefail

SCRIPTS="$(cd "$(dirname "$0")" && pwd)"
READY_TIMEOUT="${CP_READY_TIMEOUT:-90}"
BIN_DIR=""
ETCD_CLIENT_PORT="" ETCD_PEER_PORT="" APISERVER_PORT=""

log() { printf '[control-plane] %s\n' "$*" >&2; }
die() { printf '[control-plane] ERROR: %s\n' "$*" >&2; exit 1; }

install_system_packages() {
  local missing=() pair
  for pair in openssl:openssl curl:curl flock:util-linux setsid:util-linux python3:python3; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}

# The version running in STATE_DIR wins over K8S_VERSION, so `down`/`restart-apiserver` act on
# what `up` started.
resolve_binaries() {
  local v="${K8S_VERSION:-}"
  if [[ -z $v && -s $STATE_DIR/version ]]; then v="$(cat "$STATE_DIR/version")"; fi
  install_system_packages
  BIN_DIR="$(bash "$SCRIPTS/provision-k8s.sh" ${v:+"$v"})"
  [[ -x $BIN_DIR/kube-apiserver && -x $BIN_DIR/etcd ]] || die "provisioning gave no binaries in $BIN_DIR"
  "$BIN_DIR/kube-apiserver" --version | awk '{print $2}' | sed 's/^v//' >"$STATE_DIR/version.new"
  mv -f "$STATE_DIR/version.new" "$STATE_DIR/version"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Ports: the environment, else what this state dir used before, else free ones.
resolve_ports() {
  if [[ -s $STATE_DIR/ports ]]; then
    # shellcheck disable=SC1091
    source "$STATE_DIR/ports"
  fi
  ETCD_CLIENT_PORT="${CP_ETCD_CLIENT_PORT:-${ETCD_CLIENT_PORT:-$(free_port)}}"
  ETCD_PEER_PORT="${CP_ETCD_PEER_PORT:-${ETCD_PEER_PORT:-$(free_port)}}"
  APISERVER_PORT="${CP_APISERVER_PORT:-${APISERVER_PORT:-$(free_port)}}"
  printf 'ETCD_CLIENT_PORT=%s\nETCD_PEER_PORT=%s\nAPISERVER_PORT=%s\n' \
    "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" >"$STATE_DIR/ports"
}

# ---------------------------------------------------------------------------------------------
# runtime helpers
# ---------------------------------------------------------------------------------------------

STATE_DIR=""
set_state_dir() {
  STATE_DIR="${1:-${ECS_CP_DIR:-/tmp/ecs-cp}}"
  mkdir -p "$STATE_DIR"
  STATE_DIR="$(cd "$STATE_DIR" && pwd)"
  if [[ -s $STATE_DIR/ports ]]; then
    # shellcheck disable=SC1091
    source "$STATE_DIR/ports"
  fi
}

pidfile() { echo "$STATE_DIR/pids/$1.pid"; }

# Prints the pid of a component if it is alive and really is that program.
component_pid() {
  local name="$1" bin="$2" f pid
  f="$(pidfile "$name")"
  [[ -f $f ]] || return 1
  pid="$(cat "$f" 2>/dev/null || true)"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  local argv0
  argv0="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1)" || return 1
  [[ ${argv0##*/} == "$bin" ]] || return 1
  echo "$pid"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

require_free_port() {
  if port_in_use "$1"; then
    die "port $1 ($2) on 127.0.0.1 is already in use by another process; set $3 to another port"
  fi
}

start_bg() {
  # start_bg NAME CMD...: detached from this shell (own session), stdout/err to logs/NAME.log
  local name="$1"; shift
  local logf="$STATE_DIR/logs/$name.log"
  if [[ -f $logf ]]; then
    mv -f "$logf" "$logf.prev"
  fi
  nohup setsid "$@" >"$logf" 2>&1 </dev/null &
  echo "$!" >"$(pidfile "$name")"
  STARTED+=("$name")
}

# If `up`/`restart-apiserver` fails, stop what this invocation started (no half-started leftovers).
STARTED=()
cleanup_on_failure() {
  local rc=$? i
  if [[ $rc -ne 0 && ${#STARTED[@]} -gt 0 ]]; then
    log "start failed; stopping what this run started: ${STARTED[*]}"
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
      stop_component "${STARTED[$i]}" "${STARTED[$i]}" || true
    done
  fi
  return "$rc"
}

stop_component() {
  local name="$1" bin="$2" pid i
  if ! pid="$(component_pid "$name" "$bin")"; then
    rm -f "$(pidfile "$name")"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not stop in 15 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$(pidfile "$name")"
}

fail_with_log() {
  local name="$1" msg="$2"
  printf '[control-plane] ERROR: %s\n--- last 40 lines of %s ---\n' "$msg" "$STATE_DIR/logs/$name.log" >&2
  tail -n 40 "$STATE_DIR/logs/$name.log" >&2 || true
  exit 1
}

token() { cat "$STATE_DIR/admin-token"; }

apiserver_ready() {
  curl -ksf --max-time 3 -H "Authorization: Bearer $(token)" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1
}

etcd_healthy() {
  curl -sf --max-time 3 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}

ensure_secrets() {
  mkdir -p "$STATE_DIR/logs" "$STATE_DIR/pids" "$STATE_DIR/certs" "$STATE_DIR/etcd"
  chmod 700 "$STATE_DIR/etcd"
  if [[ ! -s $STATE_DIR/admin-token ]]; then
    (umask 077; openssl rand -hex 24 >"$STATE_DIR/admin-token")
  fi
  if [[ ! -s $STATE_DIR/tokens.csv ]]; then
    (umask 077; echo "$(token),admin,admin-uid,system:masters" >"$STATE_DIR/tokens.csv")
  fi
  if [[ ! -s $STATE_DIR/sa.key ]]; then
    (umask 077; openssl genrsa -out "$STATE_DIR/sa.key" 2048 2>/dev/null)
  fi
}

write_kubeconfig() {
  local ca="$STATE_DIR/certs/apiserver.crt" cluster_auth tmp
  if [[ -s $ca ]] && curl -sf --max-time 3 --cacert "$ca" -H "Authorization: Bearer $(token)" \
      "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1; then
    cluster_auth="    certificate-authority: $ca"
  else
    log "warning: $ca does not verify https://127.0.0.1:$APISERVER_PORT; using insecure-skip-tls-verify"
    cluster_auth="    insecure-skip-tls-verify: true"
  fi
  tmp="$STATE_DIR/kubeconfig.tmp"
  (umask 077; cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ecs-cp
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
$cluster_auth
users:
- name: admin
  user:
    token: $(token)
contexts:
- name: ecs-cp
  context:
    cluster: ecs-cp
    user: admin
current-context: ecs-cp
EOF
  )
  mv -f "$tmp" "$STATE_DIR/kubeconfig"
}

start_etcd() {
  if component_pid etcd etcd >/dev/null; then
    return 0
  fi
  require_free_port "$ETCD_CLIENT_PORT" "etcd client" CP_ETCD_CLIENT_PORT
  require_free_port "$ETCD_PEER_PORT" "etcd peer" CP_ETCD_PEER_PORT
  log "starting etcd on 127.0.0.1:$ETCD_CLIENT_PORT (peer $ETCD_PEER_PORT)"
  start_bg etcd "$BIN_DIR/etcd" \
    --name=ecs-cp \
    --data-dir="$STATE_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="ecs-cp=http://127.0.0.1:$ETCD_PEER_PORT" \
    --quota-backend-bytes=4294967296 \
    --log-level=warn
  local i
  for ((i = 0; i < 60; i++)); do
    etcd_healthy && return 0
    component_pid etcd etcd >/dev/null || fail_with_log etcd "etcd exited during start"
    sleep 0.5
  done
  fail_with_log etcd "etcd not healthy after 30 s"
}

start_apiserver() {
  if component_pid kube-apiserver kube-apiserver >/dev/null; then
    return 0
  fi
  require_free_port "$APISERVER_PORT" "kube-apiserver" CP_APISERVER_PORT
  local extra=()
  if [[ -n ${CP_DELETE_COLLECTION_WORKERS:-} ]]; then
    extra+=("--delete-collection-workers=$CP_DELETE_COLLECTION_WORKERS")
  fi
  if [[ -n ${CP_APISERVER_EXTRA_ARGS:-} ]]; then
    local more=()
    read -r -a more <<<"$CP_APISERVER_EXTRA_ARGS"
    extra+=("${more[@]}")
  fi
  log "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
  start_bg kube-apiserver "$BIN_DIR/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address=127.0.0.1 \
    --secure-port="$APISERVER_PORT" \
    --advertise-address=127.0.0.1 \
    --cert-dir="$STATE_DIR/certs" \
    --token-auth-file="$STATE_DIR/tokens.csv" \
    --authorization-mode=RBAC \
    --service-account-key-file="$STATE_DIR/sa.key" \
    --service-account-signing-key-file="$STATE_DIR/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-cluster-ip-range=10.96.0.0/16 \
    --endpoint-reconciler-type=none \
    --max-requests-inflight=800 \
    --max-mutating-requests-inflight=400 \
    "${extra[@]}"
  wait_apiserver_ready
}

wait_apiserver_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    if apiserver_ready; then
      log "kube-apiserver ready"
      return 0
    fi
    component_pid kube-apiserver kube-apiserver >/dev/null || fail_with_log kube-apiserver "kube-apiserver exited during start"
    sleep 0.5
  done
  fail_with_log kube-apiserver "kube-apiserver /readyz not ok after $READY_TIMEOUT s"
}

start_controller_manager() {
  if component_pid kube-controller-manager kube-controller-manager >/dev/null; then
    return 0
  fi
  local extra=()
  if [[ -n ${CP_CM_EXTRA_ARGS:-} ]]; then
    read -r -a extra <<<"$CP_CM_EXTRA_ARGS"
  fi
  log "starting kube-controller-manager (namespace, garbagecollector, serviceaccount-token)"
  start_bg kube-controller-manager "$BIN_DIR/kube-controller-manager" \
    --kubeconfig="$STATE_DIR/kubeconfig" \
    --controllers=namespace,garbagecollector,serviceaccount-token \
    --service-account-private-key-file="$STATE_DIR/sa.key" \
    --root-ca-file="$STATE_DIR/certs/apiserver.crt" \
    --bind-address=127.0.0.1 \
    --secure-port=0 \
    --use-service-account-credentials=false \
    --leader-elect=false \
    "${extra[@]}"
  sleep 1
  component_pid kube-controller-manager kube-controller-manager >/dev/null ||
    fail_with_log kube-controller-manager "kube-controller-manager exited during start"
}

kctl() { kubectl --kubeconfig "$STATE_DIR/kubeconfig" "$@"; }

all_running() {
  component_pid etcd etcd >/dev/null &&
    component_pid kube-apiserver kube-apiserver >/dev/null &&
    component_pid kube-controller-manager kube-controller-manager >/dev/null &&
    [[ -s $STATE_DIR/admin-token && -s $STATE_DIR/kubeconfig ]] &&
    apiserver_ready
}

# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------

cmd_up() {
  set_state_dir "${1:-}"
  if all_running; then
    local running
    running="$(cat "$STATE_DIR/version" 2>/dev/null || echo unknown)"
    if [[ -n ${K8S_VERSION:-} && ${K8S_VERSION#v} != "$running" ]]; then
      die "Kubernetes $running is running in $STATE_DIR, not $K8S_VERSION: use another STATE_DIR or 'down' first"
    fi
    log "already running (state $STATE_DIR, https://127.0.0.1:$APISERVER_PORT)"
    echo "export KUBECONFIG=$STATE_DIR/kubeconfig"
    return 0
  fi
  resolve_binaries
  ensure_secrets
  resolve_ports
  # Check every port before starting anything.
  if ! component_pid etcd etcd >/dev/null; then
    require_free_port "$ETCD_CLIENT_PORT" "etcd client" CP_ETCD_CLIENT_PORT
    require_free_port "$ETCD_PEER_PORT" "etcd peer" CP_ETCD_PEER_PORT
  fi
  if ! component_pid kube-apiserver kube-apiserver >/dev/null; then
    require_free_port "$APISERVER_PORT" "kube-apiserver" CP_APISERVER_PORT
  fi
  trap cleanup_on_failure EXIT
  start_etcd
  start_apiserver
  write_kubeconfig
  start_controller_manager

  local i
  for ((i = 0; i < 60; i++)); do
    kctl get namespace default >/dev/null 2>&1 && break
    sleep 0.5
  done
  kctl get namespace default >/dev/null 2>&1 || die "namespace 'default' does not exist after 30 s"
  kctl get ns >/dev/null 2>&1 || die "kubectl --kubeconfig $STATE_DIR/kubeconfig get ns failed"
  trap - EXIT
  log "control plane up: apiserver https://127.0.0.1:$APISERVER_PORT, etcd 127.0.0.1:$ETCD_CLIENT_PORT, state $STATE_DIR"
  echo "export KUBECONFIG=$STATE_DIR/kubeconfig"
}

cmd_down() {
  set_state_dir "${1:-}"
  stop_component kube-controller-manager kube-controller-manager
  stop_component kube-apiserver kube-apiserver
  stop_component etcd etcd
  log "stopped (state kept in $STATE_DIR)"
}

cmd_restart_apiserver() {
  set_state_dir "${1:-}"
  resolve_binaries
  resolve_ports
  component_pid etcd etcd >/dev/null || die "etcd is not running; run: $0 up $STATE_DIR"
  stop_component kube-apiserver kube-apiserver
  trap cleanup_on_failure EXIT
  start_apiserver
  write_kubeconfig
  trap - EXIT
}

cmd_status() {
  set_state_dir "${1:-}"
  local c pid rc=0
  for c in etcd kube-apiserver kube-controller-manager; do
    if pid="$(component_pid "$c" "$c")"; then
      echo "$c: running (pid $pid)"
    else
      echo "$c: stopped"; rc=1
    fi
  done
  if [[ -s $STATE_DIR/admin-token ]] && apiserver_ready; then
    echo "apiserver: ready at https://127.0.0.1:$APISERVER_PORT"
  else
    echo "apiserver: not ready"; rc=1
  fi
  echo "kubeconfig: $STATE_DIR/kubeconfig"
  return "$rc"
}

cmd_env() {
  set_state_dir "${1:-}"
  echo "export KUBECONFIG=$STATE_DIR/kubeconfig"
}

usage() {
  sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    restart-apiserver) cmd_restart_apiserver "$@" ;;
    status) cmd_status "$@" ;;
    env) cmd_env "$@" ;;
    *) usage ;;
  esac
}

main "$@"
