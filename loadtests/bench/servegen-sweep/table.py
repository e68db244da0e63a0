"""The ServeGen table of docs/servegen-sweep.md from a sweep's summary.json files (run.sh).

`python3 table.py OUT [SWELL_OUT]`: with SWELL_OUT, Swell's row is taken from that sweep's
summary.json files instead (a sweep of `--policies swell` under another policy, compared
against the baselines of OUT).

Per tenant: Swell's SLO attainment, replica-seconds and cold starts; the best baseline by
attainment (cheapest on a tie); Swell's cost / the oracle's. Two verdicts:
- "vs best": Swell's attainment >= the best baseline's (unrounded) and its cost lower;
- "vs autoscalers": the same against the best of the baselines that scale with the load
  (Knative KPA, Ray Serve, Fireworks, Kubernetes HPA), leaving out static provisioning at
  the trace's peak, which knows the day's peak in advance.
"""
import glob
import json
import statistics
import sys

AUTOSCALERS = ("knative-kpa", "ray-serve", "fireworks", "k8s-hpa")

out = sys.argv[1] if len(sys.argv) > 1 else "sim-out/servegen-sweep"
swell_out = sys.argv[2] if len(sys.argv) > 2 else None


def best_of(policies):
    return max(policies, key=lambda p: (p["slo_attainment"], -p["replica_seconds"]))


def beats(swell, other):
    return swell["slo_attainment"] >= other["slo_attainment"] and swell["replica_seconds"] < other["replica_seconds"]


rows = []
fleet = {}
losses = {}
SPARSE_REQUESTS = 1000
print("| tenant | requests | swell SLO | swell replica-s | cold starts | best baseline | its SLO | its replica-s "
      "| swell ÷ oracle | vs best | best autoscaler | its SLO | vs autoscalers |")
print("|---|---:|---:|---:|---:|---|---:|---:|---:|---|---|---:|---|")
for path in sorted(glob.glob(f"{out}/*/chunk-*/summary.json"), key=lambda p: (p.split("/")[-3], int(p.split("-")[-1].split("/")[0]))):
    data = json.load(open(path))
    tenant = "/".join(path.split("/")[-3:-1])
    by_name = {p["policy"]: p for p in data["policies"]}
    swell = by_name["swell"]
    if swell_out:
        other = json.load(open(f"{swell_out}/{tenant}/summary.json"))
        swell = {p["policy"]: p for p in other["policies"]}["swell"]
    by_name["swell"] = swell
    for name, p in by_name.items():
        met, requests, cost, gpu, cold = fleet.get(name, (0.0, 0, 0.0, 0.0, 0))
        fleet[name] = (met + p["slo_attainment"] * p["requests"], requests + p["requests"],
                       cost + p["replica_seconds"], gpu + p["gpu_seconds"], cold + p["cold_starts"])
    baselines = [p for name, p in by_name.items() if name not in ("swell", "oracle")]
    best = best_of(baselines)
    best_scaler = best_of([p for p in baselines if p["policy"] in AUTOSCALERS])
    wins, wins_scaler = beats(swell, best), beats(swell, best_scaler)
    gap = (best["slo_attainment"] - swell["slo_attainment"]) * 100
    ratio = swell["replica_seconds"] / data["oracle_replica_seconds"]
    cheaper = swell["replica_seconds"] < best["replica_seconds"]
    rows.append((wins, wins_scaler, ratio, gap, cheaper))
    if not wins:
        if gap <= 0 and abs(swell["replica_seconds"] - best["replica_seconds"]) <= 0.001 * best["replica_seconds"]:
            kind = "tied: the same attainment and cost (within 0.1%)"
        elif not cheaper:
            kind = "at or above its SLO, at higher cost" if gap <= 0 else "below its SLO, at higher cost"
        elif swell["requests"] < SPARSE_REQUESTS:
            kind = f"below its SLO, cheaper; fewer than {SPARSE_REQUESTS} requests in the day"
        elif gap <= 0.1:
            kind = "below its SLO by at most 0.1 points, cheaper"
        else:
            kind = "below its SLO by more than 0.1 points, cheaper"
        losses.setdefault(kind, []).append(tenant)
    print(f"| {tenant} | {swell['requests']} | {swell['slo_attainment'] * 100:.2f}% | {swell['replica_seconds']:.0f} "
          f"| {swell['cold_starts']} | {best['policy']} | {best['slo_attainment'] * 100:.2f}% "
          f"| {best['replica_seconds']:.0f} | {ratio:.2f} | {'yes' if wins else 'no'} "
          f"| {best_scaler['policy']} | {best_scaler['slo_attainment'] * 100:.2f}% | {'yes' if wins_scaler else 'no'} |")
if rows:
    n = len(rows)
    below = [gap for _, _, _, gap, _ in rows if gap > 0]
    print()
    print(f"{n} tenants. Swell's default reached the best baseline's SLO attainment at lower cost on "
          f"{sum(r[0] for r in rows)}, and the best autoscaler's on {sum(r[1] for r in rows)}.")
    print(f"Cheaper than the best baseline on {sum(r[4] for r in rows)}; below its attainment on {len(below)} "
          f"(median gap {statistics.median(below) if below else 0:.2f} points, within 0.1 on "
          f"{sum(g <= 0.1 for g in below)}, within 0.5 on {sum(g <= 0.5 for g in below)}).")
    print(f"Median cost / oracle {statistics.median(r[2] for r in rows):.2f}.")
    print()
    print("Where Swell's default did not reach the best baseline's SLO at lower cost:")
    print()
    for kind, tenants in sorted(losses.items(), key=lambda item: -len(item[1])):
        print(f"- {kind}: {len(tenants)} ({', '.join(tenants)})")
    print()
    print("All tenants together (every request of every tenant; replica-seconds summed):")
    print()
    print("| policy | SLO attainment | replica-s | GPU-s | cold starts | ÷ oracle |")
    print("|---|---:|---:|---:|---:|---:|")
    oracle_cost = fleet.get("oracle", (0, 0, 0, 0, 0))[2]
    for name, (met, requests, cost, gpu, cold) in sorted(fleet.items(), key=lambda item: item[1][2]):
        ratio = f"{cost / oracle_cost:.2f}" if oracle_cost else ""
        print(f"| {name} | {met / requests * 100:.3f}% | {cost:,.0f} | {gpu:,.0f} | {cold:,} | {ratio} |")
