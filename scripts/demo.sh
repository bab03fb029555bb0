#!/usr/bin/env bash
# One command for a newcomer: installs the local Kafka-protocol broker (tansu)
# if needed, builds kollector, and runs `kollector demo`: two real brokers with
# traffic and a lagging consumer group, watched by standalone kollector.
# Metrics at http://127.0.0.1:9464/metrics; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
exec cargo run -q -p kollector -- demo "$@"
