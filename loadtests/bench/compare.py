#!/usr/bin/env python3
"""Swell's engine against llama-server on this machine, one kernel class, interleaved.

Run through loadtests/bench/compare.sh. For each round (default 3) it starts llama-server,
measures it, stops it, then starts Swell (the release binary, one always-on `llm`
replica), measures it, stops it; the order alternates by round so drift of the machine
falls on both sides. Each side runs the same requests (streaming /v1/completions,
temperature 0, ignore_eos, unique prompts so no prefix cache helps):

  decode_1   5 single streams, each a ~100-token prompt and 128 output tokens: the decode
             rate over the stream, (tokens - 1) / (last token - first token), median;
  wall_16    16 such streams at once: output tokens / wall time (prefills included);
  prefill    3 prompts of ~1000 tokens, 1 output token: prompt tokens / time to the
             token, median;
  ttft       9 short requests (~100-token prompt, 8 tokens): time to first token, p50.

Kernel classes: `--class native` runs Swell's detected class against llama-server built
with GGML_NATIVE (.tools/llama.cpp/build); `--class avx2` forces Swell's AVX2 class
(`llm.cpu_kernel = "avx2"`) against llama-server built for AVX2 without AVX-512 or
AVX-VNNI (.tools/llama.cpp/build-avx2, `scripts/reference/build-llama-cpp --avx2-server`).
Both sides use the same thread count. The JSON (every round, the medians, the ratios, the
CPU model and flags, the commands) goes to loadtests/results/.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import Client, free_port, make_prompt, pct, run_decode, stop  # noqa: E402
from engine import run_single as streams  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("SWELL_MODEL_PATH", REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
SWELL = REPO / "target" / "release" / "swell"
LLAMA = {"native": REPO / ".tools/llama.cpp/build/bin/llama-server",
         "avx2": REPO / ".tools/llama.cpp/build-avx2/bin/llama-server"}
SWELL_KERNEL = {"native": "auto", "avx2": "avx2"}
STREAMS = 16
CONTEXT = 1280  # per sequence: the 1000-token prefill fits


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text()
    first = text.split("\n\n")[0]
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}
    flags = fields.get("flags", "").split()
    simd = [f for f in flags if f.startswith(("avx", "fma", "f16c", "amx", "sse4"))]
    return {"model": fields.get("model name", "?").strip(), "cores": os.cpu_count(),
            "simd_flags": sorted(simd), "flags": flags, "kernel": platform.release()}


def wait_ready(proc, url: str, path: str, ready, log: Path, what: str):
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(url + path, timeout=1) as r:
                if r.status == 200 and ready(r.read()):
                    return
        except Exception:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"{what} did not become ready; see {log}")


def start_llama(binary: Path, threads: int, log: Path, slots: int = STREAMS, ctx: int = CONTEXT, extra: tuple = ()):
    """llama-server with `slots` parallel slots of `ctx` tokens each; `extra`: more flags."""
    port = free_port()
    cmd = [str(binary), "-m", str(MODEL), "--threads", str(threads), "--threads-batch", str(threads),
           "--parallel", str(slots), "--ctx-size", str(slots * ctx), "--no-repack", "-cb",
           "--host", "127.0.0.1", "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, "/health", lambda _: True, log, "llama-server")
    return proc, url, cmd


def start_swell(kernel: str, threads: int, log: Path, kv_tokens: int = STREAMS * CONTEXT, extra_llm: str = "",
                replicas: int = 1, extra: str = ""):
    """`swell serve` with `replicas` always-on `llm` replicas; `extra_llm`: more `llm`
    keys; `extra`: more of the deployment's tables."""
    port = free_port()
    config = f"""
[server]
listen = "127.0.0.1:{port}"
[deployments.default]
engine = "llm"
[deployments.default.llm]
model_path = "{MODEL}"
threads = {threads}
cpu_kernel = "{kernel}"
kv_cache_tokens = {kv_tokens}
{extra_llm}
[deployments.default.autoscaling]
min_replicas = {replicas}
max_replicas = {replicas}
{extra}
"""
    path = Path(tempfile.mkdtemp()) / "compare.toml"
    path.write_text(config)
    cmd = [str(SWELL), "serve", "--config", str(path)]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "RUST_LOG": "warn"})
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, "/admin/v1/deployments/default",
               lambda b: json.loads(b)["replicas"]["ready"] == replicas, log, "swell")
    with urllib.request.urlopen(url + "/admin/v1/deployments/default", timeout=5) as r:
        status = json.load(r)
    return proc, url, cmd + [f"(config: {config.strip()!r})"], status


def save_result(result: dict, name: str, out: str | None = None) -> Path:
    """Write a benchmark's `result` (stamped with the time and the commit) as JSON to `out`,
    by default `loadtests/results/<name>-<time>.json`, and say where."""
    now = dt.datetime.now()
    path = Path(out) if out else REPO / "loadtests" / "results" / f"{name}-{now.strftime('%Y%m%d-%H%M%S')}.json"
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    path.write_text(json.dumps({"time": now.isoformat(timespec="seconds"), **result, "git": git}, indent=1))
    print(f"wrote {path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path}")
    return path


