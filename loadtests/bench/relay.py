#!/usr/bin/env python3
"""Swell's relay overhead on an external engine: one llama-server, driven directly and
through Swell, interleaved.

Run through loadtests/bench/relay.sh. It starts one llama-server (--threads T
--parallel 16 --no-repack) and one Swell (the release binary) whose deployment
`default` is that same llama-server as a fixed endpoint (`engine = "external"`,
`endpoints = [...]`, 16 slots): the process and its flags are the same on both sides,
only the path differs (client -> llama-server, or client -> Swell -> queue -> relay ->
llama-server). Then, for each round (default 3), in the order direct, Swell:

  TTFT  40 pairs of streaming /v1/completions of a short unique prompt (6 words, 2
        tokens out), one direct and one through Swell, alternating which goes first:
        TTFT p50 of each side and the median of the pairs' differences (Swell's added
        latency, with the engine's drift shared by both requests of a pair);
  N=1   9 sequential streams (unique ~100-token prompt, 128 tokens, temperature 0,
        ignore_eos): output tok/s over the wall time;
  N=16  16 such streams at once: output tok/s over the wall time, TTFT p50, and the
        CPU time llama-server and Swell used meanwhile.

Reports the median over rounds of each figure, for both sides, and Swell's throughput
as a share of direct and its added TTFT p50. Prompts are unique per request, so no
prefix cache helps either side.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import WORDS, Client, free_port, make_prompt, pct, run_decode, start_llama, stop  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("SWELL_MODEL_PATH", REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
SWELL = REPO / "target" / "release" / "swell"
CONTEXT = 512  # per sequence


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_swell(llama_url: str, slots: int, port: int, log: Path):
    config = f"""
