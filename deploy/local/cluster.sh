#!/usr/bin/env bash
# A local kollector cluster on one machine: etcd, two managers, three
# collectors, on fixed loopback ports. For trying cluster mode and for
# failover drills (kill a collector or the leading manager and watch
# `kollector status`).
#
#   deploy/local/cluster.sh start     # builds kollector if needed, starts everything
#   deploy/local/cluster.sh status    # kollector status against manager 1
#   deploy/local/cluster.sh stop      # stops everything (SIGTERM: monitors close their clients)
#
# Environment: STATE_DIR (default /tmp/kollector-local: logs, pids, etcd
# data), KOLLECTOR (the binary; default target/debug/kollector, built on
# demand), LEASE_TTL / ELECTION_TTL (default 10s).
set -euo pipefail
cd "$(dirname "$0")/../.."

STATE_DIR="${STATE_DIR:-/tmp/kollector-local}"
KOLLECTOR="${KOLLECTOR:-target/debug/kollector}"
LEASE_TTL="${LEASE_TTL:-10s}"
ELECTION_TTL="${ELECTION_TTL:-10s}"
ETCD_CLIENT=23790
ETCD_PEER=23800
ETCD="http://127.0.0.1:${ETCD_CLIENT}"

start_bg() { # name, command...
  local name="$1"; shift
  "$@" >"$STATE_DIR/$name.log" 2>&1 &
  echo $! >"$STATE_DIR/$name.pid"
  echo "started $name (pid $!, log $STATE_DIR/$name.log)"
}

wait_port() {
  for _ in $(seq 1 100); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open; see the logs in $STATE_DIR" >&2
  return 1
}

start() {
  mkdir -p "$STATE_DIR"
  if [ ! -x "$KOLLECTOR" ]; then
    bash scripts/install-test-deps.sh
    cargo build -p kollector
  fi
  command -v etcd >/dev/null || bash scripts/install-test-deps.sh
  start_bg etcd etcd --name=local --data-dir="$STATE_DIR/etcd" \
    --listen-client-urls="$ETCD" --advertise-client-urls="$ETCD" \
    --listen-peer-urls="http://127.0.0.1:${ETCD_PEER}" --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER}" \
    --initial-cluster="local=http://127.0.0.1:${ETCD_PEER}" --log-level=error
  wait_port "$ETCD_CLIENT"
  for i in 1 2; do
    start_bg "manager$i" "$KOLLECTOR" manager --etcd="$ETCD" \
      --grpc-listen="127.0.0.1:$((7069 + i))" --http-listen="127.0.0.1:$((9463 + i))" --election-ttl="$ELECTION_TTL"
  done
  for i in 1 2 3; do
    start_bg "collector$i" "$KOLLECTOR" collector --etcd="$ETCD" --id="collector$i" \
      --grpc-listen="127.0.0.1:$((7170 + i))" --http-listen="127.0.0.1:$((9470 + i))" --lease-ttl="$LEASE_TTL"
  done
  wait_port 7070
  cat <<MSG

kollector cluster is up. Managers: 127.0.0.1:7070 and 127.0.0.1:7071 (metrics on :9464, :9465).
Collectors: collector1..3 (gRPC :7171-7173, metrics :9471-9473). etcd: $ETCD.
  $KOLLECTOR monitor --server http://127.0.0.1:7070 add --id orders --bootstrap HOST:9092 --interval 15s
  $KOLLECTOR status --server http://127.0.0.1:7070
  kill -9 \$(cat $STATE_DIR/collector2.pid)   # watch its monitors fail over
MSG
}

stop() {
  for f in "$STATE_DIR"/collector*.pid "$STATE_DIR"/manager*.pid "$STATE_DIR"/etcd.pid; do
    [ -f "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  echo "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) "$KOLLECTOR" status --server http://127.0.0.1:7070 ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
