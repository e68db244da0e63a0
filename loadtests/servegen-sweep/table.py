"""The README's ServeGen table from a sweep's summary.json files (run.sh)."""
import glob
import json
import statistics
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "sim-out/servegen-sweep"
rows = []
for path in sorted(glob.glob(f"{out}/*/chunk-*/summary.json")):
    data = json.load(open(path))
    tenant = "/".join(path.split("/")[-3:-1])
    by_name = {p["policy"]: p for p in data["policies"]}
    swell = by_name["swell"]
    baselines = [p for name, p in by_name.items() if name not in ("swell", "oracle")]
    best = max(baselines, key=lambda p: (p["slo_attainment"], -p["replica_seconds"]))
    wins = swell["slo_attainment"] >= best["slo_attainment"] and swell["replica_seconds"] < best["replica_seconds"]
    ratio = swell["replica_seconds"] / data["oracle_replica_seconds"]
    rows.append((wins, ratio))
    print(f"| {tenant} | {swell['requests']} | {swell['slo_attainment'] * 100:.1f}% | {swell['replica_seconds']:.0f} "
          f"| {swell['cold_starts']} | {best['policy']} | {best['slo_attainment'] * 100:.1f}% "
          f"| {best['replica_seconds']:.0f} | {ratio:.2f} | {'yes' if wins else 'no'} |")
if rows:
    print(f"{len(rows)} tenants; Swell reached the best baseline's SLO at lower cost on "
          f"{sum(w for w, _ in rows)}; median cost / oracle {statistics.median(r for _, r in rows):.2f}")
