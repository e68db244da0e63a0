#!/usr/bin/env bash
# Engine benchmark (decode tok/s at 1/4/16/64 concurrent streams, prefill tok/s, TTFT)
# against an OpenAI-compatible server. See loadtests/bench/engine.py for the method.
#
#   loadtests/bench/engine.sh --target llama            # starts llama-server per concurrency
#   loadtests/bench/engine.sh --target swell --url http://127.0.0.1:8080 [--model default] [--api-key KEY]
#   extra options: --threads 2 --concurrency 1,4,16,64 --gen-tokens 128 --out FILE
#
# Needs scripts/reference/build-llama-cpp (llama-server + .tools/refenv python with aiohttp
# and llama_cpp for exact prompt token counts) and the model at $SWELL_MODEL_PATH or
# models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-model).
# Prints a markdown table and writes JSON to loadtests/bench/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.tools/refenv/bin/python
if [[ ! -x $py ]]; then
  echo "missing $py: run scripts/reference/build-llama-cpp first" >&2
  exit 1
fi
exec "$py" loadtests/bench/engine.py "$@"
