#!/usr/bin/env python3
"""Multi-turn conversations against Swell and llama-server on this machine, interleaved.

Run through loadtests/bench/conversations.sh. Each side serves the same GGUF with the same
threads: llama-server with `--parallel N` (each slot keeps its cache between requests,
and a request goes to the slot whose cached prompt is most like it), Swell with one `llm`
replica (prefix caching on; `--swell-no-cache` runs it with `prefix_cache = false`).
`--kv q8` runs both with 8-bit keys and values (Swell `kv_cache_type = "q8"`,
llama-server `-ctk q8_0 -ctv q8_0 -fa on`); by default each keeps its own (f32, f16).

N conversations run at once, T turns each. Every turn sends the whole history through
/v1/chat/completions (streaming, temperature 0): the system turn, every earlier question
and the model's own earlier answers as text, and a new question. The answers are capped
at --answer-tokens. Per turn: time to first token (p50 over conversations); overall: the
median TTFT over turns 2..T, and the wall time of the whole run. Rounds alternate which
side goes first. The JSON (every round, medians, ratios, CPU model and flags, commands)
goes to loadtests/results/.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import LLAMA, MODEL, REPO, SWELL, cpu_info, save_result, start_llama, start_swell  # noqa: E402
from engine import sse_events, stop  # noqa: E402

SYSTEM = ("You are the support assistant of Swell, a self-hosted platform that serves language models on "
          "demand. Answer in a few plain sentences. When a question is about configuration, name the "
          "setting. When you are unsure, say so and suggest where to look.")

TOPICS = ["a chat product", "a code assistant", "a document search tool", "a customer support bot",
          "a translation service", "a summarization pipeline", "an agent platform", "a tutoring app"]

QUESTIONS = [
    "We are building {t} with about two hundred users at peak and almost none at night. How should we set up a "
    "deployment so that we do not pay for idle machines overnight?",
    "If a request for {t} arrives while no replica is running, what happens to it, and what does the client see "
    "while it waits for the first replica to start?",
    "Traffic to {t} has sharp spikes every hour when a batch job fires. Would a schedule or a predictive floor be "
    "the better tool, and why?",
    "How do per-tenant quotas interact with the queue? Can one noisy tenant of {t} still slow the others down?",
    "We would like to keep the first token of {t} under one second for our premium tenant. What does the SLO "
    "mode change in the autoscaler's decisions?",
    "When a replica of {t} is drained for maintenance, what happens to the streams it is serving at that moment?",
    "Which metrics should we put on the dashboard of {t} first, and what would a bad value look like?",
    "Finally, summarize in three bullet points what we should configure first, second and third for {t}.",
]


async def chat(session: aiohttp.ClientSession, url: str, messages: list, max_tokens: int) -> dict:
    body = {"model": "default", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, text, usage = None, [], None
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        async for ev in sse_events(resp):
            usage = ev.get("usage") or usage
            for ch in ev.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    text.append(piece)
    return {"ttft": (first or time.perf_counter()) - t0, "text": "".join(text),
            "prompt_tokens": (usage or {}).get("prompt_tokens")}


async def conversation(session, url: str, k: int, turns: int, answer_tokens: int, results: list):
    topic = TOPICS[k % len(TOPICS)]
    messages = [{"role": "system", "content": SYSTEM}]
    for turn in range(turns):
        messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)].format(t=topic)})
        r = await chat(session, url, messages, answer_tokens)
        results.append({"conversation": k, "turn": turn + 1, "ttft": r["ttft"], "prompt_tokens": r["prompt_tokens"]})
        messages.append({"role": "assistant", "content": r["text"]})


async def conversations(session, url: str, n: int, turns: int, answer_tokens: int, results: list) -> float:
    """Run `n` conversations at once, appending each turn to `results`; answers the wall
    time (s). The first error ends the run."""
    t0 = time.perf_counter()
    outcomes = await asyncio.gather(*(conversation(session, url, k, turns, answer_tokens, results) for k in range(n)),
                                    return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


async def run_side(url: str, n: int, turns: int, answer_tokens: int) -> dict:
    results: list = []
    timeout = aiohttp.ClientTimeout(total=3600)
    # A new connection per request: llama-server closes idle keep-alive connections,
    # which aiohttp would otherwise reuse and fail on.
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as session:
        # Warm-up: one short request, not counted.
        await chat(session, url, [{"role": "user", "content": "Hello"}], 4)
        wall = await conversations(session, url, n, turns, answer_tokens, results)
    per_turn = {t: statistics.median(r["ttft"] for r in results if r["turn"] == t) * 1000 for t in range(1, turns + 1)}
    later = [r["ttft"] * 1000 for r in results if r["turn"] >= 2]
    prompt = {t: statistics.median(r["prompt_tokens"] or 0 for r in results if r["turn"] == t) for t in range(1, turns + 1)}
    return {"wall_s": wall, "ttft_p50_ms_by_turn": per_turn, "prompt_tokens_p50_by_turn": prompt,
            "ttft_p50_ms_turns_2_on": statistics.median(later), "requests": results}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--class", dest="klass", choices=["native", "avx2"], default="native")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--swell-no-cache", action="store_true", help="Swell with prefix_cache = false")
    ap.add_argument("--kv", choices=["f32", "q8"], default="f32",
                    help="q8: Swell with kv_cache_type = \"q8\", llama-server with 8-bit K and V (-ctk q8_0 -ctv q8_0 "
                         "-fa on); f32: both engines' defaults (Swell f32, llama-server f16)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    for path, how in ((SWELL, "cargo build --release --bin swell"), (LLAMA[a.klass], "scripts/reference/build-llama-cpp "
                      + ("--avx2-server" if a.klass == "avx2" else "--server-only")), (MODEL, "scripts/fetch-model")):
        if not path.exists():
            sys.exit(f"{path} is missing: {how}")
    kernel = {"native": "auto", "avx2": "avx2"}[a.klass]
    ctx = 4096  # per conversation: 8 turns of history fit
    logdir = REPO / "loadtests" / "results" / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    print(f"# {cpu['model']}, {cpu['cores']} cores; SIMD: {' '.join(cpu['simd_flags'])}")
    print(f"# {a.conversations} conversations x {a.turns} turns, answers <= {a.answer_tokens} tokens; class {a.klass}; "
          f"{a.threads} threads; Swell prefix cache {'off' if a.swell_no_cache else 'on'}; KV {a.kv}; {a.rounds} rounds", flush=True)
    runs = {"swell": [], "llama": []}
    commands = {}
    for round_ in range(a.rounds):
        order = ["llama", "swell"] if round_ % 2 == 0 else ["swell", "llama"]
        for side in order:
            log = logdir / f"conversations-{side}.log"
            if side == "llama":
                extra = ("-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on") if a.kv == "q8" else ()
                proc, url, cmd = start_llama(LLAMA[a.klass], a.threads, log, slots=a.conversations, ctx=ctx, extra=extra)
            else:
                proc, url, cmd, _ = start_swell(kernel, a.threads, log, kv_tokens=a.conversations * ctx,
                                                extra_llm=f"prefix_cache = {str(not a.swell_no_cache).lower()}\n"
                                                          f"kv_cache_type = \"{a.kv}\"")
            commands[side] = cmd
            try:
                r = asyncio.run(run_side(url, a.conversations, a.turns, a.answer_tokens))
            finally:
                stop(proc)
            runs[side].append(r)
            turns = " ".join(f"{v:.0f}" for v in r["ttft_p50_ms_by_turn"].values())
            print(f"round {round_ + 1} {side:5s}: wall {r['wall_s']:6.1f} s | TTFT p50 turns 2-{a.turns} "
                  f"{r['ttft_p50_ms_turns_2_on']:7.1f} ms | by turn (ms): {turns}", flush=True)
    med = {side: {"wall_s": statistics.median(r["wall_s"] for r in runs[side]),
                  "ttft_p50_ms_turns_2_on": statistics.median(r["ttft_p50_ms_turns_2_on"] for r in runs[side]),
                  "ttft_p50_ms_by_turn": {t: statistics.median(r["ttft_p50_ms_by_turn"][t] for r in runs[side])
                                          for t in range(1, a.turns + 1)}} for side in runs}
    ratio = {k: med["swell"][k] / med["llama"][k] for k in ("wall_s", "ttft_p50_ms_turns_2_on")}
    print()
    print(f"| turn | prompt tokens (p50) | Swell TTFT p50 (ms) | llama-server TTFT p50 (ms) |")
    print("|---|---:|---:|---:|")
    for t in range(1, a.turns + 1):
        print(f"| {t} | {runs['swell'][0]['prompt_tokens_p50_by_turn'][t]:.0f} | {med['swell']['ttft_p50_ms_by_turn'][t]:.0f} "
              f"| {med['llama']['ttft_p50_ms_by_turn'][t]:.0f} |")
    print(f"| median, turns 2-{a.turns} | | {med['swell']['ttft_p50_ms_turns_2_on']:.0f} | "
          f"{med['llama']['ttft_p50_ms_turns_2_on']:.0f} |")
    print(f"| wall time (s) | | {med['swell']['wall_s']:.1f} | {med['llama']['wall_s']:.1f} |")
    print(f"\nSwell / llama-server: TTFT turns 2-{a.turns} {ratio['ttft_p50_ms_turns_2_on']:.2f}, "
          f"wall {ratio['wall_s']:.2f} (medians of {a.rounds} interleaved rounds)")
    save_result({"class": a.klass, "threads": a.threads, "rounds": a.rounds, "conversations": a.conversations,
                 "turns": a.turns, "answer_tokens": a.answer_tokens, "swell_prefix_cache": not a.swell_no_cache, "kv": a.kv,
                 "cpu": cpu, "commands": commands, "median": med, "ratio_swell_over_llama": ratio, "runs": runs},
                f"conversations-{a.klass}", a.out)

if __name__ == "__main__":
    main()
