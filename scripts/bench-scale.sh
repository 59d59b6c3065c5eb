#!/usr/bin/env bash
# How the ingester's cost grows with the object count: ingest-bench at each count of COUNTS
# (default 10k, 100k, 300k, 1M realistic ~10 KiB pods; sync, steady churn at 500 changes/s
# and restart; the baselines skipped), one RESULT line per count into $OUT/scale.csv, the
# table into $OUT/scale.md and the plot (time and memory against object count) into
# $OUT/scale.png. Run from the repository root on a quiet machine:
#
#   bash scripts/bench-scale.sh                      # about 25 minutes on 2 cores
#   COUNTS=10000,30000 OUT=/tmp/scale bash scripts/bench-scale.sh
#
# A million pods hold ~10 GB of JSON in the harness's kube-sim (docs/kube-sim.md) and a
# ~7 GB table: mind the memory and disk. The plot needs matplotlib (pip install matplotlib).
set -euo pipefail
counts=${COUNTS:-10000,100000,300000,1000000}
out=${OUT:-docs/img}
mkdir -p "$out"
cargo build --release -q -p ingest-bench -p resources-ingester
csv="$out/scale.csv"
: >"$csv.tmp"
for n in ${counts//,/ }; do
    echo "== $n objects" >&2
    ./target/release/ingest-bench --objects "$n" --skip copy,rowwise,multirow,maxrate,sizes \
        ${INGEST_BENCH_ARGS:-} | tee "${TMPDIR:-/tmp}/bench-scale-$n.log" | grep '^RESULT ' >>"$csv.tmp"
done
# RESULT key=value ... -> CSV with a header from the first line's keys
awk '{ row = ""; head = "";
       for (i = 2; i <= NF; i++) { split($i, kv, "="); head = head (i > 2 ? "," : "") kv[1];
                                   row = row (i > 2 ? "," : "") kv[2] }
       if (NR == 1) print head; print row }' "$csv.tmp" >"$csv"
rm -f "$csv.tmp"
python3 "$(dirname "$0")/plot-scale.py" "$csv" "$out/scale.png" >"$out/scale.md"
cat "$out/scale.md"
