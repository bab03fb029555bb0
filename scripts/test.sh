#!/usr/bin/env bash
# Runs kollector's whole test suite: unit tests, and end-to-end tests against
# real tansu brokers, librdkafka mock clusters and real kollector processes.
# Installs what the tests need first (idempotent; see install-test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# The e2e tests run the kollector binary; build it (and everything) once.
cargo build --workspace --bins --tests
# nextest runs each test in its own process, so process-wide counters
# (open Kafka clients) and child processes never leak between tests.
cargo nextest run --workspace --no-fail-fast "$@"
# The control-plane bench (simulated collectors, two managers, a real etcd)
# at a CI budget: fixed sizes, a debug build. It proves the bench still runs
# and converges; its figures are not the bench's (BENCHMARKS.md has those,
# from `cargo bench`). Only on a full run (no test filter given).
if [ $# -eq 0 ]; then
  KOLLECTOR_BENCH_MONITORS=10000 KOLLECTOR_BENCH_COLLECTORS=20 KOLLECTOR_BENCH_CREATES=2000 \
    KOLLECTOR_BENCH_KILLS=2 KOLLECTOR_BENCH_STEADY_SECS=5 \
    cargo test -p kollector-tests --bench control_plane
fi
