#!/usr/bin/env python3
"""Cache-aware routing against any-replica routing, live: one Swell, several `llm` replicas.

Run through loadtests/bench/routing.sh. Swell serves the GGUF with R replicas (one thread
each, prefix caching on) and `[deployments.default.routing] policy` set to each policy
in turn, a fresh server per run. N conversations run at once, T turns each, every turn
resending the whole history (the conversations of loadtests/bench/conversations.py).

Per run: TTFT p50 and p90 over turns 2..T, wall time, and the prefill the replicas'
prefix caches saved: `swell_engine_prefix_cache_hit_tokens_total` over hit + miss tokens
(from /metrics, summed over the replicas), and how many routed jobs started on the
replica they were promised to. Rounds alternate which policy goes first. The JSON (every
round, medians, CPU model and flags, commands) goes to loadtests/results/.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import MODEL, REPO, SWELL, cpu_info, save_result, start_swell  # noqa: E402
from conversations import conversations  # noqa: E402
from engine import stop  # noqa: E402


def start(policy: str, replicas: int, kv_tokens: int, log: Path):
    proc, url, cmd, _ = start_swell("auto", 1, log, kv_tokens, replicas=replicas,
                                    extra=f'[deployments.default.routing]\npolicy = "{policy}"')
    return proc, url, cmd


def metric_sum(text: str, name: str, label: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {"hit": metric_sum(text, "swell_engine_prefix_cache_hit_tokens_total"),
            "miss": metric_sum(text, "swell_engine_prefix_cache_miss_tokens_total"),
            "kept": metric_sum(text, "swell_routing_routed_starts_total", 'outcome="kept"'),
            "moved": metric_sum(text, "swell_routing_routed_starts_total", 'outcome="moved"')}


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run_policy(url: str, n: int, turns: int, answer_tokens: int) -> dict:
    results: list = []
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        before = scrape(url)
        wall = await conversations(session, url, n, turns, answer_tokens, results)
        after = scrape(url)
    delta = {k: after[k] - before[k] for k in after}
    later = [r["ttft"] * 1000 for r in results if r["turn"] >= 2]
    return {"wall_s": wall, "ttft_p50_ms": pct(later, 0.5), "ttft_p90_ms": pct(later, 0.9),
            "prefill_saved": delta["hit"] / max(1.0, delta["hit"] + delta["miss"]),
            "hit_tokens": delta["hit"], "miss_tokens": delta["miss"], "routed_kept": delta["kept"],
            "routed_moved": delta["moved"], "requests": results}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--answer-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--policies", default="cache-aware,any")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    for path, how in ((SWELL, "cargo build --release --bin swell"), (MODEL, "scripts/fetch-model")):
        if not path.exists():
            sys.exit(f"{path} is missing: {how}")
    policies = a.policies.split(",")
    # Each replica's cache holds every conversation's history: eviction is not what is measured.
    kv_tokens = a.conversations * 4096
    logdir = REPO / "loadtests" / "results" / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    print(f"# {cpu['model']}, {cpu['cores']} cores; SIMD: {' '.join(cpu['simd_flags'])}")
    print(f"# {a.replicas} replicas x 1 thread; {a.conversations} conversations x {a.turns} turns, answers <= "
          f"{a.answer_tokens} tokens; {a.rounds} rounds", flush=True)
    runs = {p: [] for p in policies}
    commands = {}
    for round_ in range(a.rounds):
        order = policies if round_ % 2 == 0 else policies[::-1]
        for policy in order:
            log = logdir / f"routing-{policy}.log"
            proc, url, cmd = start(policy, a.replicas, kv_tokens, log)
            commands[policy] = cmd
            try:
                r = asyncio.run(run_policy(url, a.conversations, a.turns, a.answer_tokens))
            finally:
                stop(proc)
            runs[policy].append(r)
            print(f"round {round_ + 1} {policy:11s}: wall {r['wall_s']:6.1f} s | TTFT turns 2-{a.turns} p50 "
                  f"{r['ttft_p50_ms']:7.1f} ms p90 {r['ttft_p90_ms']:7.1f} ms | prefill saved "
                  f"{100 * r['prefill_saved']:5.1f}% | routed kept {r['routed_kept']:.0f} moved {r['routed_moved']:.0f}",
                  flush=True)
    keys = ("wall_s", "ttft_p50_ms", "ttft_p90_ms", "prefill_saved")
    med = {p: {k: statistics.median(r[k] for r in runs[p]) for k in keys} for p in policies}
    print()
    print(f"| policy | TTFT p50, turns 2-{a.turns} (ms) | TTFT p90 (ms) | prefill saved | wall (s) |")
    print("|---|---:|---:|---:|---:|")
    for p in policies:
        m = med[p]
        print(f"| {p} | {m['ttft_p50_ms']:.0f} | {m['ttft_p90_ms']:.0f} | {100 * m['prefill_saved']:.1f}% | {m['wall_s']:.1f} |")
    save_result({"replicas": a.replicas, "conversations": a.conversations, "turns": a.turns,
                 "answer_tokens": a.answer_tokens, "rounds": a.rounds, "cpu": cpu, "commands": commands,
                 "median": med, "runs": runs}, "routing", a.out)

if __name__ == "__main__":
    main()
