#!/usr/bin/env bash
# How good the wait estimate (`eta=` of the SSE waiting comments) is: replays segments of
# the Azure conversation trace through a `sim` deployment that scales from zero
# (loadtests/bench/configs/eta.toml), records for every request the first waiting
# comment (position, eta) and when the wait ended (the first chunk), and prints p50/p90
# of predicted − actual wait and of |error| for Swell's estimate and the naive one
# (position × mean service time), in the same run (loadtests/bench/eta.py).
#
#   loadtests/bench/eta.sh [SEGMENTS] [SECONDS] [TIME_SCALE]
#
# SEGMENTS segments (default 3) of SECONDS seconds of trace (default 60), 10 minutes
# apart in the trace, each from zero replicas; TIME_SCALE (default 1) as
# swell-loadtest's --time-scale. Per-request CSVs and the summary go to
# loadtest-results/eta/. Uses the debug binaries (cargo build) unless PROFILE=release.
set -euo pipefail
cd "$(dirname "$0")/../.."
segments=${1:-3}
seconds=${2:-60}
time_scale=${3:-1}
profile=${PROFILE:-debug}
if [ "$profile" = release ]; then cargo build --release -p swell --bin swell -p swell-loadtest --bin swell-loadtest
else cargo build -p swell --bin swell -p swell-loadtest --bin swell-loadtest; fi
bin=target/$profile
out=loadtest-results/eta
mkdir -p "$out"
rm -f "$out"/segment-* "$out"/summary.txt
url=http://127.0.0.1:18084
RUST_LOG=warn "$bin/swell" serve --config loadtests/bench/configs/eta.toml &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 300); do curl -sf "$url/readyz" >/dev/null && break; sleep 0.1; done
replicas() {
  curl -sf "$url/admin/v1/deployments/chat" | python3 -c \
    'import json,sys; r=json.load(sys.stdin)["replicas"]; print(r["ready"]+r["starting"]+r["draining"])'
}
alive() { kill -0 "$server" 2>/dev/null || { echo "swell serve is gone" >&2; exit 1; }; }
for segment in $(seq 0 $((segments - 1))); do
  for _ in $(seq 600); do alive; [ "$(replicas)" = 0 ] && break; sleep 0.5; done
  echo "segment $segment: from $(replicas) replicas, trace offset $((segment * 600)) s" >&2
  "$bin/swell-loadtest" --url "$url" --model chat \
    --trace loadtests/traces/azure-2023/AzureLLMInferenceTrace_conv.csv \
    --trace-offset "$((segment * 600))s" --duration "${seconds}s" --time-scale "$time_scale" \
    --max-prompt-tokens 1024 --max-output-tokens 256 --quiet \
    --per-request-csv "$out/segment-$segment.csv" >"$out/segment-$segment.txt"
  alive
done
python3 loadtests/bench/eta.py "$out"/segment-*.csv | tee "$out/summary.txt"
