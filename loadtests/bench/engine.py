#!/usr/bin/env python3
"""Engine benchmark for an OpenAI-compatible server (llama-server or Swell).

Run through loadtests/bench/engine.sh (uses .tools/refenv/bin/python: aiohttp + llama_cpp
for exact prompt token counts). Measures, with streaming /v1/completions requests:

  decode   N concurrent sequences (N in --concurrency, default 1,4,16,64), each a unique
           ~100-token prompt and exactly 128 generated tokens (ignore_eos, temperature 0).
           Reports aggregate output tok/s over the whole wall time (includes the N
           prefills) and the steady-state decode tok/s: tokens streamed by all sequences
           while all N were decoding (from the last first-token to the first finish).
  prefill  a unique ~1000-token prompt, max_tokens 1, one at a time: prompt_tokens / time.
  ttft     p50 time to first streamed token of a single ~100-token request (idle server).

Every prompt starts with a different random word sequence, so no prefix cache can help.
--target llama starts llama-server (--threads T --parallel N --no-repack -cb) per N;
--target swell measures a server that is already running (--url).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_SERVER = REPO / ".tools" / "llama.cpp" / "build" / "bin" / "llama-server"

WORDS = (
    "apple river mountain silver garden window candle forest thunder pencil ocean marble "
    "violin desert lantern harbor meadow falcon copper glacier orchard compass velvet "
    "canyon ember willow quartz saddle beacon harvest tundra lagoon prairie summit cedar "
    "anchor basalt cobalt dune fjord grove hollow island jungle kettle ledge mesa nectar "
    "oasis pebble quiver ridge spruce timber umber valley wharf yarrow zephyr acorn birch"
).split()
FILLER = (
    "The history of science is a long story of careful observation, bold guesses and "
    "patient testing. Early astronomers tracked the motion of the planets across the night "
    "sky and recorded what they saw in tables that were copied for centuries. Later, "
    "instruments such as the telescope and the microscope opened new worlds, and "
    "experiments replaced argument as the final judge of a theory. "
)


def tokenizer(model: str):
    try:
        import llama_cpp as L

        llm = L.Llama(model_path=model, vocab_only=True, verbose=False)
        return lambda s: len(llm.tokenize(s.encode(), add_bos=False, special=False))
    except Exception as e:  # pragma: no cover - fallback when llama_cpp is absent
        print(f"(no llama_cpp tokenizer: {e}; estimating 1 token per 4 chars)", file=sys.stderr)
        return lambda s: max(1, len(s) // 4)


def make_prompt(ntok_target: int, count, rng: random.Random) -> tuple[str, int]:
    head = " ".join(rng.choice(WORDS) for _ in range(6)).capitalize() + ". "
    text = head
    while count(text) < ntok_target:
        text += FILLER
    # trim word by word to just under/at the target
    words = text.split(" ")
    while len(words) > 8 and count(" ".join(words)) > ntok_target:
        words.pop()
    text = " ".join(words)
    return text, count(text)


async def sse_events(resp):
    """The JSON events of a streaming (SSE) response, `[DONE]` left out."""
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                continue
            yield json.loads(data)


class Client:
    def __init__(self, url: str, model: str, api_key: str | None, extra: dict):
        self.url = url.rstrip("/") + "/v1/completions"
        self.model = model
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.extra = extra

    async def stream(self, session: aiohttp.ClientSession, prompt: str, max_tokens: int,
                     ignore_eos: bool = True) -> dict:
        body = {
            "model": self.model, "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "ignore_eos": ignore_eos,
            "stream_options": {"include_usage": True}, **self.extra,
        }
        t0 = time.perf_counter()
        stamps: list[float] = []
        usage = None
        async with session.post(self.url, json=body, headers=self.headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
            async for ev in sse_events(resp):
                if ev.get("usage"):
                    usage = ev["usage"]
                for ch in ev.get("choices") or []:
                    if ch.get("text"):
                        stamps.append(time.perf_counter())
        t1 = time.perf_counter()
        n = (usage or {}).get("completion_tokens") or len(stamps)
        return {"t0": t0, "t1": t1, "stamps": stamps, "usage": usage, "n_tokens": n,
                "ttft": (stamps[0] - t0) if stamps else None}


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def run_decode(client: Client, n: int, prompts: list[str], gen: int) -> dict:
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        start = time.perf_counter()
        rs = await asyncio.gather(*(client.stream(s, prompts[i], gen) for i in range(n)))
        end = time.perf_counter()
    wall = end - start
    total = sum(r["n_tokens"] for r in rs)
    all_started = max(r["stamps"][0] for r in rs)
    first_done = min(r["stamps"][-1] for r in rs)
    steady_tok = sum(1 for r in rs for t in r["stamps"] if all_started < t <= first_done)
    steady = steady_tok / (first_done - all_started) if first_done > all_started else None
    per_seq = [(len(r["stamps"]) - 1) / (r["stamps"][-1] - r["stamps"][0])
               for r in rs if len(r["stamps"]) > 1 and r["stamps"][-1] > r["stamps"][0]]
    ttfts = [r["ttft"] for r in rs]
    return {
        "concurrency": n, "wall_s": wall, "output_tokens": total,
        "tokens_per_request": sorted({r["n_tokens"] for r in rs}),
        "output_tok_s_wall": total / wall,
        "decode_tok_s_steady": steady,
        "per_seq_decode_tok_s_median": statistics.median(per_seq) if per_seq else None,
        "ttft_p50_s": pct(ttfts, 0.5), "ttft_max_s": max(ttfts),
    }


async def run_single(client: Client, prompts: list[str], gen: int) -> list[dict]:
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     timeout=aiohttp.ClientTimeout(total=600)) as s:
        for p in prompts:
            out.append(await client.stream(s, p, gen))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama(model: str, n: int, threads: int, ctx: int, port: int, log: Path):
    cmd = [str(LLAMA_SERVER), "-m", model, "--threads", str(threads),
           "--threads-batch", str(threads), "--parallel", str(n), "--ctx-size", str(ctx),
           "--no-repack", "-cb", "--host", "127.0.0.1", "--port", str(port)]
    f = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import urllib.request
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url, cmd
        except Exception:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("llama-server did not become healthy")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=["llama", "swell"], required=True)
    ap.add_argument("--url", help="base URL of a running server (required for swell)")
    ap.add_argument("--model-path", default=os.environ.get("SWELL_MODEL_PATH", str(DEFAULT_MODEL)))
    ap.add_argument("--model", default="default", help="request 'model' field (Swell deployment)")
    ap.add_argument("--api-key", default=os.environ.get("SWELL_API_KEY"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--prefill-tokens", type=int, default=1000)
    ap.add_argument("--prefill-runs", type=int, default=3)
    ap.add_argument("--ttft-runs", type=int, default=9)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON path (default loadtests/bench/results/<target>-<time>.json)")
    a = ap.parse_args()
    if a.target == "swell" and not a.url:
        ap.error("--target swell needs --url")
    model = str(Path(a.model_path) if Path(a.model_path).is_absolute() else REPO / a.model_path)
    if a.target == "llama" and not Path(model).exists():
        sys.exit(f"model not found: {model} (SWELL_MODEL_PATH / scripts/fetch-model)")
    levels = [int(x) for x in a.concurrency.split(",")]

    count = tokenizer(model) if Path(model).exists() else (lambda s: max(1, len(s) // 4))
    rng = random.Random(a.seed)
    pool = [make_prompt(a.prompt_tokens, count, rng) for _ in range(max(levels) * 2 + a.ttft_runs + 4)]
    short = [p for p, _ in pool]
    short_tok = statistics.mean(t for _, t in pool)
    long_ = [make_prompt(a.prefill_tokens, count, rng) for _ in range(a.prefill_runs + 1)]
    extra = {"cache_prompt": False} if a.target == "llama" else {}

    results = {"target": a.target, "threads": a.threads, "host": platform.node(),
               "cpu_count": os.cpu_count(), "time": dt.datetime.now().isoformat(timespec="seconds"),
               "prompt_tokens": round(short_tok, 1), "gen_tokens": a.gen_tokens,
               "prefill_prompt_tokens": [t for _, t in long_], "decode": [],
               "loadavg_start": os.getloadavg()}
    if a.target == "llama":
        results["server"] = str(LLAMA_SERVER.relative_to(REPO))
    print(f"# target={a.target} threads={a.threads} prompt≈{short_tok:.0f} tok, gen={a.gen_tokens} tok",
          flush=True)
    logdir = REPO / "loadtests" / "bench" / "results"
    logdir.mkdir(parents=True, exist_ok=True)
    cursor = 0

    def with_server(n, fn):
        if a.target == "swell":
            return fn(Client(a.url, a.model, a.api_key, extra))
        ctx = max(n * 400, 2048) if n > 1 else 4096
        proc, url, cmd = start_llama(model, n, a.threads, ctx, free_port(), logdir / f"llama-server-np{n}.log")
        results.setdefault("server_cmds", {})[str(n)] = " ".join(cmd[1:])
        try:
            return fn(Client(url, a.model, None, extra))
        finally:
            stop(proc)

    # 1. single-request metrics (N=1 server): warm-up, TTFT, prefill
    def singles(c: Client):
        nonlocal cursor
        asyncio.run(run_single(c, [short[cursor]], 4)); cursor += 1  # warm-up
        rs = asyncio.run(run_single(c, short[cursor:cursor + a.ttft_runs], 8)); cursor += a.ttft_runs
        ttft = [r["ttft"] for r in rs]
        pr = asyncio.run(run_single(c, [p for p, _ in long_], 1))
        rates = []
        for r, (_, t) in zip(pr[1:], long_[1:]):  # first long one is a warm-up
            pt = (r["usage"] or {}).get("prompt_tokens") or t
            rates.append(pt / (r["t1"] - r["t0"]))
        return {"ttft_p50_s": pct(ttft, 0.5), "ttft_min_s": min(ttft), "ttft_max_s": max(ttft),
                "ttft_runs": len(ttft), "prefill_tok_s_median": statistics.median(rates),
                "prefill_tok_s_runs": rates}

    results["single"] = with_server(1, singles)
    s = results["single"]
    print(f"TTFT p50 {s['ttft_p50_s'] * 1000:.1f} ms (min {s['ttft_min_s'] * 1000:.1f}, "
          f"max {s['ttft_max_s'] * 1000:.1f}, n={s['ttft_runs']}); "
          f"prefill {s['prefill_tok_s_median']:.0f} tok/s (~{a.prefill_tokens}-token prompt)", flush=True)

    # 2. decode at each concurrency
    for n in levels:
        def dec(c: Client, n=n):
            nonlocal cursor
            asyncio.run(run_single(c, [short[cursor]], 8)); cursor += 1  # warm-up
            ps = [short[(cursor + i) % len(short)] for i in range(n)]
            cursor += n
            return asyncio.run(run_decode(c, n, ps, a.gen_tokens))
        r = with_server(n, dec)
        results["decode"].append(r)
        print(f"N={n:3d}: {r['output_tok_s_wall']:8.1f} tok/s wall, steady decode "
              f"{(r['decode_tok_s_steady'] or 0):8.1f} tok/s, per-seq {r['per_seq_decode_tok_s_median']:.1f} tok/s, "
              f"TTFT p50 {r['ttft_p50_s']:.2f}s, wall {r['wall_s']:.1f}s, tokens/req {r['tokens_per_request']}",
              flush=True)

    print()
    print(f"| target | threads | N | output tok/s (wall) | steady decode tok/s | per-seq tok/s | TTFT p50 (s) | wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["decode"]:
        print(f"| {a.target} | {a.threads} | {r['concurrency']} | {r['output_tok_s_wall']:.1f} | "
              f"{(r['decode_tok_s_steady'] or 0):.1f} | {r['per_seq_decode_tok_s_median']:.1f} | "
              f"{r['ttft_p50_s']:.3f} | {r['wall_s']:.1f} |")
    print(f"\nprefill: {s['prefill_tok_s_median']:.0f} tok/s; TTFT p50 (idle, ~{short_tok:.0f}-token prompt): "
          f"{s['ttft_p50_s'] * 1000:.1f} ms; threads={a.threads}")
    results["loadavg_end"] = os.getloadavg()
    print(f"load average at start {results['loadavg_start'][0]:.2f}, at end {results['loadavg_end'][0]:.2f} "
          f"(other work on the machine skews the numbers)")
    out = Path(a.out) if a.out else logdir / f"{a.target}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
