#!/usr/bin/env bash
# Distributed-mode benchmark: requests/s and added latency through the Redis path, with
# the `sim` engine at zero service time (loadtests/bench/configs/gateway-bench.toml),
# through one Redis and through a Redis Cluster of 3 masters, against
#   - the same server on the embedded in-process queue (what Redis adds), and
#   - the bound `redis-benchmark` sets on this machine (what Redis allows):
#     Redis operations per Swell request are counted from `INFO commandstats` (summed
#     over the cluster's masters).
#
#   loadtests/bench/redis.sh [CONCURRENCY] [REQUESTS] [OUTPUT_TOKENS]
#
# Requests come from one tenant with an API key and limits far above what is reached, so
# each request also pays for its quota: admitted and settled (in distributed mode,
# through Redis).
#
# Starts its own redis-server and 3-master cluster on free ports (no persistence: `--save "" --appendonly
# no`; with `appendonly yes` + `appendfsync always` every write waits for an fsync),
# builds release binaries, runs a warm-up and a measured closed loop (OUTPUT_TOKENS per
# request, default 1, SSE) for each queue, and writes loadtest-results/redis-bench-*.json
# and loadtest-results/redis-bench-commandstats-{redis,cluster}.txt. Redis CPU per request is given twice:
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
# The cluster: 3 masters on ports whose bus port (+10000) is free too.
cluster_ports=$(python3 -c '
import socket
ports = []
while len(ports) < 3:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p > 55000: continue
    b = socket.socket()
    try: b.bind(("127.0.0.1", p + 10000))
    except OSError: continue
    finally: b.close()
    s.close(); ports.append(p)
print(" ".join(map(str, ports)))')
cluster_pids=()
for p in $cluster_ports; do
  mkdir -p "$work/$p"
  redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$work/$p" --daemonize no \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-require-full-coverage no >"$work/$p/redis.log" 2>&1 &
  cluster_pids+=($!)
done
server=
cleanup() {
  [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  kill "$redis" "${cluster_pids[@]}" 2>/dev/null; wait "$redis" "${cluster_pids[@]}" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
# The tenant (its key is `sk-swell-bench`).
config="$work/bench.toml"
cat loadtests/bench/configs/gateway-bench.toml - >"$config" <<'TOML'

[tenants.bench]
api_key_hashes = ["sha256:4c08923e61b3007ed8888ee41f650be82e473caca248bf35a21aea61d9e5c067"]
limits = { requests_per_minute = 100000000, prompt_tokens_per_minute = 1000000000, output_tokens_per_minute = 1000000000, max_concurrent_requests = 100000 }
TOML
for p in $port $cluster_ports; do
  for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create $(for p in $cluster_ports; do printf '127.0.0.1:%s ' "$p"; done) --cluster-yes >/dev/null
for p in $cluster_ports; do
  for _ in $(seq 100); do redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.1; done
done
cluster_url="redis-cluster://$(for p in $cluster_ports; do printf '127.0.0.1:%s,' "$p"; done | sed 's/,$//')"
cli() { redis-cli -p "$port" "$@"; }
# Seconds of CPU the servers on ports $1... used so far: user, sys (summed).
redis_cpu() {
  for p in "$@"; do redis-cli -p "$p" info cpu; done | tr -d '\r' |
    awk -F: '/^used_cpu_user:/ { u += $2 } /^used_cpu_sys:/ { s += $2 } END { printf "%.6f %.6f", u, s }'
}

echo "== redis-benchmark on this machine (port $port, $concurrency clients, no pipelining)"
redis-benchmark -p "$port" -c "$concurrency" -n 200000 -q -t ping_mbulk,set,get,lpush,xadd 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -5
redis-benchmark -p "$port" -c "$concurrency" -n 200000 -q \
  eval "redis.call('incr', KEYS[1]); return redis.call('get', KEYS[1])" 1 bench:counter 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -1
cli flushall >/dev/null

run() { # name, the Redis ports it uses, extra serve args...
  local name=$1 ports=$2
  shift 2
  RUST_LOG=warn target/release/swell serve --config "$config" "$@" &
  server=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.1; done
  target/release/swell-loadtest --url http://127.0.0.1:18080 --model zero --api-key sk-swell-bench --concurrency "$concurrency" \
    --requests 2000 --prompt-tokens 16 --output-tokens "$output_tokens" --quiet >/dev/null
  for p in $ports; do redis-cli -p "$p" config resetstat >/dev/null; done
  cpu_before=$(redis_cpu $ports)
  echo "== $name: $requests requests, $concurrency concurrent"
  target/release/swell-loadtest --url http://127.0.0.1:18080 --model zero --api-key sk-swell-bench --concurrency "$concurrency" \
    --requests "$requests" --prompt-tokens 16 --output-tokens "$output_tokens" --quiet \
    --json "loadtest-results/redis-bench-$name.json"
  cpu_used=$(python3 -c "import sys; a, b = sys.argv[1].split(), sys.argv[2].split(); print(float(b[0]) - float(a[0]), float(b[1]) - float(a[1]))" "$cpu_before" "$(redis_cpu $ports)")
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=
  [[ -z $ports ]] && return
  # Operations per request: every command Redis executed during the measured run
  # (commands run inside Lua scripts included, summed over the nodes), divided by the
  # requests. Supervisor/heartbeat ticks are in the total too (a few per second).
  for p in $ports; do redis-cli -p "$p" info commandstats; done | tr -d '\r' | grep '^cmdstat_' \
    >"loadtest-results/redis-bench-commandstats-$name.txt"
  stats "$name" $cpu_used
}

stats() { # name, cpu user, cpu sys
python3 - "$requests" "$2" "$3" "loadtest-results/redis-bench-commandstats-$1.txt" "$1" <<'EOF'
import re, sys
requests = int(sys.argv[1])
cpu_user, cpu_sys = float(sys.argv[2]), float(sys.argv[3])
summed = {}
for line in open(sys.argv[4]):
    m = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", line)
    if m:
        calls, usec = summed.get(m.group(1), (0, 0))
        summed[m.group(1)] = (calls + int(m.group(2)), usec + int(m.group(3)))
rows = sorted(((name, calls, us) for name, (calls, us) in summed.items()), key=lambda r: -r[1])
print(f"== {sys.argv[5]}")
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
}

run embedded ""
run redis "$port" --redis "redis://127.0.0.1:$port"
run cluster "$cluster_ports" --redis "$cluster_url"
