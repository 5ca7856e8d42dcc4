#!/usr/bin/env bash
# Run the timed benchmark suite and regenerate the report in benchmarks/README.md.
#
#   bash benchmarks/run.sh                 # ceiling + grid (not large) + models: ~7 min per pass, quiet
#   RUNS=2 bash benchmarks/run.sh          # two passes, combined by the median of medians
#   MARK=large JSON_NAME=large bash benchmarks/run.sh    # only the large shapes and large model cases
#   EXTRA_JSON="benchmarks/results/large-*.json" bash benchmarks/run.sh   # report those too
#   BASELINE="before/*.json" bash benchmarks/run.sh      # add a table: ours now vs that run
#   CHUNKS="grid32 models32" bash benchmarks/run.sh      # some chunks only
#   LOCK=/tmp/lstm_cpu.lock bash benchmarks/run.sh       # each chunk under `flock -x $LOCK`
#   PYTHON=/path/to/venv/bin/python bash benchmarks/run.sh
#   README= bash benchmarks/run.sh                       # results/ only, benchmarks/README.md untouched
#   K="churn or tiny" bash benchmarks/run.sh               # a pytest -k expression, within each chunk
#   bash benchmarks/run.sh --bench-shapes tiny,churn      # other pytest arguments pass through
#
# A pass runs in chunks, one pytest process each (a few minutes; on a shared machine hold a lock
# per chunk, not per run): grid32 = the GEMM ceiling and the grid in float32, grid64 = the grid
# in float64, models32 / models64 = the models group in float32 / float64. The JSON records the
# CPU time other processes used during the chunk; a chunk where they used more than MAX_FOREIGN
# (default 0.05) of one CPU is run again, up to RETRIES more times (default 2); the quietest try
# is kept.
#
# Results: benchmarks/results/<JSON_NAME>-<chunk>[-<pass>].json (pytest-benchmark, not committed),
# report.md, summary.csv (medians), speedup.png; the report also goes into benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
out=benchmarks/results
mkdir -p "$out"
select_chunk() {   # sets sel: the pytest selection of chunk $1
    case "$1" in
        grid32) sel=(benchmarks/bench_ceiling.py benchmarks/bench_lstm.py); k="float32" ;;
        grid64) sel=(benchmarks/bench_lstm.py); k="float64" ;;
        models32) sel=(benchmarks/bench_models.py); k="float32" ;;
        models64) sel=(benchmarks/bench_models.py); k="float64" ;;
        *) echo "unknown chunk $1 (grid32, grid64, models32, models64)" >&2; exit 2 ;;
    esac
    if [ -n "${K:-}" ]; then k="$k and ($K)"; fi
    if [ "$1" = grid32 ]; then k="test_gemm or ($k)"; fi     # the whole ceiling, whatever K says
    sel+=(-k "$k")
}
foreign() {   # the share of one CPU other processes used during the run that wrote JSON $1
    "$PY" -c 'import json, sys
info = json.load(open(sys.argv[1]))["machine_info"]["lstm_fast"].get("foreign_cpu") or {}
print(info.get("share") or 0)' "$1"
}
jsons=()
for ((pass = 1; pass <= ${RUNS:-1}; pass++)); do
    for chunk in ${CHUNKS:-grid32 grid64 models32 models64}; do
        select_chunk "$chunk"
        suffix=""
        if [ "$pass" -gt 1 ]; then suffix="-$pass"; fi
        json="$out/${JSON_NAME:-latest}-$chunk$suffix.json"
        best=""
        for ((try = 0; try <= ${RETRIES:-2}; try++)); do
            cmd=("$PY" -m pytest "${sel[@]}" -q -p no:cacheprovider --benchmark-enable
                 -m "${MARK:-not large}" --benchmark-json="$json.try"
                 --benchmark-max-time="${MAX_TIME:-0.5}" --benchmark-min-rounds=5
                 --benchmark-columns=median,iqr,min,rounds --benchmark-sort=name "$@")
            rc=0
            if [ -n "${LOCK:-}" ]; then flock -x "$LOCK" "${cmd[@]}" || rc=$?; else "${cmd[@]}" || rc=$?; fi
            # 5 = nothing collected (e.g. MARK=large on a chunk without large cases)
            if [ $rc -eq 5 ]; then break; fi
            if [ $rc -ne 0 ]; then echo "chunk $chunk failed (pytest exit $rc)" >&2; exit $rc; fi
            share="$(foreign "$json.try")"
            echo "chunk $chunk pass $pass try $try: other processes used ${share} of a CPU"
            # keep the quietest try
            if [ -z "$best" ] || "$PY" -c "import sys; sys.exit(float(sys.argv[1]) >= float(sys.argv[2]))" \
                    "$share" "$best"; then
                mv "$json.try" "$json"
                best="$share"
            fi
            rm -f "$json.try"
            if "$PY" -c "import sys; sys.exit(float(sys.argv[1]) <= float(sys.argv[2]))" \
                    "$best" "${MAX_FOREIGN:-0.05}"; then
                if [ "$try" -lt "${RETRIES:-2}" ]; then
                    echo "chunk $chunk: the machine was busy; running it again" >&2
                    sleep 10
                fi
                continue
            fi
            break
        done
        if [ -n "$best" ]; then echo "chunk $chunk pass $pass: kept the try with ${best} of a CPU taken by others"; fi
        if [ -n "$best" ]; then jsons+=("$json"); fi
    done
done
# shellcheck disable=SC2086   # EXTRA_JSON and BASELINE are lists of paths (globs allowed)
readme="${README-benchmarks/README.md}"     # README= (empty): leave the README alone
"$PY" -m benchmarks.report "${jsons[@]}" ${EXTRA_JSON:-} ${BASELINE:+--baseline $BASELINE} \
    --markdown "$out/report.md" --plot "$out/speedup.png" --csv "$out/summary.csv" \
    ${readme:+--readme "$readme"}
echo "report: $out/report.md${readme:+, $readme}"
