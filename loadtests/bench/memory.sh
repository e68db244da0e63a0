#!/usr/bin/env bash
# Memory benchmark: the server's resident memory (VmRSS) idle, right after a load, and
# once the output retention has passed, with the real model and one replica
# (loadtests/bench/configs/memory.toml).
#   loadtests/bench/memory.sh [CONCURRENCY] [REQUESTS] [OUTPUT_TOKENS]
# PROFILE=dev uses the dev build (dependencies and the engine optimized) instead of
# release; KV_CACHE_TOKENS=N overrides the config's llm.kv_cache_tokens. Prints one line
# per stage.
set -euo pipefail
cd "$(dirname "$0")/../.."
concurrency=${1:-64}
requests=${2:-128}
output_tokens=${3:-64}
profile=${PROFILE:-release}
scripts/fetch-model >/dev/null
if [ "$profile" = release ]; then
  cargo build --release --locked -p swell --bin swell -p swell-loadtest --bin swell-loadtest
  bin=target/release
else
  cargo build --locked -p swell --bin swell -p swell-loadtest --bin swell-loadtest
  bin=target/debug
fi
config=$(mktemp --suffix=.toml)
sed "s/^kv_cache_tokens = .*/kv_cache_tokens = ${KV_CACHE_TOKENS:-32768}/" loadtests/bench/configs/memory.toml >"$config"
RUST_LOG=warn "$bin/swell" serve --config "$config" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$config"' EXIT
url=http://127.0.0.1:18081
for _ in $(seq 600); do
  [ "$(curl -s "$url/admin/v1/deployments/default" | grep -o '"ready":[0-9]*' | head -1)" = '"ready":1' ] && break
  sleep 0.1
done
rss() { awk '/VmRSS/ {printf "%.0f MB", $2 / 1024}' "/proc/$server/status"; }
load() {
  "$bin/swell-loadtest" --url "$url" --model default --concurrency "$1" --requests "$2" \
    --prompt-tokens 64 --output-tokens "$output_tokens" --quiet >/dev/null
}
load 1 2
echo "idle, replica warm:                  $(rss)"
load "$concurrency" "$requests"
echo "right after $requests requests, $concurrency at once, $output_tokens tokens each: $(rss)"
sleep 65
echo "65 s later (output retention 60 s):  $(rss)"
load "$concurrency" "$requests"
sleep 65
echo "the same load again, 65 s later:     $(rss)"
