#!/usr/bin/env python3
"""The wait estimate's error on a replay (loadtests/bench/eta.sh): reads swell-loadtest's
per-request CSVs and prints, for Swell's estimate (the `eta=` of the first waiting
comment) and for the naive one (position × mean service time), the p50 and p90 of
predicted − actual wait and of |predicted − actual|.

- actual wait: from the first waiting comment to the first chunk (a chat stream's role
  chunk, sent when a replica takes the request);
- service time: from the first chunk to the end of the stream; the naive estimate uses
  the mean over every successful request of the run (hindsight: more than a server
  knows when it answers);
- percentiles: nearest rank (as swell_simulator::stats).

Rows: all requests that got a waiting comment and were served; those of them that
waited at least 1 s (the ones an estimate is for); of these, those told a replica was
starting (waiting for a cold start) and the others (waiting behind full batches).
"""
import csv
import math
import sys


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(values)))
    return values[rank - 1]


def main(paths):
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["status"] != "ok" or not row["wait_comment_ms"] or not row["first_chunk_ms"]:
                    continue
                rows.append(row)
    if not rows:
        sys.exit("no served request with a waiting comment")
    service = [(float(r["e2e_ms"]) - float(r["first_chunk_ms"])) / 1000 for r in rows]
    mean_service = sum(service) / len(service)
    samples = []
    for r in rows:
        actual = (float(r["first_chunk_ms"]) - float(r["wait_comment_ms"])) / 1000
        position = int(r["wait_position"] or 1)
        eta = float(r["wait_eta_s"]) if r["wait_eta_s"] else None
        samples.append((actual, eta, position * mean_service, int(r["starting_events"]) > 0))
    without_eta = sum(1 for s in samples if s[1] is None)
    print(f"{len(samples)} requests served after a waiting comment ({without_eta} without an eta, counted as eta=0)")
    print(f"mean service time {mean_service:.2f} s; actual wait p50 {percentile([s[0] for s in samples], 50):.2f} s, "
          f"p90 {percentile([s[0] for s in samples], 90):.2f} s, max {max(s[0] for s in samples):.2f} s")
    header = f"{'requests':<28} {'estimate':<8} {'n':>5} {'err p50':>9} {'err p90':>9} {'|err| p50':>10} {'|err| p90':>10}"
    print(header)
    waited = [s for s in samples if s[0] >= 1.0]
    groups = [
        ("all", samples),
        ("waited >= 1 s", waited),
        ("  for a cold start", [s for s in waited if s[3]]),
        ("  behind full batches", [s for s in waited if not s[3]]),
    ]
    for label, subset in groups:
        if not subset:
            continue
        for name, index in [("swell", 1), ("naive", 2)]:
            errors = [(s[index] if s[index] is not None else 0.0) - s[0] for s in subset]
            print(f"{label:<28} {name:<8} {len(errors):>5} {percentile(errors, 50):>+9.2f} {percentile(errors, 90):>+9.2f} "
                  f"{percentile([abs(e) for e in errors], 50):>10.2f} {percentile([abs(e) for e in errors], 90):>10.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
