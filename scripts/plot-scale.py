#!/usr/bin/env python3
"""Plots ingest-bench's figures against the object count (scripts/bench-scale.sh).

usage: plot-scale.py SCALE.csv OUT.png  -- prints the markdown table on stdout.
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(csv_path, png_path):
    with open(csv_path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    rows.sort(key=lambda r: r["objects"])
    n = [r["objects"] for r in rows]

    fig, (t, m) = plt.subplots(1, 2, figsize=(11, 4.2))
    t.plot(n, [r["sync_seconds"] for r in rows], "o-", label="initial sync (s)")
    t.plot(n, [r["ingester_cpu_seconds"] for r in rows], "s-", label="ingester CPU (s)")
    t.plot(n, [r["postgres_cpu_seconds"] for r in rows], "^-", label="PostgreSQL CPU (s)")
    t.plot(n, [r["restart_seconds"] for r in rows], "x-", label="restart to ready (s)")
    t.set_xscale("log")
    t.set_yscale("log")
    t.set_xlabel("objects (~10 KiB pods)")
    t.set_ylabel("seconds")
    t.set_title("time")
    t.grid(True, which="both", alpha=0.3)
    t.legend()

    m.plot(n, [r["peak_rss_mib"] for r in rows], "o-", label="ingester peak RSS (MiB)")
    m.set_xscale("log")
    m.set_ylim(0, max(r["peak_rss_mib"] for r in rows) * 1.5)
    m.set_xlabel("objects (~10 KiB pods)")
    m.set_ylabel("MiB")
    m.set_title("ingester memory")
    m.grid(True, which="both", alpha=0.3)
    m.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)

    cols = [
        ("objects", "objects", "{:,.0f}"),
        ("kube-sim preload s", "preload_seconds", "{:.1f}"),
        ("sync s", "sync_seconds", "{:.1f}"),
        ("rows/s", "sync_rows_per_s", "{:,.0f}"),
        ("ingester CPU s", "ingester_cpu_seconds", "{:.2f}"),
        ("ingester CPU µs/object", "ingester_cpu_us_per_object", "{:.1f}"),
        ("peak RSS MiB", "peak_rss_mib", "{:.1f}"),
        ("PostgreSQL CPU s", "postgres_cpu_seconds", "{:.1f}"),
        ("table MiB", "table_mib", "{:,.0f}"),
        ("restart s", "restart_seconds", "{:.1f}"),
        ("rows rewritten at restart", "restart_rows_rewritten", "{:.0f}"),
        ("churn p99 ms (500/s)", "p99_latency_ms", "{:.0f}"),
    ]
    print("| " + " | ".join(c[0] for c in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt.format(r[key]) for _, key, fmt in cols) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
