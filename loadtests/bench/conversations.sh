#!/usr/bin/env bash
# Multi-turn conversations (each turn resends the history) against Swell and llama-server
# on this machine, interleaved; TTFT per turn and wall time, JSON to loadtests/results/.
# See loadtests/bench/conversations.py for the method. Run on a quiet machine.
#
#   loadtests/bench/conversations.sh [--conversations 4] [--turns 8] [--rounds 3] [--class native|avx2] [--kv f32|q8]
#
# Needs the release binary (cargo build --release --bin swell); installs the rest.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/test-tools >/dev/null
.venv/bin/python -c 'import aiohttp' 2>/dev/null || .venv/bin/pip install --quiet --disable-pip-version-check 'aiohttp>=3.9,<4'
for arg in "$@"; do
  if [[ $arg == avx2 || $arg == --class=avx2 ]]; then
    scripts/reference/build-llama-cpp --avx2-server >&2
  fi
done
exec .venv/bin/python loadtests/bench/conversations.py "$@"
