#!/usr/bin/env bash
# Cache-aware routing against any-replica routing on one Swell with several `llm`
# replicas: multi-turn conversations, TTFT p50/p90 over later turns, prefill saved by the
# replicas' prefix caches, wall time; JSON to loadtests/results/. See
# loadtests/bench/routing.py for the method. Run on a quiet machine.
#
#   loadtests/bench/routing.sh [--replicas 4] [--conversations 8] [--turns 6] [--rounds 2]
#
# Needs the release binary (cargo build --release --bin swell); installs the rest.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/test-tools >/dev/null
.venv/bin/python -c 'import aiohttp' 2>/dev/null || .venv/bin/pip install --quiet --disable-pip-version-check 'aiohttp>=3.9,<4'
exec .venv/bin/python loadtests/bench/routing.py "$@"