[server]
listen = "127.0.0.1:{port}"
[deployments.default]
engine = "external"
[deployments.default.external]
preset = "llama-server"
endpoints = ["{llama_url}"]
tokenizer = "{MODEL}"
slots = {slots}
context_length = {CONTEXT}
[deployments.default.autoscaling]
min_replicas = 1
max_replicas = 1
"""
    path = Path(tempfile.mkdtemp()) / "relay.toml"
    path.write_text(config)
    f = open(log, "w")
    proc = subprocess.Popen([str(SWELL), "serve", "--config", str(path)], stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, "RUST_LOG": "warn"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"swell exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(url + "/admin/v1/deployments/default", timeout=1) as r:
                if json.load(r)["replicas"]["ready"] == 1:
                    return proc, url
        except Exception:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("swell's replica did not become ready")


async def singles(client: Client, prompts: list[str], gen: int) -> dict:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     timeout=aiohttp.ClientTimeout(total=600)) as s:
        start = time.perf_counter()
        rs = [await client.stream(s, p, gen) for p in prompts]
        wall = time.perf_counter() - start
    return {"output_tok_s": sum(r["n_tokens"] for r in rs) / wall,
            "ttft_p50_s": pct([r["ttft"] for r in rs], 0.5),
            "tokens": sorted({r["n_tokens"] for r in rs})}


async def ttft_pairs(direct: Client, swell: Client, prompts, n: int) -> list[dict]:
    """`n` pairs of short requests, one per side, alternating which goes first."""
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     timeout=aiohttp.ClientTimeout(total=600)) as s:
        for i in range(n):
            order = [("direct", direct), ("swell", swell)]
            if i % 2:
                order.reverse()
            pair = {}
            for side, client in order:
                pair[side] = (await client.stream(s, next(prompts), 2))["ttft"]
            out.append(pair)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--singles", type=int, default=9)
    ap.add_argument("--ttft-pairs", type=int, default=40)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if not SWELL.exists():
        sys.exit(f"{SWELL} is missing: cargo build --release --bin swell")
    rng = random.Random(1)
    count = lambda s: max(1, len(s) // 4)  # ~100-token prompts; usage counts exactly
    need = a.rounds * 2 * (a.singles + a.streams + 2)
    prompts = iter([make_prompt(100, count, rng)[0] for _ in range(need)])
    shorts = iter([" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(a.rounds * 2 * a.ttft_pairs)])
    logdir = REPO / "loadtests" / "bench" / "results"
    logdir.mkdir(parents=True, exist_ok=True)
    llama, llama_url, cmd = start_llama(str(MODEL), a.streams, a.threads, a.streams * CONTEXT, free_port(),
                                        logdir / "relay-llama-server.log")
    swell = None
    try:
        swell, swell_url = start_swell(llama_url, a.streams, free_port(), logdir / "relay-swell.log")
        sides = {"direct": Client(llama_url, "default", None, {}), "swell": Client(swell_url, "default", None, {})}
        runs = {side: {"ttft": [], "n1": [], "n16": []} for side in sides}
        added = []
        for round_ in range(a.rounds):
            pairs = asyncio.run(ttft_pairs(sides["direct"], sides["swell"], shorts, a.ttft_pairs))
            for side in sides:
                runs[side]["ttft"].append({"ttft_p50_s": pct([p[side] for p in pairs], 0.5)})
            added.append(statistics.median(p["swell"] - p["direct"] for p in pairs))
            print(f"round {round_ + 1} TTFT p50, short prompt: direct {runs['direct']['ttft'][-1]['ttft_p50_s'] * 1000:.1f} ms, "
                  f"swell {runs['swell']['ttft'][-1]['ttft_p50_s'] * 1000:.1f} ms; median pair difference "
                  f"{added[-1] * 1000:+.2f} ms", flush=True)
            for side, client in sides.items():
                asyncio.run(singles(client, [next(prompts)], 8))  # warm-up
                one = asyncio.run(singles(client, [next(prompts) for _ in range(a.singles)], a.gen_tokens))
                cpu0 = (cpu_seconds(llama.pid), cpu_seconds(swell.pid))
                many = asyncio.run(run_decode(client, a.streams, [next(prompts) for _ in range(a.streams)], a.gen_tokens))
                cpu1 = (cpu_seconds(llama.pid), cpu_seconds(swell.pid))
                many["cpu_s_llama"], many["cpu_s_swell"] = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
                runs[side]["n1"].append(one)
                runs[side]["n16"].append(many)
                print(f"round {round_ + 1} {side:6s}: N=1 {one['output_tok_s']:7.1f} tok/s | N={a.streams} {many['output_tok_s_wall']:7.1f} tok/s, "
                      f"TTFT p50 {many['ttft_p50_s'] * 1000:6.1f} ms; CPU s llama {many['cpu_s_llama']:.2f}, "
                      f"swell {many['cpu_s_swell']:.2f}", flush=True)
    finally:
        if swell:
            stop(swell)
        stop(llama)

    med = lambda xs: statistics.median(xs)
    summary = {}
    for side in runs:
        summary[side] = {
            "short_ttft_p50_ms": med([r["ttft_p50_s"] for r in runs[side]["ttft"]]) * 1000,
            "n1_tok_s": med([r["output_tok_s"] for r in runs[side]["n1"]]),
            "n1_ttft_p50_ms": med([r["ttft_p50_s"] for r in runs[side]["n1"]]) * 1000,
            "n16_tok_s": med([r["output_tok_s_wall"] for r in runs[side]["n16"]]),
            "n16_ttft_p50_ms": med([r["ttft_p50_s"] for r in runs[side]["n16"]]) * 1000,
            "n16_swell_cpu_s_per_1k_tokens": med([r["cpu_s_swell"] / r["output_tokens"] * 1000 for r in runs[side]["n16"]]),
        }
    d, s = summary["direct"], summary["swell"]
    print()
    print(f"| streams | direct tok/s | Swell tok/s | Swell / direct | direct TTFT p50 | Swell TTFT p50 | added |")
    print("|---|---|---|---|---|---|---|")
    for n, key in ((1, "n1"), (a.streams, "n16")):
        print(f"| {n} | {d[key + '_tok_s']:.1f} | {s[key + '_tok_s']:.1f} | {s[key + '_tok_s'] / d[key + '_tok_s'] * 100:.1f}% | "
              f"{d[key + '_ttft_p50_ms']:.1f} ms | {s[key + '_ttft_p50_ms']:.1f} ms | "
              f"{s[key + '_ttft_p50_ms'] - d[key + '_ttft_p50_ms']:+.1f} ms |")
    added_ms = statistics.median(added) * 1000
    print(f"\nTTFT p50, short prompt: direct {d['short_ttft_p50_ms']:.1f} ms, Swell {s['short_ttft_p50_ms']:.1f} ms; "
          f"added (median over rounds of the median pair difference): {added_ms:+.2f} ms")
    print(f"Swell's CPU time per 1000 tokens relayed at N={a.streams}: {s['n16_swell_cpu_s_per_1k_tokens']:.3f} s")
    print(f"median of {a.rounds} interleaved rounds; llama-server {' '.join(cmd[1:])}")
    result = {"time": dt.datetime.now().isoformat(timespec="seconds"), "threads": a.threads, "rounds": a.rounds,
              "gen_tokens": a.gen_tokens, "llama_server_args": cmd[1:], "summary": summary, "runs": runs,
              "ttft_added_ms_per_round": [x * 1000 for x in added],
              "loadavg_end": os.getloadavg()}
    out = Path(a.out) if a.out else logdir / f"relay-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
