#!/usr/bin/env bash
# Swell's engine against llama-server on this machine, one kernel class, medians of
# interleaved rounds, with the CPU model and flags in the JSON (loadtests/results/).
# See loadtests/bench/compare.py for the method. Run on a quiet machine.
#
#   loadtests/bench/compare.sh [--class native|avx2] [--threads 2] [--rounds 3]
#
# Needs the release binary (cargo build --release --bin swell), the model
# (scripts/fetch-model), llama-server (scripts/reference/build-llama-cpp --server-only; for
# --class avx2, --avx2-server) and a Python with aiohttp (installed into .venv here).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/test-tools >/dev/null
.venv/bin/python -c 'import aiohttp' 2>/dev/null || .venv/bin/pip install --quiet --disable-pip-version-check 'aiohttp>=3.9,<4'
for arg in "$@"; do
  if [[ $arg == avx2 || $arg == --class=avx2 ]]; then
    scripts/reference/build-llama-cpp --avx2-server >&2
  fi
done
exec .venv/bin/python loadtests/bench/compare.py "$@"
