#!/usr/bin/env bash
# Every ServeGen tenant (m-small, then m-mid), its first day, on one `sim` profile, every
# policy: `loadtests/bench/servegen-sweep/run.sh [OUT] [PROFILE]`, then
# `python3 loadtests/bench/servegen-sweep/table.py OUT` for the table in docs/servegen-sweep.md. Resumable: a tenant
# whose summary.json exists is skipped. Tenants idle the whole day are reported and skipped.
# Runs `SWEEP_JOBS` tenants at once (default: the number of CPUs).
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=${1:-sim-out/servegen-sweep}
profile=${2:-llama-3.1-8b-h100}
traces=${SWELL_TRACES:-loadtests/traces}
jobs=${SWEEP_JOBS:-$(nproc)}
cargo build --release -p swell-simulator --bin swell-simulate
simulate=${CARGO_TARGET_DIR:-target}/release/swell-simulate
one() {
  local set=$1 chunk=$2 dir=$out/$1/$2
  mkdir -p "$dir"
  [ -f "$dir/summary.json" ] && return 0
  if ! "$simulate" --trace "servegen:$set/$chunk" --duration 1d --profile "$profile" \
      --traces-dir "$traces" --out "$dir" > "$dir/table.md" 2>&1; then
    echo "$set/$chunk: $(tail -1 "$dir/table.md")"
  fi
}
export -f one
export out profile traces simulate
for set in m-small m-mid; do
  for file in "$traces"/servegen/language/$set/chunk-*-trace.csv; do
    echo "$set $(basename "$file" -trace.csv)"
  done
done | xargs -P "$jobs" -L1 bash -c 'one "$0" "$1"'
