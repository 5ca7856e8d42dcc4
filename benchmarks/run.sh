#!/usr/bin/env bash
# Run the timed benchmark suite and regenerate the report in benchmarks/README.md.
#
#   bash benchmarks/run.sh                 # default grid (not large), ~6-10 min on 2 cores
#   MARK=large bash benchmarks/run.sh      # only the large shapes
#   MARK="large or not large" bash benchmarks/run.sh   # everything
#   bash benchmarks/run.sh -k forward      # extra pytest arguments pass through
#
# Results: benchmarks/results/latest.json (pytest-benchmark, not committed), report.md,
# summary.csv (medians), speedup.png; the report also goes into benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
mkdir -p "$out"
json="$out/${JSON_NAME:-latest}.json"
python -m pytest benchmarks -q -p no:cacheprovider --benchmark-enable \
    -m "${MARK:-not large}" --benchmark-json="$json" \
    --benchmark-max-time="${MAX_TIME:-0.5}" --benchmark-min-rounds=5 \
    --benchmark-columns=median,iqr,min,rounds --benchmark-sort=name "$@"
python benchmarks/report.py "$json" ${EXTRA_JSON:-} --markdown "$out/report.md" \
    --plot "$out/speedup.png" --csv "$out/summary.csv" --readme benchmarks/README.md
echo "report: $out/report.md, benchmarks/README.md"
