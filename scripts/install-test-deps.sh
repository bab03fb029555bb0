#!/usr/bin/env bash
# Installs what kollector's tests need, idempotently: a second run finds
# everything in place and returns in a second or two.
#
#   - etcd-server (Debian package): the real etcd the cluster-mode tests start.
#   - prometheus (Debian package, with promtool): checks and unit-tests the
#     alert rules, and a real Prometheus scrapes kollector in the deploy tests.
#   - tansu 0.6.0 (crates.io, memory storage engine): a real Kafka-protocol
#     broker the tests start on free loopback ports. Built once (~8 minutes on
#     2 cores) into ~/.cargo/bin and reused afterwards.
#   - make/g++/libssl-dev/zlib1g-dev for librdkafka's vendored build (usually
#     already present).
#   - iptables (Debian package): the network-fault tests cut their own
#     loopback ports with the kernel's packet filter (tests/src/packet_filter.rs).
#
#   - protoc, from the protoc-bin-vendored crate (no system package): copied
#     to ~/.cargo/bin so build scripts that look for `protoc` (etcd-client's)
#     find it. kollector-proto points at the crate's binary directly.
set -euo pipefail

TANSU_VERSION=0.6.0
log() { printf '[install-test-deps] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
# Prometheus and promtool: the deploy tests check the rule files and run a
# real Prometheus against kollector's discovery endpoint.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# systemd-analyze verifies the systemd units in deploy/.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v make >/dev/null 2>&1 || need_apt+=(make)
# The network-fault tests drop packets on their own loopback ports.
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need_apt+=(iptables)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v perl >/dev/null 2>&1 || need_apt+=(perl)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# librdkafka (vendored by rdkafka-sys) links the system OpenSSL (SASL/SCRAM, TLS) and zlib.
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || need_apt+=(zlib1g-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  # Debian's package starts an etcd service on :2379; the tests start their own
  # on free ports, so stop the system one if a service manager started it.
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true; fi
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
else
  log "etcd, make, g++ present"
fi

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"
if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  log "tansu $TANSU_VERSION present at $(command -v tansu)"
else
  log "building tansu $TANSU_VERSION from crates.io (one time, several minutes)"
  cargo install tansu --version "$TANSU_VERSION" --locked --no-default-features --features dynostore
fi

PROTOC_HOME="${CARGO_HOME:-$HOME/.cargo}/protoc-vendored"
if [ ! -x "$PROTOC_HOME/bin/protoc" ] || [ ! -d "$PROTOC_HOME/include/google" ] || [ ! -x "$CARGO_BIN/protoc" ]; then
  log "installing protoc from the protoc-bin-vendored crate into $PROTOC_HOME"
  (cd "$(dirname "$0")/.." && cargo fetch --quiet)
  registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
  case "$(uname -m)" in
    x86_64) pkg="protoc-bin-vendored-linux-x86_64" ;;
    aarch64) pkg="protoc-bin-vendored-linux-aarch_64" ;;
    *) pkg="protoc-bin-vendored-linux-$(uname -m)" ;;
  esac
  crate_dir="$(find "$registry" -maxdepth 2 -type d -name "$pkg-*" 2>/dev/null | sort | tail -n 1)"
  if [ -z "$crate_dir" ] || [ ! -x "$crate_dir/bin/protoc" ]; then
    log "error: $pkg not found in $registry after cargo fetch"
    exit 1
  fi
  rm -rf "$PROTOC_HOME"
  mkdir -p "$PROTOC_HOME"
  # protoc finds the well-known .proto files in ../include next to its binary.
  cp -r "$crate_dir/bin" "$crate_dir/include" "$PROTOC_HOME/"
  chmod 0755 "$PROTOC_HOME/bin/protoc"
  rm -f "$CARGO_BIN/protoc"
  printf '#!/bin/sh\nexec "%s/bin/protoc" "$@"\n' "$PROTOC_HOME" > "$CARGO_BIN/protoc"
  chmod 0755 "$CARGO_BIN/protoc"
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
# kubernetes-validate (PyPI) checks the Kubernetes manifests against the
# Kubernetes schemas; in a private virtualenv, made once.
# botocore (PyPI), in the same virtualenv, is the independent SigV4
# implementation the MSK IAM tests check every token with
# (tests/src/aws_msk.rs, tests/msk_iam_verify.py).
VENV="${KOLLECTOR_TEST_VENV:-$HOME/.cache/kollector-tests/venv}"
if [ -x "$VENV/bin/kubernetes-validate" ] && "$VENV/bin/python" -c "import botocore" >/dev/null 2>&1; then
  log "kubernetes-validate and botocore present in $VENV"
else
  log "installing kubernetes-validate and botocore into $VENV"
  command -v python3 >/dev/null 2>&1 || { log "python3 missing"; exit 1; }
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" 2>/dev/null || { $SUDO apt-get install -y -qq --no-install-recommends python3-venv && python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install -q kubernetes-validate botocore
fi

log "done: etcd=$(command -v etcd) tansu=$(command -v tansu) protoc=$(command -v protoc)"
