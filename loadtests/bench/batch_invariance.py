#!/usr/bin/env python3
"""Is llama-server's greedy decoding batch-invariant? What resuming a stream from prompt +
delivered tokens (prefilled as one batch) does to the text that follows.

    .venv/bin/python loadtests/bench/batch_invariance.py                    # default flags
    .venv/bin/python loadtests/bench/batch_invariance.py --ubatch-size 1    # micro-batches of 1

Starts one llama-server (1 thread, 1 slot, --no-repack, plus the given flags), generates
400 greedy tokens from a prompt, then for k in 20, 93, 150, 250 asks again for 60 tokens
with prompt + the first k tokens as a token-id prompt (cache_prompt off, so the k tokens
are prefilled in one batch) and prints where that continuation first differs from the
undisturbed run (None: not within 60 tokens).
"""
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import LLAMA_SERVER, DEFAULT_MODEL, free_port  # noqa: E402


def post(url, path, body):
    request = urllib.request.Request(url + path, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def main():
    port = free_port()
    cmd = [str(LLAMA_SERVER), "-m", str(DEFAULT_MODEL), "--port", str(port), "-c", "8192", "-np", "1",
           "-t", "1", "--no-repack", *sys.argv[1:]]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.1)
        greedy = {"temperature": 0, "top_k": 0, "min_p": 0, "repeat_penalty": 1.0, "ignore_eos": True,
                  "return_tokens": True, "cache_prompt": False}
        prompt = post(url, "/tokenize", {"content": "Once upon a time, in a small village by the sea,"})["tokens"]
        reference = post(url, "/completion", {"prompt": prompt, "n_predict": 400, **greedy})["tokens"]
        print("flags:", " ".join(sys.argv[1:]) or "(defaults)")
        for k in (20, 93, 150, 250):
            resumed = post(url, "/completion", {"prompt": prompt + reference[:k], "n_predict": 60, **greedy})["tokens"]
            differs = next((i for i, (a, b) in enumerate(zip(resumed, reference[k:k + 60])) if a != b), None)
            print(f"resumed after {k} tokens: first difference at token {differs}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
