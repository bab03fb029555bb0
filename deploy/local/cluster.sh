#!/usr/bin/env bash
# A local kollector cluster on one machine: etcd, two managers, three
# collectors, on fixed loopback ports, secured the way a real one is: a
# cluster CA and node certificates (`kollector certs`), mutual TLS between
# nodes and to etcd, an admin token (`kollector token add`) and a secret key
# sealing passwords in etcd (`kollector secret-key new`), all made on the
# first start in $STATE_DIR/pki. For trying cluster mode and for failover
# drills (kill a collector or the leading manager and watch `kollector status`).
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
ETCD="https://127.0.0.1:${ETCD_CLIENT}"
PKI="$STATE_DIR/pki"
# What the CLI needs to reach a manager: TLS against the cluster CA and a token.
export KOLLECTOR_SERVER="https://127.0.0.1:7070" KOLLECTOR_CA_FILE="$PKI/ca.pem" KOLLECTOR_TOKEN_FILE="$PKI/admin.token"

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
  if [ ! -f "$PKI/ca.pem" ]; then
    "$KOLLECTOR" certs --dir "$PKI" --node etcd --manager manager1 --manager manager2 \
      --node collector1 --node collector2 --node collector3 >/dev/null
    "$KOLLECTOR" secret-key new --file "$PKI/secret.key" >/dev/null
    "$KOLLECTOR" token add --tokens-file "$PKI/tokens.toml" --name local-admin --role admin --out "$PKI/admin.token" >/dev/null
    echo "made a CA, node certificates, a secret key and an admin token in $PKI"
  fi
  tls() { # node name -> its TLS flags, to peers and to etcd
    echo "--tls-ca=$PKI/ca.pem --tls-cert=$PKI/$1.pem --tls-key=$PKI/$1.key --etcd-ca=$PKI/ca.pem --etcd-cert=$PKI/$1.pem --etcd-key=$PKI/$1.key"
  }
  start_bg etcd etcd --name=local --data-dir="$STATE_DIR/etcd" \
    --listen-client-urls="$ETCD" --advertise-client-urls="$ETCD" \
    --trusted-ca-file="$PKI/ca.pem" --cert-file="$PKI/etcd.pem" --key-file="$PKI/etcd.key" --client-cert-auth \
    --listen-peer-urls="http://127.0.0.1:${ETCD_PEER}" --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER}" \
    --initial-cluster="local=http://127.0.0.1:${ETCD_PEER}" --log-level=error
  wait_port "$ETCD_CLIENT"
  for i in 1 2; do
    # shellcheck disable=SC2046
    start_bg "manager$i" "$KOLLECTOR" manager --etcd="$ETCD" $(tls "manager$i") \
      --tokens-file="$PKI/tokens.toml" --secret-key-file="$PKI/secret.key" \
      --grpc-listen="127.0.0.1:$((7069 + i))" --http-listen="127.0.0.1:$((9463 + i))" --election-ttl="$ELECTION_TTL"
  done
  for i in 1 2 3; do
    # shellcheck disable=SC2046
    start_bg "collector$i" "$KOLLECTOR" collector --etcd="$ETCD" --id="collector$i" $(tls "collector$i") \
      --grpc-listen="127.0.0.1:$((7170 + i))" --http-listen="127.0.0.1:$((9470 + i))" --lease-ttl="$LEASE_TTL"
  done
  wait_port 7070
  # Something to watch: a tansu broker with a producer and a lagging group,
  # and a monitor for it (when tansu is installed: scripts/install-test-deps.sh).
  if command -v tansu >/dev/null 2>&1; then
    start_bg kafka tansu broker --cluster-id=local-kafka --listener-url=tcp://127.0.0.1:19092 \
      --advertised-listener-url=tcp://127.0.0.1:19092 --storage-engine=memory://tansu/
    wait_port 19092
    start_bg traffic "$KOLLECTOR" demo --traffic-only 127.0.0.1:19092
    for _ in $(seq 1 50); do
      "$KOLLECTOR" monitor add --id local-kafka --bootstrap 127.0.0.1:19092 --interval 5s >/dev/null 2>&1 && break
      sleep 0.2
    done
  fi
  # A Prometheus discovering one target per monitor through the managers'
  # /sd, with the shipped alert rules (when Debian's prometheus is installed).
  if command -v prometheus >/dev/null 2>&1; then
    cp deploy/prometheus/kollector-rules.yml "$STATE_DIR/kollector-rules.yml"
    cat >"$STATE_DIR/prometheus.yml" <<PROM
global: {scrape_interval: 5s, evaluation_interval: 5s}
rule_files: [kollector-rules.yml]
scrape_configs:
  - job_name: kafka
    http_sd_configs: [{url: "http://127.0.0.1:9464/sd", refresh_interval: 10s}]
  - job_name: kollector-managers
    static_configs: [{targets: ["127.0.0.1:9464", "127.0.0.1:9465"]}]
    metrics_path: /metrics/self
  - job_name: kollector-collectors
    static_configs: [{targets: ["127.0.0.1:9471", "127.0.0.1:9472", "127.0.0.1:9473"]}]
    metrics_path: /metrics/self
PROM
    start_bg prometheus prometheus --config.file="$STATE_DIR/prometheus.yml" \
      --storage.tsdb.path="$STATE_DIR/prometheus" --web.listen-address=127.0.0.1:9090
  fi
  cat <<MSG

kollector cluster is up. Managers: 127.0.0.1:7070 and 127.0.0.1:7071 (metrics on :9464, :9465).
Collectors: collector1..3 (gRPC :7171-7173, metrics :9471-9473). etcd: $ETCD.
Every hop is TLS; the CLI needs the CA and the admin token:
  export KOLLECTOR_SERVER=$KOLLECTOR_SERVER KOLLECTOR_CA_FILE=$KOLLECTOR_CA_FILE KOLLECTOR_TOKEN_FILE=$KOLLECTOR_TOKEN_FILE
  $KOLLECTOR monitor add --id orders --bootstrap HOST:9092 --interval 15s
  $KOLLECTOR status
  kill -9 \$(cat $STATE_DIR/collector2.pid)   # watch its monitors fail over
Prometheus (if installed): http://127.0.0.1:9090/graph?g0.expr=kafka_consumergroup_lag
MSG
}

stop() {
  for f in "$STATE_DIR"/prometheus.pid "$STATE_DIR"/traffic.pid "$STATE_DIR"/kafka.pid \
    "$STATE_DIR"/collector*.pid "$STATE_DIR"/manager*.pid "$STATE_DIR"/etcd.pid; do
    [ -f "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  echo "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) "$KOLLECTOR" status ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
