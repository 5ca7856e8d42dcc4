#!/usr/bin/env bash
# Run the timed benchmark suite and regenerate the report in benchmarks/README.md.
#
#   bash benchmarks/run.sh                 # default grid (not large), ~8 min on 2 quiet cores
#   RUNS=3 bash benchmarks/run.sh          # three passes, combined by the median of medians
#   MARK=large JSON_NAME=large bash benchmarks/run.sh    # only the large shapes
#   EXTRA_JSON=benchmarks/results/large.json bash benchmarks/run.sh   # report both
#   bash benchmarks/run.sh -k forward      # extra pytest arguments pass through
#
# Results: benchmarks/results/<JSON_NAME>[-<pass>].json (pytest-benchmark, not committed),
# report.md, summary.csv (medians), speedup.png; the report also goes into benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
mkdir -p "$out"
jsons=()
for ((pass = 1; pass <= ${RUNS:-1}; pass++)); do
    suffix=""
    if [ "$pass" -gt 1 ]; then suffix="-$pass"; fi
    json="$out/${JSON_NAME:-latest}$suffix.json"
    python -m pytest benchmarks/bench_lstm.py -q -p no:cacheprovider --benchmark-enable \
        -m "${MARK:-not large}" --benchmark-json="$json" \
        --benchmark-max-time="${MAX_TIME:-0.5}" --benchmark-min-rounds=5 \
        --benchmark-columns=median,iqr,min,rounds --benchmark-sort=name "$@"
    jsons+=("$json")
done
python benchmarks/report.py "${jsons[@]}" ${EXTRA_JSON:-} --markdown "$out/report.md" \
    --plot "$out/speedup.png" --csv "$out/summary.csv" --readme benchmarks/README.md
echo "report: $out/report.md, benchmarks/README.md"
