#!/usr/bin/env bash
# Distributed-mode benchmark: requests/s and added latency through the Redis path, with
# the `sim` engine at zero service time (loadtests/bench/configs/gateway-bench.toml), against
#   - the same server on the embedded in-process queue (what Redis adds), and
#   - the bound `redis-benchmark` sets on this machine (what Redis allows):
#     Redis operations per Swell request are counted from `INFO commandstats`.
#
#   loadtests/bench/redis.sh [CONCURRENCY] [REQUESTS] [OUTPUT_TOKENS]
#
# Starts its own redis-server on a free port (no persistence: `--save "" --appendonly
# no`; with `appendonly yes` + `appendfsync always` every write waits for an fsync),
# builds release binaries, runs a warm-up and a measured closed loop (OUTPUT_TOKENS per
# request, default 1, SSE) for each queue, and writes loadtest-results/redis-bench-*.json
# and loadtest-results/redis-bench-commandstats.txt. Redis CPU per request is given twice:
# from `INFO cpu` (user + sys of the server process over the measured run: everything,
# networking included) and as the sum of `usec` over `INFO commandstats` (which counts
# the commands a script runs both on their own and inside the script's time).
set -euo pipefail
cd "$(dirname "$0")/../.."
concurrency=${1:-32}
requests=${2:-20000}
output_tokens=${3:-1}
cargo build --release --locked -p swell --bin swell
cargo build --release --locked -p swell-loadtest --bin swell-loadtest
mkdir -p loadtest-results
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize no \
  >"$work/redis.log" 2>&1 &
redis=$!
server=
cleanup() {
  [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  kill "$redis" 2>/dev/null; wait "$redis" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
cli() { redis-cli -p "$port" "$@"; }
# Seconds of CPU the server used so far: user, sys.
redis_cpu() { cli info cpu | tr -d '\r' | awk -F: '/^used_cpu_user:/ { u = $2 } /^used_cpu_sys:/ { s = $2 } END { printf "%.6f %.6f", u, s }'; }

echo "== redis-benchmark on this machine (port $port, $concurrency clients, no pipelining)"
redis-benchmark -p "$port" -c "$concurrency" -n 200000 -q -t ping_mbulk,set,get,lpush,xadd 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -5
redis-benchmark -p "$port" -c "$concurrency" -n 200000 -q \
  eval "redis.call('incr', KEYS[1]); return redis.call('get', KEYS[1])" 1 bench:counter 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -1
cli flushall >/dev/null

run() { # name, extra serve args...
  local name=$1
  shift
  RUST_LOG=warn target/release/swell serve --config loadtests/bench/configs/gateway-bench.toml "$@" &
  server=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.1; done
  target/release/swell-loadtest --url http://127.0.0.1:18080 --model zero --concurrency "$concurrency" \
    --requests 2000 --prompt-tokens 16 --output-tokens "$output_tokens" --quiet >/dev/null
  cli config resetstat >/dev/null
  cpu_before=$(redis_cpu)
  echo "== $name: $requests requests, $concurrency concurrent"
  target/release/swell-loadtest --url http://127.0.0.1:18080 --model zero --concurrency "$concurrency" \
    --requests "$requests" --prompt-tokens 16 --output-tokens "$output_tokens" --quiet \
    --json "loadtest-results/redis-bench-$name.json"
  cpu_used=$(python3 -c "import sys; a, b = sys.argv[1].split(), sys.argv[2].split(); print(float(b[0]) - float(a[0]), float(b[1]) - float(a[1]))" "$cpu_before" "$(redis_cpu)")
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=
}

run embedded
run redis --redis "redis://127.0.0.1:$port"

# Operations per request: every command Redis executed during the measured run (commands
# run inside Lua scripts included), divided by the requests. Supervisor/heartbeat ticks
# are in the total too (a few per second; negligible at this rate).
cli info commandstats | tr -d '\r' | grep '^cmdstat_' >loadtest-results/redis-bench-commandstats.txt
python3 - "$requests" $cpu_used <<'EOF'
import re, sys
requests = int(sys.argv[1])
cpu_user, cpu_sys = float(sys.argv[2]), float(sys.argv[3])
rows = []
for line in open("loadtest-results/redis-bench-commandstats.txt"):
    m = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", line)
    if m:
        rows.append((m.group(1), int(m.group(2)), int(m.group(3))))
rows.sort(key=lambda r: -r[1])
total = sum(r[1] for r in rows)
scripts = sum(r[1] for r in rows if r[0] in ("evalsha", "eval", "fcall", "evalsha_ro", "eval_ro"))
usec = sum(r[2] for r in rows)
print(f"== Redis commands during the measured run: {total} for {requests} requests = {total / requests:.1f} per request")
print(f"   of which script calls (one round trip each): {scripts / requests:.1f} per request")
print(f"   Redis CPU per request: {(cpu_user + cpu_sys) * 1e6 / requests:.0f} us (INFO cpu: "
      f"{cpu_user * 1e6 / requests:.0f} user + {cpu_sys * 1e6 / requests:.0f} sys); "
      f"{usec / requests:.0f} us (sum of commandstats usec)")
for name, calls, us in rows[:15]:
    print(f"   {name:24s} {calls / requests:6.2f} per request  {us / max(calls, 1):6.1f} us/call")
EOF