def measure(client: Client, prompts, long_prompts, gen: int) -> dict:
    asyncio.run(streams(client, [next(prompts)], 8))  # warm-up
    ttft = [r["ttft"] for r in asyncio.run(streams(client, [next(prompts) for _ in range(9)], 8))]
    singles = asyncio.run(streams(client, [next(prompts) for _ in range(5)], gen))
    rates = [(len(r["stamps"]) - 1) / (r["stamps"][-1] - r["stamps"][0]) for r in singles]
    many = asyncio.run(run_decode(client, STREAMS, [next(prompts) for _ in range(STREAMS)], gen))
    prefill = []
    for p in long_prompts:
        r = asyncio.run(streams(client, [p], 1))[0]
        prefill.append(r["usage"]["prompt_tokens"] / (r["t1"] - r["t0"]))
    return {"decode_1_tok_s": statistics.median(rates), "decode_1_runs": rates,
            "tokens_per_stream": sorted({r["n_tokens"] for r in singles}),
            "wall_16_tok_s": many["output_tok_s_wall"], "wall_16": many,
            "prefill_tok_s": statistics.median(prefill), "prefill_runs": prefill,
            "ttft_p50_ms": pct(ttft, 0.5) * 1000}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--class", dest="klass", choices=["native", "avx2"], default="native")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--out", default=None, help="JSON path (default loadtests/results/engine-<class>-<time>.json)")
    a = ap.parse_args()
    for path, how in ((SWELL, "cargo build --release --bin swell"), (LLAMA[a.klass], "scripts/reference/build-llama-cpp "
                      + ("--avx2-server" if a.klass == "avx2" else "--server-only")), (MODEL, "scripts/fetch-model")):
        if not path.exists():
            sys.exit(f"{path} is missing: {how}")
    rng = random.Random(7)
    count = lambda s: max(1, len(s) // 4)  # prompt sizes are approximate; usage gives the real count
    per_side = 1 + 9 + 5 + STREAMS
    prompts = iter([make_prompt(100, count, rng)[0] for _ in range(a.rounds * 2 * per_side)])
    longs = [[make_prompt(1000, count, rng)[0] for _ in range(3)] for _ in range(a.rounds * 2)]
    logdir = REPO / "loadtests" / "results" / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    print(f"# {cpu['model']}, {cpu['cores']} cores; SIMD: {' '.join(cpu['simd_flags'])}")
    print(f"# class {a.klass}: Swell cpu_kernel={SWELL_KERNEL[a.klass]}, llama-server {LLAMA[a.klass].relative_to(REPO)}; "
          f"{a.threads} threads; {a.rounds} rounds", flush=True)
    runs = {"swell": [], "llama": []}
    commands, swell_device = {}, None
    for round_ in range(a.rounds):
        order = ["llama", "swell"] if round_ % 2 == 0 else ["swell", "llama"]
        for side in order:
            log = logdir / f"compare-{side}.log"
            if side == "llama":
                proc, url, cmd = start_llama(LLAMA[a.klass], a.threads, log)
                client = Client(url, "default", None, {"cache_prompt": False})
            else:
                proc, url, cmd, status = start_swell(SWELL_KERNEL[a.klass], a.threads, log)
                swell_device = status
                client = Client(url, "default", None, {})
            commands[side] = cmd
            try:
                r = measure(client, prompts, longs[round_ * 2 + order.index(side)], a.gen_tokens)
            finally:
                stop(proc)
            r["loadavg"] = os.getloadavg()[0]
            runs[side].append(r)
            print(f"round {round_ + 1} {side:5s}: decode 1 stream {r['decode_1_tok_s']:7.1f} tok/s | 16 streams "
                  f"{r['wall_16_tok_s']:7.1f} tok/s | prefill {r['prefill_tok_s']:7.1f} tok/s | TTFT p50 "
                  f"{r['ttft_p50_ms']:6.1f} ms | load {r['loadavg']:.2f}", flush=True)
    med = {side: {k: statistics.median(r[k] for r in runs[side])
                  for k in ("decode_1_tok_s", "wall_16_tok_s", "prefill_tok_s", "ttft_p50_ms")} for side in runs}
    ratio = {k: med["swell"][k] / med["llama"][k] for k in med["swell"]}
    print()
    print(f"| {cpu['model']}, class {a.klass}, {a.threads} threads | Swell | llama-server | ratio |")
    print("|---|---:|---:|---:|")
    for k, label in (("decode_1_tok_s", "decode, 1 stream (tok/s over the stream)"),
                     ("wall_16_tok_s", f"{STREAMS} streams x {a.gen_tokens} tokens (tok/s over wall)"),
                     ("prefill_tok_s", "prefill, ~1000-token prompt (tok/s)"),
                     ("ttft_p50_ms", "TTFT p50, ~100-token prompt (ms)")):
        print(f"| {label} | {med['swell'][k]:.1f} | {med['llama'][k]:.1f} | {ratio[k]:.2f} |")
    print(f"\nmedians of {a.rounds} interleaved rounds")
    result = {"time": dt.datetime.now().isoformat(timespec="seconds"), "class": a.klass, "threads": a.threads,
              "rounds": a.rounds, "gen_tokens": a.gen_tokens, "cpu": cpu, "swell_cpu_kernel": SWELL_KERNEL[a.klass],
              "swell_status": swell_device, "commands": commands, "median": med, "ratio_swell_over_llama": ratio,
              "runs": runs, "git": subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                                  text=True).stdout.strip()}
    out = Path(a.out) if a.out else REPO / "loadtests" / "results" / f"engine-{a.klass}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.resolve().relative_to(REPO) if out.resolve().is_relative_to(REPO) else out}")


if __name__ == "__main__":
    main()
