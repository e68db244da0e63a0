#!/usr/bin/env bash
# Swell's relay overhead on an external engine: the same llama-server driven directly and
# through Swell, 1 and 16 concurrent streams, median of 3 interleaved rounds.
# See loadtests/bench/relay.py for the method. Run on a quiet machine.
#
#   loadtests/bench/relay.sh [--threads 2] [--rounds 3]
#
# Needs: llama-server (scripts/reference/build-llama-cpp --server-only), the release
# binary (cargo build --release --bin swell), the model (scripts/fetch-model), and a
# Python with aiohttp (installed into .venv here when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/test-tools >/dev/null
.venv/bin/python -c 'import aiohttp' 2>/dev/null || .venv/bin/pip install --quiet --disable-pip-version-check 'aiohttp>=3.9,<4'
exec .venv/bin/python loadtests/bench/relay.py "$@"
