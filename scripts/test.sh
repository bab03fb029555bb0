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
