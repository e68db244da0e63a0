#!/usr/bin/env bash
# Gateway benchmark: requests/s and added latency of Swell itself, with the `sim`
# engine at zero service time (loadtests/bench/configs/gateway-bench.toml).
#   loadtests/bench/gateway.sh [CONCURRENCY] [REQUESTS]
# Builds release binaries, starts `swell serve`, drives it with swell-loadtest (closed
# loop, 1 output token per request, SSE), prints the report and writes
# loadtest-results/gateway-bench.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
concurrency=${1:-32}
requests=${2:-20000}
cargo build --release --locked -p swell --bin swell
cargo build --release --locked -p swell-loadtest --bin swell-loadtest
mkdir -p loadtest-results
RUST_LOG=warn target/release/swell serve --config loadtests/bench/configs/gateway-bench.toml &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.1; done
# Warm-up, then the measured run.
target/release/swell-loadtest --url http://127.0.0.1:18080 --model zero --concurrency "$concurrency" \
  --requests 2000 --prompt-tokens 16 --output-tokens 1 --quiet >/dev/null
target/release/swell-loadtest --url http://127.0.0.1:18080 --model zero --concurrency "$concurrency" \
  --requests "$requests" --prompt-tokens 16 --output-tokens 1 --quiet \
  --json loadtest-results/gateway-bench.json
